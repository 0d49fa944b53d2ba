"""Does the book model learn? Its targets against a randomly initialised model of the same architecture.

Introduced in chapter 7 (and run from the command line by ``benchmarks/book_targets.py``). Targets, on the
phantom's held-out patients:

- image -> report recall@5 on the test split >= 5x that of random init (the global alignment);
- progression-probe accuracy >= random init + 0.10 (the temporal objective), on the test-split patients and,
  as a second reading with more pairs, on every patient (the labels are never used in pre-training);
- temporal sentence AUC >= 0.75 (the text tower).
"""

from __future__ import annotations

import os

from medst.eval.embed import load_model
from medst.eval.run import evaluate

TASKS = "retrieval,temporal-text,progression-probe"


def target_scores(
    run: str | os.PathLike, data: str | os.PathLike, *, random_init: bool = False, seed: int = 0, device: str = "auto"
) -> dict[str, float]:
    """The target metrics of one model: the run's weights, or (``random_init``) its untrained architecture.

    The model is loaded once and scored twice: on the test split, and by the progression probe on every patient.
    """
    em = load_model(run, device, random_init=random_init, seed=seed)
    test = evaluate(run, data, TASKS, seed=seed, progress=False, model=em, probe_splits=["test"])
    every = evaluate(run, data, "progression-probe", seed=seed, progress=False, model=em)
    return {
        "retrieval_i2t_r@5": test["retrieval"]["i2t_r@5"],
        "retrieval_chance@5": 5 * test["retrieval"]["chance_r@1"],
        "progression_acc_test": test["progression-probe"]["mean_acc"],
        "progression_acc_all": every["progression-probe"]["mean_acc"],
        "sentence_auc": test["temporal-text"]["auc"],
    }


def targets(model: dict[str, float], rand: dict[str, float]) -> list[dict]:
    """One row per target: its name, metric, the two values, the threshold, its rule and whether it is met."""
    rows = [
        ("image->report recall@5 (test split)", "retrieval_i2t_r@5", 5 * rand["retrieval_i2t_r@5"], "5x random"),
        (
            "progression acc. (test-split patients)",
            "progression_acc_test",
            rand["progression_acc_test"] + 0.10,
            "random + 0.10",
        ),
        ("progression acc. (all patients)", "progression_acc_all", rand["progression_acc_all"] + 0.10, "random + 0.10"),
        ("temporal sentence AUC", "sentence_auc", 0.75, "0.75"),
    ]
    return [
        {
            "target": name,
            "metric": key,
            "book_model": model[key],
            "random_init": rand[key],
            "threshold": threshold,
            "rule": rule,
            "met": bool(model[key] >= threshold),
        }
        for name, key, threshold, rule in rows
    ]


def book_targets(run: str | os.PathLike, data: str | os.PathLike, *, seed: int = 0, device: str = "auto") -> list[dict]:
    """:func:`targets` of the run against random init of its architecture (both scored by :func:`target_scores`)."""
    model = target_scores(run, data, seed=seed, device=device)
    rand = target_scores(run, data, random_init=True, seed=seed, device=device)
    return targets(model, rand)


def targets_markdown(rows: list[dict]) -> str:
    """The target rows as a markdown table."""
    lines = ["| target | book model | random init | needed | met |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['book_model']:.3f} | {r['random_init']:.3f} | >= {r['threshold']:.3f} "
            f"({r['rule']}) | {'yes' if r['met'] else 'no'} |"
        )
    return "\n".join(lines)
