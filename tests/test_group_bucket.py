"""Static shapes for torch.compile: MoVE's view groups padded to a few sizes give the same results as unpadded."""

from __future__ import annotations

import copy

import pytest
import torch

from medst.config import load_profile
from medst.data.dataset import Batch, Collator
from medst.models.medst import build_medst
from medst.models.vision import create_move
from medst.train.bench import synthetic_batch, synthetic_tokenizer

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def move(bucket: int = 0):
    torch.manual_seed(0)
    m = create_move("vit_base_patch16_224", **TINY)
    m.group_bucket = bucket
    return m


def padded(lateral: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([lateral, lateral.new_zeros(rows - lateral.shape[0], *lateral.shape[1:])])


@pytest.mark.parametrize("pattern", ["1001101", "1110000", "0000001", "1111111", "0000000", "1111110"])
def test_padded_groups_equal_exact_groups(pattern):
    has = torch.tensor([c == "1" for c in pattern])
    g = torch.Generator().manual_seed(len(pattern))
    frontal = torch.randn(len(has), 3, 32, 32, generator=g)
    lateral = torch.randn(int(has.sum()), 3, 32, 32, generator=g)
    exact, bucketed = move(0).train(), move(3).train()
    rows = min(-(-lateral.shape[0] // 3) * 3, len(has))
    a = exact(frontal, lateral, has)
    b = bucketed(frontal, padded(lateral, rows), has, compact=True)
    torch.testing.assert_close(b.cls, a.cls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.patches, a.patches, rtol=1e-5, atol=1e-5)
    assert torch.equal(a.patch_mask, b.patch_mask)
    (a.cls.sum() + a.patches.square().sum()).backward()
    (b.cls.sum() + b.patches.square().sum()).backward()
    for (name, p), q in zip(exact.named_parameters(), bucketed.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max()), msg=name)


def test_group_sizes_take_few_values():
    m = move(16)
    B = 128  # the gpu profile: 16 sequences of 4 and 64 singles
    sizes = {m._group_sizes(B, min(-(-n // 16) * 16, B)) for n in range(B + 1)}
    assert len(sizes) == B // 16 + 1
    for n in range(B + 1):  # every real study fits in its group
        rows = min(-(-n // 16) * 16, B)
        n_lat, n_one = m._group_sizes(B, rows)
        assert n_lat >= n and n_one >= B - n and n_one % 16 == 0
    assert move(0)._group_sizes(B, 50) == (50, 78)


def test_compact_padding_is_checked():
    m = move(4)
    has = torch.tensor([True, False, False, False, True])
    with pytest.raises(ValueError, match="at most 3 padding rows"):
        m(torch.randn(5, 3, 32, 32), torch.randn(1, 3, 32, 32), has, compact=True)
    with pytest.raises(ValueError, match="at most 3 padding rows"):  # 5 rows, no lateral at all
        m(torch.randn(5, 3, 32, 32), torch.randn(5, 3, 32, 32), torch.zeros(5, dtype=torch.bool), compact=True)


def test_batch_pad_laterals_and_collator():
    def batch(n_lat: int, B: int = 10) -> Batch:
        has = torch.arange(B) < n_lat
        return Batch(
            frontal=torch.randn(B, 3, 8, 8),
            lateral=torch.randn(n_lat, 3, 8, 8),
            has_lateral=has,
            input_ids=torch.zeros(B, 4, dtype=torch.long),
            attention_mask=torch.ones(B, 4, dtype=torch.long),
            num_sequences=0,
            sequence_length=4,
            study_ids=list(range(B)),
            subject_ids=list(range(B)),
            texts=[""] * B,
        )

    b = batch(5)
    p = b.pad_laterals(4)
    assert p.lateral.shape[0] == 8 and torch.equal(p.lateral[:5], b.lateral) and not p.lateral[5:].any()
    assert batch(9).pad_laterals(4).lateral.shape[0] == 10  # never more rows than studies
    assert batch(8).pad_laterals(4).lateral.shape[0] == 8
    assert b.pad_laterals(0) is b

    class Tok:  # enough of a tokenizer for the Collator
        def __call__(self, texts, **kw):
            return {
                "input_ids": torch.ones(len(texts), 4, dtype=torch.long),
                "attention_mask": torch.ones(len(texts), 4, dtype=torch.long),
            }

    items = [
        {
            "frontal": torch.zeros(1, 8, 8, dtype=torch.uint8),
            "lateral": torch.zeros(1, 8, 8, dtype=torch.uint8) if i % 3 == 0 else None,
            "text": "x",
            "study_id": i,
            "subject_id": i,
        }
        for i in range(7)
    ]
    assert Collator(Tok(), lateral_bucket=2)(items).lateral.shape[0] == 4  # 3 laterals, padded to 4
    assert Collator(Tok())(items).lateral.shape[0] == 3


def test_medst_loss_is_the_same_with_padded_groups():
    cfg = load_profile("ci", ["model.text.dropout=0.0"])
    torch.manual_seed(0)
    exact = build_medst(cfg, synthetic_tokenizer(cfg.model.text.vocab_size)).train()
    bucketed = copy.deepcopy(exact)
    bucketed.vision.group_bucket = 4
    batch = synthetic_batch(cfg, 2, 3, exact.text.tokenizer, torch.device("cpu"))  # 11 studies, 6 with a lateral
    assert batch.lateral.shape[0] == 6 and batch.pad_laterals(4).lateral.shape[0] == 8
    a, b = exact(batch), bucketed(batch.pad_laterals(4))
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-5)
    for k in a.terms:
        torch.testing.assert_close(b.terms[k], a.terms[k], rtol=1e-5, atol=1e-5, msg=k)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(exact.named_parameters(), bucketed.parameters()):
        if p.grad is not None:  # sums over different batch shapes round differently: tolerance from the scale
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5 * float(p.grad.abs().max()), msg=name)
