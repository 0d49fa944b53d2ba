"""Word-piece merge: tensor ops (medst) vs a per-token Python loop (Method §2).

`loop_ms` is a per-token loop written the usual way (id -> token string, "##" test,
stack + sum per word, zero padding per report); `lean_loop_ms` is a leaner loop that
reads the ids once as a Python list. Both are checked to give the same words.

Prints one JSON line. Example:
    python benchmarks/word_merge.py --reports 64 --tokens 112 --dim 768
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from medst.models.text import merge_word_pieces

SEP, PAD, CLS = 3, 0, 2


def synthetic_batch(reports: int, tokens: int, vocab: int, seed: int):
    """Ids shaped like tokenised reports: [CLS] pieces [SEP] [PAD]...; ~30 % "##" pieces."""
    g = torch.Generator().manual_seed(seed)
    continuation = torch.rand(vocab, generator=g) < 0.3
    continuation[:5] = False  # special tokens
    ids = torch.randint(5, vocab, (reports, tokens), generator=g)
    lengths = torch.randint(tokens // 3, tokens + 1, (reports,), generator=g)  # some truncated at max length
    ids[:, 0] = CLS
    attention = torch.ones(reports, tokens, dtype=torch.long)
    for b, n in enumerate(lengths.tolist()):
        ids[b, min(n, tokens) - 1] = SEP
        ids[b, n:] = PAD
        attention[b, n:] = 0
    return ids, attention, continuation


def loop_merge_tokens(hidden: torch.Tensor, ids: torch.Tensor, id_to_token: dict[int, str]):
    """Per-token loop in the usual style: read each id, look its string up, bank "##" pieces,
    stack and sum each word's vectors, pad each report with a zero block."""
    B, T, D = hidden.shape
    out, masks = [], []
    for vectors, row in zip(hidden, ids):
        words, bank = [], []
        for vec, tid in zip(vectors[1:], row[1:]):
            token = id_to_token[tid.item()]
            if token == "[SEP]":
                break
            if token.startswith("##") and bank:
                bank.append(vec)
                continue
            if bank:
                words.append(torch.stack(bank).sum(0))
            bank = [vec]
        if bank:
            words.append(torch.stack(bank).sum(0))
        merged = torch.stack(words) if words else hidden.new_zeros(0, D)
        out.append(torch.cat([merged, hidden.new_zeros(T - 1 - len(words), D)]))
        masks.append(torch.arange(T - 1) < len(words))
    return torch.stack(out), torch.stack(masks)


def loop_merge(hidden: torch.Tensor, ids: torch.Tensor, continuation: torch.Tensor):
    """A lean per-token loop: ids read once as a list, vectors indexed, summed per word, padded."""
    B, T, D = hidden.shape
    cont = continuation.tolist()
    out, masks = [], []
    for b, row in enumerate(ids.tolist()):
        words: list[list[torch.Tensor]] = []
        for t in range(1, T):
            if row[t] == SEP:
                break
            if cont[row[t]] and words:
                words[-1].append(hidden[b, t])
            else:
                words.append([hidden[b, t]])
        vecs = [torch.stack(w).sum(0) for w in words]
        pad = [hidden.new_zeros(D)] * (T - 1 - len(vecs))
        out.append(torch.stack(vecs + pad))
        masks.append(torch.tensor([True] * len(vecs) + [False] * len(pad)))
    return torch.stack(out), torch.stack(masks)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=112)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=28996)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ids, attention, continuation = synthetic_batch(args.reports, args.tokens, args.vocab, seed=0)
    hidden = torch.randn(args.reports, args.tokens, args.dim)
    id_to_token = {i: (f"##p{i}" if c else f"w{i}") for i, c in enumerate(continuation.tolist())}
    id_to_token.update({PAD: "[PAD]", CLS: "[CLS]", SEP: "[SEP]"})
    with torch.no_grad():
        words, mask = merge_word_pieces(hidden, ids, continuation, SEP, attention)
        for loop in (
            lambda: loop_merge(hidden, ids, continuation),
            lambda: loop_merge_tokens(hidden, ids, id_to_token),
        ):
            ref_words, ref_mask = loop()
            assert torch.equal(mask, ref_mask) and torch.allclose(words, ref_words, atol=1e-4), "merge mismatch"
        tensor_s = best_of(lambda: merge_word_pieces(hidden, ids, continuation, SEP, attention), args.repeats * 4)
        lean_s = best_of(lambda: loop_merge(hidden, ids, continuation), args.repeats)
        token_s = best_of(lambda: loop_merge_tokens(hidden, ids, id_to_token), args.repeats)
    print(
        json.dumps(
            {
                "benchmark": "word_merge",
                "reports": args.reports,
                "tokens": args.tokens,
                "dim": args.dim,
                "words": int(mask.sum()),
                "tensor_ms": round(tensor_s * 1e3, 3),
                "loop_ms": round(token_s * 1e3, 3),
                "speedup": round(token_s / tensor_s, 1),
                "lean_loop_ms": round(lean_s * 1e3, 3),
                "speedup_vs_lean_loop": round(lean_s / tensor_s, 1),
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
