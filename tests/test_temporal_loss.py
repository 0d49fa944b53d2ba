"""Temporal cycle consistency (Method §6) against a per-sequence, per-step reference."""

import pytest
import torch
import torch.nn.functional as F

from medst.losses import cycle_consistency_loss, fmc_loss, rmr_details, rmr_loss, temporal_loss

T = 0.1
LAMBDA = 1e-3
EPS = 1e-7


def sim(x, y, similarity):
    return -((x - y) ** 2).sum() if similarity == "l2" else (x * y).sum()


def softmax(values):
    values = torch.stack(values)
    return torch.exp(values - values.max()) / torch.exp(values - values.max()).sum()


def reference_fmc(a, b, similarity):
    """CE of step t over the steps of b, averaged over steps and sequences."""
    terms = []
    for seq_a, seq_b in zip(a, b):
        steps = len(seq_a)
        for t in range(steps):
            logits = [sim(seq_a[t], seq_b[k], similarity) / T for k in range(steps)]
            terms.append(-torch.log(softmax(logits)[t]))
    return sum(terms) / len(terms)


def reference_rmr(a, b, similarity, delta=2.0):
    """a→b→a cycle back, variance-aware regression of the time position."""
    terms = []
    for seq_a, seq_b in zip(a, b):
        steps = len(seq_a)
        times = [k / steps for k in range(steps)]
        for t in range(steps):
            beta = softmax([sim(seq_a[t], seq_b[k], similarity) / T for k in range(steps)])
            nearest = sum(beta[k] * seq_b[k] for k in range(steps))
            alpha = softmax([sim(nearest, seq_a[k], similarity) / T for k in range(steps)])
            mu = sum(alpha[k] * times[k] for k in range(steps))
            var = sum(alpha[k] * (times[k] - mu) ** 2 for k in range(steps))
            error = times[t] - mu
            if abs(float(error)) < delta:
                terms.append(error**2 / (var + EPS) + LAMBDA * torch.log(var + EPS))
            else:
                terms.append(delta * (abs(error) - delta / 2))
    return sum(terms) / len(terms)


def sequences(s, steps, d, seed):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(s, steps, d, generator=g, dtype=torch.float64), dim=-1)
    b = F.normalize(a + 0.7 * torch.randn(s, steps, d, generator=g, dtype=torch.float64), dim=-1)
    return a, b


@pytest.mark.parametrize("similarity", ["l2", "cosine"])
@pytest.mark.parametrize("steps", [4, 3])
def test_losses_match_reference(similarity, steps):
    a, b = sequences(3, steps, 6, seed=steps)
    kw = dict(temperature=T, similarity=similarity)
    fmc, rmr = reference_fmc(a, b, similarity), reference_rmr(a, b, similarity)
    torch.testing.assert_close(fmc_loss(a, b, **kw), fmc, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rmr_loss(a, b, **kw), rmr, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cycle_consistency_loss(a, b, **kw), fmc + rmr, rtol=1e-10, atol=1e-12)
    both = fmc + rmr + reference_fmc(b, a, similarity) + reference_rmr(b, a, similarity)
    torch.testing.assert_close(temporal_loss(a, b, **kw), both, rtol=1e-10, atol=1e-12)


def test_huber_branch_matches_reference():
    a, b = sequences(2, 4, 5, seed=7)
    got = rmr_loss(a, b, huber_delta=0.05)
    torch.testing.assert_close(got, reference_rmr(a, b, "l2", delta=0.05), rtol=1e-10, atol=1e-12)
    details = rmr_details(a, b, huber_delta=0.05)
    assert (details.error.abs() >= 0.05).any()  # the linear branch was taken somewhere
    # With the published δ = 2 it never is: |e| < 1.
    assert (rmr_details(a, b).error.abs() < 1).all()


def test_rmr_details():
    a, b = sequences(2, 4, 5, seed=8)
    d = rmr_details(a, b)
    torch.testing.assert_close(d.beta.sum(-1), torch.ones(2, 4, dtype=torch.float64))
    torch.testing.assert_close(d.alpha.sum(-1), torch.ones(2, 4, dtype=torch.float64))
    torch.testing.assert_close(d.times, torch.tensor([0, 0.25, 0.5, 0.75], dtype=torch.float64))
    torch.testing.assert_close(d.soft_nn, d.beta @ b)
    assert d.mu.shape == d.var.shape == (2, 4) and (d.var >= 0).all()
    torch.testing.assert_close(d.loss, rmr_loss(a, b))


@pytest.mark.parametrize("similarity", ["l2", "cosine"])
def test_gradcheck(similarity):
    a, b = sequences(2, 3, 4, seed=9)
    a.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: temporal_loss(x, y, similarity=similarity), (a, b))


def trajectories(s=16, steps=4, d=32, seed=10):
    """Image embeddings drifting over time and reports close to them, step by step."""
    g = torch.Generator().manual_seed(seed)
    start, drift = torch.randn(s, 1, d, generator=g), torch.randn(s, 1, d, generator=g)
    u = F.normalize(start + drift * torch.arange(steps)[None, :, None], dim=-1)
    v = F.normalize(u + 0.05 * torch.randn(s, steps, d, generator=g), dim=-1)
    return u, v


def test_ordered_beats_shuffled():
    """Aligned, time-ordered pairs cost less than the same reports in a shuffled order."""
    u, v = trajectories()
    ordered = temporal_loss(u, v)
    for perm in ([3, 2, 1, 0], [1, 2, 3, 0], [0, 2, 1, 3], [2, 0, 3, 1]):
        assert ordered < temporal_loss(u, v[:, perm])
        assert fmc_loss(u, v) < fmc_loss(u, v[:, perm])


def test_rmr_symmetries():
    """RMR(a→b→a) ignores the order of b (ṽ sums over all of b) and a time reversal of both."""
    u, v = trajectories()
    perm = [2, 0, 3, 1]
    torch.testing.assert_close(rmr_loss(u, v[:, perm]), rmr_loss(u, v))
    torch.testing.assert_close(rmr_loss(u.flip(1), v.flip(1)), rmr_loss(u, v))
    assert not torch.allclose(rmr_loss(u[:, perm], v[:, perm]), rmr_loss(u, v))  # order of a matters


def test_bad_inputs_are_reported():
    a, b = sequences(2, 4, 5, seed=11)
    with pytest.raises(ValueError, match="same shape"):
        temporal_loss(a, b[:, :3])
    with pytest.raises(ValueError, match="L >= 2"):
        fmc_loss(a[:, :1], b[:, :1])
    with pytest.raises(ValueError, match="similarity"):
        rmr_loss(a, b, similarity="dot")
