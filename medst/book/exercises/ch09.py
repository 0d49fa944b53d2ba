"""Exercises 9.1-9.3 (chapter 9, Method §3-§6): the verdict of one comparison, and what the rule makes of a table.

9.1 compares the reader's ``verdict`` (difference, margin, helped / no clear difference / hurt, from per-seed numbers
with unscored seeds as NaN) with :func:`medst.ablation.ablation_verdicts`. 9.2 grades ``flipped_verdicts``, the
components of an ablation table whose verdict changes when the rule asks for one standard error instead of two,
on the committed ``cpu`` table and on made-up tables (one seed, missing variants, NaN). 9.3 grades
``seeds_needed``, the number of seeds per variant at which a measured difference with the measured spread would
pass the two-standard-error rule, on the committed table's comparisons and on edge cases.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Number
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from medst.ablation import COMPARISONS, VARIANT_ORDER, ablation_verdicts, read_ablation
from medst.book.exercises.framework import Case, Check, CheckResult, Exercise, argument_ignored, run_check

# the per-run table of the committed cpu ablation (absent where medst is installed without the repository)
COMMITTED_TABLE = Path(__file__).resolve().parents[3] / "benchmarks" / "ablations" / "cpu" / "ablation_runs.csv"
VERDICT_CODES = {"helped": 1, "no clear difference": 0, "hurt": -1}
COMPONENTS = tuple(component for component, *_ in COMPARISONS)


def committed_table() -> pd.DataFrame | None:
    """The committed ``cpu`` ablation (:func:`medst.ablation.read_ablation`), or None where it is not on disk."""
    return read_ablation(COMMITTED_TABLE) if COMMITTED_TABLE.is_file() else None


def _numbers_as_tensors(fn: Callable) -> Callable:
    """``fn`` with Python and numpy numbers in its result (or in a tuple result) turned into tensors, so that a
    reader may return ``2`` or ``0.02`` where a tensor is compared; ``functools.wraps`` keeps ``fn`` visible to the
    framework (a library function passed as ``fn`` is still refused)."""

    def convert(value):
        return torch.as_tensor(value) if isinstance(value, (Number, np.number, np.bool_)) else value

    @functools.wraps(fn)
    def converted(*args, **kwargs):
        out = fn(*args, **kwargs)
        return tuple(convert(v) for v in out) if isinstance(out, (tuple, list)) else convert(out)

    return converted


def _scored(x: Tensor) -> Tensor:
    return x[~x.isnan()].double()


# ----------------------------------------------------------------------------------------------------
# 9.1 The verdict of one comparison
# ----------------------------------------------------------------------------------------------------
def _verdict_reference(with_scores: Tensor, without_scores: Tensor, noise_floor: float = 0.02):
    """(difference, margin, code) from :func:`medst.ablation.ablation_verdicts` on a two-variant table."""
    rows = [("+FMC", seed, value) for seed, value in enumerate(with_scores.tolist())]
    rows += [("+MoVE", seed, value) for seed, value in enumerate(without_scores.tolist())]
    table = pd.DataFrame(rows, columns=["variant", "seed", "progression_acc"])
    (row,) = ablation_verdicts(table, noise_floor=noise_floor).itertuples()
    se = row.se if row.se is not None and not (isinstance(row.se, float) and math.isnan(row.se)) else None
    margin = 2 * se if se is not None else noise_floor
    code = VERDICT_CODES[row.verdict.split(" (")[0]]
    as_float = functools.partial(torch.tensor, dtype=torch.float64)
    return as_float(row.difference), as_float(margin), torch.tensor(code)


def _verdict_variant(
    with_scores,
    without_scores,
    noise_floor=0.02,
    *,
    ddof=1,
    per_seed=True,
    factor=2.0,
    one_seed_margin=None,
    reverse=False,
):
    """Mistake models: population variance, variances not divided by the seeds, one standard error, no noise
    floor with one seed, without - with."""
    a, b = _scored(with_scores), _scored(without_scores)
    if reverse:
        a, b = b, a
    diff = a.mean() - b.mean()
    if len(a) > 1 and len(b) > 1:
        va, vb = a.var(correction=ddof), b.var(correction=ddof)
        se = torch.sqrt(va / len(a) + vb / len(b)) if per_seed else torch.sqrt(va + vb)
        margin = factor * se
    else:
        margin = torch.tensor(noise_floor if one_seed_margin is None else one_seed_margin, dtype=torch.float64)
    code = torch.tensor(1 if diff > margin else -1 if diff < -margin else 0)
    return diff, margin, code


def _verdict_cases() -> list[Case]:
    nan = float("nan")
    plans = [  # (with, without, noise floor, what)
        ([0.5077, 0.5211, 0.5068], [0.5421, 0.5474, 0.5415], 0.02, "3 seeds each, a small but steady loss"),
        ([0.9517, 0.5433, 0.5253], [0.5025, 0.5033, 0.5206], 0.02, "3 seeds each, one seed far off"),
        ([0.61, 0.64, 0.60, 0.66, 0.63], [0.55, 0.58, 0.56, 0.54, 0.57], 0.02, "5 seeds each, a clear gain"),
        ([0.61], [0.58], 0.02, "one seed each"),
        ([0.55], [0.50, 0.53, 0.49], 0.05, "one seed against three"),
        ([0.60, nan, 0.62, 0.64], [0.55, 0.56], 0.02, "a seed that could not be scored (NaN), 3 against 2"),
        ([nan, 0.70], [0.60, 0.65, 0.62], 0.1, "NaN leaves one scored seed"),
        ([0.480, 0.470], [0.482, 0.478, 0.490, 0.475], 0.02, "2 seeds against 4, a small difference"),
    ]
    cases = []
    for with_, without, floor, what in plans:
        label = f"with {with_}, without {without}, noise_floor={floor}: {what}"
        cases.append(
            Case(
                label,
                (torch.tensor(with_, dtype=torch.float64), torch.tensor(without, dtype=torch.float64)),
                {"noise_floor": floor},
            )
        )
    return cases


def check_verdict(fn: Callable) -> CheckResult:
    """Grade exercise 9.1: ``fn(with_scores, without_scores, noise_floor=0.02)`` for per-seed scores [n_a], [n_b]
    (NaN: not scored) must return (difference, margin, verdict) as :func:`medst.ablation.ablation_verdicts`
    decides them (verdict +1 helped, 0 no clear difference, -1 hurt)."""

    def variant(**options):
        return _numbers_as_tensors(
            lambda with_scores, without_scores, noise_floor=0.02: _verdict_variant(
                with_scores, without_scores, noise_floor, **options
            )
        )

    return run_check(
        Check(
            "9.1",
            "the verdict of one comparison",
            "verdict",
            _verdict_cases(),
            _verdict_reference,
            forbidden=(ablation_verdicts,),
            outputs=("difference", "margin", "verdict"),
            hint="drop the NaN seeds first; difference = mean(with) - mean(without); with at least 2 seeds on each "
            "side margin = 2 sqrt(var_a / n_a + var_b / n_b) (sample variances), else noise_floor; verdict +1 if "
            "difference > margin, -1 if difference < -margin, else 0.",
            mistakes=[
                ("the variances are sample variances (divide by n - 1: torch.var's default)", variant(ddof=0)),
                (
                    "the standard error of a mean divides each variance by its number of seeds: "
                    "sqrt(var_a / n_a + var_b / n_b)",
                    variant(per_seed=False),
                ),
                ("the margin is two standard errors, not one", variant(factor=1.0)),
                (
                    "with one scored seed on a side there is no error bar: the margin is noise_floor",
                    variant(one_seed_margin=0.0),
                ),
                ("difference = mean(with) - mean(without), not the other way round", variant(reverse=True)),
                argument_ignored(_verdict_reference, "noise_floor", 0.02),
            ],
        ),
        _numbers_as_tensors(fn) if callable(fn) else fn,
    )


# ----------------------------------------------------------------------------------------------------
# 9.2 Which verdicts a one-standard-error rule would change
# ----------------------------------------------------------------------------------------------------
@dataclass
class _TableCase(Case):
    """A case whose tables are copied for every call (a reader's function may change its table)."""

    def fresh(self) -> tuple[list, dict]:
        args, kwargs = super().fresh()
        return [a.copy() if isinstance(a, pd.DataFrame) else a for a in args], kwargs


def _flip_reference(table: pd.DataFrame, *, one_seed_flips: bool = False, only_helped: bool = False) -> set[str]:
    """The components whose verdict differs between margins of 2 and 1 standard errors (rows of
    :func:`medst.ablation.ablation_verdicts`; with one seed both rules use the noise floor, nothing changes).
    Options: the mistake models (a one-seed row judged with margin 0 by the 1-s.e. rule; only gains looked at)."""
    flipped = set()
    for row in ablation_verdicts(table).itertuples():
        se = row.se if row.se is not None and not (isinstance(row.se, float) and math.isnan(row.se)) else None
        if se is None:
            if one_seed_flips and row.verdict.startswith("no clear") and row.difference != 0:
                flipped.add(row.component)
            continue
        two = (row.difference > 2 * se) - (row.difference < -2 * se)
        one = (row.difference > se) - (row.difference < -se)
        if two != one and (not only_helped or one == 1):
            flipped.add(row.component)
    return flipped


def _as_flags(components) -> tuple[Tensor, ...]:
    """A collection of component names -> one bool per component of COMPARISONS (True: named)."""
    if isinstance(components, (str, bytes)) or not hasattr(components, "__iter__"):
        raise TypeError(f"return a list of component names (e.g. ['MoVE']), got {type(components).__name__}")
    names = set(components)
    unknown = sorted(str(n) for n in names - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; the components are {list(COMPONENTS)}")
    return tuple(torch.tensor(c in names) for c in COMPONENTS)


def _flip_outcome(fn: Callable) -> Callable:
    """``fn`` as the check sees it: its list of components as one flag per component."""

    @functools.wraps(fn)
    def outcome(table):
        return _as_flags(fn(table))

    return outcome


def _made_up_table(seed: int, seeds: int, drop: tuple[str, ...] = (), nan: float = 0.0) -> pd.DataFrame:
    """An ablation table with random numbers: every variant but ``drop``, ``seeds`` seeds, a share ``nan`` of
    the scores missing. Spreads and gaps vary so that some verdicts sit between one and two standard errors."""
    rng = np.random.default_rng(seed)
    rows = []
    for variant in VARIANT_ORDER:
        if variant in drop:
            continue
        centre = rng.uniform(0.45, 0.6, size=3)
        spread = rng.choice([0.003, 0.01, 0.03], size=3)
        for s in range(seeds):
            lateral, progression, grounding = centre + spread * rng.standard_normal(3)
            chance = 0.08 + 0.005 * rng.standard_normal()
            rows.append(
                {
                    "variant": variant,
                    "seed": s,
                    "lateral_auc": lateral,
                    "progression_acc": progression,
                    "grounding_acc": grounding / 5 if variant not in ("global", "random init") else np.nan,
                    "grounding_chance": chance if variant not in ("global", "random init") else np.nan,
                }
            )
    table = pd.DataFrame(rows)
    if nan:
        metrics = ["lateral_auc", "progression_acc", "grounding_acc"]
        holes = rng.random((len(table), len(metrics))) < nan
        table[metrics] = table[metrics].mask(holes)
    return table


def _flip_cases() -> list[Case]:
    cases = []
    committed = committed_table()
    if committed is not None:
        cases.append(_TableCase(f"the committed cpu table ({COMMITTED_TABLE.name}, 3 seeds)", (committed,)))
    cases += [
        _TableCase("a made-up table, every variant, 3 seeds", (_made_up_table(1, 3),)),
        _TableCase("a made-up table, every variant, 4 seeds", (_made_up_table(3, 4),)),
        _TableCase("a made-up table, one seed (no error bars)", (_made_up_table(2, 1),)),
        _TableCase(
            "a made-up table, 3 seeds, without '+RMR' and 'Med-ST', 15 % of the scores NaN",
            (_made_up_table(5, 3, drop=("+RMR", "Med-ST"), nan=0.15),),
        ),
    ]
    return cases


def check_flipped_verdicts(fn: Callable) -> CheckResult:
    """Grade exercise 9.2: ``fn(table)`` for a per-run ablation table must return the components (names of
    :data:`medst.ablation.COMPARISONS`) whose :func:`medst.ablation.ablation_verdicts` verdict changes when the
    margin is one standard error instead of two."""

    def variant(**options):
        return _flip_outcome(lambda table: _flip_reference(table, **options))

    return run_check(
        Check(
            "9.2",
            "one standard error instead of two",
            "flipped_verdicts",
            _flip_cases(),
            _flip_outcome(_flip_reference),
            outputs=tuple(f"'{c}' flips" for c in COMPONENTS),
            hint="for each row of ablation_verdicts(table) with a standard error: the verdict with margin 2·se "
            "against the verdict with margin se (helped above +margin, hurt below -margin); rows without a "
            "standard error (one seed) keep the noise floor under both rules.",
            mistakes=[
                (
                    "a row without a standard error (one seed) is judged by the noise floor under both rules, so "
                    "its verdict cannot change",
                    variant(one_seed_flips=True),
                ),
                ("a verdict can also flip from 'no clear difference' to 'hurt'", variant(only_helped=True)),
            ],
        ),
        _flip_outcome(fn) if callable(fn) else fn,
    )


# ----------------------------------------------------------------------------------------------------
# 9.3 How many seeds a difference would need
# ----------------------------------------------------------------------------------------------------
def _seeds_reference(with_scores: Tensor, without_scores: Tensor, max_seeds: int = 100) -> Tensor:
    """The smallest n in 2..max_seeds with |difference| > 2 sqrt((var_a + var_b) / n), by counting; 0 if none, or
    with fewer than two scored seeds on a side."""
    a, b = _scored(with_scores).tolist(), _scored(without_scores).tolist()
    if len(a) < 2 or len(b) < 2:
        return torch.tensor(0)
    diff = abs(float(np.mean(a)) - float(np.mean(b)))
    spread = float(np.var(a, ddof=1)) + float(np.var(b, ddof=1))
    for n in range(2, max_seeds + 1):
        if diff > 2 * math.sqrt(spread / n):
            return torch.tensor(n)
    return torch.tensor(0)


def _seeds_variant(with_scores, without_scores, max_seeds=100, *, ddof=1, floor_two=True, cap=True, factor=2.0):
    """Mistake models (closed form): population variances, n = 1 allowed, no cap at max_seeds, one s.e."""
    a, b = _scored(with_scores), _scored(without_scores)
    if len(a) < 2 or len(b) < 2:
        return torch.tensor(0)
    diff = (a.mean() - b.mean()).abs()
    if diff == 0:
        return torch.tensor(0)
    spread = a.var(correction=ddof) + b.var(correction=ddof)
    n = int(torch.floor(factor**2 * spread / diff**2)) + 1
    n = max(n, 2) if floor_two else n
    return torch.tensor(0 if cap and n > max_seeds else n)


def _seeds_cases() -> list[Case]:
    nan = float("nan")
    cases = []
    committed = committed_table()
    if committed is not None:
        for component, with_, without, metric in COMPARISONS:
            if component not in ("MoVE", "FMC", "RMR"):
                continue
            a = committed.loc[committed["variant"] == with_, metric].to_numpy(float)
            b = committed.loc[committed["variant"] == without, metric].to_numpy(float)
            if len(a) and len(b):
                label = (
                    f"the committed cpu table, {component}: {metric} of '{with_}' {a.round(4).tolist()} "
                    f"against '{without}' {b.round(4).tolist()}"
                )
                cases.append(Case(label, (torch.tensor(a), torch.tensor(b))))
    plans = [  # (with, without, max_seeds, what)
        ([0.62, 0.63, 0.61], [0.50, 0.51, 0.52], 100, "a large gap, a small spread"),
        ([0.50, 0.60], [0.55, 0.55], 100, "no difference at all"),
        ([0.50, 0.58, 0.54], [0.52, 0.55, 0.57, 0.51], 20, "a tiny gap in a wide spread: more than max_seeds"),
        ([0.70, 0.70, 0.70], [0.60, 0.60], 100, "no spread at all"),
        ([0.61, nan, 0.57, 0.66], [0.55, 0.58, nan], 100, "NaN seeds, left out"),
        ([0.61, nan], [0.55, 0.58, 0.56], 100, "one scored seed on a side: the spread is unknown"),
        ([0.56, 0.60, 0.52], [0.50, 0.56, 0.52], 12, "max_seeds=12"),
        ([0.56, 0.60, 0.52], [0.50, 0.56, 0.52], 9, "the same numbers, max_seeds=9"),
    ]
    for with_, without, most, what in plans:
        label = f"with {with_}, without {without}, max_seeds={most}: {what}"
        cases.append(
            Case(
                label,
                (torch.tensor(with_, dtype=torch.float64), torch.tensor(without, dtype=torch.float64)),
                {"max_seeds": most},
            )
        )
    return cases


def check_seeds_needed(fn: Callable) -> CheckResult:
    """Grade exercise 9.3: ``fn(with_scores, without_scores, max_seeds=100)`` must return the smallest number of
    seeds per variant n (2 <= n <= max_seeds) at which the measured difference, with the measured spreads, would
    exceed two standard errors; 0 if none, or with fewer than two scored seeds on a side."""

    def variant(**options):
        return _numbers_as_tensors(
            lambda with_scores, without_scores, max_seeds=100: _seeds_variant(
                with_scores, without_scores, max_seeds, **options
            )
        )

    return run_check(
        Check(
            "9.3",
            "how many seeds a difference needs",
            "seeds_needed",
            _seeds_cases(),
            _seeds_reference,
            hint="drop the NaN seeds; d = |mean(with) - mean(without)|, v = var_a + var_b (sample variances); with n "
            "seeds per variant the standard error is sqrt(v / n), so the rule needs d > 2 sqrt(v / n), i.e. "
            "n > 4 v / d^2: the smallest such n, at least 2, or 0 beyond max_seeds (or for d = 0).",
            mistakes=[
                ("the variances are sample variances (divide by n - 1: torch.var's default)", variant(ddof=0)),
                (
                    "at least 2 seeds: with one seed there is no standard error to compare with",
                    variant(floor_two=False),
                ),
                ("beyond max_seeds the answer is 0", variant(cap=False)),
                ("the rule asks for two standard errors, not one", variant(factor=1.0)),
                argument_ignored(_seeds_reference, "max_seeds", 100),
            ],
        ),
        _numbers_as_tensors(fn) if callable(fn) else fn,
    )


# ----------------------------------------------------------------------------------------------------
# The exercise texts; the solutions are solutions/ch09_verdict.py, ch09_flipped.py, ch09_seeds_needed.py
# ----------------------------------------------------------------------------------------------------
VERDICT = r"""
Write `verdict(with_scores, without_scores, noise_floor=0.02)`, the rule behind the sentences above, for
one comparison: the per-seed scores of the variant with the component and of the one without it (tensors,
NaN for a seed that could not be scored). Return `(difference, margin, verdict)`: the difference of the
means (with minus without), the margin it must exceed (two standard errors of that difference, from the
sample variances, when both sides have at least two scored seeds; `noise_floor` otherwise), and the
verdict, $+1$ helped, $0$ no clear difference, $-1$ hurt. The check compares with `ablation_verdicts`.
"""

FLIPPED = r"""
Predict first, from the committed verdicts above (their differences and 2 s.e.): which components would
change verdict if a difference had to exceed only **one** standard error? Write it down. Then write
`flipped_verdicts(table)`, which returns the names of those components (as `ablation_verdicts` names
them) for any per-run ablation table, and run it on `committed`. You may use `ablation_verdicts`; with one
seed there is no standard error, and the noise floor decides under both rules. Was your prediction right,
and what does the answer say about how much the committed verdicts depend on the choice of two?
"""

SEEDS_NEEDED = r"""
"No clear difference" with three seeds may become a clear one with more. Suppose the means and the
per-seed spreads (sample standard deviations) stayed as measured: with $n$ seeds per variant the standard
error is $\sqrt{(s_a^2 + s_b^2)/n}$. Write `seeds_needed(with_scores, without_scores, max_seeds=100)`: the
smallest $n \ge 2$ at which the measured difference exceeds two standard errors, $0$ if no
$n \le$ `max_seeds` does (or if a side has fewer than two scored seeds; NaN seeds are left out).
Predict before you compute, from the committed table: the MoVE comparison (lateral AUC, +MoVE against
+local: a large difference, one seed far off) and the FMC one (progression, +FMC against +MoVE: a small
difference, a small spread): which needs more seeds, and roughly how many? The check includes the committed
table's comparisons.
"""

CHAPTER = "09_ablations"
EXERCISES = [
    Exercise(
        key="verdict",
        chapter=CHAPTER,
        number="9.1",
        title="the verdict of one comparison",
        function="verdict",
        prompt=VERDICT,
        solution="ch09_verdict",
        checker=check_verdict,
        level="medium",
    ),
    Exercise(
        key="flipped-verdicts",
        chapter=CHAPTER,
        number="9.2",
        title="one standard error instead of two",
        function="flipped_verdicts",
        prompt=FLIPPED,
        solution="ch09_flipped",
        checker=check_flipped_verdicts,
        level="easy",
    ),
    Exercise(
        key="seeds-needed",
        chapter=CHAPTER,
        number="9.3",
        title="how many seeds a difference needs",
        function="seeds_needed",
        prompt=SEEDS_NEEDED,
        solution="ch09_seeds_needed",
        checker=check_seeds_needed,
        level="medium",
    ),
]
