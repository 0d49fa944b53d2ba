"""Exercises of chapters 2-6 and the checkers that grade them.

Each exercise asks the reader to write one piece of Med-ST as a plain function; its checker calls that
function on random inputs (several seeds and shapes, edge cases included) and compares the result, and
for losses also the gradients, with the library's implementation::

    from medst.exercises import check_fmc
    check_fmc(fmc)          # prints a success message, or raises ExerciseError

A checker returns a :class:`CheckResult` (true when passed). A stub that still raises
``NotImplementedError`` is reported as "not implemented yet" (printed; the result is false), so that a student's copy of a chapter runs top to bottom before any exercise is
done. A wrong answer raises :class:`ExerciseError` (an ``AssertionError``) naming the input, the expected
and the returned values, the largest absolute error and a hint; where the answer matches a typical
mistake (averaging instead of summing, a flipped sign, ...) the hint names that mistake.

``EXERCISES`` holds, per chapter, the exercise text, the student's stub, the solution and the check call
as data; :func:`exercise_cells` turns them into the notebook cells a chapter ends with (a markdown prompt,
a code cell tagged ``solution`` whose metadata carries the stub, a code cell tagged ``check``), and
``python -m medst.student`` writes the students' copy of the book with every solution replaced by its
stub. ``python -m medst.exercises append book/06_temporal.ipynb`` (re)writes a chapter's exercise cells.
"""
from __future__ import annotations

import argparse
import inspect
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ExerciseError", "CheckResult", "Exercise", "EXERCISES", "check_word_merge", "check_global_loss",
           "check_move_block", "check_local_word_side", "check_fmc", "check_rmr", "exercise_cells",
           "append_exercises", "find_exercise"]

ATOL, RTOL = 1e-5, 1e-4  # values (float32 inputs)
GRAD_ATOL, GRAD_RTOL = 1e-4, 1e-3  # gradients


class ExerciseError(AssertionError):
    """An exercise's function gave a wrong answer; the message says on which input and how."""


@dataclass(frozen=True)
class CheckResult:
    """What a checker returns: ``passed`` (True), or False for a stub; truthy only when passed.

    The checker has already printed its message, so in a notebook the result displays nothing.
    """

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:  # shown by the print already
        pass


# ----------------------------------------------------------------------------------------------------
# Checking machinery
# ----------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One input of a check: positional ``args`` (tensors and modules), keyword ``kwargs``.

    ``grad`` lists the positions of the tensor arguments whose gradient is compared (losses only).
    """

    label: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    grad: tuple[int, ...] = ()

    def fresh(self) -> tuple[list[Any], dict]:
        """A copy of the inputs that the called function may modify freely; grad inputs require grad."""
        args = [a.detach().clone().requires_grad_(i in self.grad) if isinstance(a, Tensor) else a
                for i, a in enumerate(self.args)]
        return args, dict(self.kwargs)


@dataclass
class Check:
    """What a checker needs: the exercise, its inputs, the reference, typical mistakes with their hints."""

    number: str
    title: str
    function: str
    cases: list[Case]
    reference: Callable[..., Any]
    hint: str
    mistakes: Sequence[tuple[str, Callable[..., Any]]] = ()
    outputs: tuple[str, ...] = ()  # names of the entries of a tuple result, for the messages

    @property
    def name(self) -> str:
        return f"Exercise {self.number} ({self.title})"


def _describe(value: Any) -> str:
    """A short text for a tensor (scalar value, or shape and a few entries) or anything else."""
    if isinstance(value, Tensor):
        value = value.detach()
        if value.dim() == 0:
            return f"{value.item():.6g}"
        flat = value.reshape(-1)
        head = ", ".join(f"{v:.4g}" if value.is_floating_point() else str(v) for v in flat[:6].tolist())
        return f"tensor of shape {list(value.shape)} [{head}{', ...' if flat.numel() > 6 else ''}]"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    return repr(value)


def _mismatch(expected: Any, got: Any, what: str = "result", atol: float = ATOL,
              rtol: float = RTOL, names: Sequence[str] = ()) -> Optional[str]:
    """None if ``got`` matches ``expected`` (tensors or tuples of tensors), else a description.

    ``names`` name the entries of a tuple result (default ``result[i]``).
    """
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            wanted = f" ({', '.join(names)})" if names else ""
            return f"{what}: expected a tuple of {len(expected)} values{wanted}, got {_describe(got)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            problem = _mismatch(e, g, names[i] if i < len(names) else f"{what}[{i}]", atol, rtol)
            if problem:
                return problem
        return None
    if not isinstance(got, Tensor):
        extra = " (did you forget `return`?)" if got is None else ""
        return f"{what}: expected a torch.Tensor, got {type(got).__name__}{extra}"
    if got.shape != expected.shape:
        scalar = " (a loss is a scalar: reduce with .mean() or .sum() as the method says)" \
            if expected.dim() == 0 else ""
        return f"{what}: expected shape {list(expected.shape)}, got {list(got.shape)}{scalar}"
    if expected.dtype == torch.bool or got.dtype == torch.bool:
        if got.dtype != expected.dtype:
            return f"{what}: expected dtype {expected.dtype}, got {got.dtype}"
        wrong = (got.cpu() != expected.cpu()).nonzero()
        if len(wrong):
            return (f"{what}: {len(wrong)} entries differ, first at index {tuple(wrong[0].tolist())}\n"
                    f"  expected: {_describe(expected)}\n  got:      {_describe(got)}")
        return None
    g, e = got.detach().cpu().double(), expected.detach().cpu().double()
    if not torch.isfinite(g).all() and torch.isfinite(e).all():
        return (f"{what}: contains NaN or inf where the expected values are finite\n"
                f"  expected: {_describe(expected)}\n  got:      {_describe(got)}\n"
                "  (log of a softmax that underflowed? use F.log_softmax / F.cross_entropy)")
    if not torch.allclose(g, e, atol=atol, rtol=rtol):
        error = (g - e).abs()
        at = ""
        if error.dim():
            at = f" (at index {tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))})"
        return (f"{what} differs\n  expected: {_describe(expected)}\n  got:      {_describe(got)}\n"
                f"  max abs error: {error.max().item():.3g}{at}")
    return None


def _call(fn: Callable, case: Case) -> tuple[Any, list[Any]]:
    """Run ``fn`` on a fresh copy of the case; returns (output, the argument list it was given)."""
    args, kwargs = case.fresh()
    return fn(*args, **kwargs), args


def _gradients(output: Any, args: list[Any], positions: tuple[int, ...]) -> Optional[list[Tensor]]:
    """d output / d args[positions] (zeros where the output does not depend on an input); None if no graph."""
    if not isinstance(output, Tensor) or not output.requires_grad:
        return None
    inputs = [args[i] for i in positions]
    grads = torch.autograd.grad(output.sum(), inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _which_mistake(check: Check, case: Case, got: Any, expected: Any) -> Optional[str]:
    """The hint of the first typical mistake whose output equals ``got`` (and differs from ``expected``)."""
    for hint, wrong in check.mistakes:
        try:
            with torch.no_grad():
                args, kwargs = case.fresh()
                value = wrong(*args, **kwargs)
        except Exception:  # a mistake model that does not apply to this input
            continue
        if _mismatch(value, got) is None and _mismatch(value, expected) is not None:
            return hint
    return None


def run_check(check: Check, fn: Any) -> CheckResult:
    """Grade ``fn`` on every case of ``check``; passed if all cases pass, not passed if it is still a stub.

    Raises:
        ExerciseError: on the first case where ``fn`` raises, or its value or gradient is wrong.
    """
    if not callable(fn):
        raise ExerciseError(f"{check.name}: pass the function itself (e.g. `{check.function}`, without calling "
                            f"it), not a {type(fn).__name__}: {fn!r:.60}")
    for case in check.cases:
        try:
            got, args = _call(fn, case)
        except NotImplementedError:
            message = (f"{check.name}: not implemented yet.\n  Replace `raise NotImplementedError` in "
                       f"`{check.function}` with your code, then run this cell again.")
            print(message)
            return CheckResult(False, message)
        except Exception as err:
            raise ExerciseError(f"{check.name}: your function raised {type(err).__name__}: {err}\n"
                                f"{_wrap('input: ' + case.label)}\n{_wrap('hint: ' + check.hint)}") from err
        expected_out, expected_args = _call(check.reference, case)
        problem = _mismatch(expected_out, got, names=check.outputs)
        if problem is None and case.grad:
            expected_grads = _gradients(expected_out, expected_args, case.grad)
            got_grads = _gradients(got, args, case.grad)
            if got_grads is None:
                problem = ("the result carries no gradient: it must be computed from the inputs with "
                           "differentiable torch operations (no .detach(), .item(), numpy or torch.no_grad)")
            else:
                for position, e, g in zip(case.grad, expected_grads, got_grads):
                    problem = _mismatch(e, g, f"the gradient w.r.t. {_argument_name(fn, position)}",
                                        GRAD_ATOL, GRAD_RTOL)
                    if problem:
                        break
        if problem:
            if problem.startswith("the gradient"):
                hint = ("the value is right but its gradient is not: is part of the computation cut from the "
                        "graph (.detach(), .item(), .data, torch.no_grad) or a constant where an input belongs?")
            else:
                mistake = _which_mistake(check, case, got, expected_out)
                hint = f"looks like a typical mistake: {mistake}" if mistake else check.hint
            raise ExerciseError(f"{check.name}: wrong answer.\n{_wrap('input: ' + case.label)}\n  {problem}\n"
                                f"{_wrap('hint: ' + hint)}")
    grads = " and gradients" if any(case.grad for case in check.cases) else ""
    message = (f"\u2714 {check.name}: correct.\n"
               f"  Values{grads} match medst on all {len(check.cases)} test inputs.")
    print(message)
    return CheckResult(True, message)


def _argument_name(fn: Callable, position: int) -> str:
    """The name the student gave positional argument ``position`` (or "argument N")."""
    try:
        names = [p.name for p in inspect.signature(fn).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        names = []
    return f"`{names[position]}`" if position < len(names) else f"argument {position + 1}"


def _wrap(text: str) -> str:
    """Indent a long line of feedback and wrap it at 100 columns."""
    return textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="    ",
                         break_long_words=False, break_on_hyphens=False)


def _fixed(reference: Callable[..., Any], name: str, value: float) -> tuple[str, Callable[..., Any]]:
    """Mistake model: the keyword argument ``name`` is ignored and ``value`` used instead."""
    return (f"the `{name}` argument is ignored (the result is the one for {name}={value})",
            lambda *args, **kwargs: reference(*args, **{**kwargs, name: value}))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=_generator(seed)) * scale


def _unit(*shape: int, seed: int) -> Tensor:
    """Random L2-normalised vectors along the last dimension."""
    return F.normalize(_randn(*shape, seed=seed), dim=-1)


# ----------------------------------------------------------------------------------------------------
# Chapter 2: word merge (Method §2)
# ----------------------------------------------------------------------------------------------------
# A toy WordPiece vocabulary: 0 [PAD], 1 [UNK], 2 [CLS], 3 [SEP], 4 [MASK], 5-17 word starts, 18-29 "##" pieces.
_PAD, _CLS, _SEP, _VOCAB = 0, 2, 3, 30
_STARTS, _CONTINUATIONS = range(5, 18), range(18, 30)


def _toy_continuation() -> Tensor:
    mask = torch.zeros(_VOCAB, dtype=torch.bool)
    mask[list(_CONTINUATIONS)] = True
    return mask


def _toy_report(pieces: int, length: int, gen: torch.Generator, *, sep: bool = True,
                lead_continuation: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and attention mask of one report: [CLS] pieces [SEP] [PAD]... (length tokens)."""
    ids = [_CLS]
    for k in range(pieces):
        cont = (k > 0 and torch.rand(1, generator=gen).item() < 0.4) or (k == 0 and lead_continuation)
        pool = _CONTINUATIONS if cont else _STARTS
        ids.append(pool[int(torch.randint(len(pool), (1,), generator=gen))])
    if sep:
        ids.append(_SEP)
    mask = [1] * len(ids) + [0] * (length - len(ids))
    ids += [_PAD] * (length - len(ids))
    return ids[:length], mask[:length]


def _merge_case(label: str, rows: list[tuple[list[int], list[int]]], dim: int, seed: int,
                use_mask: bool = True) -> Case:
    ids = torch.tensor([r[0] for r in rows])
    mask = torch.tensor([r[1] for r in rows])
    hidden = _randn(*ids.shape, dim, seed=seed)
    shape = f"hidden [B={ids.shape[0]}, T={ids.shape[1]}, D={dim}]"
    ids_text = "; ".join(" ".join(map(str, row)) for row in ids.tolist()[:3])
    return Case(f"{label}: {shape}, input_ids rows: {ids_text}{' ...' if len(rows) > 3 else ''} "
                f"(0 [PAD], 2 [CLS], 3 [SEP], 18-29 '##' pieces), "
                f"attention_mask={'given' if use_mask else 'None'}",
                (hidden, ids, _toy_continuation(), _SEP, mask if use_mask else None))


def _merge_cases() -> list[Case]:
    cases = []
    for seed, (batch, length) in enumerate([(2, 8), (4, 12), (3, 16)]):
        gen = _generator(100 + seed)
        rows = [_toy_report(int(torch.randint(0, length - 1, (1,), generator=gen)), length, gen)
                for _ in range(batch)]
        cases.append(_merge_case(f"random reports (seed {seed})", rows, 4, seed))
    gen = _generator(7)
    cases.append(_merge_case("a '##' piece right after [CLS] starts a word of its own",
                             [_toy_report(4, 8, gen, lead_continuation=True), _toy_report(3, 8, gen)], 3, 7))
    cases.append(_merge_case("a truncated report (no [SEP])",
                             [_toy_report(9, 8, gen, sep=False), _toy_report(2, 8, gen)], 3, 8))
    cases.append(_merge_case("an empty report ([CLS] [SEP] only)",
                             [_toy_report(0, 6, gen), _toy_report(3, 6, gen)], 3, 9))
    second = _toy_report(2, 10, gen)[0][:4] + [9, 20, 11, _SEP, _PAD, _PAD]
    cases.append(_merge_case("words stop at the first [SEP] (a second segment follows, mask all ones)",
                             [(second, [1] * 8 + [0, 0])], 3, 10))
    cases.append(_merge_case("no attention_mask: [PAD] after [SEP] must not become words",
                             [_toy_report(3, 9, gen), _toy_report(5, 9, gen)], 3, 11, use_mask=False))
    cases.append(_merge_case("shortest input, T = 2", [([_CLS, _SEP], [1, 1])], 2, 12))
    return cases


def _merge_variant(hidden, input_ids, continuation, sep_token_id, attention_mask=None, *,
                   average=False, stop_at_sep=True, use_mask=True):
    """A loop-based word merge with switchable mistakes (for hints only)."""
    B, T, D = hidden.shape
    words, mask = hidden.new_zeros(B, T - 1, D), torch.zeros(B, T - 1, dtype=torch.bool)
    for b in range(B):
        groups: list[list[int]] = []
        for t in range(1, T):
            if attention_mask is not None and use_mask and not attention_mask[b, t]:
                continue
            if stop_at_sep and int(input_ids[b, t]) == sep_token_id:
                break
            if bool(continuation[input_ids[b, t]]) and groups:
                groups[-1].append(t)
            else:
                groups.append([t])
        for w, group in enumerate(groups):
            vectors = hidden[b, group]
            words[b, w] = vectors.mean(0) if average else vectors.sum(0)
            mask[b, w] = True
    return words, mask


def check_word_merge(fn: Callable) -> CheckResult:
    """Grade exercise 2.1: ``fn(hidden, input_ids, continuation, sep_token_id, attention_mask)`` must
    return ``(words [B, T-1, D], word_mask [B, T-1])`` as :func:`medst.models.text.merge_word_pieces`."""
    from medst.models.text import merge_word_pieces

    def variant(**options):
        return lambda *args: _merge_variant(*args, **options)

    return run_check(Check(
        "2.1", "merge word pieces into words", "merge_words", _merge_cases(), merge_word_pieces,
        hint="a piece starts a new word unless it is a '##' continuation; sum (not average) the pieces of a "
             "word; read from position 1 up to the first [SEP], skip positions where attention_mask is 0; "
             "empty word slots are zero and False in word_mask.",
        mistakes=[("the piece vectors of a word are averaged; Med-ST sums them", variant(average=True)),
                  ("the words do not stop at the first [SEP]", variant(stop_at_sep=False)),
                  ("attention_mask is ignored", variant(use_mask=False))],
        outputs=("words", "word_mask")), fn)


# ----------------------------------------------------------------------------------------------------
# Chapter 3: global alignment (Method §4)
# ----------------------------------------------------------------------------------------------------
def _global_cases() -> list[Case]:
    cases = []
    for seed, (batch, dim, tau) in enumerate([(8, 16, 0.07), (5, 4, 0.07), (6, 8, 0.5), (2, 8, 1.0),
                                              (1, 4, 0.07)]):
        label = f"img, txt [B={batch}, d={dim}] random unit vectors (seed {seed}), temperature={tau}"
        if batch == 1:
            label += " (one pair: no negatives, the loss is 0)"
        cases.append(Case(label, (_unit(batch, dim, seed=seed), _unit(batch, dim, seed=50 + seed)),
                          {"temperature": tau}, grad=(0, 1)))
    paired = _unit(4, 8, seed=9)
    cases.append(Case("img, txt [B=4, d=8] with txt close to img (a well-aligned batch), temperature=0.07",
                      (paired, F.normalize(paired + 0.1 * _randn(4, 8, seed=10), dim=-1)),
                      {"temperature": 0.07}, grad=(0, 1)))
    return cases


def _global_variant(img, txt, temperature=0.07, *, directions=("i2t", "t2i"), reduce="sum", scale=True):
    logits = img @ txt.T / (temperature if scale else 1.0)
    targets = torch.arange(len(img))
    terms = {"i2t": F.cross_entropy(logits, targets), "t2i": F.cross_entropy(logits.T, targets)}
    total = sum(terms[d] for d in directions)
    return total / len(directions) if reduce == "mean" else total


def check_global_loss(fn: Callable) -> CheckResult:
    """Grade exercise 3.1: ``fn(img, txt, temperature=0.07)`` for img, txt [B, d] must return the scalar
    :func:`medst.losses.contrastive.global_alignment_loss` (values and gradients)."""
    from medst.losses.contrastive import global_alignment_loss

    def variant(**options):
        return lambda img, txt, temperature=0.07: _global_variant(img, txt, temperature, **options)

    return run_check(Check(
        "3.1", "the image-report InfoNCE", "global_loss", _global_cases(), global_alignment_loss,
        hint="s = img @ txt.T / temperature; the positives are on the diagonal; add the cross-entropy over "
             "rows (image -> reports) and over columns (report -> images), each a mean over the batch.",
        mistakes=[("the two directions are averaged; Med-ST adds them", variant(reduce="mean")),
                  ("only the image -> report direction is there; add CE(s.T, I)", variant(directions=("i2t",))),
                  ("only the report -> image direction is there; add CE(s, I)", variant(directions=("t2i",))),
                  ("the similarities are not divided by the temperature", variant(scale=False)),
                  _fixed(global_alignment_loss, "temperature", 0.07)]), fn)


# ----------------------------------------------------------------------------------------------------
# Chapter 4: MoVE block (Method §3)
# ----------------------------------------------------------------------------------------------------
def _tiny_move(seed: int, dim: int = 16):
    """A 2-block MoVE around a tiny timm ViT with layer scale; every weight jittered so that norms, layer
    scales and the two experts all differ."""
    from timm.models.vision_transformer import VisionTransformer

    from medst.models.vision import MoVE

    torch.manual_seed(seed)
    move = MoVE(VisionTransformer(img_size=16, patch_size=8, embed_dim=dim, depth=2, num_heads=2,
                                  init_values=0.5, num_classes=0))
    with torch.no_grad():
        for p in move.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=_generator(seed + p.numel())))
    return move.eval()


def _move_cases() -> list[tuple[Case, Any, int]]:
    cases = []
    move = _tiny_move(0)
    for seed, (batch, patches, block, lateral) in enumerate([(2, 4, 0, True), (3, 4, 1, True), (1, 6, 0, True),
                                                            (2, 4, 1, False)]):
        n_frontal = 1 + patches
        tokens = n_frontal + (patches if lateral else 0)
        x = _randn(batch, tokens, move.embed_dim, seed=200 + seed)
        label = (f"x [B={batch}, S={tokens}, D={move.embed_dim}] = [CLS, {patches} frontal"
                 f"{f', {patches} lateral' if lateral else ''} tokens], n_frontal={n_frontal}, block {block}"
                 f"{'' if lateral else ' (no lateral tokens: a plain ViT block)'}")
        cases.append((Case(label, (move.vit.blocks[block], move.lateral_experts[block], x, n_frontal)),
                      move, block))
    return cases


def _separate_attention(block, lateral_expert, x, n_frontal):
    """Mistake model: each view attends only to itself."""
    front, side = x[:, :n_frontal], x[:, n_frontal:]
    front = front + block.ls1(block.attn(block.norm1(front)))
    side = side + block.ls1(block.attn(block.norm1(side))) if side.shape[1] else side
    x = torch.cat([front, side], dim=1)
    return x + torch.cat([block.ls2(block.mlp(block.norm2(x[:, :n_frontal]))),
                          lateral_expert(x[:, n_frontal:])], dim=1)


def _no_residual(block, lateral_expert, x, n_frontal):
    """Mistake model: the feed-forward outputs replace the tokens instead of being added."""
    x = x + block.ls1(block.attn(block.norm1(x)))
    return torch.cat([block.ls2(block.mlp(block.norm2(x[:, :n_frontal]))), lateral_expert(x[:, n_frontal:])], 1)


def check_move_block(fn: Callable) -> CheckResult:
    """Grade exercise 4.1: ``fn(block, lateral_expert, x, n_frontal)`` must compute one MoVE block on
    x [B, S, D] exactly as :meth:`medst.models.vision.MoVE.joint_block` (a plain timm block when S = n_frontal)."""
    items = _move_cases()
    blocks = {id(case.args[0]): (move, i) for case, move, i in items}

    def reference(block, lateral_expert, x, n_frontal):
        move, i = blocks[id(block)]
        return move.joint_block(i, x, n_frontal)

    def plain_block(block, lateral_expert, x, n_frontal):
        return block(x)

    with torch.no_grad():
        return run_check(Check(
            "4.1", "one Mixture-of-View-Experts block", "move_block", [c for c, _, _ in items], reference,
            hint="x = x + drop_path1(ls1(attn(norm1(x)))) over ALL tokens (one shared attention); then the first "
                 "n_frontal tokens go through block.norm2/mlp/ls2, the rest through lateral_expert, and the "
                 "concatenated outputs are added to x.",
            mistakes=[("the lateral tokens go through the frontal expert; use lateral_expert for them",
                       plain_block),
                      ("the two views attend separately; the attention must run over the whole sequence",
                       _separate_attention),
                      ("the feed-forward output is not added to x (missing residual)", _no_residual)]), fn)


# ----------------------------------------------------------------------------------------------------
# Chapter 5: word side of the local alignment (Method §5)
# ----------------------------------------------------------------------------------------------------
def _local_cases() -> list[Case]:
    cases = []
    for seed, (batch, words, patches, dim, tau) in enumerate([(2, 5, 8, 8, 0.1), (3, 4, 6, 8, 0.5),
                                                             (1, 6, 4, 8, 0.1), (2, 1, 3, 8, 0.1)]):
        torch.manual_seed(300 + seed)
        weighting = nn.MultiheadAttention(dim, 1, batch_first=True)
        label = (f"words [B={batch}, W={words}, d={dim}], patches [B={batch}, P={patches}, d={dim}] random unit "
                 f"vectors (seed {seed}), temperature={tau}{' (a single word)' if words == 1 else ''}")
        cases.append(Case(label, (_unit(batch, words, dim, seed=seed), _unit(batch, patches, dim, seed=40 + seed),
                                  weighting), {"temperature": tau}, grad=(0, 1)))
    return cases


def _word_side_variant(words, patches, weighting, temperature=0.1, *, renormalise=True, weighted=True,
                       directions=("rows", "cols")):
    attn = (words @ patches.transpose(1, 2) / temperature).softmax(-1)
    context = attn @ patches
    if renormalise:
        context = F.normalize(context, dim=-1)
    inter = F.normalize(words * context, dim=-1)
    _, omega = weighting(inter.mean(1, keepdim=True), inter, inter, need_weights=True)
    omega = omega[:, 0] if weighted else torch.full_like(omega[:, 0], 1.0 / words.shape[1])
    sim = words @ context.transpose(1, 2) / temperature
    targets = torch.arange(words.shape[1]).expand(words.shape[0], -1)
    terms = {"rows": (omega * F.cross_entropy(sim.transpose(1, 2), targets, reduction="none")).sum(1).mean(),
             "cols": (omega * F.cross_entropy(sim, targets, reduction="none")).sum(1).mean()}
    return sum(terms[d] for d in directions) / len(directions)


def check_local_word_side(fn: Callable) -> CheckResult:
    """Grade exercise 5.1: ``fn(words, patches, weighting, temperature=0.1)`` for words [B, W, d], patches
    [B, P, d] and a one-head ``nn.MultiheadAttention`` must return the scalar word-side loss ``L_word`` of
    :class:`medst.losses.local.LocalAlignment` (all tokens valid; values and gradients)."""
    from medst.losses.local import LocalAlignment

    def reference(words, patches, weighting, temperature=0.1):
        local = LocalAlignment(words.shape[-1], temperature)
        local.word_weighting = weighting
        return local(words, patches, return_details=True).loss_word

    def variant(**options):
        return lambda w, p, m, temperature=0.1: _word_side_variant(w, p, m, temperature, **options)

    return run_check(Check(
        "5.1", "the word side of the local alignment", "word_side_loss", _local_cases(), reference,
        hint="a = softmax(words @ patches^T / τ) over patches; c = normalise(a @ patches); e = normalise(words * c); "
             "ω = weights of weighting(query=mean_i e_i, key=value=e); m = words @ c^T / τ; the loss is the mean over "
             "the batch of Σ_i ω_i CE(m_i,:, i) and of Σ_i ω_i CE(m_:,i, i), averaged.",
        mistakes=[("the context c_i is not re-normalised on the word side", variant(renormalise=False)),
                  ("the words are not weighted by ω (a plain mean over words)", variant(weighted=False)),
                  ("only the row direction CE(m_i,:, i) is there; average it with the column direction",
                   variant(directions=("rows",))),
                  ("only the column direction CE(m_:,i, i) is there; average it with the row direction",
                   variant(directions=("cols",))),
                  _fixed(reference, "temperature", 0.1)]), fn)


# ----------------------------------------------------------------------------------------------------
# Chapter 6: FMC and RMR (Method §6)
# ----------------------------------------------------------------------------------------------------
def _sequence_case(seed: int, seqs: int, steps: int, dim: int, scale: float, close: bool,
                   **kwargs: float) -> Case:
    """Random sequences a, b [S, L, d] (b = a + noise when ``close``), keyword arguments as given."""
    a = _randn(seqs, steps, dim, seed=seed, scale=scale)
    b = a + _randn(seqs, steps, dim, seed=60 + seed, scale=0.5 * scale) if close else \
        _randn(seqs, steps, dim, seed=60 + seed, scale=scale)
    options = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    label = (f"a, b [S={seqs}, L={steps}, d={dim}] random (seed {seed}, scale {scale}"
             f"{', b close to a' if close else ''}), {options}{' (L = 2)' if steps == 2 else ''}")
    return Case(label, (a, b), kwargs, grad=(0, 1))


def _identical_case(**kwargs: float) -> Case:
    same = _randn(2, 4, 8, seed=90, scale=0.4)
    options = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return Case(f"a = b [S=2, L=4, d=8] (identical sequences), {options}", (same, same.clone()), kwargs, grad=(0, 1))


def _fmc_cases() -> list[Case]:
    shapes = [(3, 4, 8, 0.5, False, 0.1), (2, 5, 4, 0.5, True, 0.5), (1, 2, 3, 0.5, False, 0.1),
              (4, 4, 8, 0.3, True, 1.0), (2, 3, 6, 1.0, False, 0.1)]
    return [_sequence_case(seed, *shape[:5], temperature=shape[5]) for seed, shape in enumerate(shapes)] + \
        [_identical_case(temperature=0.1)]


def _rmr_cases() -> list[Case]:
    """Inputs whose losses stay moderate (an RMR loss explodes when σ² is tiny and the cycle misses)."""
    shapes = [(3, 4, 8, 0.5, True, 0.1), (2, 5, 4, 0.5, False, 0.5), (1, 2, 3, 0.5, False, 0.1),
              (4, 4, 8, 0.3, False, 1.0), (2, 3, 6, 1.0, True, 0.3), (2, 6, 8, 0.4, True, 0.2)]
    cases = [_sequence_case(seed, *shape[:5], temperature=shape[5], variance_lambda=1e-3)
             for seed, shape in enumerate(shapes)]
    return cases + [_identical_case(temperature=0.1, variance_lambda=1e-3),
                    _sequence_case(7, 2, 4, 8, 0.5, False, temperature=0.5, variance_lambda=0.1)]


def _l2(x: Tensor, y: Tensor) -> Tensor:
    return -(x[:, :, None] - y[:, None, :]).pow(2).sum(-1)


def _fmc_variant(a, b, temperature=0.1, *, sign=1.0, scale=True, cosine=False, swap=False, reduce="mean"):
    if swap:
        a, b = b, a
    sim = a @ b.transpose(1, 2) if cosine else sign * _l2(a, b)
    logits = sim / (temperature if scale else 1.0)
    seqs, steps, _ = logits.shape
    ce = F.cross_entropy(logits.reshape(-1, steps), torch.arange(steps).repeat(seqs), reduction="none")
    return ce.sum() if reduce == "sum" else ce.mean()


def check_fmc(fn: Callable) -> CheckResult:
    """Grade exercise 6.1: ``fn(a, b, temperature=0.1)`` for a, b [S, L, d] must return the scalar
    :func:`medst.losses.temporal.fmc_loss` with the L2 similarity (values and gradients)."""
    from medst.losses.temporal import fmc_loss

    def reference(a, b, temperature=0.1):
        return fmc_loss(a, b, temperature=temperature, similarity="l2")

    def variant(**options):
        return lambda a, b, temperature=0.1: _fmc_variant(a, b, temperature, **options)

    return run_check(Check(
        "6.1", "forward mapping classification", "fmc", _fmc_cases(), reference,
        hint="logits_tk = -||a_t - b_k||^2 / T for every pair of steps of one sequence ([S, L, L]); the class of "
             "row t is t; L_FMC is the cross-entropy averaged over steps and sequences.",
        mistakes=[("the similarity has the wrong sign: sim = -||a_t - b_k||^2 (closer = larger)",
                   variant(sign=-1.0)),
                  ("the logits are not divided by the temperature", variant(scale=False)),
                  ("the direction is b -> a; FMC(a -> b) classifies each step of a among the steps of b",
                   variant(swap=True)),
                  ("a dot product is used; this exercise uses the L2 similarity -||x - y||^2", variant(cosine=True)),
                  ("the cross-entropies are summed; L_FMC is their mean over steps and sequences",
                   variant(reduce="sum")),
                  _fixed(reference, "temperature", 0.1)]), fn)


def _rmr_variant(a, b, temperature=0.1, variance_lambda=1e-3, *, denominator="L", log_term=True,
                 divide_var=True):
    steps = a.shape[1]
    beta = (_l2(a, b) / temperature).softmax(-1)
    alpha = (_l2(beta @ b, a) / temperature).softmax(-1)
    times = torch.arange(steps, dtype=a.dtype) / (steps if denominator == "L" else steps - 1)
    mu = alpha @ times
    var = (alpha * (times - mu[..., None]) ** 2).sum(-1)
    error = (times - mu) ** 2
    loss = error / (var + 1e-7) if divide_var else error
    if log_term:
        loss = loss + variance_lambda * torch.log(var + 1e-7)
    return loss.mean()


def check_rmr(fn: Callable) -> CheckResult:
    """Grade exercise 6.2: ``fn(a, b, temperature=0.1, variance_lambda=1e-3)`` for a, b [S, L, d] must return
    the scalar :func:`medst.losses.temporal.rmr_loss` with the L2 similarity (values and gradients)."""
    from medst.losses.temporal import rmr_loss

    def reference(a, b, temperature=0.1, variance_lambda=1e-3):
        return rmr_loss(a, b, temperature=temperature, similarity="l2", variance_lambda=variance_lambda)

    def variant(**options):
        return lambda a, b, temperature=0.1, variance_lambda=1e-3: _rmr_variant(a, b, temperature,
                                                                                variance_lambda, **options)

    return run_check(Check(
        "6.2", "reverse mapping regression", "rmr", _rmr_cases(), reference,
        hint="β = softmax_k(-||a_t - b_k||^2 / T); ṽ = β @ b; α = softmax_k(-||ṽ_t - a_k||^2 / T); τ_k = k / L; "
             "μ = α @ τ; σ² = Σ_k α_tk (τ_k - μ_t)^2; loss_t = (τ_t - μ_t)^2 / (σ²_t + 1e-7) + λ log(σ²_t + 1e-7), "
             "averaged over steps and sequences.",
        mistakes=[("the time positions are k / (L - 1); the published code (and medst) uses τ_k = k / L",
                   variant(denominator="L-1")),
                  ("the variance term λ·log(σ² + 1e-7) is missing", variant(log_term=False)),
                  ("the squared error is not divided by the variance σ² + 1e-7", variant(divide_var=False)),
                  _fixed(reference, "temperature", 0.1), _fixed(reference, "variance_lambda", 1e-3)]), fn)


# ----------------------------------------------------------------------------------------------------
# The exercises as data: text, stub, solution, check
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Exercise:
    """One exercise: what the reader reads, starts from, should arrive at, and how it is checked."""

    key: str  # short id, used in cell ids and metadata
    chapter: str  # notebook stem, e.g. "06_temporal"
    number: str  # "6.1"
    title: str
    function: str  # the name the reader defines
    prompt_md: str
    stub_code: str
    solution_code: str
    check_code: str

    @property
    def checker(self) -> Callable[[Callable], CheckResult]:
        """The check function named in ``check_code``."""
        name = re.search(r"\b(check_\w+)\(", self.check_code)
        return globals()[name.group(1)] if name else None  # type: ignore[return-value]


def _code(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


def _stub(header: str, function: str) -> str:
    """Stub code: the solution's imports and signature with docstring, body replaced by a raise."""
    return _code(header) + f'    raise NotImplementedError("exercise: write {function}")\n'


_MERGE_HEADER = '''
    import torch


    def merge_words(hidden, input_ids, continuation, sep_token_id, attention_mask=None):
        """Sum the word-piece vectors of each word (Method §2).

        hidden [B, T, D], input_ids [B, T], continuation [V] bool (token id -> is a "##" piece),
        attention_mask [B, T] or None  ->  words [B, T-1, D] (empty slots zero), word_mask [B, T-1] bool.
        """
'''
_MERGE_BODY = '''
        B, T, D = hidden.shape
        ids, pieces = input_ids[:, 1:], hidden[:, 1:]  # [B, T-1]: everything after [CLS]
        real = (ids == sep_token_id).long().cumsum(dim=1) == 0  # before the first [SEP]
        if attention_mask is not None:
            real = real & attention_mask[:, 1:].bool()
        starts = real & ~continuation.to(ids.device)[ids]  # pieces that open a word
        starts[:, 0] = real[:, 0]  # even a "##" piece right after [CLS] opens one
        slot = starts.long().cumsum(dim=1) - 1  # [B, T-1]: piece -> its word's slot
        slot = torch.where(real, slot, torch.full_like(slot, T - 1))  # other pieces -> a spare slot
        words = hidden.new_zeros(B, T, D).scatter_add(1, slot[..., None].expand(-1, -1, D), pieces)
        word_mask = torch.arange(T - 1, device=ids.device) < starts.sum(dim=1, keepdim=True)
        return words[:, : T - 1], word_mask
'''

_GLOBAL_HEADER = '''
    import torch
    import torch.nn.functional as F


    def global_loss(img, txt, temperature=0.07):
        """Symmetric image-report InfoNCE (Method §4): img, txt [B, d] (L2-normalised) -> scalar."""
'''
_GLOBAL_BODY = '''
        logits = img @ txt.T / temperature  # [B, B]: s_ij = <v_i, t_j> / τ
        targets = torch.arange(len(img), device=img.device)  # pair i is the positive of row i and column i
        return F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)
'''

_MOVE_HEADER = '''
    import torch


    def move_block(block, lateral_expert, x, n_frontal):
        """One Mixture-of-View-Experts block (Method §3).

        block: a timm ViT Block (norm1, attn, ls1, drop_path1, norm2, mlp, ls2, drop_path2);
        lateral_expert: x_lateral [B, S_l, D] -> [B, S_l, D] (its own norm + MLP + layer scale);
        x [B, S, D] = [CLS, frontal tokens, lateral tokens]; the first n_frontal tokens are [CLS] + frontal.
        Returns [B, S, D].
        """
'''
_MOVE_BODY = '''
        x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))  # one attention over both views
        front = block.ls2(block.mlp(block.norm2(x[:, :n_frontal])))  # frontal expert: [CLS] + frontal
        side = lateral_expert(x[:, n_frontal:])  # lateral expert
        return x + block.drop_path2(torch.cat([front, side], dim=1))
'''

_LOCAL_HEADER = '''
    import torch
    import torch.nn.functional as F


    def word_side_loss(words, patches, weighting, temperature=0.1):
        """Word side L_word of the modality-weighted local alignment (Method §5), all tokens valid.

        words [B, W, d], patches [B, P, d] (L2-normalised); weighting: nn.MultiheadAttention(d, 1,
        batch_first=True) whose attention weights are the word weights ω. Returns a scalar.
        """
'''
_LOCAL_BODY = '''
        attn = (words @ patches.transpose(1, 2) / temperature).softmax(dim=-1)  # [B, W, P] a_ij
        context = F.normalize(attn @ patches, dim=-1)  # [B, W, d] c_i
        inter = F.normalize(words * context, dim=-1)  # [B, W, d] e_i
        query = inter.mean(dim=1, keepdim=True)  # [B, 1, d] q
        _, omega = weighting(query, inter, inter, need_weights=True)  # [B, 1, W]
        omega = omega[:, 0] / omega[:, 0].sum(dim=1, keepdim=True)  # [B, W] ω
        sim = words @ context.transpose(1, 2) / temperature  # [B, W, W] m_ik
        targets = torch.arange(words.shape[1], device=words.device).expand(words.shape[0], -1)
        rows = F.cross_entropy(sim.transpose(1, 2), targets, reduction="none")  # CE(m_i,:, i)
        cols = F.cross_entropy(sim, targets, reduction="none")  # CE(m_:,i, i)
        return ((omega * rows).sum(dim=1).mean() + (omega * cols).sum(dim=1).mean()) / 2
'''

_FMC_HEADER = '''
    import torch
    import torch.nn.functional as F


    def fmc(a, b, temperature=0.1):
        """Forward mapping classification a -> b with sim(x, y) = -||x - y||^2 (Method §6).

        a, b [S, L, d]: S sequences of L steps of the two modalities. Returns a scalar.
        """
'''
_FMC_BODY = '''
        sim = -(a[:, :, None] - b[:, None, :]).pow(2).sum(dim=-1)  # [S, L, L]: sim(a_t, b_k)
        S, L, _ = sim.shape
        targets = torch.arange(L, device=a.device).repeat(S)  # step t of a must pick step t of b
        return F.cross_entropy((sim / temperature).reshape(S * L, L), targets)
'''

_RMR_HEADER = '''
    import torch


    def rmr(a, b, temperature=0.1, variance_lambda=1e-3):
        """Reverse mapping regression a -> b -> a with sim(x, y) = -||x - y||^2 (Method §6).

        a, b [S, L, d]. Returns a scalar (the Huber branch never fires for δ = 2 and is left out).
        """
'''
_RMR_BODY = '''
        def sim(x, y):  # [S, L, d], [S, L, d] -> [S, L, L]
            return -(x[:, :, None] - y[:, None, :]).pow(2).sum(dim=-1)

        L = a.shape[1]
        beta = (sim(a, b) / temperature).softmax(dim=-1)  # [S, L, L] β_tk
        soft_nn = beta @ b  # [S, L, d] ṽ_t, the soft nearest neighbour of a_t in b
        alpha = (sim(soft_nn, a) / temperature).softmax(dim=-1)  # [S, L, L] α_tk: back onto a
        times = torch.arange(L, dtype=a.dtype, device=a.device) / L  # τ_k = k / L
        mu = alpha @ times  # [S, L] predicted time
        var = (alpha * (times - mu[..., None]) ** 2).sum(dim=-1)  # [S, L] σ²_t
        eps = 1e-7
        loss = (times - mu) ** 2 / (var + eps) + variance_lambda * torch.log(var + eps)
        return loss.mean()
'''


def _exercise(key: str, chapter: str, number: str, title: str, function: str, prompt: str, header: str,
              body: str, checker: str) -> Exercise:
    return Exercise(key=key, chapter=chapter, number=number, title=title, function=function,
                    prompt_md=f"### Exercise {number}: {title}\n\n" + textwrap.dedent(prompt).strip() + "\n",
                    stub_code=_stub(header, function), solution_code=_code(header + body.lstrip("\n")),
                    check_code=f"from medst.exercises import {checker}\n\n{checker}({function})\n")


EXERCISES: dict[str, list[Exercise]] = {
    "02_encoders": [_exercise(
        "word-merge", "02_encoders", "2.1", "merge word pieces into words", "merge_words", r"""
        Write `merge_words(hidden, input_ids, continuation, sep_token_id, attention_mask=None)`, the word merge: the text encoder gives one vector per word piece, and a word's vector is the **sum** of its
        pieces' vectors. Position 0 holds `[CLS]`; words are read from position 1 up to the first `[SEP]`
        (or, for a truncated report without `[SEP]`, up to the last position that `attention_mask` keeps).
        A piece starts a new word unless `continuation[id]` says it is a `##` piece; a `##` piece right after
        `[CLS]` starts a word of its own. Return `words` of shape `[B, T-1, D]` (word $k$ in slot $k$, empty
        slots zero) and `word_mask` of shape `[B, T-1]` (True for real words).

        Use tensor operations only, no Python loop over tokens: a cumulative sum of "starts a word" flags gives
        each piece its word slot, and `scatter_add` (or `index_add_`) sums the pieces of each slot.
        The check compares your function with `medst.models.text.merge_word_pieces` on random reports and
        on edge cases (empty and truncated reports, a `##` piece first, no `attention_mask`).
        """, _MERGE_HEADER, _MERGE_BODY, "check_word_merge")],
    "03_global_alignment": [_exercise(
        "global-loss", "03_global_alignment", "3.1", "the image-report InfoNCE", "global_loss", r"""
        Write `global_loss(img, txt, temperature=0.07)` for L2-normalised image and report embeddings
        `img`, `txt` of shape `[B, d]` (row $i$ of both belongs to pair $i$):

        $$s_{ij} = \frac{\langle v_i, t_j\rangle}{\tau}, \qquad
        \mathcal{L}_\text{global} = \mathrm{CE}(s, I) + \mathrm{CE}(s^\top, I),$$

        each cross-entropy averaged over the batch, the two directions **added**. The check compares values
        and gradients with `medst.losses.contrastive.global_alignment_loss`, including a batch of one pair.
        """, _GLOBAL_HEADER, _GLOBAL_BODY, "check_global_loss")],
    "04_move": [_exercise(
        "move-block", "04_move", "4.1", "one Mixture-of-View-Experts block", "move_block", r"""
        Write `move_block(block, lateral_expert, x, n_frontal)`: one block of MoVE on the sequence
        `x = [CLS, frontal tokens, lateral tokens]` of shape `[B, S, D]`. `block` is a timm ViT `Block`;
        its attention is **shared** by both views (pre-norm, residual), then the first `n_frontal` tokens
        (`[CLS]` and the frontal patches) go through the block's own feed-forward expert
        (`norm2`, `mlp`, `ls2`), the lateral tokens through `lateral_expert`, and the two outputs,
        concatenated back in order, are added to `x` (through `drop_path2`).

        With no lateral tokens (`n_frontal == S`) your block must be exactly the plain timm block. The check
        compares with `MoVE.joint_block` on a tiny MoVE with layer scale.
        """, _MOVE_HEADER, _MOVE_BODY, "check_move_block")],
    "05_local_alignment": [_exercise(
        "local-word-side", "05_local_alignment", "5.1", "the word side of the local alignment",
        "word_side_loss", r"""
        Write `word_side_loss(words, patches, weighting, temperature=0.1)`, the word side of the
        modality-weighted local alignment for one batch without padding: `words` `[B, W, d]` and
        `patches` `[B, P, d]` are L2-normalised, `weighting` is a one-head `nn.MultiheadAttention`.

        1. $a_{ij} = \mathrm{softmax}_j(\langle w_i, p_j\rangle/\tau_l)$ and
           $c_i = \mathrm{normalise}(\sum_j a_{ij} p_j)$;
        2. $e_i = \mathrm{normalise}(w_i \odot c_i)$;
        3. $\omega$ = the attention weights of `weighting(q, e, e)` with $q = \mathrm{mean}_i\, e_i$,
           renormalised to sum 1;
        4. $m_{ik} = \langle w_i, c_k\rangle/\tau_l$ and
           $\mathcal{L}_\text{word} = \tfrac12\big(\sum_i \omega_i \mathrm{CE}(m_{i,:}, i)
           + \sum_i \omega_i \mathrm{CE}(m_{:,i}, i)\big)$, each sum averaged over the batch.

        The check compares values and gradients with `LocalAlignment(...).loss_word`.
        """, _LOCAL_HEADER, _LOCAL_BODY, "check_local_word_side")],
    "06_temporal": [
        _exercise("fmc", "06_temporal", "6.1", "forward mapping classification", "fmc", r"""
        Write `fmc(a, b, temperature=0.1)` for two sequences of embeddings `a`, `b` of shape `[S, L, d]`
        with the L2 similarity $\mathrm{sim}(x, y) = -\lVert x - y\rVert^2$:

        $$\text{logits}_{tk} = \mathrm{sim}(a_t, b_k) / T, \qquad
        \mathcal{L}_\text{FMC} = \mathrm{CE}(\text{logits}_{t,:},\ t)$$

        averaged over steps $t$ and sequences, with no Python loop over sequences. The check compares values
        and gradients with `medst.losses.temporal.fmc_loss` (also for $L = 2$ and identical sequences).
        """, _FMC_HEADER, _FMC_BODY, "check_fmc"),
        _exercise("rmr", "06_temporal", "6.2", "reverse mapping regression", "rmr", r"""
        Write `rmr(a, b, temperature=0.1, variance_lambda=1e-3)`, the two-hop cycle $a \to b \to a$
        with the L2 similarity: $\beta_{tk} = \mathrm{softmax}_k(\mathrm{sim}(a_t, b_k)/T)$,
        $\tilde v_t = \sum_k \beta_{tk} b_k$, $\alpha_{tk} = \mathrm{softmax}_k(\mathrm{sim}(\tilde v_t, a_k)/T)$;
        time positions $\tau_k = k/L$, prediction $\mu_t = \sum_k \alpha_{tk}\tau_k$, variance
        $\sigma_t^2 = \sum_k \alpha_{tk}(\tau_k - \mu_t)^2$, and

        $$\text{loss}_t = \frac{(\tau_t - \mu_t)^2}{\sigma_t^2 + 10^{-7}} + \lambda \log(\sigma_t^2 + 10^{-7}),$$

        averaged over steps and sequences. (The Huber branch of the paper never fires: $|\tau_t - \mu_t| < 1 < \delta = 2$.)
        The check compares values and gradients with `medst.losses.temporal.rmr_loss`.
        """, _RMR_HEADER, _RMR_BODY, "check_rmr"),
    ],
}


def find_exercise(key: str) -> Exercise:
    """The exercise with this key (e.g. "fmc")."""
    for exercises in EXERCISES.values():
        for exercise in exercises:
            if exercise.key == key:
                return exercise
    raise KeyError(f"medst/exercises.py: no exercise {key!r}; known: "
                   f"{[e.key for es in EXERCISES.values() for e in es]}")


def _chapter_key(chapter: str) -> str:
    """'06_temporal', 'book/06_temporal.ipynb', '06' or '6' -> '06_temporal'."""
    stem = Path(str(chapter)).stem
    if stem in EXERCISES:
        return stem
    if stem.isdigit():
        for key in EXERCISES:
            if int(key.split("_")[0]) == int(stem):
                return key
    raise KeyError(f"medst/exercises.py: chapter {chapter!r} has no exercises; chapters with exercises: "
                   f"{list(EXERCISES)}")


# ----------------------------------------------------------------------------------------------------
# Notebook cells
# ----------------------------------------------------------------------------------------------------
def exercise_cells(chapter: str) -> list:
    """The cells a chapter ends with: a heading, then per exercise a prompt (markdown), the solution (code,
    tagged ``solution`` and ``hide-input``; ``metadata.medst.stub`` holds the student's stub) and the check
    (code, tagged ``check``). Every cell has ``metadata.medst.exercise`` and a stable id.
    """
    import nbformat

    key = _chapter_key(chapter)
    v4 = nbformat.v4
    cells = [v4.new_markdown_cell(
        "## Exercises\n\nWrite each function in the cell below its text, then run the check cell after it. "
        "In the book, the solution is hidden behind the *show* toggle; the students' edition "
        "(`python -m medst.student`) has a stub there instead.\n",
        id=f"ex-{key.replace('_', '-')}", metadata={"tags": ["exercise"], "medst": {"exercise": "heading"}})]
    for ex in EXERCISES[key]:
        cells.append(v4.new_markdown_cell(ex.prompt_md, id=f"ex-{ex.key}-prompt",
                                          metadata={"tags": ["exercise"], "medst": {"exercise": ex.key}}))
        cells.append(v4.new_code_cell(ex.solution_code.rstrip("\n"), id=f"ex-{ex.key}-solution",
                                      metadata={"tags": ["solution", "hide-input"],
                                                "medst": {"exercise": ex.key, "stub": ex.stub_code.rstrip("\n")}}))
        cells.append(v4.new_code_cell(ex.check_code.rstrip("\n"), id=f"ex-{ex.key}-check",
                                      metadata={"tags": ["check"], "medst": {"exercise": ex.key}}))
    return cells


def is_exercise_cell(cell) -> bool:
    """True for a cell that :func:`exercise_cells` made."""
    return "exercise" in cell.get("metadata", {}).get("medst", {})


def append_exercises(nb, chapter: str):
    """Replace the exercise cells of notebook ``nb`` (an nbformat node) by fresh ones at its end; returns nb."""
    nb.cells = [cell for cell in nb.cells if not is_exercise_cell(cell)]
    cells = exercise_cells(chapter)
    if (nb.nbformat, nb.get("nbformat_minor", 0)) < (4, 5):
        for cell in cells:
            cell.pop("id", None)
    nb.cells.extend(cells)
    return nb


def main(argv: list[str] | None = None) -> None:
    """``python -m medst.exercises list`` | ``append NOTEBOOK...`` | ``check`` (grade the solutions)."""
    parser = argparse.ArgumentParser(prog="python -m medst.exercises", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the exercises")
    p = sub.add_parser("append", help="(re)write the exercise cells at the end of chapter notebooks")
    p.add_argument("notebooks", nargs="+", type=Path)
    sub.add_parser("check", help="run every solution through its checker")
    args = parser.parse_args(argv)
    if args.command == "list":
        for chapter, exercises in EXERCISES.items():
            for ex in exercises:
                print(f"{chapter:22s} {ex.number:5s} {ex.key:16s} {ex.title}")
    elif args.command == "append":
        import nbformat

        for path in args.notebooks:
            if not path.is_file():
                sys.exit(f"error: {path}: no such notebook")
            nb = nbformat.read(path, as_version=4)
            append_exercises(nb, path.stem)
            nbformat.write(nb, path)
            print(f"{path}: {len(EXERCISES[_chapter_key(path.stem)])} exercise(s) written")
    else:
        for exercises in EXERCISES.values():
            for ex in exercises:
                namespace: dict[str, Any] = {}
                exec(compile(ex.solution_code, f"<solution {ex.key}>", "exec"), namespace)
                ex.checker(namespace[ex.function])


if __name__ == "__main__":
    main()
