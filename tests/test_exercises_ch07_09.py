"""The exercises of chapters 7-9 (medst/book/exercises/ch07.py, ch08.py, ch09.py) and their checkers.

For every exercise: the solution passes (quickly), the stub is reported "not implemented yet", an answer that is or
calls the library's implementation is refused (where the library has one), and wrong answers written here by hand
fail with the hint that names their mistake.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from exercise_helpers import define, reject

from medst.ablation import ablation_verdicts
from medst.book.exercises import (
    EXERCISES,
    ch07,
    ch09,
    check_best_threshold,
    check_flipped_verdicts,
    check_guarded_step,
    check_logged_lr,
    check_seeds_needed,
    check_shared_report_recall,
    check_verdict,
    check_zero_shot,
    find_exercise,
)
from medst.eval.embed import mean_embedding
from medst.eval.retrieval import recall_at_k
from medst.eval.sentence import best_threshold_accuracy
from medst.train.step import AmpPolicy, train_step

MINE = [e for chapter in ("07_pretraining", "08_evaluation", "09_ablations") for e in EXERCISES[chapter]]


# --------------------------------------------------------------------------- every exercise
def test_chapters_7_to_9_have_two_or_three_exercises_with_levels():
    for chapter in ("07_pretraining", "08_evaluation", "09_ablations"):
        exercises = EXERCISES[chapter]
        assert 2 <= len(exercises) <= 3
        assert [e.number for e in exercises] == [f"{int(chapter[:2])}.{i}" for i in range(1, len(exercises) + 1)]
    assert {e.level for e in MINE} == {"easy", "medium", "hard"}


@pytest.mark.parametrize("exercise", MINE, ids=[e.key for e in MINE])
def test_solution_passes_quickly(exercise, capsys):
    start = time.perf_counter()
    assert exercise.checker(define(exercise.solution_code, exercise.function)).passed is True
    assert time.perf_counter() - start < 10
    assert f"\u2714 Exercise {exercise.number} ({exercise.title}): correct" in capsys.readouterr().out
    assert exercise.checker(exercise.solution_function()).passed is True  # the module, imported


@pytest.mark.parametrize("exercise", MINE, ids=[e.key for e in MINE])
def test_stub_is_reported_not_implemented(exercise, capsys):
    stub = define(exercise.stub_code, exercise.function)
    result = exercise.checker(stub)
    assert result.passed is False and not result
    assert "not implemented yet" in capsys.readouterr().out
    assert "NotImplementedError" in exercise.stub_code and exercise.function in exercise.stub_code


@pytest.mark.parametrize("exercise", MINE, ids=[e.key for e in MINE])
def test_not_a_function(exercise):
    reject(exercise.checker, 3.0, "pass the function itself")


# --------------------------------------------------------------------------- 7.1 the learning rate a run logs
def by_hand_lr(steps, lr, warmup_ratio, total_steps, used=False, exact_warmup=False, linear=False):
    """The schedule with Python floats, one step at a time (with switchable mistakes)."""
    warmup = warmup_ratio * total_steps if exact_warmup else int(warmup_ratio * total_steps)
    out = []
    for s in steps.tolist():
        s = s - 1 if used else s
        if s < warmup:
            out.append(lr * s / max(1, warmup))
            continue
        progress = (s - warmup) / max(1, total_steps - warmup)
        out.append(lr * max(0.0, 1 - progress if linear else 0.5 * (1 + math.cos(math.pi * progress))))
    return torch.tensor(out)


def test_logged_lr_checker():
    assert check_logged_lr(by_hand_lr).passed is True
    reject(check_logged_lr, lambda *a, **k: by_hand_lr(*a, **k, used=True), "the rate step s used", "after the")
    reject(check_logged_lr, lambda *a, **k: by_hand_lr(*a, **k, exact_warmup=True), "rounded down")
    reject(check_logged_lr, lambda *a, **k: by_hand_lr(*a, **k, linear=True), "half cosine")


def test_logged_lr_refuses_the_schedulers_of_transformers():
    from transformers import get_cosine_schedule_with_warmup

    def through_transformers(steps, lr, warmup_ratio, total_steps):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        schedule = get_cosine_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
        return torch.tensor([lr * schedule.lr_lambdas[0](int(s)) for s in steps])

    reject(check_logged_lr, through_transformers, "library's", "get_cosine_schedule_with_warmup")
    reject(check_logged_lr, get_cosine_schedule_with_warmup, "library's")


# --------------------------------------------------------------------------- 7.2 a training step with its guard
def by_hand_step(
    model, batch, optimizer, step, clip=1.0, bf16=False, *, guard="before", train=True, name=True, norm_after=False
):
    """A step with manual clipping (no clip_grad_norm_), switchable mistakes."""
    if train:
        model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False):
        loss = model(batch).loss
    finite = bool(torch.isfinite(loss))
    message = f"Step {step}: non-finite loss" if name else "non-finite loss"
    if not finite and guard == "before":
        raise RuntimeError(message)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if clip:
        scale = torch.clamp(clip / (norm + 1e-6), max=1.0)
        for g in grads:
            g.mul_(scale)
    optimizer.step()
    if not finite and guard == "after":
        raise RuntimeError(message)
    for p in model.parameters():
        p.grad = None
    if norm_after and clip:
        norm = torch.clamp(norm, max=clip)
    return loss.detach().float(), norm


def test_guarded_step_checker():
    state = torch.get_rng_state()
    assert check_guarded_step(by_hand_step).passed is True  # manual clipping, another error type and wording
    assert torch.equal(torch.get_rng_state(), state)  # the check put the global generator back
    reject(check_guarded_step, lambda *a, **k: by_hand_step(*a, **k, guard="after"), "after optimizer.step()")
    reject(check_guarded_step, lambda *a, **k: by_hand_step(*a, **k, guard="none"), "guard is missing")
    reject(check_guarded_step, lambda *a, **k: by_hand_step(*a, **k, train=False), "training mode", "eval mode")
    reject(check_guarded_step, lambda *a, **k: by_hand_step(*a, **k, name=False), "name the step")
    reject(check_guarded_step, lambda *a, **k: by_hand_step(*a, **k, norm_after=True), "before clipping")
    reject(check_guarded_step, lambda *a, **k: by_hand_step(*a, **k)[0], "must return the pair (loss, grad_norm)")


def test_guarded_step_refuses_the_library():
    def through_library(model, batch, optimizer, step, clip=1.0, bf16=False):
        amp = AmpPolicy("cpu", torch.bfloat16 if bf16 else None)
        result = train_step(model, [batch], optimizer, amp=amp, clip=clip)
        return result.loss, result.grad_norm

    reject(check_guarded_step, train_step, "library's", "train_step")
    reject(check_guarded_step, through_library, "library's")


def test_tiny_model_cases_exercise_what_they_claim():
    """Clipping is active where the clip is below 10, the poisoned losses are not finite, the others are."""
    for case in ch07._step_cases():
        (model, batch, optimizer, step), kwargs = case.fresh()
        loss = model.train()(batch).loss
        assert math.isfinite(float(loss.detach())) != batch.nonfinite, case.label
        if not batch.nonfinite and kwargs["clip"] is not None and kwargs["clip"] < 10:
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            assert norm > kwargs["clip"], case.label


# --------------------------------------------------------------------------- 8.1 the best threshold
def by_hand_threshold(scores, labels, strict=False, above_all=True):
    s, y = scores.double().tolist(), labels.tolist()
    candidates = sorted(set(s)) + ([float(np.nextafter(max(s), np.inf))] if above_all else [])
    best = (-1.0, None)
    for t in candidates:
        accuracy = sum(int((v > t) if strict else (v >= t)) == c for v, c in zip(s, y)) / len(s)
        if accuracy > best[0]:
            best = (accuracy, t)
    return torch.tensor(best[0], dtype=torch.float64), torch.tensor(best[1], dtype=torch.float64)


def test_best_threshold_checker():
    assert check_best_threshold(by_hand_threshold).passed is True
    reject(check_best_threshold, lambda s, y: by_hand_threshold(s, y, strict=True), "score >= t")
    reject(check_best_threshold, lambda s, y: by_hand_threshold(s, y, above_all=False), "above the largest score")
    reject(check_best_threshold, lambda s, y: by_hand_threshold(s, y)[0], "expected a tuple of 2 values")


def test_best_threshold_refuses_the_library():
    def through_library(scores, labels):
        return tuple(torch.tensor(v) for v in best_threshold_accuracy(scores.numpy(), labels.numpy()))

    reject(check_best_threshold, best_threshold_accuracy, "library's")
    reject(check_best_threshold, through_library, "library's", "best_threshold_accuracy")


# --------------------------------------------------------------------------- 8.2 zero-shot over several classes
def by_hand_zero_shot(images, prompts, prompt_mask, temperature=0.1, renormalise=True, mask=True, log=True):
    rows = []
    for c in range(len(prompts)):
        kept = prompts[c][prompt_mask[c]] if mask else prompts[c]
        mean = torch.stack([p / p.norm() for p in kept]).mean(0)
        rows.append(mean / mean.norm() if renormalise else mean)
    logits = (images / images.norm(dim=1, keepdim=True)) @ torch.stack(rows).T / temperature
    return logits.log_softmax(1) if log else logits.softmax(1)


def test_zero_shot_checker():
    assert check_zero_shot(by_hand_zero_shot).passed is True
    reject(check_zero_shot, lambda *a, **k: by_hand_zero_shot(*a, **k, renormalise=False), "not re-normalised")
    reject(check_zero_shot, lambda *a, **k: by_hand_zero_shot(*a, **k, mask=False), "padding prompts")
    reject(check_zero_shot, lambda *a, **k: by_hand_zero_shot(*a, **k, log=False), "log-probabilities")

    def detached(images, prompts, prompt_mask, temperature=0.1):
        return by_hand_zero_shot(images.detach(), prompts, prompt_mask, temperature)

    reject(check_zero_shot, detached, "gradient w.r.t. `images`")


def test_zero_shot_refuses_the_library():
    def through_library(images, prompts, prompt_mask, temperature=0.1):
        classes = torch.stack([mean_embedding(F.normalize(p[m], dim=-1)) for p, m in zip(prompts, prompt_mask)])
        return (F.normalize(images, dim=-1) @ classes.T / temperature).log_softmax(1)

    reject(check_zero_shot, through_library, "library's", "mean_embedding")


# --------------------------------------------------------------------------- 8.3 recall@k with shared reports
def by_hand_recall(similarity, report_ids, ks=(1, 5, 10), ties_against=True, shared=True):
    n = len(similarity)
    ranks = []
    for i in range(n):
        correct = [j for j in range(n) if (report_ids[j] == report_ids[i] if shared else j == i)]
        best = max(float(similarity[i, j]) for j in correct)
        ahead = [
            j
            for j in range(n)
            if j not in correct and (similarity[i, j] >= best if ties_against else similarity[i, j] > best)
        ]
        ranks.append(1 + len(ahead))
    return torch.tensor([sum(r <= k for r in ranks) / n for k in ks], dtype=torch.float64)


def test_shared_report_recall_checker():
    assert check_shared_report_recall(by_hand_recall).passed is True
    reject(check_shared_report_recall, lambda *a, **k: by_hand_recall(*a, **k, ties_against=False), "ties count")
    reject(check_shared_report_recall, lambda *a, **k: by_hand_recall(*a, **k, shared=False), "same report_id")


def test_shared_report_recall_refuses_the_library():
    def through_library(similarity, report_ids, ks=(1, 5, 10)):
        positives = (report_ids[:, None] == report_ids[None, :]).numpy()
        recalls = recall_at_k(similarity.numpy(), ks, positives=positives)
        return torch.tensor([recalls[k] for k in ks])

    reject(check_shared_report_recall, recall_at_k, "library's")
    reject(check_shared_report_recall, through_library, "library's")


# --------------------------------------------------------------------------- 9.1 the verdict of one comparison
def by_hand_verdict(with_scores, without_scores, noise_floor=0.02, ddof=1, factor=2.0, one_seed=None):
    a = np.asarray([v for v in with_scores.tolist() if v == v])
    b = np.asarray([v for v in without_scores.tolist() if v == v])
    diff = a.mean() - b.mean()
    if len(a) > 1 and len(b) > 1:
        margin = factor * math.sqrt(a.var(ddof=ddof) / len(a) + b.var(ddof=ddof) / len(b))
    else:
        margin = noise_floor if one_seed is None else one_seed
    return diff, margin, int(np.sign(diff)) if abs(diff) > margin else 0  # numbers, not tensors: accepted


def test_verdict_checker():
    assert check_verdict(by_hand_verdict).passed is True
    reject(check_verdict, lambda *a, **k: by_hand_verdict(*a, **k, ddof=0), "sample variances")
    reject(check_verdict, lambda *a, **k: by_hand_verdict(*a, **k, factor=1.0), "two standard errors")
    reject(check_verdict, lambda *a, **k: by_hand_verdict(*a, **k, one_seed=0.0), "no error bar", "noise_floor")

    def nan_kept(with_scores, without_scores, noise_floor=0.02):  # a list of tensors and an int: accepted types
        a, b = with_scores, without_scores
        d = a.mean() - b.mean()
        margin = 2 * torch.sqrt(a.var() / len(a) + b.var() / len(b)) if len(a) > 1 and len(b) > 1 else noise_floor
        return [d, margin, int(d > margin) - int(d < -margin)]

    reject(check_verdict, nan_kept, "difference: contains NaN", "drop the NaN seeds")


def test_verdict_refuses_the_library():
    def through_library(with_scores, without_scores, noise_floor=0.02):
        import pandas as pd

        rows = [("+FMC", i, v) for i, v in enumerate(with_scores.tolist())]
        rows += [("+MoVE", i, v) for i, v in enumerate(without_scores.tolist())]
        table = pd.DataFrame(rows, columns=["variant", "seed", "progression_acc"])
        row = ablation_verdicts(table, noise_floor).iloc[0]
        return row["difference"], 2 * row["se"], 0

    reject(check_verdict, through_library, "library's", "ablation_verdicts")


# --------------------------------------------------------------------------- 9.2 one standard error instead of two
def by_hand_flips(table, one_seed_flips=False, only_helped=False):
    flipped = []
    for _, row in ablation_verdicts(table).iterrows():
        se = row["se"]
        if se is None or se != se:
            if one_seed_flips and row["difference"] != 0 and row["verdict"].startswith("no clear"):
                flipped.append(row["component"])
            continue
        d = row["difference"]
        two = "helped" if d > 2 * se else "hurt" if d < -2 * se else "none"
        one = "helped" if d > se else "hurt" if d < -se else "none"
        if two != one and (one == "helped" or not only_helped):
            flipped.append(row["component"])
    return flipped


def test_flipped_verdicts_checker():
    assert check_flipped_verdicts(by_hand_flips).passed is True
    reject(check_flipped_verdicts, lambda t: by_hand_flips(t, one_seed_flips=True), "one seed", "cannot change")
    reject(check_flipped_verdicts, lambda t: by_hand_flips(t, only_helped=True), "to 'hurt'")
    reject(check_flipped_verdicts, lambda t: "MoVE", "return a list of component names")
    reject(check_flipped_verdicts, lambda t: ["moves"], "unknown component")


def test_the_committed_table_is_among_the_cases():
    if not ch09.COMMITTED_TABLE.is_file():
        pytest.skip("no committed cpu ablation table in this copy")
    assert ch09._flip_cases()[0].label.startswith("the committed cpu table")
    labels = [case.label for case in ch09._seeds_cases()[:3]]
    assert [label.split(":")[0] for label in labels] == [
        f"the committed cpu table, {c}" for c in ("MoVE", "FMC", "RMR")
    ]


# --------------------------------------------------------------------------- 9.3 how many seeds a difference needs
def by_hand_seeds(with_scores, without_scores, max_seeds=100, ddof=1, cap=True, factor=2.0):
    a = [v for v in with_scores.tolist() if v == v]
    b = [v for v in without_scores.tolist() if v == v]
    if len(a) < 2 or len(b) < 2:
        return 0
    d = abs(np.mean(a) - np.mean(b))
    v = np.var(a, ddof=ddof) + np.var(b, ddof=ddof)
    n = 2
    while not d > factor * math.sqrt(v / n):
        n += 1
        if n > 10_000 or (cap and n > max_seeds):
            return 0
    return n


def test_seeds_needed_checker():
    assert check_seeds_needed(by_hand_seeds).passed is True
    reject(check_seeds_needed, lambda *a, **k: by_hand_seeds(*a, **k, ddof=0), "sample variances")
    reject(check_seeds_needed, lambda *a, **k: by_hand_seeds(*a, **k, cap=False), "beyond max_seeds")
    reject(check_seeds_needed, lambda *a, **k: by_hand_seeds(*a, **k, factor=1.0), "two standard errors")


def test_find_exercise_and_cells_of_chapters_7_to_9():
    from medst.book.exercises import exercise_cells

    assert find_exercise("guarded-step").checker is check_guarded_step
    for chapter in ("07_pretraining", "08_evaluation", "09_ablations"):
        cells = exercise_cells(chapter)
        assert len(cells) == 1 + 3 * len(EXERCISES[chapter])
        for cell in cells:
            if cell.cell_type == "code":
                compile(cell.source, cell.id, "exec")
                compile(cell.metadata["medst"].get("stub", ""), cell.id, "exec")
