"""The exercises of chapters 1-3 (medst/book/exercises/ch01.py, ch02.py, ch03.py) and their checkers.

For every exercise: the solution passes, the stub is "not implemented yet", a submission that is or calls the
library's implementation is refused, and typical mistakes written here by hand fail with the hint that names
them. Beside that, the references are checked against the library where it runs end to end: the sequence rule
against ``medst prepare`` on a written MIMIC-CXR-JPG tree, the token counts against a running MoVE, the lowest
global loss against gradient descent on ``global_alignment_loss``. The chapters' exercise cells are the ones
``python -m medst.book.exercises append`` writes, and every code cell of those chapters compiles.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from exercise_helpers import mistake, reject, solution
from PIL import Image

from medst.book import exercises as ex
from medst.book.exercises import ch01, ch02, ch03
from medst.data.dicom import dicom_to_float, read_dicom
from medst.data.mimic import prepare, sliding_windows
from medst.losses.contrastive import global_alignment_loss
from medst.models.heads import LocalHead
from medst.models.norm import batch_norm_rows
from medst.models.text import merge_word_pieces
from medst.models.vision import MoVE

BOOK = Path(__file__).resolve().parents[1] / "book"
MODULES = (ch01, ch02, ch03)
MINE = [e for module in MODULES for e in module.EXERCISES]


# --------------------------------------------------------------------------- every exercise
def test_chapters_1_to_3_have_two_or_three_exercises_of_every_level():
    for module in MODULES:
        assert 2 <= len(module.EXERCISES) <= 3 and ex.EXERCISES[module.CHAPTER] == module.EXERCISES
        numbers = [e.number for e in module.EXERCISES]
        assert numbers == [f"{int(module.CHAPTER[:2])}.{k}" for k in range(1, len(numbers) + 1)]
    assert {e.level for e in MINE} == {"easy", "medium", "hard"}
    for e in MINE:
        assert e.checker.__doc__.startswith(f"Grade exercise {e.number}")
        assert e.solution_code.startswith("import torch") and e.solution[2:4] == e.chapter[:2]
        assert getattr(ex, e.checker.__name__) is e.checker  # exported by medst.book.exercises


# --------------------------------------------------------------------------- 1.1 DICOM grey levels
def _dicom_by_hand(stored, bits_stored, slope=1.0, intercept=0.0, center=None, width=None, monochrome1=False, **how):
    x = stored.double()
    values = x * slope + intercept if how.get("rescale", True) else x
    if center is None:
        ends = torch.tensor([0.0, 2.0**bits_stored - 1]) * slope + intercept
        grey = (values - ends.min()) / (ends.max() - ends.min())
    elif how.get("textbook"):
        grey = torch.clamp((values - center + width / 2) / width, 0, 1)
    else:
        grey = torch.clamp((values - center + 0.5) / (width - 1) + 0.5, 0, 1)
    return 1 - grey if monochrome1 and how.get("invert", True) else grey


def test_dicom_grey_by_hand_and_on_a_written_file(tmp_path):
    assert ch01.check_dicom_grey(_dicom_by_hand)
    # the in-memory dataset of the checker reads as the same file does through read_dicom
    stored = torch.randint(0, 4096, (6, 5), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    ds = ch01._dicom_dataset(stored, 12, 1.0, -1024.0, 40.0, 400.0, True)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    assert np.array_equal(read_dicom(tmp_path / "x.dcm"), dicom_to_float(ds))
    answer = solution("dicom-grey")(stored, 12, 1.0, -1024.0, 40.0, 400.0, True)
    assert torch.allclose(answer, torch.from_numpy(read_dicom(tmp_path / "x.dcm")), atol=1e-6)
    white = solution("dicom-grey")(torch.tensor([[0, 864, 865, 1263, 1264]]), 12, 1.0, -1024.0, 40.0, 400.0, True)
    assert white[0, :2].tolist() == [1.0, 1.0] and 0 < white[0, 2] < 1 and white[0, 4] == 0.0  # the prediction


def test_dicom_grey_mistakes():
    mistake(ch01.check_dicom_grey, lambda *a, **k: _dicom_by_hand(*a, **k, invert=False), "MONOCHROME1 is not inverted")
    mistake(ch01.check_dicom_grey, lambda *a, **k: _dicom_by_hand(*a, **k, textbook=True), "DICOM's LINEAR window")
    mistake(ch01.check_dicom_grey, lambda *a, **k: _dicom_by_hand(*a, **k, rescale=False), "rescale them first")


def test_dicom_grey_library_is_refused():
    def through_library(stored, bits_stored, slope=1.0, intercept=0.0, center=None, width=None, monochrome1=False):
        ds = ch01._dicom_dataset(stored, bits_stored, slope, intercept, center, width, monochrome1)
        return torch.from_numpy(dicom_to_float(ds))

    reject(ch01.check_dicom_grey, through_library, "library's", "dicom_to_float")
    reject(ch01.check_dicom_grey, dicom_to_float, "library's")


# --------------------------------------------------------------------------- 1.2 sequence windows
def _windows_by_hand(meta, length=4, max_gap_days=None, *, by="time", lateral_only=False, ge=False):
    """A plain-Python version: dicts and datetimes, with switchable mistakes."""
    studies: dict = {}
    for r in meta.itertuples():
        t = float(r.StudyTime)
        when = datetime.strptime(str(r.StudyDate), "%Y%m%d") + timedelta(
            hours=int(t // 10000), minutes=int(t // 100 % 100), seconds=t % 100
        )
        s = studies.setdefault((r.subject_id, r.study_id), {"when": when, "frontal": False})
        s["when"] = min(s["when"], when)
        s["frontal"] |= r.ViewPosition in ("PA", "AP")
    usable = sorted(
        (subject, {"time": s["when"], "date": s["when"].date()}.get(by, 0), study)
        for (subject, study), s in studies.items()
        if s["frontal"] or lateral_only
    )
    out, run = [], []
    for k, (subject, _, study) in enumerate(usable):
        if k:
            gap = studies[(subject, study)]["when"] - studies[(usable[k - 1][0], usable[k - 1][2])]["when"]
            limit = None if max_gap_days is None else timedelta(days=max_gap_days)
            too_far = limit is not None and (gap >= limit if ge else gap > limit)
            if subject != usable[k - 1][0] or too_far:
                run = []
        run.append(study)
        if len(run) >= length:
            out.append(run[-length:])
    return torch.tensor(out, dtype=torch.long).reshape(-1, length)


def test_sequence_windows_by_hand():
    assert ch01.check_sequence_windows(_windows_by_hand)


def test_sequence_windows_mistakes():
    mistake(
        ch01.check_sequence_windows,
        lambda m, length=4, max_gap_days=None: _windows_by_hand(m, length, max_gap_days, by="study_id"),
        "study ids are random",
    )
    mistake(
        ch01.check_sequence_windows,
        lambda m, length=4, max_gap_days=None: _windows_by_hand(m, length, max_gap_days, lateral_only=True),
        "without a frontal",
    )
    mistake(
        ch01.check_sequence_windows,
        lambda m, length=4, max_gap_days=None: _windows_by_hand(m, length, max_gap_days, ge=True),
        "a gap of exactly max_gap_days is cut",
    )
    mistake(
        ch01.check_sequence_windows,
        lambda m, length=4, max_gap_days=None: _windows_by_hand(m, length, None),
        "`max_gap_days` argument is ignored",
    )
    mistake(
        ch01.check_sequence_windows,
        lambda m, length=4, max_gap_days=None: _windows_by_hand(m, length, max_gap_days, by="date"),
        "ordered by StudyDate only",
    )


def test_sequence_windows_study_ids_are_compared_exactly():
    """Study ids one apart are told apart (the checker's tables keep them below 10,000 for the tolerance)."""

    def one_off(meta, length=4, max_gap_days=None):
        windows = _windows_by_hand(meta, length, max_gap_days)
        return windows + (torch.arange(windows.numel()).view_as(windows) == 0)

    reject(ch01.check_sequence_windows, one_off, "differs", "max abs error: 1")


def test_sequence_windows_library_is_refused():
    def through_sliding_windows(meta, length=4, max_gap_days=None):
        first = meta.sort_values(["subject_id", "study_id"]).drop_duplicates("study_id")
        rows = sliding_windows(first.subject_id.tolist(), length)
        return torch.tensor([[first.study_id.iloc[i] for i in w] for w in rows]).reshape(-1, length)

    reject(ch01.check_sequence_windows, through_sliding_windows, "library's", "sliding_windows")


def _write_mimic_tree(root: Path, meta: pd.DataFrame) -> None:
    """A MIMIC-CXR-JPG tree for ``meta``: one small JPEG per row, a report per study, everything in train."""
    for r in meta.itertuples():
        s = str(r.subject_id)
        image = root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{r.study_id}" / f"{r.dicom_id}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 12), 90, np.uint8)).save(image)
        report = root / "mimic-cxr-reports" / "files" / f"p{s[:2]}" / f"p{s}" / f"s{r.study_id}.txt"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text("FINDINGS: the lungs are clear.\n\nIMPRESSION: no acute process.\n")
    meta.to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False)
    meta.assign(split="train")[["dicom_id", "study_id", "subject_id", "split"]].to_csv(
        root / "mimic-cxr-2.0.0-split.csv", index=False
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_sequence_rule_is_medst_prepare(tmp_path, seed):
    """Without a gap limit, the exercise's rule gives exactly the sequences.csv of ``medst prepare``."""
    meta = ch01._random_table(seed, 8)
    _write_mimic_tree(tmp_path / "mimic", meta)
    prepare(tmp_path / "mimic", tmp_path / "out", cache_size=0, workers=1, progress=False)
    written = pd.read_csv(tmp_path / "out" / "sequences.csv")
    expected = [list(map(int, ids.split(";"))) for ids in written.study_ids]
    assert expected, "the table should give some sequences"
    assert ch01._windows_reference(meta, 4).tolist() == expected
    assert solution("sequence-windows")(meta, 4).tolist() == expected


# --------------------------------------------------------------------------- 2.1 tokens of the image tower
def _tokens_by_hand(image_size, patch_size, has_lateral, *, cls=1, fake=True, per_study=True):
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    n = (h // patch_size) * (w // patch_size)
    lengths = [cls + n + (n if lateral else 0) for lateral in has_lateral.tolist()]
    published = [cls + 2 * n if fake else length for length in lengths]
    if per_study:
        return sum(lengths), sum(published), sum(k * k for k in lengths), sum(k * k for k in published)
    return sum(lengths), sum(published), sum(lengths) ** 2, sum(published) ** 2


def test_move_tokens_by_hand_and_mistakes():
    assert ch02.check_move_tokens(_tokens_by_hand)  # plain ints are accepted
    mistake(ch02.check_move_tokens, lambda *a: _tokens_by_hand(*a, cls=0), "[CLS] token is missing")
    mistake(ch02.check_move_tokens, lambda *a: _tokens_by_hand(*a, fake=False), "a zero image stands in")
    mistake(ch02.check_move_tokens, lambda *a: _tokens_by_hand(*a, per_study=False), "whole batch were one sequence")
    reject(ch02.check_move_tokens, lambda *a: _tokens_by_hand(*a)[:2], "expected a tuple of 4 values")


def test_move_tokens_library_is_refused():
    def through_move(image_size, patch_size, has_lateral):
        MoVE(None)  # fails inside the library's constructor; what is reported is that it was called

    reject(ch02.check_move_tokens, through_move, "library's", "MoVE")


def test_move_tokens_count_what_move_runs(monkeypatch):
    """The formula against a running MoVE: the tokens and attention pairs of its block calls."""
    from timm.models.vision_transformer import VisionTransformer

    seen: list[tuple[int, int]] = []
    run = MoVE._run

    def counting(self, x, joint, capture=None):
        seen.append(tuple(x.shape[:2]))
        return run(self, x, joint, capture)

    monkeypatch.setattr(MoVE, "_run", counting)
    torch.manual_seed(0)
    move = MoVE(VisionTransformer(img_size=(32, 24), patch_size=8, embed_dim=8, depth=1, num_heads=1, num_classes=0))
    move_tokens = solution("move-tokens")
    for flags in ([True, False, True], [False, False], [True]):
        has_lateral = torch.tensor(flags)
        frontal = torch.randn(len(flags), 3, 32, 24)
        lateral = torch.randn(int(has_lateral.sum()), 3, 32, 24)
        seen.clear()
        with torch.no_grad():
            move(frontal, lateral if has_lateral.any() else None, has_lateral)
        tokens = sum(n * s for n, s in seen)
        pairs = sum(n * s * s for n, s in seen)
        ours, _, ours_pairs, _ = move_tokens((32, 24), 8, has_lateral)
        assert (int(ours), int(ours_pairs)) == (tokens, pairs)


# --------------------------------------------------------------------------- 2.2 word merge with a max
def _merge_max_by_hand(hidden, input_ids, continuation, sep_token_id, attention_mask=None, *, how="max"):
    """A dense version: a [B, W, T] membership from a cumulative sum, then a masked max (or other reductions)."""
    B, T, D = hidden.shape
    ids = input_ids[:, 1:]
    real = torch.cumsum((ids == sep_token_id).long(), 1) == 0
    if attention_mask is not None:
        real &= attention_mask[:, 1:].bool()
    starts = real & ~continuation[ids]
    starts[:, 0] = real[:, 0]
    word = torch.cumsum(starts.long(), 1) - 1
    member = (word[:, None, :] == torch.arange(T - 1)[None, :, None]) & real[:, None, :]  # [B, W, T-1]
    pieces = hidden[:, None, 1:].expand(B, T - 1, T - 1, D)
    if how == "sum":
        return (pieces * member[..., None]).sum(2)
    if how == "zero-filled":  # a max with the zeros of the empty positions
        return (pieces * member[..., None]).amax(2)
    words = pieces.masked_fill(~member[..., None], float("-inf")).amax(2)
    return words if how == "inf" else torch.where(member.any(2)[..., None], words, torch.zeros(()))


def test_merge_words_max_by_hand_and_mistakes():
    assert ch02.check_merge_words_max(_merge_max_by_hand)
    mistake(ch02.check_merge_words_max, lambda *a: _merge_max_by_hand(*a, how="zero-filled"), "include_self")
    mistake(ch02.check_merge_words_max, lambda *a: _merge_max_by_hand(*a, how="sum"), "summed")
    mistake(ch02.check_merge_words_max, lambda *a: _merge_max_by_hand(*a, how="inf"), "-inf")

    def scatter_with_self(hidden, input_ids, continuation, sep_token_id, attention_mask=None):
        words = _merge_max_by_hand(hidden, input_ids, continuation, sep_token_id, attention_mask)
        return torch.maximum(words, torch.zeros(()))  # what include_self=True with zero slots gives

    mistake(ch02.check_merge_words_max, scatter_with_self, "include_self=False")


def test_merge_words_max_library_is_refused():
    def through_library(hidden, input_ids, continuation, sep_token_id, attention_mask=None):
        words, _ = merge_word_pieces(hidden, input_ids, continuation, sep_token_id, attention_mask)
        return words

    reject(ch02.check_merge_words_max, through_library, "library's", "merge_word_pieces")
    reject(ch02.check_merge_words_max, merge_word_pieces, "library's")


# --------------------------------------------------------------------------- 2.3 BatchNorm over real tokens
def _bn_by_hand(bn, x, mask, *, everything=False, unbiased_norm=False, swapped=False, eval_batch=False):
    rows = x[mask.bool()] if not everything else x.reshape(-1, x.shape[-1])
    if bn.training or eval_batch:
        mean, var = rows.mean(0), rows.var(0, unbiased=unbiased_norm)
        if bn.training:
            with torch.no_grad():
                bn.num_batches_tracked += 1
                m = bn.momentum if bn.momentum is not None else 1 / bn.num_batches_tracked.item()
                a, b = (m, 1 - m) if swapped else (1 - m, m)
                bn.running_mean.copy_(a * bn.running_mean + b * mean)
                bn.running_var.copy_(a * bn.running_var + b * rows.var(0, unbiased=True))
    else:
        mean, var = bn.running_mean, bn.running_var
    y = (x - mean) / (var + bn.eps).sqrt()
    if bn.affine:
        y = y * bn.weight + bn.bias
    return torch.where(mask.bool()[..., None], y, torch.zeros(()))


def test_masked_batch_norm_by_hand_and_mistakes():
    assert ch02.check_masked_batch_norm(_bn_by_hand)  # gathering the real rows is a right answer too
    mistake(ch02.check_masked_batch_norm, lambda *a: _bn_by_hand(*a, everything=True), "padding tokens take part")
    mistake(ch02.check_masked_batch_norm, lambda *a: _bn_by_hand(*a, unbiased_norm=True), "torch.var's default")
    mistake(ch02.check_masked_batch_norm, lambda *a: _bn_by_hand(*a, swapped=True), "the other way round")
    mistake(ch02.check_masked_batch_norm, lambda *a: _bn_by_hand(*a, eval_batch=True), "evaluation mode uses the batch")

    def detached_statistics(bn, x, mask):
        y = _bn_by_hand(bn, x, mask)
        if not bn.training:
            return y
        rows = x[mask.bool()]
        mean, var = rows.mean(0).detach(), rows.var(0, unbiased=False).detach()
        y = (x - mean) / (var + bn.eps).sqrt() * (bn.weight if bn.affine else 1) + (bn.bias if bn.affine else 0)
        return torch.where(mask.bool()[..., None], y, torch.zeros(()))

    mistake(ch02.check_masked_batch_norm, detached_statistics, "cut from the graph")


def test_masked_batch_norm_library_is_refused():
    def through_rows(bn, x, mask):
        B, T, C = x.shape
        return batch_norm_rows(bn, x.reshape(B * T, C), mask.reshape(-1)).view(B, T, C) * mask[..., None]

    def through_module(bn, x, mask):
        y = torch.zeros_like(x)
        y[mask] = bn(x[mask])
        return y

    def through_functional(bn, x, mask):
        y = torch.zeros_like(x)
        y[mask] = F.batch_norm(x[mask], bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.training)
        return y

    def through_head(bn, x, mask):
        LocalHead(x.shape[-1], 4, x.shape[-1])
        return x

    reject(ch02.check_masked_batch_norm, through_rows, "library's", "batch_norm_rows")
    reject(ch02.check_masked_batch_norm, through_module, "library's")
    reject(ch02.check_masked_batch_norm, through_functional, "library's", "batch_norm")
    reject(ch02.check_masked_batch_norm, through_head, "library's", "LocalHead")


def test_masked_batch_norm_with_every_token_real_is_batch_norm():
    """The exercise's reference on a full mask is torch's BatchNorm1d, output and running statistics."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5) * 2 + 1
    mask = torch.ones(3, 4, dtype=torch.bool)
    bn = nn.BatchNorm1d(5, momentum=0.2).train()
    theirs = ch02._bn(5, 1, momentum=0.2)
    bn.load_state_dict(theirs.state_dict())
    y = solution("masked-batch-norm")(theirs, x, mask)
    assert torch.allclose(y, bn(x.reshape(12, 5)).view(3, 4, 5), atol=1e-5)
    assert torch.allclose(theirs.running_mean, bn.running_mean) and torch.allclose(theirs.running_var, bn.running_var)


# --------------------------------------------------------------------------- 3.1 chance level
def test_chance_level_by_hand_and_mistakes():
    assert ch03.check_chance_level(lambda batch_size, processes=1: 2 * math.log(batch_size * processes))
    mistake(ch03.check_chance_level, lambda batch_size, processes=1: 2 * math.log(batch_size), "medst gathers them")
    mistake(ch03.check_chance_level, lambda batch_size, processes=1: math.log(batch_size * processes), "one direction")
    reject(ch03.check_chance_level, lambda batch_size, processes=1: 2 * math.log(batch_size + processes), "differs")


def test_chance_level_library_is_refused():
    def through_library(batch_size, processes=1):
        same = torch.ones(batch_size * processes, 4) / 2
        return global_alignment_loss(same, same)

    reject(ch03.check_chance_level, through_library, "library's", "global_alignment_loss")


def test_chance_level_is_the_loss_of_equal_scores():
    same = F.normalize(torch.ones(6, 4), dim=-1)
    assert torch.isclose(global_alignment_loss(same, same), solution("chance-level")(6).float(), atol=1e-6)


# --------------------------------------------------------------------------- 3.2 lowest loss
def test_lowest_loss_by_hand_and_mistakes():
    def by_hand(batch_size, temperature):
        if batch_size == 1:
            return 0.0
        gap = (1 + 1 / (batch_size - 1)) / temperature  # s_ii - s_ij on a simplex
        return 2 * math.log(1 + (batch_size - 1) * math.exp(-gap))

    assert ch03.check_lowest_global_loss(by_hand)
    orthogonal = lambda batch_size, temperature: 2 * math.log(1 + (batch_size - 1) * math.exp(-1 / temperature))  # noqa: E731
    mistake(ch03.check_lowest_global_loss, orthogonal, "orthogonal")
    mistake(ch03.check_lowest_global_loss, lambda b, t: by_hand(b, t) / 2, "only one direction")
    reject(ch03.check_lowest_global_loss, lambda b, t: 0.0, "differs")


def test_lowest_loss_library_is_refused():
    def through_library(batch_size, temperature):
        simplex = F.normalize(torch.eye(batch_size) - 1 / batch_size, dim=-1)
        return global_alignment_loss(simplex, simplex, temperature)

    reject(ch03.check_lowest_global_loss, through_library, "library's", "global_alignment_loss")


@pytest.mark.parametrize("batch,temperature", [(4, 0.5), (6, 1.0)])
def test_lowest_loss_is_the_simplex_and_gradient_descent_reaches_it(batch, temperature):
    lowest = float(solution("lowest-loss")(batch, temperature))
    simplex = F.normalize(torch.eye(batch, dtype=torch.float64) - 1 / batch, dim=-1)  # cosines -1 / (B - 1)
    assert math.isclose(float(global_alignment_loss(simplex, simplex, temperature)), lowest, rel_tol=1e-9)
    torch.manual_seed(0)
    v, t = torch.randn(batch, 8, requires_grad=True), torch.randn(batch, 8, requires_grad=True)
    optimizer = torch.optim.Adam([v, t], lr=0.05)
    for _ in range(600):
        loss = global_alignment_loss(F.normalize(v, dim=-1), F.normalize(t, dim=-1), temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert lowest - 1e-5 <= loss.item() < lowest + 1e-3


# --------------------------------------------------------------------------- 3.3 several positives per row
def _patient_by_hand(img, txt, patient, temperature=0.07, *, pooled=False, diagonal=False, summed=False):
    B = len(img)
    total = 0.0
    for scores in (img @ txt.T / temperature, txt @ img.T / temperature):
        for i in range(B):
            positives = [j for j in range(B) if patient[j] == patient[i]] if not diagonal else [i]
            log_p = scores[i] - torch.logsumexp(scores[i], 0)
            if pooled:
                row = -torch.logsumexp(log_p[positives], 0)
            else:
                row = -log_p[positives].sum() / (1 if summed else len(positives))
            total = total + row / B
    return total


def test_patient_infonce_by_hand_and_mistakes():
    assert ch03.check_patient_infonce(_patient_by_hand)  # a loop over rows, both directions
    check = ch03.check_patient_infonce
    mistake(
        check,
        lambda i, t, p, temperature=0.07: _patient_by_hand(i, t, p, temperature, pooled=True),
        "summed probability",
    )
    mistake(
        check,
        lambda i, t, p, temperature=0.07: _patient_by_hand(i, t, p, temperature, diagonal=True),
        "patient ids are ignored",
    )
    mistake(
        check, lambda i, t, p, temperature=0.07: _patient_by_hand(i, t, p, temperature, summed=True), "average them"
    )


def test_patient_infonce_library_is_refused():
    def through_library(img, txt, patient, temperature=0.07):
        return global_alignment_loss(img, txt, temperature)

    reject(ch03.check_patient_infonce, through_library, "library's", "global_alignment_loss")
    reject(ch03.check_patient_infonce, global_alignment_loss, "library's")


def test_patient_infonce_is_the_global_loss_when_patients_differ():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    ours = solution("patient-infonce")(img, txt, torch.arange(6), 0.1)
    assert torch.allclose(ours, global_alignment_loss(img, txt, 0.1), atol=1e-6)


# --------------------------------------------------------------------------- the chapters' cells
@pytest.mark.parametrize("module", MODULES, ids=[m.CHAPTER for m in MODULES])
def test_chapter_cells_are_the_appended_ones_and_compile(module):
    nb = nbformat.read(BOOK / f"{module.CHAPTER}.ipynb", as_version=4)
    nbformat.validate(nb)
    cells = [c for c in nb.cells if ex.is_exercise_cell(c)]
    fresh = ex.exercise_cells(module.CHAPTER)
    assert [(c.get("id"), c.cell_type, c.source) for c in cells] == [(c.id, c.cell_type, c.source) for c in fresh], (
        f"run: python -m medst.book.exercises append book/{module.CHAPTER}.ipynb"
    )
    assert nb.cells[-len(cells) :] == cells  # at the end of the chapter
    for cell in nb.cells:
        if cell.cell_type == "code":
            compile(cell.source, f"{module.CHAPTER}:{cell.get('id')}", "exec")
            stub = cell.metadata.get("medst", {}).get("stub")
            if stub:
                compile(stub, f"{module.CHAPTER}:{cell.get('id')} (stub)", "exec")
