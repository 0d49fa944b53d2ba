"""Modality-weighted local alignment (Method §5) against a per-sample, per-word reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from medst.losses import LocalAlignment

TAU = 0.1


def unit(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def reference_weights(mha, interactions):
    """ω from a single-head attention written out: query = mean e_i, keys = e_i."""
    d = interactions[0].shape[-1]
    w_q, w_k, _ = mha.in_proj_weight.chunk(3)
    b_q, b_k, _ = mha.in_proj_bias.chunk(3)
    query = w_q @ (sum(interactions) / len(interactions)) + b_q
    scores = torch.stack([query @ (w_k @ e + b_k) / math.sqrt(d) for e in interactions])
    return torch.softmax(scores, dim=0)


def reference_side(x, y, mha, normalise_context, renormalise_weights):
    """One side of §5 for one sample: tokens x [Q, d] attend over y [K, d]."""
    contexts = []
    for xi in x:
        a = torch.softmax(torch.stack([xi @ yj / TAU for yj in y]), dim=0)
        c = sum(a[j] * y[j] for j in range(len(y)))
        contexts.append(c / c.norm() if normalise_context else c)
    interactions = [(xi * ci) / (xi * ci).norm() for xi, ci in zip(x, contexts)]
    omega = reference_weights(mha, interactions)
    if renormalise_weights:
        omega = omega / omega.sum()
    rows = cols = 0.0
    for i in range(len(x)):
        row = torch.stack([x[i] @ contexts[k] / TAU for k in range(len(x))])
        col = torch.stack([x[k] @ contexts[i] / TAU for k in range(len(x))])
        rows = rows + omega[i] * -torch.log_softmax(row, dim=0)[i]
        cols = cols + omega[i] * -torch.log_softmax(col, dim=0)[i]
    return (rows + cols) / 2


def reference_loss(module, words, patches):
    """L_word + L_patch: per sample, then averaged over the batch (no padding)."""
    per_sample = [
        reference_side(w, p, module.word_weighting, True, True)
        + reference_side(p, w, module.patch_weighting, False, False)
        for w, p in zip(words, patches)
    ]
    return sum(per_sample) / len(per_sample)


def make_module(dim=8, seed=0, **kw):
    torch.manual_seed(seed)
    module = LocalAlignment(dim, temperature=TAU, **kw).double()
    with torch.no_grad():  # non-zero biases so that the reference checks them too
        for mha in (module.word_weighting, module.patch_weighting):
            mha.in_proj_bias.normal_()
    return module


@pytest.mark.parametrize("shape", [(2, 5, 6), (3, 4, 3)])
def test_matches_reference(shape):
    b, w, p = shape
    module = make_module()
    words, patches = unit(b, w, 8, seed=1), unit(b, p, 8, seed=2)
    got = module(words, patches)
    want = reference_loss(module, words, patches)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_gradcheck():
    module = make_module(dim=4)
    wm = torch.tensor([[True, True, False], [True, True, True]])
    pm = torch.tensor([[True, True, True, True], [True, True, False, False]])
    words, patches = unit(2, 3, 4, seed=3).requires_grad_(), unit(2, 4, 4, seed=4).requires_grad_()

    def loss(w, p):
        return module(F.normalize(w, dim=-1), F.normalize(p, dim=-1), wm, pm)

    assert torch.autograd.gradcheck(loss, (words, patches), eps=1e-6, atol=1e-6)


def padded_batch():
    """Two pairs: pair 0 has 4 of 6 words, pair 1 has 2 of 4 patch slots (missing lateral)."""
    words, patches = unit(2, 6, 8, seed=5), unit(2, 4, 8, seed=6)
    word_mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    patch_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    return words, patches, word_mask, patch_mask


def test_masked_equals_truncated_and_masked_gradients_are_zero():
    module = make_module()
    words, patches, wm, pm = padded_batch()
    words.requires_grad_()
    patches.requires_grad_()
    loss = module(words, patches, wm, pm)
    loss.backward()
    truncated = [module(words[i : i + 1, wm[i]], patches[i : i + 1, pm[i]]) for i in range(2)]
    torch.testing.assert_close(loss, sum(truncated) / 2, rtol=1e-10, atol=1e-12)
    assert torch.equal(words.grad[~wm], torch.zeros_like(words.grad[~wm]))
    assert torch.equal(patches.grad[~pm], torch.zeros_like(patches.grad[~pm]))
    assert words.grad[wm].abs().sum() > 0 and patches.grad[pm].abs().sum() > 0
    # Garbage in the masked slots changes nothing.
    noisy_w = torch.where(wm[..., None], words.detach(), 100 * torch.randn_like(words))
    noisy_p = torch.where(pm[..., None], patches.detach(), torch.zeros_like(patches))
    torch.testing.assert_close(module(noisy_w, noisy_p, wm, pm), loss.detach(), rtol=1e-10, atol=1e-12)


def test_mask_words_option():
    masked = make_module()
    published = make_module(mask_words=False)
    published.load_state_dict(masked.state_dict())
    words, patches, wm, pm = padded_batch()
    full = torch.ones_like(wm)
    torch.testing.assert_close(masked(words, patches, full, pm), published(words, patches, full, pm))
    torch.testing.assert_close(masked(words, patches, None, pm), published(words, patches, None, pm))
    # With padding the published form lets padded words in, so the word side differs.
    assert not torch.allclose(masked(words, patches, wm, pm), published(words, patches, wm, pm))
    # ...while the patch side masks padded words as keys in both forms.
    torch.testing.assert_close(
        masked(words, patches, wm, pm, return_details=True).loss_patch,
        published(words, patches, wm, pm, return_details=True).loss_patch,
    )


def test_details_weights_and_maps():
    module = make_module()
    words, patches, wm, pm = padded_batch()
    out = module(words, patches, wm, pm, return_details=True)
    torch.testing.assert_close(out.loss, module(words, patches, wm, pm))
    torch.testing.assert_close(out.loss, out.loss_word + out.loss_patch)
    ones = torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(out.word_weights.sum(1), ones)
    torch.testing.assert_close(out.patch_weights.sum(1), ones)
    assert torch.all(out.word_weights[~wm] == 0) and torch.all(out.patch_weights[~pm] == 0)
    assert out.word_to_patch.shape == (2, 6, 4) and out.patch_to_word.shape == (2, 4, 6)
    torch.testing.assert_close(out.word_to_patch.sum(-1), wm.double())
    torch.testing.assert_close(out.patch_to_word.sum(-1), pm.double())
    assert torch.all(out.word_to_patch[1, :, ~pm[1]] == 0)  # no attention on the missing lateral
    assert torch.all(out.patch_to_word[0, :, ~wm[0]] == 0)  # nor on padded words


def test_every_trainable_parameter_gets_a_gradient():
    """Nothing trainable sits outside the loss (several processes need no find_unused_parameters)."""
    module = make_module()
    words, patches, wm, pm = padded_batch()
    module(words, patches, wm, pm).backward()
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert {"word_weighting.in_proj_weight", "patch_weighting.in_proj_bias"} <= set(trainable)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())


def test_bad_inputs_are_reported():
    module = make_module()
    words, patches, wm, pm = padded_batch()
    with pytest.raises(ValueError, match="dim=8"):
        module(words[..., :4], patches)
    with pytest.raises(ValueError, match="word_mask"):
        module(words, patches, wm.double(), pm)
    with pytest.raises(ValueError, match="at least one valid"):
        module(words, patches, torch.zeros_like(wm), pm)


def _train_weights_only(weighting, steps=300, seed=0):
    """Adam on the weighting attentions alone, words and patches fixed: how concentrated ω becomes."""
    from medst.losses.local import weight_stats

    torch.manual_seed(seed)
    module = LocalAlignment(16, temperature=TAU, weighting=weighting)
    words, patches = unit(4, 12, 16, dtype=torch.float32, seed=1), unit(4, 16, 16, dtype=torch.float32, seed=2)
    before = module(words, patches, return_details=True)
    params = [p for p in module.parameters() if p.requires_grad]
    if params:
        opt = torch.optim.Adam(params, lr=0.05)
        for _ in range(steps):
            opt.zero_grad()
            module(words, patches).backward()
            opt.step()
    after = module(words, patches, return_details=True)
    return (
        weight_stats(before.word_weights),
        weight_stats(after.word_weights),
        weight_stats(after.patch_weights),
        before.loss.item(),
        after.loss.item(),
    )


def test_published_weights_collapse_and_the_remedies_do_not():
    """The published learned weights minimise Σ ω_i CE_i by moving all weight onto the easiest token."""
    start, words, patches, loss0, loss1 = _train_weights_only("learned")
    assert start["max_weight"] < 0.3  # about uniform at init (1/12 words)
    assert words["max_weight"] > 0.9 and patches["max_weight"] > 0.9  # collapsed onto one token
    assert words["entropy"] < 0.2
    assert loss1 < 0.7 * loss0  # the loss fell without any feature changing
    for remedy in ("detached", "uniform"):
        start, words, patches, loss0, loss1 = _train_weights_only(remedy)
        assert words["max_weight"] < 0.3 and patches["max_weight"] < 0.3, remedy
        assert words["entropy"] > 0.9, remedy
        assert loss1 == pytest.approx(loss0), remedy  # nothing the loss could bend


def test_remedy_weights_receive_no_gradient_and_uniform_is_the_mean():
    words, patches, wm, pm = padded_batch()
    torch.manual_seed(0)
    detached = LocalAlignment(8, temperature=TAU, weighting="detached").double()
    assert not any(p.requires_grad for p in detached.word_weighting.parameters())
    out = detached(words, patches, wm, pm, return_details=True)
    learned = LocalAlignment(8, temperature=TAU, weighting="learned").double()
    learned.load_state_dict(detached.state_dict())
    ref = learned(words, patches, wm, pm, return_details=True)
    torch.testing.assert_close(out.loss, ref.loss)  # same value, only the gradient path differs
    torch.testing.assert_close(out.word_weights, ref.word_weights)
    uniform = LocalAlignment(8, temperature=TAU, weighting="uniform").double()
    w = uniform(words, patches, wm, pm, return_details=True).word_weights
    torch.testing.assert_close(w, wm.double() / wm.sum(1, keepdim=True))
    with pytest.raises(ValueError, match="weighting"):
        LocalAlignment(8, weighting="entropy")
