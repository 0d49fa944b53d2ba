"""The exercises of chapter 10 (medst/book/exercises/ch10.py: MPMA) and their checkers.

For both exercises: the solution passes, the stub is "not implemented yet", a submission that is or calls the
library's implementation is refused, typical mistakes written here by hand fail with the hint that names them,
and independent right answers (loops, another way of drawing) pass. Beside that: the reference of 10.1 is the
library's ``random_token_mask`` where every token is a word, the checks leave torch's global generator as it was,
the solution of 10.2 never reads a kept patch, and the chapter ends with its exercise cells, every code cell
compiling.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch
from einops import rearrange
from exercise_helpers import mistake, reject, solution

from medst.book import exercises as ex
from medst.book.exercises import ch10
from medst.neighbours.mpma import (
    masked_count,
    masked_patch_loss,
    normalise_patches,
    patchify,
    random_patch_mask,
    random_token_mask,
)

BOOK = Path(__file__).resolve().parents[1] / "book"
MINE = list(ch10.EXERCISES)


# --------------------------------------------------------------------------- every exercise
def test_chapter_10_has_two_exercises_of_two_levels():
    assert ex.EXERCISES[ch10.CHAPTER] == ch10.EXERCISES and ch10.CHAPTER == "10_mpma"
    assert [e.number for e in MINE] == ["10.1", "10.2"]
    assert len({e.level for e in MINE}) == 2
    for e in MINE:
        assert e.checker.__doc__.startswith(f"Grade exercise {e.number}")
        assert e.solution_code.startswith("import torch") and e.solution[2:4] == e.chapter[:2]
        assert ex.find_exercise(e.key) is e
        assert "Method §" not in e.prompt  # a neighbour is cited by its chapter, not by Med-ST's method page


@pytest.mark.parametrize("exercise", MINE, ids=[e.key for e in MINE])
def test_the_check_leaves_the_global_generator_as_it_was(exercise):
    state = torch.get_rng_state()
    exercise.checker(exercise.solution_function())
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------- the library is refused
def _through_random_token_mask(input_ids, attention_mask, word_start, special_ids, ratio, generator=None):
    """A clever whole-word mask: the library draws among the first pieces, the rest is spread to the words."""
    firsts = attention_mask.bool() & word_start.bool()
    drawn = random_token_mask(input_ids, firsts.long(), special_ids, ratio, generator=generator)
    word = (firsts & ~torch.isin(input_ids, special_ids)).cumsum(1)
    chosen = torch.zeros(word.shape[0], word.shape[1] + 1, dtype=torch.bool).scatter(1, word * drawn, drawn)
    return attention_mask.bool() & ~torch.isin(input_ids, special_ids) & chosen.gather(1, word)


def _through_masked_count(input_ids, attention_mask, word_start, special_ids, ratio, generator=None):
    mask = torch.zeros(input_ids.shape, dtype=torch.bool)
    for b in range(len(input_ids)):
        n = int((attention_mask[b].bool() & word_start[b] & ~torch.isin(input_ids[b], special_ids)).sum())
        mask[b, : min(max(1, masked_count(n, ratio)), n)] = True
    return mask


def _through_patch_mask(input_ids, attention_mask, word_start, special_ids, ratio, generator=None):
    return random_patch_mask(len(input_ids), input_ids.shape[1], 0.5, generator=generator)


def _through_patchify(pred, images, mask, patch, norm_pix=True):
    target = patchify(images, patch)
    per_patch = (pred - target).pow(2).mean(-1)
    return torch.where(mask, per_patch, 0.0).sum() / mask.sum().clamp_min(1)


def _through_normalise(pred, images, mask, patch, norm_pix=True):
    target = rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch, q=patch)
    target = normalise_patches(target) if norm_pix else target
    return torch.where(mask, (pred - target).pow(2).mean(-1), 0.0).sum() / mask.sum().clamp_min(1)


LIBRARY = [
    ("10.1 alias of random_token_mask", ch10.check_whole_word_mask, random_token_mask),
    ("10.1 calls random_token_mask", ch10.check_whole_word_mask, _through_random_token_mask),
    ("10.1 calls masked_count", ch10.check_whole_word_mask, _through_masked_count),
    ("10.1 calls random_patch_mask", ch10.check_whole_word_mask, _through_patch_mask),
    ("10.2 alias of masked_patch_loss", ch10.check_masked_pixel_loss, masked_patch_loss),
    (
        "10.2 wrapper",
        ch10.check_masked_pixel_loss,
        lambda pred, images, mask, patch, norm_pix=True: masked_patch_loss(pred, images, mask, patch=patch),
    ),
    ("10.2 calls patchify", ch10.check_masked_pixel_loss, _through_patchify),
    ("10.2 calls normalise_patches", ch10.check_masked_pixel_loss, _through_normalise),
]


@pytest.mark.parametrize("checker,submission", [c[1:] for c in LIBRARY], ids=[c[0] for c in LIBRARY])
def test_library_submission_is_refused(checker, submission):
    reject(checker, submission, "library's")


# --------------------------------------------------------------------------- 10.1 whole-word masking
def _words_by_loop(
    input_ids,
    attention_mask,
    word_start,
    special_ids,
    ratio,
    generator=None,
    *,
    rounding="up",
    whole=True,
    use_generator=True,
    padding_by_id=False,
):
    """An independent answer: per report, a list of words (lists of positions), a random permutation of them."""
    special = set(special_ids.tolist())
    mask = torch.zeros(input_ids.shape, dtype=torch.bool)
    for b in range(input_ids.shape[0]):
        words: list[list[int]] = []
        for t in range(input_ids.shape[1]):
            real = padding_by_id or bool(attention_mask[b, t])
            if not real or int(input_ids[b, t]) in special:
                continue
            if word_start[b, t] or not words:
                words.append([t])
            else:
                words[-1].append(t)
        n = len(words)
        if n == 0:
            continue
        count = {"up": int(n * ratio + 0.5), "even": round(n * ratio)}[rounding]
        k = min(max(1, count), n)
        order = torch.randperm(n, generator=generator if use_generator else None)
        for w in order[:k].tolist():
            for t in words[w] if whole else words[w][:1]:
                mask[b, t] = True
    return mask


def _pieces_like_the_chapter(input_ids, attention_mask, word_start, special_ids, ratio, generator=None):
    """The chapter's mask_tokens_by_hand: 15 % of the ordinary pieces, not of the words."""
    noise = torch.rand(input_ids.shape, generator=generator)
    mask = torch.zeros(input_ids.shape, dtype=torch.bool)
    for i in range(input_ids.shape[0]):
        ordinary = [
            t
            for t in range(input_ids.shape[1])
            if attention_mask[i, t] and int(input_ids[i, t]) not in special_ids.tolist()
        ]
        k = min(max(1, int(len(ordinary) * ratio + 0.5)), len(ordinary))
        for t in sorted(ordinary, key=lambda t: noise[i, t].item())[:k]:
            mask[i, t] = True
    return mask


def test_whole_word_mask_independent_answers_pass():
    assert ch10.check_whole_word_mask(_words_by_loop)  # another draw (randperm over words) passes the statistics
    assert ch10.check_whole_word_mask(solution("whole-word-mask"))


def test_whole_word_mask_mistakes_are_named():
    mistake(ch10.check_whole_word_mask, _pieces_like_the_chapter, "masks word pieces")
    mistake(ch10.check_whole_word_mask, lambda *a, **k: _words_by_loop(*a, **k, whole=False), "only the first piece")
    mistake(ch10.check_whole_word_mask, lambda *a, **k: _words_by_loop(*a, **k, rounding="even"), "halves to even")
    mistake(
        ch10.check_whole_word_mask, lambda *a, **k: _words_by_loop(*a, **k, use_generator=False), "ignores `generator`"
    )
    mistake(ch10.check_whole_word_mask, lambda *a, **k: _words_by_loop(*a, **k, padding_by_id=True), "attention_mask 0")


def test_whole_word_mask_that_is_not_a_bool_mask_is_told_so():
    reject(
        ch10.check_whole_word_mask,
        lambda *a, **k: _words_by_loop(*a, **k).long(),
        "must return a bool tensor",
    )


def test_whole_word_reference_is_random_token_mask_when_every_token_is_a_word():
    """Where every piece is a word, whole-word masking is token masking: the same mask, draw for draw."""
    for case in ch10._word_cases():
        ids, attention, _, special = case.args
        every = torch.ones_like(ids, dtype=torch.bool)
        for seed in range(5):
            ours = ch10._word_variant(
                ids, attention, every, special, generator=torch.Generator().manual_seed(seed), **case.kwargs
            )
            theirs = random_token_mask(
                ids, attention, special, generator=torch.Generator().manual_seed(seed), **case.kwargs
            )
            assert torch.equal(ours, theirs)


def test_whole_word_cases_hold_what_their_labels_say():
    cases = ch10._word_cases()
    assert {c.kwargs["ratio"] for c in cases} >= {0.15, 0.5, 1.0}
    for case in cases:
        ids, attention, start, special = case.args
        ordinary = attention.bool() & ~torch.isin(ids, special)
        assert (attention == 0).any()  # padding in every case
        assert not (ordinary[:, 1:] & ~start[:, 1:] & ~ordinary[:, :-1]).any()  # a "##" piece follows its word
        assert f"ratio={case.kwargs['ratio']}" in case.label
    words = [(c.args[1].bool() & c.args[2] & ~torch.isin(c.args[0], c.args[3])).sum(1).tolist() for c in cases]
    assert [0] in [sorted(w)[:1] for w in words] and any(1 in w for w in words)  # an empty and a one-word report
    assert any((c.args[0] == ch10.UNK).any() for c in cases)
    with_ids = [c for c in cases if "holds ordinary ids" in c.label]
    assert len(with_ids) == 1
    ids, attention = with_ids[0].args[:2]
    assert (ids[1][attention[1] == 0] >= 1000).all() and (attention[1] == 0).any()  # report 1's padding: ids
    first = cases[0]  # the first case tells a draw over pieces from a draw over words whatever else is right
    ordinary, _, word = ch10._words(*first.args)
    assert first.kwargs["ratio"] * 4 == 1 and (word[0][ordinary[0]] == 4).sum() == 7  # 1 of 4 words; one of 7 pieces


# --------------------------------------------------------------------------- 10.2 the pixel loss for any mask
def _pixels_by_loop(pred, images, mask, patch, norm_pix=True, *, per_image=False, unbiased=False, channels_first=False):
    """An independent answer in the chapter's style: one patch at a time."""
    _, _, height, width = images.shape
    gw = width // patch
    totals, counts = [], []
    for i in range(images.shape[0]):
        total, count = pred[i, :0].sum(), 0  # 0, in the graph of pred (as the library's)
        for n in range(mask.shape[1]):
            if not mask[i, n]:
                continue
            r, c = divmod(n, gw)
            x = images[i, :, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]
            x = x.reshape(-1) if channels_first else x.permute(1, 2, 0).reshape(-1)
            if norm_pix:
                x = (x - x.mean()) / (x.var(unbiased=unbiased) + 1e-6).sqrt()
            total, count = total + ((pred[i, n] - x) ** 2).mean(), count + 1
        totals.append(total)
        counts.append(count)
    if per_image:
        return torch.stack([t / c for t, c in zip(totals, counts)]).mean()
    return torch.stack(totals).sum() / max(1, sum(counts))


def test_masked_pixel_loss_independent_answer_passes():
    assert ch10.check_masked_pixel_loss(_pixels_by_loop)


def test_masked_pixel_loss_mistakes_are_named():
    mistake(ch10.check_masked_pixel_loss, lambda *a, **k: _pixels_by_loop(*a, **k, per_image=True), "each image's mean")
    mistake(ch10.check_masked_pixel_loss, lambda *a, **k: _pixels_by_loop(*a, **k, unbiased=True), "unbiased")
    mistake(
        ch10.check_masked_pixel_loss, lambda *a, **k: _pixels_by_loop(*a, **k, channels_first=True), "channel first"
    )


def _vectorised(pred, images, mask, patch, norm_pix=True, *, multiply=False, eps=1e-6, clamp=True):
    target = rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch, q=patch)
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True, unbiased=False) + eps).sqrt()
    per_patch = (pred - target).pow(2).mean(-1)
    kept = per_patch * mask if multiply else torch.where(mask, per_patch, 0.0)
    return kept.sum() / (mask.sum().clamp_min(1) if clamp else mask.sum())


def test_masked_pixel_loss_nan_and_zero_mistakes_get_the_hint():
    """Mistakes that give NaN cannot be matched to a model (NaN equals nothing): the hint says where to look."""
    assert ch10.check_masked_pixel_loss(_vectorised)
    reject(ch10.check_masked_pixel_loss, lambda *a, **k: _vectorised(*a, **k, multiply=True), "NaN", "torch.where")
    reject(ch10.check_masked_pixel_loss, lambda *a, **k: _vectorised(*a, **k, eps=0.0), "flat patch", "1e-6")
    reject(ch10.check_masked_pixel_loss, lambda *a, **k: _vectorised(*a, **k, clamp=False), "at least 1")


def test_masked_pixel_loss_solution_never_reads_a_kept_patch():
    """Changing the predictions at kept patches (to anything, NaN too) changes nothing; the value is the library's."""
    loss = solution("masked-pixel-loss")
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 8, 12, generator=g)
    mask = torch.rand(3, 6, generator=g) < 0.5
    mask[0] = False
    pred = torch.randn(3, 6, 48, generator=g)
    value = loss(pred, images, mask, 4)
    assert torch.allclose(value, masked_patch_loss(pred, images, mask, patch=4), atol=1e-6)
    for fill in (0.0, 1e6, float("nan")):
        changed = torch.where(mask[..., None], pred, torch.full_like(pred, fill))
        assert torch.equal(loss(changed, images, mask, 4), value)
    zero = loss(pred, images, torch.zeros_like(mask), 4)
    assert zero == 0 and torch.isfinite(zero)


def test_pixel_cases_hold_what_their_labels_say():
    cases = ch10._pixel_cases()
    counts = [c.args[2].sum(1).tolist() for c in cases]
    assert any(len(set(c)) > 1 for c in counts) and any(0 in c for c in counts) and [0, 0] in counts
    assert {c.args[1].shape[1] for c in cases} == {1, 3}
    assert any(c.args[1].shape[2] != c.args[1].shape[3] for c in cases)
    flat = patchify(cases[1].args[1], 4)[0][cases[1].args[2][0]]
    assert (flat.var(-1) == 0).any()  # a flat removed patch
    assert any(c.args[0].isnan().any() and not c.grad for c in cases)  # NaN predictions, values only


# --------------------------------------------------------------------------- the chapter's cells
def test_chapter_ends_with_its_exercise_cells_and_compiles():
    nb = nbformat.read(BOOK / f"{ch10.CHAPTER}.ipynb", as_version=4)
    nbformat.validate(nb)
    written = [c for c in nb.cells if ex.is_exercise_cell(c)]
    expected = ex.exercise_cells(ch10.CHAPTER)
    assert [c.source for c in written] == [c.source for c in expected]
    assert [c.get("id") for c in written] == [c.id for c in expected]
    assert [c.metadata for c in written] == [c.metadata for c in expected]  # nbgrader's metadata, tags, stubs
    assert nb.cells[-len(expected) :] == written  # at the end of the chapter
    assert len({c.get("id") for c in nb.cells}) == len(nb.cells)
    headings = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()]
    assert headings.count("## Exercises") == 1 and not any("no graded exercises" in h for h in headings)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None  # stored without outputs
            source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
            compile(source, f"{ch10.CHAPTER} cell {cell.get('id')}", "exec")
    for cell in written:  # the students' stubs compile too
        stub = cell.metadata.get("medst", {}).get("stub")
        if stub:
            compile(stub, f"{ch10.CHAPTER} stub", "exec")
