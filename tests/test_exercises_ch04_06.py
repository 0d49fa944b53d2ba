"""The exercises of chapters 4-6 (medst/book/exercises/ch04.py, ch05.py, ch06.py) and their checkers.

For every exercise: the solution passes, the stub is "not implemented yet", a submission that is or calls the
library's implementation is refused, and typical mistakes written here by hand fail with the hint that names
them. Beside that: the checkers of chapter 4 grade in train mode too (their drop-path masks keep some samples
and drop others, and a function that switches the block to eval mode fails), the checkers' own references agree
with the library where both apply, independent answers (a loop, a gather instead of torch.where) pass, and the
chapters' exercise cells are the ones ``python -m medst.book.exercises append`` writes, every code cell
compiling.
"""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from exercise_helpers import define, mistake, reject, solution
from timm.models.vision_transformer import VisionTransformer

from medst.book import exercises as ex
from medst.book.exercises import ch04, ch05, ch06
from medst.losses.local import LocalAlignment, modality_weights
from medst.losses.temporal import VARIANCE_EPS, cycle_consistency_loss, rmr_details, rmr_loss
from medst.models.vision import MoVE

BOOK = Path(__file__).resolve().parents[1] / "book"
MODULES = (ch04, ch05, ch06)
MINE = [e for module in MODULES for e in module.EXERCISES]


# --------------------------------------------------------------------------- every exercise
def test_chapters_4_to_6_have_two_or_three_exercises_of_every_level():
    for module in MODULES:
        assert 2 <= len(module.EXERCISES) <= 3 and ex.EXERCISES[module.CHAPTER] == module.EXERCISES
        numbers = [e.number for e in module.EXERCISES]
        assert numbers == [f"{int(module.CHAPTER[:2])}.{k}" for k in range(1, len(numbers) + 1)]
    assert {e.level for e in MINE} == {"easy", "medium", "hard"}
    for e in MINE:
        assert e.checker.__doc__.startswith(f"Grade exercise {e.number}")
        assert e.solution_code.startswith("import torch") and e.solution[2:4] == e.chapter[:2]
        assert getattr(ex, e.checker.__name__) is e.checker  # exported by medst.book.exercises


# --------------------------------------------------------------------------- the library is refused
def _count_through_move(depth, dim, mlp_ratio=4.0, layer_scale=True):
    vit = VisionTransformer(
        img_size=8, patch_size=8, embed_dim=dim, depth=depth, num_heads=2, mlp_ratio=mlp_ratio, num_classes=0
    )
    return sum(p.numel() for p in MoVE(vit).lateral_experts.parameters())


def _block_through_move(block, lateral_expert, x, mask):
    return MoVE.joint_block(None, 0, x, x.shape[1])  # fails inside the library; what counts is that it was called


def _word_side_through_library(words, patches, weighting, word_mask, patch_mask, temperature=0.1):
    local = LocalAlignment(words.shape[-1], temperature)
    local.word_weighting = weighting
    return local(words, patches, word_mask, patch_mask, return_details=True).loss_word


def _weights_through_library(words, patches, weighting, word_mask, patch_mask, temperature=0.1):
    omega = modality_weights(weighting, F.normalize(words, dim=-1), word_mask)  # a library piece is refused too
    return omega.sum()


def _collapse_through_library(words, patches, weighting, steps=30, lr=5.0, entropy_weight=0.0):
    local = LocalAlignment(words.shape[-1]).to(words.dtype)
    local.word_weighting = weighting
    return torch.stack([local(words, patches, return_details=True).word_weights.max(1).values.mean()] * (steps + 1))


def _cycle_per_sequence(a, b, step_mask, temperature=0.1, variance_lambda=1e-3):
    lengths = step_mask.sum(1).tolist()
    losses = [
        n * cycle_consistency_loss(a[s : s + 1, :n], b[s : s + 1, :n], temperature=temperature)
        for s, n in enumerate(lengths)
    ]
    return sum(losses) / sum(lengths)


LIBRARY = [
    ("4.1 builds a MoVE", ch04.check_move_extra_parameters, _count_through_move),
    ("4.2 calls MoVE.joint_block", ch04.check_routed_block, _block_through_move),
    ("4.3 calls MoVE.joint_block", ch04.check_mixed_batch_block, _block_through_move),
    ("5.1 LocalAlignment", ch05.check_masked_word_side, _word_side_through_library),
    ("5.1 modality_weights", ch05.check_masked_word_side, _weights_through_library),
    ("5.2 LocalAlignment", ch05.check_word_weight_collapse, _collapse_through_library),
    ("6.2 alias of rmr_details", ch06.check_rmr_mse, rmr_details),
    ("6.2 wrapper", ch06.check_rmr_mse, lambda a, b, temperature=0.1: rmr_details(a, b).error.pow(2).mean()),
    ("6.3 cycle_consistency_loss per sequence", ch06.check_masked_cycle, _cycle_per_sequence),
    ("6.3 alias", ch06.check_masked_cycle, rmr_loss),
]


@pytest.mark.parametrize("checker,submission", [c[1:] for c in LIBRARY], ids=[c[0] for c in LIBRARY])
def test_library_submission_is_refused(checker, submission):
    reject(checker, submission, "library's")


# --------------------------------------------------------------------------- 4.1 what MoVE adds
def _count(depth, dim, mlp_ratio=4.0, layer_scale=True, *, attention=False, norm=True, blocks=None):
    hidden = int(dim * mlp_ratio)
    expert = (2 * dim if norm else 0) + dim * hidden + hidden + hidden * dim + dim + (dim if layer_scale else 0)
    shared = 2 * dim + dim * 3 * dim + 3 * dim + dim * dim + dim if attention else 0
    return (expert + shared) * (depth if blocks is None else blocks)


def test_move_extra_parameters():
    assert ch04.check_move_extra_parameters(
        lambda d, w, mlp_ratio=4.0, layer_scale=True: _count(d, w, mlp_ratio, layer_scale)
    )
    assert ch04.check_move_extra_parameters(  # a float or a 0-d tensor is a count too
        lambda d, w, mlp_ratio=4.0, layer_scale=True: torch.tensor(float(_count(d, w, mlp_ratio, layer_scale)))
    )
    count = ex.find_exercise("move-extra-parameters").solution_function()
    assert count(12, 768, 4.0, False) == 56_687_616  # ViT-B/16: about two thirds of its 86 M again
    mistake(
        ch04.check_move_extra_parameters,
        lambda d, w, mlp_ratio=4.0, layer_scale=True: _count(d, w, mlp_ratio, layer_scale, attention=True),
        "the attention is counted too",
    )
    mistake(
        ch04.check_move_extra_parameters,
        lambda d, w, mlp_ratio=4.0, layer_scale=True: _count(d, w, mlp_ratio, layer_scale, norm=False),
        "LayerNorm of the expert",
    )
    mistake(
        ch04.check_move_extra_parameters,
        lambda d, w, mlp_ratio=4.0, layer_scale=True: _count(d, w, mlp_ratio, layer_scale, blocks=1),
        "one lateral expert to every block",
    )
    reject(ch04.check_move_extra_parameters, lambda d, w, mlp_ratio=4.0, layer_scale=True: None, "forget `return`")


# --------------------------------------------------------------------------- 4.2 expert chosen per token
def _routed_gather(block, lateral_expert, x, lateral):
    """An independent answer: each view's tokens gathered per row, run through its expert, scattered back."""
    x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
    out = torch.zeros_like(x)
    for b in range(len(x)):
        side, front = lateral[b].nonzero()[:, 0], (~lateral[b]).nonzero()[:, 0]
        row = out[b].index_add(0, front, block.ls2(block.mlp(block.norm2(x[b, front]))))
        out = out.index_put((torch.tensor([b]),), row.index_add(0, side, lateral_expert(x[b, side]))[None])
    return x + block.drop_path2(out)


def _routed_hand(block, lateral_expert, x, lateral, *, drop=True, by_position=False, two_draws=False):
    dp1, dp2 = (block.drop_path1, block.drop_path2) if drop else (torch.nn.Identity(), torch.nn.Identity())
    x = x + dp1(block.ls1(block.attn(block.norm1(x))))
    if by_position:
        n = int((~lateral).sum(1)[0])
        return x + dp2(torch.cat([block.ls2(block.mlp(block.norm2(x[:, :n]))), lateral_expert(x[:, n:])], 1))
    front, side = block.ls2(block.mlp(block.norm2(x))), lateral_expert(x)
    if two_draws:
        return x + torch.where(lateral[..., None], dp2(side), dp2(front))
    return x + dp2(torch.where(lateral[..., None], side, front))


def test_routed_block():
    assert ch04.check_routed_block(_routed_gather)
    mistake(ch04.check_routed_block, lambda *a: _routed_hand(*a, drop=False), "drop path is missing")
    mistake(ch04.check_routed_block, lambda *a: _routed_hand(*a, by_position=True), "chosen by position")
    mistake(ch04.check_routed_block, lambda *a: _routed_hand(*a, two_draws=True), "each expert's output separately")

    def eval_inside(block, lateral_expert, x, lateral):  # switches off drop path: train mode is still checked
        block.eval()
        return _routed_hand(block, lateral_expert, x, lateral)

    mistake(ch04.check_routed_block, eval_inside, "drop path is missing")


def test_train_mode_cases_keep_some_samples_and_drop_others():
    """Where the checkers run in train mode, drop path drops some samples' branches and keeps others'."""
    for make in (ch04._routed_cases, ch04._mixed_cases):
        settings: dict = {}
        seen = {1: set(), 2: set()}
        for case in make(settings):
            setting = settings[id(case.args[0])]
            if not setting.training:
                continue
            torch.manual_seed(setting.seed)
            batch = case.args[2].shape[0]
            for branch in (1, 2):
                seen[branch] |= set(torch.empty(batch).bernoulli_(1 - ch04.DROP_PATH).tolist())
        assert seen == {1: {0.0, 1.0}, 2: {0.0, 1.0}}, make.__name__


# --------------------------------------------------------------------------- 4.3 a mixed batch in one call
def _mixed_hand(block, lateral_expert, x, has_lateral, *, mask_keys=True, zero=True, drop=True):
    """Attention written out from the block's qkv weights, padding keys at -inf (independent of attn_mask)."""
    n = 1 + (x.shape[1] - 1) // 2
    valid = torch.cat([torch.ones(len(x), n, dtype=torch.bool), has_lateral[:, None].expand(-1, x.shape[1] - n)], 1)
    attn = block.attn
    B, S, D = x.shape
    q, k, v = attn.qkv(block.norm1(x)).reshape(B, S, 3, attn.num_heads, D // attn.num_heads).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-2, -1) * attn.scale
    if mask_keys:
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, S, D)
    dp1, dp2 = (block.drop_path1, block.drop_path2) if drop else (torch.nn.Identity(), torch.nn.Identity())
    x = x + dp1(block.ls1(attn.proj(mixed)))
    x = x + dp2(torch.cat([block.ls2(block.mlp(block.norm2(x[:, :n]))), lateral_expert(x[:, n:])], 1))
    return torch.where(valid[..., None], x, torch.zeros_like(x)) if zero else x


def test_mixed_batch_block():
    assert ch04.check_mixed_batch_block(_mixed_hand)
    mistake(ch04.check_mixed_batch_block, lambda *a: _mixed_hand(*a, mask_keys=False), "still attention keys")
    mistake(ch04.check_mixed_batch_block, lambda *a: _mixed_hand(*a, zero=False), "come out as zeros")

    mistake(ch04.check_mixed_batch_block, lambda *a: _mixed_hand(*a, drop=False), "drop path is missing")

    def replaces_drop_path(block, lateral_expert, x, has_lateral):  # on its copy: the reference keeps drop path
        block.drop_path1 = block.drop_path2 = torch.nn.Identity()
        return _mixed_hand(block, lateral_expert, x, has_lateral)

    mistake(ch04.check_mixed_batch_block, replaces_drop_path, "drop path is missing")


def test_mixed_batch_reference_is_the_library_in_eval_mode():
    """The batched block the train-mode cases compare with equals the library's two groups in eval mode."""
    settings: dict = {}
    for case in ch04._mixed_cases(settings):
        block, expert, x, has_lateral = case.args
        setting = settings[id(block)]
        block.eval()
        batched = ch04._mixed_batched(block, expert, x, has_lateral)
        assert torch.allclose(batched, ch04._mixed_reference(block, expert, x, has_lateral, settings), atol=1e-5)
        for b in range(len(x)):  # and each study equals MoVE on that study alone
            n = 1 + (x.shape[1] - 1) // 2
            alone = setting.move.vit.blocks[setting.index](x[b : b + 1, :n]) if not has_lateral[b] else None
            if alone is not None:
                assert torch.allclose(batched[b, :n], alone[0], atol=1e-5) and not batched[b, n:].any()


# --------------------------------------------------------------------------- 5.1 the word side with padding
def _one_pair(w, p, weighting, tau):
    """The chapter's word side of one pair without padding (tokens [Q, d], [K, d])."""
    a = torch.softmax(w @ p.T / tau, dim=-1)
    c = F.normalize(a @ p, dim=-1)
    e = F.normalize(w * c, dim=-1)
    _, omega = weighting(e.mean(0)[None, None], e[None], e[None])
    m = w @ c.T / tau
    target = torch.arange(len(w))
    rows, cols = F.cross_entropy(m, target, reduction="none"), F.cross_entropy(m.T, target, reduction="none")
    return ((omega[0, 0] * rows).sum() + (omega[0, 0] * cols).sum()) / 2


def _cut_and_loop(words, patches, weighting, word_mask, patch_mask, temperature=0.1):
    """An independent answer: every pair cut to its real tokens, the chapter's one-pair formula, the batch mean."""
    pairs = [
        _one_pair(words[b, word_mask[b]], patches[b, patch_mask[b]], weighting, temperature) for b in range(len(words))
    ]
    return torch.stack(pairs).mean()


def _word_side_hand(words, patches, weighting, word_mask, patch_mask, temperature=0.1, *, words_masked=True, keys=True):
    scores = words @ patches.transpose(1, 2) / temperature
    if keys:
        scores = scores.masked_fill(~patch_mask[:, None], float("-inf"))
    c = F.normalize(scores.softmax(-1) @ patches, dim=-1)
    e = F.normalize(words * c, dim=-1)
    if words_masked:
        keep = word_mask[..., None].float()
        query, padding = (e * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True), ~word_mask
    else:
        query, padding = e.mean(1, keepdim=True), None
    omega = weighting(query, e, e, key_padding_mask=padding)[1][:, 0]
    m = words @ c.transpose(1, 2) / temperature
    if words_masked:
        allowed = (word_mask[:, :, None] & word_mask[:, None, :]) | torch.eye(m.shape[1], dtype=torch.bool)
        m = m.masked_fill(~allowed, float("-inf"))
    rows = -torch.diagonal(m.log_softmax(2), dim1=1, dim2=2)
    cols = -torch.diagonal(m.log_softmax(1), dim1=1, dim2=2)
    return ((omega * rows).sum(1) + (omega * cols).sum(1)).mean() / 2


def test_masked_word_side():
    assert ch05.check_masked_word_side(_cut_and_loop)  # a padded pair is the pair without its padding
    assert ch05.check_masked_word_side(_word_side_hand)
    mistake(ch05.check_masked_word_side, lambda *a, **k: _word_side_hand(*a, **k, words_masked=False), "published")
    mistake(ch05.check_masked_word_side, lambda *a, **k: _word_side_hand(*a, **k, keys=False), "missing lateral")

    def nan_rows(words, patches, weighting, word_mask, patch_mask, temperature=0.1):  # padded rows all -inf
        loss = _word_side_hand(words, patches, weighting, word_mask, patch_mask, temperature)
        return loss + 0 * torch.tensor(float("nan")) if not word_mask.all() else loss

    reject(ch05.check_masked_word_side, nan_rows, "NaN or inf")


# --------------------------------------------------------------------------- 5.2 the collapse, and a remedy
def _collapse_hand(words, patches, weighting, steps=30, lr=5.0, entropy_weight=0.0, *, detach=False, adam=False):
    """An independent answer: the loss written with the chapter's one-pair word side, pair by pair."""
    trained = torch.nn.MultiheadAttention(words.shape[-1], 1, batch_first=True).to(words.dtype)
    trained.load_state_dict(weighting.state_dict())
    opt = (torch.optim.Adam if adam else torch.optim.SGD)(trained.parameters(), lr=lr)
    curve = []
    for step in range(steps + 1):
        e = F.normalize(
            words * F.normalize((words @ patches.transpose(1, 2) / 0.1).softmax(-1) @ patches, dim=-1), dim=-1
        )
        omega = trained(e.mean(1, keepdim=True), e, e)[1][:, 0]
        if detach:
            omega = omega.detach()
        curve.append(omega.max(1).values.mean().item())
        if step == steps:
            break
        loss = torch.stack([_one_pair_weighted(words[b], patches[b], omega[b]) for b in range(len(words))]).mean()
        loss = loss + entropy_weight * (omega * omega.log()).sum(1).mean()
        if loss.requires_grad:
            opt.zero_grad()
            loss.backward()
            opt.step()
    return torch.tensor(curve, dtype=words.dtype)


def _one_pair_weighted(w, p, omega, tau=0.1):
    c = F.normalize(torch.softmax(w @ p.T / tau, dim=-1) @ p, dim=-1)
    m = w @ c.T / tau
    target = torch.arange(len(w))
    return (
        omega * (F.cross_entropy(m, target, reduction="none") + F.cross_entropy(m.T, target, reduction="none"))
    ).sum() / 2


def test_word_weight_collapse():
    assert ch05.check_word_weight_collapse(_collapse_hand)
    mistake(ch05.check_word_weight_collapse, lambda *a, **k: _collapse_hand(*a, **k, detach=True), "is detached")
    reject(ch05.check_word_weight_collapse, lambda *a, **k: _collapse_hand(*a, **k, adam=True), "wrong answer")

    def bonus_added(words, patches, weighting, steps=30, lr=5.0, entropy_weight=0.0):
        return _collapse_hand(words, patches, weighting, steps, lr, -entropy_weight)

    mistake(ch05.check_word_weight_collapse, bonus_added, "wrong sign")

    def from_the_first_step(words, patches, weighting, steps=30, lr=5.0, entropy_weight=0.0):
        return _collapse_hand(words, patches, weighting, steps, lr, entropy_weight)[1:]

    mistake(ch05.check_word_weight_collapse, from_the_first_step, "before the first step")


def test_the_collapse_is_there_and_the_bonus_stops_it():
    """On the check's input the published weights collapse within 30 steps; the entropy bonus holds them."""
    collapse, remedy = ch05._collapse_cases()[:2]
    weighting = collapse.args[2]
    before = [p.clone() for p in weighting.parameters()]
    ch05.check_word_weight_collapse(solution("weight-collapse"))
    assert all(torch.equal(p, q) for p, q in zip(before, weighting.parameters()))  # every call trained a copy

    def curve(case, **options):
        words, patches, attention = case.args
        return ch05._collapse_variant(words, patches, copy.deepcopy(attention), **case.kwargs, **options)

    learned, bonus, detached = curve(collapse), curve(remedy), curve(collapse, detach=True)
    words = collapse.args[0].shape[1]
    assert learned[0] < 1.5 / words and learned[-1] > 0.9
    assert bonus[0] == learned[0] and bonus[-1] < 0.3
    assert torch.equal(detached, torch.full_like(detached, float(learned[0])))  # the book's remedy: flat


# --------------------------------------------------------------------------- 6.1 what a miss costs
def test_miss_costs():
    costs = solution("miss-costs")
    table = costs(5, 2, 0.2)
    others = [k for k in range(5) if k != 2]
    assert torch.allclose(table[others, 1], torch.full((4,), 0.2 / 0.8, dtype=torch.float64), atol=1e-4)
    assert table[0, 0] > table[1, 0] and table[4, 0] > table[3, 0]  # e² grows with the distance
    assert table[0, 2] > table[1, 2]  # and λ log σ²
    assert table[2, 0] == 0 and table[2, 2] < 0  # no leak: only λ log(1e-7) is left

    def loop(L, t, eps, variance_lambda=1e-3, *, divide_by=None, overwrite=False):
        rows = []
        for k in range(L):
            alpha = [0.0] * L
            alpha[t] = 1 - eps
            alpha[k] = eps if overwrite else alpha[k] + eps
            times = [j / (divide_by or L) for j in range(L)]
            mu = sum(a * s for a, s in zip(alpha, times))
            var = sum(a * (s - mu) ** 2 for a, s in zip(alpha, times))
            e2 = (times[t] - mu) ** 2
            rows.append([e2, e2 / (var + VARIANCE_EPS), variance_lambda * torch.log(torch.tensor(var + VARIANCE_EPS))])
        return torch.tensor(rows, dtype=torch.float64)

    assert ch06.check_miss_costs(loop)
    mistake(
        ch06.check_miss_costs,
        lambda L, t, eps, variance_lambda=1e-3: loop(L, t, eps, variance_lambda, divide_by=L - 1),
        "k / (L - 1)",
    )
    mistake(
        ch06.check_miss_costs,
        lambda L, t, eps, variance_lambda=1e-3: loop(L, t, eps, variance_lambda, overwrite=True),
        "must add up",
    )
    mistake(
        ch06.check_miss_costs,
        lambda L, t, eps, variance_lambda=1e-3: loop(L, t, eps),
        "`variance_lambda` argument is ignored",
    )


# --------------------------------------------------------------------------- 6.2 RMR with the plain squared error
def _rmr_mse_loop(a, b, temperature=0.1, *, divide=False, hops=2):
    """An independent answer, one sequence at a time with torch.cdist."""
    losses = []
    for u, v in zip(a, b):
        beta = torch.softmax(-torch.cdist(u, v).pow(2) / temperature, dim=1)
        alpha = torch.softmax(-torch.cdist(beta @ v, u).pow(2) / temperature, dim=1) if hops == 2 else beta
        tau = torch.arange(len(u), dtype=u.dtype) / len(u)
        mu = alpha @ tau
        err = (tau - mu) ** 2
        if divide:
            err = err / ((alpha * (tau[None] - mu[:, None]) ** 2).sum(1) + VARIANCE_EPS)
        losses.append(err.mean())
    return torch.stack(losses).mean()


def test_rmr_mse():
    assert ch06.check_rmr_mse(_rmr_mse_loop)
    mistake(
        ch06.check_rmr_mse, lambda a, b, temperature=0.1: _rmr_mse_loop(a, b, temperature, divide=True), "divided by σ²"
    )
    mistake(ch06.check_rmr_mse, lambda a, b, temperature=0.1: _rmr_mse_loop(a, b, temperature, hops=1), "read from β")
    mistake(ch06.check_rmr_mse, lambda a, b, temperature=0.1: _rmr_mse_loop(b, a, temperature), "b -> a -> b")


def test_rmr_mse_with_a_flipped_sign_fails_at_its_check():
    """What tests/test_exercises.py's notebook test flips in the solution cell: the check says "wrong sign"."""
    exercise = ex.find_exercise("rmr-mse")
    wrong = exercise.solution_code.replace("(sim / temperature)", "(-sim / temperature)")
    assert wrong != exercise.solution_code
    reject(exercise.checker, define(wrong, exercise.function), "Exercise 6.2", "wrong sign")


def test_rmr_mse_grows_with_the_distance_of_a_miss_where_rmr_does_not():
    """The measurement the exercise asks for: a study repeated next to itself or at the far end."""
    g = torch.Generator().manual_seed(0)
    start, drift = torch.randn(64, 1, 32, generator=g), torch.randn(64, 1, 32, generator=g)
    u = F.normalize(start + drift * torch.arange(4)[None, :, None], dim=-1)
    v = F.normalize(u + 0.05 * torch.randn(64, 4, 32, generator=g), dim=-1)
    rmr_mse = solution("rmr-mse")
    near_u, near_v, far_u, far_v = u.clone(), v.clone(), u.clone(), v.clone()
    near_u[:, 1], near_v[:, 1], far_u[:, 3], far_v[:, 3] = u[:, 0], v[:, 0], u[:, 0], v[:, 0]
    assert rmr_mse(far_u, far_v) > 3 * rmr_mse(near_u, near_v)
    assert rmr_loss(far_u, far_v) < rmr_loss(near_u, near_v)


# --------------------------------------------------------------------------- 6.3 sequences of different lengths
def _masked_hand(a, b, step_mask, temperature=0.1, variance_lambda=1e-3, *, own_length=True, reduce="steps", keys=True):
    S, L, _ = a.shape
    hide = ~step_mask[:, None, :] if keys else torch.zeros(S, 1, L, dtype=torch.bool)
    first = (-torch.cdist(a, b).pow(2) / temperature).masked_fill(hide, float("-inf"))
    fmc = F.cross_entropy(first.transpose(1, 2), torch.arange(L).expand(S, L), reduction="none")
    alpha = (-torch.cdist(first.softmax(-1) @ b, a).pow(2) / temperature).masked_fill(hide, float("-inf")).softmax(-1)
    tau = torch.arange(L, dtype=a.dtype) / (step_mask.sum(1, keepdim=True) if own_length else torch.full((S, 1), L))
    mu = (alpha * tau[:, None]).sum(-1)
    var = (alpha * (tau[:, None] - mu[..., None]) ** 2).sum(-1) + VARIANCE_EPS
    loss = torch.where(step_mask, fmc + (tau - mu) ** 2 / var + variance_lambda * var.log(), 0.0)
    if reduce == "sequences":
        return (loss.sum(1) / step_mask.sum(1)).mean()
    return loss.sum() / step_mask.sum()


def test_masked_cycle():
    assert ch06.check_masked_cycle(_masked_hand)
    mistake(ch06.check_masked_cycle, lambda *a, **k: _masked_hand(*a, **k, own_length=False), "padded length L")
    mistake(ch06.check_masked_cycle, lambda *a, **k: _masked_hand(*a, **k, reduce="sequences"), "count once")

    mistake(ch06.check_masked_cycle, lambda *a, **k: _masked_hand(*a, **k, keys=False), "still candidates")


def test_masked_cycle_without_padding_is_the_library():
    a, b, _ = ch06._sequences(0, 3, 4, 8, 0.5, True)
    full = torch.ones(3, 4, dtype=torch.bool)
    assert torch.allclose(solution("masked-cycle")(a, b, full), cycle_consistency_loss(a, b), atol=1e-6)
    for case in ch06._masked_cases():  # the mistake models' default is the reference
        assert torch.allclose(
            ch06._masked_variant(*case.args, **case.kwargs), ch06._masked_reference(*case.args, **case.kwargs)
        )


# --------------------------------------------------------------------------- the chapters' cells
@pytest.mark.parametrize("module", MODULES, ids=[m.CHAPTER for m in MODULES])
def test_chapter_ends_with_its_exercise_cells_and_compiles(module):
    nb = nbformat.read(BOOK / f"{module.CHAPTER}.ipynb", as_version=4)
    written = [c for c in nb.cells if ex.is_exercise_cell(c)]
    expected = ex.exercise_cells(module.CHAPTER)
    assert [c.source for c in written] == [c.source for c in expected]
    assert [c.get("id") for c in written] == [c.id for c in expected]
    assert nb.cells[-len(expected) :] == written  # at the end of the chapter
    for cell in nb.cells:
        if cell.cell_type == "code":
            source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
            compile(source, f"{module.CHAPTER} cell {cell.get('id')}", "exec")
    for cell in written:  # the students' stubs compile too
        stub = cell.metadata.get("medst", {}).get("stub")
        if stub:
            compile(stub, f"{module.CHAPTER} stub", "exec")
