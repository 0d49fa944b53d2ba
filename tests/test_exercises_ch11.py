"""The exercises of chapter 11 (medst/book/exercises/ch11.py: UniMedI) and their checkers.

For both exercises: the solution passes, the stub is "not implemented yet", a submission that is or calls the
library's implementation is refused (for 11.1 any convolution too, whatever it is called through), typical
mistakes written here by hand fail with the hint that names them, and independent right answers (loops) pass.
Beside that: the reference of 11.1 is ``VolumeEmbed`` itself, the tie rule of 11.2 is the one its text states
(and ``torch.topk``'s differs), every mistake model can be told apart on the first input of each check, and the
checks leave torch's global generator as it was.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from exercise_helpers import mistake, reject, solution

from medst.book import exercises as ex
from medst.book.exercises import ch11
from medst.book.exercises.framework import GRADE_LOG_ENV, Check, _mismatch
from medst.eval.volumes import selection_metrics
from medst.neighbours.unimedi import VolumeEmbed, select_slabs, slab_scores

MINE = list(ch11.EXERCISES)


CHECKS = {ch11.check_volume_tokens: ch11._tokens_check, ch11.check_selection_precision: ch11._precision_check}


def _check_of(checker) -> Check:
    """The Check a checker runs (its cases, reference and mistakes)."""
    return CHECKS[checker]()


# --------------------------------------------------------------------------- every exercise
def test_chapter_11_has_two_exercises_of_two_levels():
    assert ex.EXERCISES[ch11.CHAPTER] == ch11.EXERCISES and ch11.CHAPTER == "11_unimedi"
    assert [e.number for e in MINE] == ["11.1", "11.2"]
    assert len({e.level for e in MINE}) == 2
    for e in MINE:
        assert e.checker.__doc__.startswith(f"Grade exercise {e.number}")
        assert e.solution_code.startswith("import torch") and e.solution[2:4] == e.chapter[:2]
        assert ex.find_exercise(e.key) is e
        assert "Method §" not in e.prompt  # a neighbour is cited by its chapter, not by Med-ST's method page
        assert getattr(ex, e.checker.__name__) is e.checker  # exported by medst.book.exercises


@pytest.mark.parametrize("exercise", MINE, ids=[e.key for e in MINE])
def test_the_check_leaves_the_global_generator_as_it_was(exercise):
    state = torch.get_rng_state()
    exercise.checker(exercise.solution_function())
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("checker", [e.checker for e in MINE], ids=[e.key for e in MINE])
def test_every_mistake_model_is_told_apart_on_the_first_input(checker):
    """On the first input each mistake model gives its own answer, none the reference's: whichever the reader
    makes, the first case names it."""
    check = _check_of(checker)
    case = check.cases[0]
    with torch.no_grad():
        outputs = [check.reference(*case.fresh()[0], **case.kwargs)]
        outputs += [wrong(*case.fresh()[0], **case.kwargs) for _, wrong in check.mistakes]
    for i, a in enumerate(outputs):
        for j in range(i):
            assert _mismatch(outputs[j], a) is not None, (j, i)


# --------------------------------------------------------------------------- the library is refused
def _through_volume_embed(volumes, weight, bias, pos_depth, pos_plane, patch):
    """A clever wrapper: the library's tokenizer with the given kernel and tables copied in."""
    rows, columns = pos_plane.shape[0] * patch[1], pos_plane.shape[1] * patch[2]
    embed = VolumeEmbed(weight.shape[0], patch, pos_depth.shape[0] * patch[0], (rows, columns), weight.shape[1])
    with torch.no_grad():
        embed.proj.weight.copy_(weight)
        embed.proj.bias.copy_(bias)
        embed.pos_depth.copy_(pos_depth)
        embed.pos_plane.copy_(pos_plane)
    return embed(volumes)[0]


def _positions(tokens, pos_depth, pos_plane, grid):
    s, h, w = grid
    return tokens + rearrange(pos_depth[:s, None, None] + pos_plane[None, :h, :w], "s h w d -> (s h w) d")


def _through_conv3d(volumes, weight, bias, pos_depth, pos_plane, patch):
    x = F.conv3d(volumes, weight, bias, stride=patch)
    return _positions(rearrange(x, "v d s h w -> v (s h w) d"), pos_depth, pos_plane, x.shape[2:])


def _through_conv3d_module(volumes, weight, bias, pos_depth, pos_plane, patch):
    conv = nn.Conv3d(weight.shape[1], weight.shape[0], patch, stride=patch)
    conv.weight, conv.bias = nn.Parameter(weight), nn.Parameter(bias)
    x = conv(volumes)
    return _positions(rearrange(x, "v d s h w -> v (s h w) d"), pos_depth, pos_plane, x.shape[2:])


def _through_aten_convolution(volumes, weight, bias, pos_depth, pos_plane, patch):
    x = torch.ops.aten.convolution.default(volumes, weight, bias, list(patch), [0] * 3, [1] * 3, False, [0] * 3, 1)
    return _positions(rearrange(x, "v d s h w -> v (s h w) d"), pos_depth, pos_plane, x.shape[2:])


def _conv2d_per_slab(volumes, weight, bias, pos_depth, pos_plane, patch):
    """Folds each slab's slices into channels and runs a 2-D convolution: a convolution all the same."""
    p_d = patch[0]
    x = rearrange(volumes, "v c (s a) h w -> (v s) (c a) h w", a=p_d)
    y = F.conv2d(x, rearrange(weight, "d c a b e -> d (c a) b e"), bias, stride=patch[1:])
    s = volumes.shape[2] // p_d
    return _positions(rearrange(y, "(v s) d h w -> v (s h w) d", s=s), pos_depth, pos_plane, (s, *y.shape[2:]))


def _conv_hidden_in_try(volumes, weight, bias, pos_depth, pos_plane, patch):
    """A convolution inside ``try: ... except Exception``: it is reported, not swallowed."""
    try:
        return _through_conv3d(volumes, weight, bias, pos_depth, pos_plane, patch)
    except Exception:
        return solution("volume-tokens")(volumes, weight, bias, pos_depth, pos_plane, patch)


def _through_select_slabs(scores, truth, k):
    keep = truth.any(dim=1)
    picks = select_slabs(scores[keep, :, None], torch.ones(int(keep.sum()), 1), k)
    return truth[keep].gather(1, picks).double().mean(), truth[keep].double().mean(dim=1).mean()


def _through_slab_scores(scores, truth, k):
    keep = truth.any(dim=1)
    s = slab_scores(scores[keep, :, None], torch.ones(int(keep.sum()), 1))
    picks = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
    return truth[keep].gather(1, picks).double().mean(), truth[keep].double().mean(dim=1).mean()


def _through_selection_metrics(scores, truth, k):
    keep = truth.any(dim=1)
    picks = torch.sort(scores[keep], dim=1, descending=True, stable=True).indices[:, :k]
    metrics = selection_metrics(picks, truth[keep], truth[keep])
    return torch.tensor(metrics["precision@k"]), torch.tensor(metrics["chance"])


LIBRARY = [
    ("11.1 alias of VolumeEmbed", ch11.check_volume_tokens, VolumeEmbed, "library's"),
    ("11.1 builds a VolumeEmbed", ch11.check_volume_tokens, _through_volume_embed, "library's"),
    ("11.2 alias of select_slabs", ch11.check_selection_precision, select_slabs, "library's"),
    ("11.2 calls select_slabs", ch11.check_selection_precision, _through_select_slabs, "library's"),
    ("11.2 calls slab_scores", ch11.check_selection_precision, _through_slab_scores, "library's"),
    ("11.2 calls selection_metrics", ch11.check_selection_precision, _through_selection_metrics, "library's"),
    ("11.1 F.conv3d", ch11.check_volume_tokens, _through_conv3d, "computes a convolution"),
    ("11.1 nn.Conv3d", ch11.check_volume_tokens, _through_conv3d_module, "computes a convolution"),
    ("11.1 aten convolution", ch11.check_volume_tokens, _through_aten_convolution, "computes a convolution"),
    ("11.1 conv2d per slab", ch11.check_volume_tokens, _conv2d_per_slab, "computes a convolution"),
    ("11.1 conv inside try", ch11.check_volume_tokens, _conv_hidden_in_try, "computes a convolution"),
]


@pytest.mark.parametrize("checker,submission,words", [c[1:] for c in LIBRARY], ids=[c[0] for c in LIBRARY])
def test_library_submission_is_refused(checker, submission, words):
    reject(checker, submission, words)


def test_convolution_answers_are_right_but_refused():
    """The refused convolutions compute the right tokens: they are refused for what they call, not their values."""
    check = _check_of(ch11.check_volume_tokens)
    for case in check.cases:
        expected = check.reference(*case.fresh()[0])
        for fn in (_through_conv3d, _through_conv3d_module, _through_aten_convolution, _conv2d_per_slab):
            assert torch.allclose(fn(*case.fresh()[0]), expected, atol=1e-5), fn.__name__


def test_a_refused_convolution_is_logged_as_failed(tmp_path, monkeypatch):
    log = tmp_path / "grades.jsonl"
    monkeypatch.setenv(GRADE_LOG_ENV, str(log))
    reject(ch11.check_volume_tokens, _through_conv3d, "conv3d")
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["number"] == "11.1" and record["status"] == "failed" and "convolution" in record["message"]


# --------------------------------------------------------------------------- 11.1 volume tokens by hand
def _tokens_by_loop(
    volumes,
    weight,
    bias,
    pos_depth,
    pos_plane,
    patch,
    *,
    slab_last=False,
    depth=True,
    plane=True,
    plane_flat=False,
    transposed=False,
    detach=False,
):
    """An independent answer: one patch at a time, each a dot product with the kernel."""
    p_d, p_h, p_w = patch
    s, h, w = volumes.shape[2] // p_d, volumes.shape[3] // p_h, volumes.shape[4] // p_w
    kernel = weight.transpose(-1, -2) if transposed else weight
    tokens = {}
    for a in range(s):
        for i in range(h):
            for j in range(w):
                cube = volumes[:, :, a * p_d : (a + 1) * p_d, i * p_h : (i + 1) * p_h, j * p_w : (j + 1) * p_w]
                token = (cube[:, None] * kernel[None]).flatten(2).sum(-1) + bias  # [V, D_v]
                if depth:
                    token = token + pos_depth[a]
                if plane:
                    token = token + (pos_plane.flatten(0, 1)[i * w + j] if plane_flat else pos_plane[i, j])
                tokens[a, i, j] = token.detach() if detach else token
    keys = sorted(tokens, key=lambda key: (key[1], key[2], key[0]) if slab_last else key)
    return torch.stack([tokens[key] for key in keys], dim=1)


def test_volume_tokens_independent_answer_passes():
    assert ch11.check_volume_tokens(_tokens_by_loop)
    assert ch11.check_volume_tokens(solution("volume-tokens"))


def test_volume_tokens_mistakes_are_named():
    check = ch11.check_volume_tokens
    mistake(check, lambda *a: _tokens_by_loop(*a, slab_last=True), "slabs run fastest")
    mistake(check, lambda *a: _tokens_by_loop(*a, depth=False, plane=False), "no position tables")
    mistake(check, lambda *a: _tokens_by_loop(*a, depth=False), "depth table")
    mistake(check, lambda *a: _tokens_by_loop(*a, plane_flat=True), "top-left block")
    mistake(check, lambda *a: _tokens_by_loop(*a, transposed=True), "transposed in-plane")


def test_volume_tokens_cut_from_the_graph_get_the_gradient_hint():
    reject(ch11.check_volume_tokens, lambda *a: _tokens_by_loop(*a, detach=True), "carries no gradient")


def test_volume_tokens_reference_is_volume_embed():
    """The check's reference is VolumeEmbed as a module, its parameters set to the case's kernel and tables."""
    check = _check_of(ch11.check_volume_tokens)
    for case in check.cases:
        with torch.no_grad():
            direct = _through_volume_embed(*case.fresh()[0])
        assert torch.equal(check.reference(*case.fresh()[0]), direct)


def test_token_cases_hold_what_their_labels_say():
    cases = _check_of(ch11.check_volume_tokens).cases
    smaller, non_square, channels, single, patches = False, False, set(), False, set()
    for case in cases:
        volumes, weight, _, pos_depth, pos_plane, patch = case.args
        s, h, w = (n // p for n, p in zip(volumes.shape[2:], patch))
        smaller |= s < pos_depth.shape[0] and (h, w) != tuple(pos_plane.shape[:2])
        non_square |= h != w
        channels.add(volumes.shape[1])
        single |= s == 1
        patches.add(patch)
        assert case.grad == (0, 1, 2, 3, 4) and f"patch={patch}" in case.label
    assert smaller and non_square and single and channels == {1, 2} and len(patches) >= 4
    assert any(p[1] != p[2] for p in patches) and any(p[1] == p[2] for p in patches)
    volumes, _, _, pos_depth, pos_plane, patch = cases[0].args  # the first case tells every mistake apart
    assert volumes.shape[4] // patch[2] < pos_plane.shape[1] and patch[1] == patch[2]


# --------------------------------------------------------------------------- 11.2 did the report pick the right slices?
def _precision_by_loop(scores, truth, k, *, lowest=False, use_topk=False, keep_empty=False, pooled_chance=False):
    """An independent answer: volume by volume, the slabs sorted by (score, index)."""
    shares, hits = [], []
    for row, true in zip(scores.tolist(), truth.tolist()):
        if not any(true) and not keep_empty:
            continue
        if use_topk:
            picks = torch.tensor(row).topk(k, largest=not lowest).indices.tolist()
        else:
            picks = sorted(range(len(row)), key=lambda s: (row[s] if lowest else -row[s], s))[:k]
        hits += [true[s] for s in picks]
        shares.append(sum(true) / len(true))
    chance = truth.double().mean() if pooled_chance else torch.tensor(shares, dtype=torch.float64).mean()
    return torch.tensor(sum(hits) / len(hits), dtype=torch.float64), chance


def test_selection_precision_independent_answer_passes():
    assert ch11.check_selection_precision(_precision_by_loop)
    assert ch11.check_selection_precision(solution("selection-precision"))


def test_selection_precision_mistakes_are_named():
    check = ch11.check_selection_precision
    mistake(check, lambda s, t, k: _precision_by_loop(s, t, k, lowest=True), "k lowest scores")
    mistake(check, lambda s, t, k: _precision_by_loop(s, t, k, use_topk=True), "torch.topk's order")
    mistake(check, lambda s, t, k: _precision_by_loop(s, t, k, keep_empty=True), "volumes without a true slab are kept")
    mistake(check, lambda s, t, k: _precision_by_loop(s, t, k, pooled_chance=True), "chance level is pooled")
    mistake(check, lambda s, t, k: _precision_by_loop(s, t, 1), "`k` argument is ignored")


def test_the_tie_rule_is_what_the_text_says():
    """Equal scores: the lower slab index first, as a stable descending sort; torch.topk's order is another one (the
    text's example: 8 equal scores on CPU give slabs 6 and 5 for k = 2), so the first case tells them apart."""
    equal = torch.full((1, 8), 0.4)
    assert ch11._picks(equal, 2).tolist() == [[0, 1]]
    assert equal.topk(2, dim=1).indices.tolist() == [[6, 5]]
    assert "slabs 6 and 5" in ch11.SELECTION_PRECISION
    for case in _check_of(ch11.check_selection_precision).cases:
        scores, k = case.args[0], case.kwargs["k"]
        stable = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        assert torch.equal(ch11._picks(scores, k), stable)
    scores = _check_of(ch11.check_selection_precision).cases[0].args[0]
    assert not torch.equal(ch11._picks(scores, 2), scores.topk(2, dim=1).indices)


def test_precision_cases_hold_what_their_labels_say():
    cases = _check_of(ch11.check_selection_precision).cases
    ks = {(c.kwargs["k"], c.args[0].shape[1]) for c in cases}
    assert any(k == 1 for k, _ in ks) and any(k == s for k, s in ks)
    assert all(c.args[1].any() for c in cases)  # at least one volume with a finding: the numbers are defined
    assert sum(bool((~c.args[1].any(dim=1)).any()) for c in cases) >= 3  # volumes without a finding
    assert all(c.args[1].dtype == torch.bool for c in cases)
    tied = [c for c in cases if (c.args[0][:, None] == c.args[0][:, :, None]).sum() > c.args[0].numel()]
    assert len(tied) >= 3
    scores, truth = cases[0].args
    assert (scores[1] == scores[1, 0]).all() and not truth[2].any()
