"""Exercise 2.1 (chapter 2, Method §2): merge word pieces into words.

The checker compares the reader's ``merge_words`` with :func:`medst.models.text.merge_word_pieces` on random toy
reports of a small WordPiece vocabulary and on edge cases (empty and truncated reports, a ``##`` piece first, no
``attention_mask``); its mistake models are a loop-based merge with one switchable mistake each.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from medst.book.exercises.framework import Case, Check, CheckResult, Exercise, generator, randn, run_check
from medst.models.text import merge_word_pieces

# A toy WordPiece vocabulary: 0 [PAD], 1 [UNK], 2 [CLS], 3 [SEP], 4 [MASK], 5-17 word starts, 18-29 "##" pieces.
_PAD, _CLS, _SEP, _VOCAB = 0, 2, 3, 30
_STARTS, _CONTINUATIONS = range(5, 18), range(18, 30)


def _toy_continuation() -> Tensor:
    mask = torch.zeros(_VOCAB, dtype=torch.bool)
    mask[list(_CONTINUATIONS)] = True
    return mask


def _toy_report(
    pieces: int, length: int, gen: torch.Generator, *, sep: bool = True, lead_continuation: bool = False
) -> tuple[list[int], list[int]]:
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


def _merge_case(
    label: str, rows: list[tuple[list[int], list[int]]], dim: int, seed: int, use_mask: bool = True
) -> Case:
    ids = torch.tensor([r[0] for r in rows])
    mask = torch.tensor([r[1] for r in rows])
    hidden = randn(*ids.shape, dim, seed=seed)
    shape = f"hidden [B={ids.shape[0]}, T={ids.shape[1]}, D={dim}]"
    ids_text = "; ".join(" ".join(map(str, row)) for row in ids.tolist()[:3])
    return Case(
        f"{label}: {shape}, input_ids rows: {ids_text}{' ...' if len(rows) > 3 else ''} "
        f"(0 [PAD], 2 [CLS], 3 [SEP], 18-29 '##' pieces), "
        f"attention_mask={'given' if use_mask else 'None'}",
        (hidden, ids, _toy_continuation(), _SEP, mask if use_mask else None),
    )


def _merge_cases() -> list[Case]:
    cases = []
    for seed, (batch, length) in enumerate([(2, 8), (4, 12), (3, 16)]):
        gen = generator(100 + seed)
        rows = [_toy_report(int(torch.randint(0, length - 1, (1,), generator=gen)), length, gen) for _ in range(batch)]
        cases.append(_merge_case(f"random reports (seed {seed})", rows, 4, seed))
    gen = generator(7)
    cases.append(
        _merge_case(
            "a '##' piece right after [CLS] starts a word of its own",
            [_toy_report(4, 8, gen, lead_continuation=True), _toy_report(3, 8, gen)],
            3,
            7,
        )
    )
    cases.append(
        _merge_case("a truncated report (no [SEP])", [_toy_report(9, 8, gen, sep=False), _toy_report(2, 8, gen)], 3, 8)
    )
    cases.append(
        _merge_case("an empty report ([CLS] [SEP] only)", [_toy_report(0, 6, gen), _toy_report(3, 6, gen)], 3, 9)
    )
    second = _toy_report(2, 10, gen)[0][:4] + [9, 20, 11, _SEP, _PAD, _PAD]
    cases.append(
        _merge_case(
            "words stop at the first [SEP] (a second segment follows, mask all ones)",
            [(second, [1] * 8 + [0, 0])],
            3,
            10,
        )
    )
    cases.append(
        _merge_case(
            "no attention_mask: [PAD] after [SEP] must not become words",
            [_toy_report(3, 9, gen), _toy_report(5, 9, gen)],
            3,
            11,
            use_mask=False,
        )
    )
    cases.append(_merge_case("shortest input, T = 2", [([_CLS, _SEP], [1, 1])], 2, 12))
    return cases


def _merge_variant(
    hidden,
    input_ids,
    continuation,
    sep_token_id,
    attention_mask=None,
    *,
    average=False,
    stop_at_sep=True,
    use_mask=True,
):
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

    def variant(**options):
        return lambda *args: _merge_variant(*args, **options)

    return run_check(
        Check(
            "2.1",
            "merge word pieces into words",
            "merge_words",
            _merge_cases(),
            merge_word_pieces,
            hint="a piece starts a new word unless it is a '##' continuation; sum (not average) the pieces of a "
            "word; read from position 1 up to the first [SEP], skip positions where attention_mask is 0; "
            "empty word slots are zero and False in word_mask.",
            mistakes=[
                ("the piece vectors of a word are averaged; Med-ST sums them", variant(average=True)),
                ("the words do not stop at the first [SEP]", variant(stop_at_sep=False)),
                ("attention_mask is ignored", variant(use_mask=False)),
            ],
            outputs=("words", "word_mask"),
        ),
        fn,
    )


# ----------------------------------------------------------------------------------------------------
# The exercise text; the solution is solutions/ch02_merge_words.py
# ----------------------------------------------------------------------------------------------------
MERGE_WORDS = r"""
Write `merge_words(hidden, input_ids, continuation, sep_token_id, attention_mask=None)`, the word merge:
the text encoder gives one vector per word piece, and a word's vector is the **sum** of its
pieces' vectors. Position 0 holds `[CLS]`; words are read from position 1 up to the first `[SEP]`
(or, for a truncated report without `[SEP]`, up to the last position that `attention_mask` keeps).
A piece starts a new word unless `continuation[id]` says it is a `##` piece; a `##` piece right after
`[CLS]` starts a word of its own. Return `words` of shape `[B, T-1, D]` (word $k$ in slot $k$, empty
slots zero) and `word_mask` of shape `[B, T-1]` (True for real words).

Use tensor operations only, no Python loop over tokens: a cumulative sum of "starts a word" flags gives
each piece its word slot, and `scatter_add` (or `index_add_`) sums the pieces of each slot.
The check compares your function with `medst.models.text.merge_word_pieces` on random reports and
on edge cases (empty and truncated reports, a `##` piece first, no `attention_mask`).
"""

CHAPTER = "02_encoders"
EXERCISES = [
    Exercise(
        key="word-merge",
        chapter=CHAPTER,
        number="2.1",
        title="merge word pieces into words",
        function="merge_words",
        prompt=MERGE_WORDS,
        solution="ch02_merge_words",
        checker=check_word_merge,
    ),
]
