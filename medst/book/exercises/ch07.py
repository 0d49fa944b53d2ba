"""Exercises 7.1 and 7.2 (chapter 7, Method §7): the learning rate a run logs, and a training step with its guard.

7.1 compares the reader's ``logged_lr`` with the schedule the training loop builds
(``transformers.get_cosine_schedule_with_warmup`` with ``int(warmup_ratio * steps)`` warm-up steps, stepped once per
optimiser step as :func:`medst.train.step.train_step` does), read after every step as ``metrics.csv`` logs it.

7.2 runs the reader's ``guarded_step`` on a tiny model with dropout (arriving in training or evaluation mode), with
SGD or a warmed-up AdamW, in float32 and under bf16 autocast, and compares the loss, the gradient norm, the
parameters after the step and the cleared gradients with :func:`medst.train.step.train_step`; on a batch whose loss
is NaN or infinite the step must raise an error that names the step before any parameter changes (what
:func:`medst.train.step.check_finite` raises, but before the update instead of when the logged values are read).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import get_cosine_schedule_with_warmup
from transformers import optimization as hf_optimization

from medst.book.exercises.framework import Case, Check, CheckResult, Exercise, argument_ignored, run_check
from medst.train.step import AmpPolicy, check_finite, train_step

# the function behind transformers' schedule (a private name: looked up, left out where a version lacks it)
_HF_LR_LAMBDA = getattr(hf_optimization, "_get_cosine_schedule_with_warmup_lr_lambda", None)


# ----------------------------------------------------------------------------------------------------
# 7.1 The learning rate logged at step s
# ----------------------------------------------------------------------------------------------------
def _schedule_reference(steps: Tensor, lr: float, warmup_ratio: float, total_steps: int) -> Tensor:
    """[K] step numbers -> [K] float64: the learning rate logged after step s, from the Trainer's own schedule
    (an optimiser at ``lr`` under ``get_cosine_schedule_with_warmup``, stepped s times; s = 0: before any step)."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    logged = [scheduler.get_last_lr()[0]]
    for _ in range(int(steps.max())):
        optimizer.step()  # no gradient: changes nothing, keeps the scheduler's order check quiet
        scheduler.step()
        logged.append(scheduler.get_last_lr()[0])
    return torch.tensor(logged, dtype=torch.float64)[steps.long()]


def _lr_variant(steps, lr, warmup_ratio, total_steps, *, shift=0, truncate=True, span="rest", shape="cosine"):
    """Mistake models of the schedule: the rate step s used (shift -1), an unrounded warm-up, the cosine spread
    over all steps, a linear decay."""
    s = steps.double() + shift
    warmup = int(warmup_ratio * total_steps) if truncate else warmup_ratio * total_steps
    rest = max(1, total_steps - warmup) if span == "rest" else total_steps
    progress = (s - warmup) / rest
    decay = 0.5 * (1 + torch.cos(math.pi * progress)) if shape == "cosine" else 1 - progress
    return lr * torch.where(s < warmup, s / max(1, warmup), decay.clamp(min=0))


def _lr_cases() -> list[Case]:
    plans = [  # (steps, lr, warmup_ratio, total_steps)
        (torch.arange(0, 11), 1.0, 0.4, 10),  # the published 40 %: warm-up of 4 steps
        (torch.arange(1, 26), 0.5, 0.1, 25),  # 0.1 * 25 = 2.5 warm-up steps
        (torch.tensor([1, 50, 99, 100, 101, 102, 500, 999, 1000]), 3e-4, 0.1, 1000),
        (torch.arange(0, 8), 2.0, 0.0, 7),  # no warm-up
        (torch.tensor([3, 1, 3, 2, 0]), 1.0, 0.5, 3),  # unsorted, repeated; 1.5 -> 1 warm-up step
        (torch.arange(1, 7), 1.0, 1.0, 6),  # warm-up for the whole run
    ]
    cases = []
    for steps, lr, ratio, total in plans:
        shown = steps.tolist() if len(steps) <= 12 else f"{steps.tolist()[:3]} ... {steps.tolist()[-1]}"
        label = f"steps {shown}, lr={lr}, warmup_ratio={ratio}, total_steps={total}"
        cases.append(Case(label, (steps,), {"lr": lr, "warmup_ratio": ratio, "total_steps": total}))
    return cases


def check_logged_lr(fn: Callable) -> CheckResult:
    """Grade exercise 7.1: ``fn(steps, lr, warmup_ratio, total_steps)`` for step numbers [K] must return [K] the
    learning rate that ``metrics.csv`` logs after each step (the Trainer's warm-up + cosine schedule)."""

    def variant(**options):
        return lambda steps, lr, warmup_ratio, total_steps: _lr_variant(steps, lr, warmup_ratio, total_steps, **options)

    return run_check(
        Check(
            "7.1",
            "the learning rate a run logs",
            "logged_lr",
            _lr_cases(),
            _schedule_reference,
            forbidden=tuple(f for f in (get_cosine_schedule_with_warmup, _HF_LR_LAMBDA) if f is not None),
            hint="warm-up steps w = int(warmup_ratio * total_steps); after s steps the rate is lr * s / max(1, w) "
            "for s < w, else lr * 0.5 * (1 + cos(pi * (s - w) / max(1, total_steps - w))).",
            mistakes=[
                (
                    "this is the rate step s used; metrics.csv logs the rate after the schedule's step s "
                    "(StepResult.lr, the rate of the next step)",
                    variant(shift=-1),
                ),
                (
                    "the warm-up lasts int(warmup_ratio * total_steps) steps, a whole number rounded down",
                    variant(truncate=False),
                ),
                (
                    "the cosine spans the steps after the warm-up (total_steps - w), not all total_steps",
                    variant(span="all"),
                ),
                (
                    "the decay is a half cosine, 0.5 (1 + cos(pi * progress)), not a straight line",
                    variant(shape="linear"),
                ),
                argument_ignored(_schedule_reference, "warmup_ratio", 0.0),
                argument_ignored(_schedule_reference, "lr", 1.0),
            ],
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# 7.2 One training step with the non-finite guard before the update
# ----------------------------------------------------------------------------------------------------
@dataclass
class TinyOutput:
    """What :class:`TinyModel` returns, as :class:`medst.models.medst.MedST` does: the loss and its terms."""

    loss: Tensor
    terms: dict[str, Tensor]


@dataclass
class TinyBatch:
    """x [B, 6] features, y [B] classes in 0..2; ``nonfinite``: made so that the loss is NaN or infinite."""

    x: Tensor
    y: Tensor
    nonfinite: bool = False

    @property
    def size(self) -> int:  # the pairs of the batch, as Batch.size
        return len(self.y)


class TinyModel(nn.Module):
    """Linear -> GELU -> dropout -> Linear; loss = cross-entropy + 0.1 mean(h^2), two terms like Med-ST's."""

    def __init__(self, dim: int = 6, hidden: int = 16, classes: int = 3, dropout: float = 0.3) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, classes)

    def forward(self, batch: TinyBatch) -> TinyOutput:
        h = self.drop(F.gelu(self.encoder(batch.x)))  # [B, hidden]
        ce = F.cross_entropy(self.head(h), batch.y)
        reg = h.float().pow(2).mean()
        return TinyOutput(ce + 0.1 * reg, {"ce": ce.detach(), "reg": reg.detach()})


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def _cleared(model: nn.Module) -> bool:
    return all(p.grad is None or not p.grad.any() for p in model.parameters())


@dataclass
class _StepCase(Case):
    """A step changes its model and optimiser, so every call gets them built afresh (same seed, same weights,
    same optimiser state, same dropout masks)."""

    seed: int = 0
    optimizer: str = "sgd"  # "sgd" (momentum) or "adamw" (after one warm-up step, so that its moments hold scale)
    train_mode: bool = True  # the mode the model arrives in
    batch_size: int = 8
    poison: str = ""  # "nan": a NaN input; "inf": a huge input, the loss overflows to inf
    step: int = 1

    def fresh(self) -> tuple[list, dict]:
        torch.manual_seed(self.seed)
        model = TinyModel()
        if self.optimizer == "sgd":
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        else:
            optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05)
            warm = TinyBatch(torch.randn(8, 6), torch.randint(0, 3, (8,)))
            with torch.enable_grad():  # fresh() also runs under the framework's no_grad (mistake models)
                model(warm).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        x, y = torch.randn(self.batch_size, 6) * 2, torch.randint(0, 3, (self.batch_size,))
        if self.poison == "nan":
            x[0, 3] = float("nan")
        elif self.poison == "inf":
            x[0] = 1e30
        model.train(self.train_mode)
        torch.manual_seed(self.seed + 1)  # the step's dropout masks
        return [model, TinyBatch(x, y, nonfinite=bool(self.poison)), optimizer, self.step], dict(self.kwargs)


STEP_OUTPUTS = (
    "raised an error",
    "the error names the step",
    "loss",
    "grad_norm",
    "parameters after the step (for a non-finite loss: unchanged)",
    "gradients cleared after the step",
)


def _step_outcome(fn: Callable) -> Callable:
    """``fn`` as the check sees it: the six entries of :data:`STEP_OUTPUTS`.

    A finite batch gives (False, False, loss, grad_norm, the parameters after the step, whether the gradients
    were cleared); a non-finite one gives (whether ``fn`` raised, whether the error names the step, 0, 0, whether
    the parameters are unchanged, True). ``functools.wraps`` keeps ``fn`` visible to the framework (a library
    function passed as ``fn`` is still refused).
    """

    @functools.wraps(fn)
    def outcome(model, batch, optimizer, step, *args, **kwargs):
        before = _flat(model)
        zero = torch.tensor(0.0)
        try:
            out = fn(model, batch, optimizer, step, *args, **kwargs)
        except NotImplementedError:
            raise
        except Exception as err:
            if not batch.nonfinite:
                raise
            named = re.search(rf"step\W{{0,3}}{step}\b", str(err), flags=re.IGNORECASE) is not None
            unchanged = torch.equal(_flat(model), before)
            return torch.tensor(True), torch.tensor(named), zero, zero, torch.tensor(unchanged), torch.tensor(True)
        if batch.nonfinite:
            unchanged = torch.equal(_flat(model), before)
            return torch.tensor(False), torch.tensor(False), zero, zero, torch.tensor(unchanged), torch.tensor(True)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError(f"guarded_step must return the pair (loss, grad_norm), got {type(out).__name__}")
        loss, grad_norm = out
        return torch.tensor(False), torch.tensor(False), loss, grad_norm, _flat(model), torch.tensor(_cleared(model))

    return outcome


def _library_step(model, batch, optimizer, step, clip=1.0, bf16=False):
    """medst's step (:func:`medst.train.step.train_step`) with its guard (:func:`~medst.train.step.check_finite`)
    moved before the update: a non-finite loss raises before the weights change."""
    if batch.nonfinite:
        with torch.no_grad():
            loss = model(batch).loss
        check_finite(step, float(loss), {})
        raise AssertionError(f"the loss of a non-finite case is finite: {float(loss)}")
    amp = AmpPolicy("cpu", torch.bfloat16 if bf16 else None)
    result = train_step(model, [batch], optimizer, amp=amp, clip=clip)
    check_finite(step, float(result.loss), {k: float(v) for k, v in result.terms.items()})
    return result.loss, result.grad_norm


def _step_variant(
    model,
    batch,
    optimizer,
    step,
    clip=1.0,
    bf16=False,
    *,
    guard="before",
    name_step=True,
    train=True,
    autocast=True,
    clip_on=True,
    norm_after=False,
    clear=True,
):
    """Mistake models of the step: no guard or a guard after the update, an error without the step, no
    ``model.train()``, no autocast, no clipping, the norm after clipping, gradients left in place."""
    with torch.enable_grad():  # the framework runs mistake models under no_grad
        if train:
            model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 and autocast else nullcontext():
            loss = model(batch).loss
        value = float(loss.detach())
        bad = not math.isfinite(value)
        message = f"step {step}: the loss is {value}" if name_step else f"the loss is {value}"
        if bad and guard == "before":
            raise FloatingPointError(message)
        loss.backward()
        limit = clip if clip_on and clip else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), limit)
        optimizer.step()
        if bad and guard == "after":
            raise FloatingPointError(message)
        if clear:
            optimizer.zero_grad(set_to_none=True)
        if norm_after and clip:
            grad_norm = grad_norm.clamp(max=clip)
        return loss.detach().float(), grad_norm.detach().float()


def _step_cases() -> list[_StepCase]:
    plans = [  # seed, optimizer, arrives in train mode, batch size, poison, step, clip, bf16
        (0, "sgd", True, 8, "", 3, 0.5, False),
        (1, "adamw", True, 8, "", 12, 1.0, True),
        (2, "sgd", False, 5, "", 1, None, False),
        (3, "adamw", False, 1, "", 100, 0.05, True),
        (4, "sgd", True, 7, "", 41, 100.0, False),
        (5, "sgd", True, 8, "nan", 7, 1.0, False),
        (6, "adamw", True, 6, "inf", 250, 1.0, True),
    ]
    cases = []
    for seed, opt, train, size, poison, step, clip, bf16 in plans:
        what = {"nan": "a NaN input (the loss is NaN)", "inf": "an input of 1e30 (the loss overflows to inf)"}
        label = (
            f"TinyModel (dropout 0.3) arriving in {'train' if train else 'eval'} mode, "
            f"{'SGD with momentum' if opt == 'sgd' else 'AdamW after one step'}, batch of {size}"
            f"{', ' + what[poison] if poison else ''}, step={step}, clip={clip}, bf16={bf16}"
        )
        cases.append(
            _StepCase(
                label,
                (),
                {"clip": clip, "bf16": bf16},
                seed=seed,
                optimizer=opt,
                train_mode=train,
                batch_size=size,
                poison=poison,
                step=step,
            )
        )
    return cases


def check_guarded_step(fn: Callable) -> CheckResult:
    """Grade exercise 7.2: ``fn(model, batch, optimizer, step, clip=1.0, bf16=False)`` must do one training step
    as :func:`medst.train.step.train_step` (return (loss, grad_norm)), and raise an error naming ``step`` before
    any parameter changes when the loss is NaN or infinite."""
    if not callable(fn):
        return run_check(Check("7.2", "a training step with its guard", "guarded_step", [], _library_step, ""), fn)

    def variant(**options):
        return _step_outcome(functools.partial(_step_variant, **options))

    state = torch.get_rng_state()  # the check seeds the global generator for the dropout masks; put it back
    try:
        return run_check(
            Check(
                "7.2",
                "a training step with its guard",
                "guarded_step",
                _step_cases(),
                _step_outcome(_library_step),
                forbidden=(train_step, check_finite, AmpPolicy),
                outputs=STEP_OUTPUTS,
                hint="model.train(); the forward pass under torch.autocast(device, dtype=torch.bfloat16) when bf16; "
                "a NaN/inf loss raises (naming the step) before backward; then backward, "
                "grad_norm = clip_grad_norm_(parameters, clip or inf), optimizer.step(), optimizer.zero_grad(); "
                "return (loss.detach().float(), grad_norm).",
                mistakes=[
                    (
                        "a NaN or infinite loss must raise an error before the update (the guard is missing)",
                        variant(guard="none"),
                    ),
                    (
                        "the guard comes after optimizer.step(): by then the NaN/inf gradients have reached the "
                        "weights; check the loss before backward",
                        variant(guard="after"),
                    ),
                    ("the error must name the step (e.g. 'step 7: the loss is nan')", variant(name_step=False)),
                    (
                        "the model is not put in training mode (model.train()): it arrived in eval mode, so "
                        "dropout stayed off",
                        variant(train=False),
                    ),
                    (
                        "bf16=True: the forward pass must run under torch.autocast(device_type, dtype=torch.bfloat16)",
                        variant(autocast=False),
                    ),
                    (
                        "the gradients are not clipped to `clip` before optimizer.step() (clip_grad_norm_ after "
                        "the step is too late)",
                        variant(clip_on=False),
                    ),
                    (
                        "grad_norm is the total norm before clipping (what clip_grad_norm_ returns), not after",
                        variant(norm_after=True),
                    ),
                    ("the gradients are not cleared after the step (optimizer.zero_grad())", variant(clear=False)),
                ],
            ),
            _step_outcome(fn),
        )
    finally:
        torch.set_rng_state(state)


# ----------------------------------------------------------------------------------------------------
# The exercise texts; the solutions are solutions/ch07_logged_lr.py, ch07_guarded_step.py
# ----------------------------------------------------------------------------------------------------
LOGGED_LR = r"""
The learning-rate plot above is `metrics.csv`'s `lr` column. Write
`logged_lr(steps, lr, warmup_ratio, total_steps)`: for a tensor of step numbers $s$
($0 \le s \le$ `total_steps`) return the learning rate that column holds at each, as a tensor of the same
shape. The Trainer builds transformers' `get_cosine_schedule_with_warmup` with
$s_w$ = `int(warmup_ratio * total_steps)` warm-up steps (Method §7.2: the linear warm-up of equation
(7.2), then the cosine of (7.3) down to $\eta_{\min} = 0$) and steps it once after every optimiser step; `train_step`
returns the rate *after* the schedule's step (`StepResult.lr`, the rate the next step uses), and that is
what is logged. Mind the rounding of $s_w$, which step the formula is evaluated at, and what happens when
$s_w = 0$ or $s_w$ = `total_steps`. No scheduler object: write the formula. Then predict, and check with
your function: at what learning rate does the very first optimiser step of a run with warm-up train?
"""

GUARDED_STEP = r"""
`medst.train.step.train_step` never waits for the device: the loss stays on it, and the Trainer applies the
non-finite guard (`check_finite`) only when it reads the logged values, every `train.log_every` steps. By
then a NaN has already reached the weights: the run stops, and its last good checkpoint is what is left. Write
`guarded_step(model, batch, optimizer, step, clip=1.0, bf16=False)`, one training step that never lets a
non-finite loss touch the weights:

- `model(batch)` returns an output with `.loss` (a scalar); run it in training mode, under
  `torch.autocast` to bfloat16 when `bf16` is true (on the device type of the model's parameters);
- if the loss is NaN or infinite, raise an error whose message names the step (`"step 7: ..."`)
  **before** anything changes;
- otherwise backward, clip the total gradient norm to `clip` (`None`: no clipping), step the optimiser,
  clear the gradients, and return `(loss, grad_norm)`: the loss detached as float32, and the gradient
  norm *before* clipping.

The check runs a tiny model with dropout (arriving in train or eval mode) under SGD and a warmed-up AdamW,
in float32 and bf16, and compares the loss, the norm, the parameters after the step and the cleared
gradients with `train_step`; then it feeds a NaN batch and one whose loss overflows. What does your guard
cost on a GPU, at every step, that `train_step` avoids?
"""

CHAPTER = "07_pretraining"
EXERCISES = [
    Exercise(
        key="logged-lr",
        chapter=CHAPTER,
        number="7.1",
        title="the learning rate a run logs",
        function="logged_lr",
        prompt=LOGGED_LR,
        solution="ch07_logged_lr",
        checker=check_logged_lr,
        level="easy",
    ),
    Exercise(
        key="guarded-step",
        chapter=CHAPTER,
        number="7.2",
        title="a training step with its guard",
        function="guarded_step",
        prompt=GUARDED_STEP,
        solution="ch07_guarded_step",
        checker=check_guarded_step,
        level="hard",
    ),
]
