"""MPMA, the neighbour of chapter 10 (medst.neighbours.mpma): paired masking keeps its ratios and spares special
tokens, the reconstruction losses read masked positions only, the memory fusion is permutation-equivariant, a tiny
MPMA overfits one batch, and an MPMA run trains, saves, loads and is evaluated like a Med-ST run."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import torch
from script_helpers import benchmark_script

from medst.config import load_profile
from medst.data.dataset import StudyDataset, collator_from_config
from medst.models.build import build_tokenizer
from medst.models.medst import MedST, build_model, load_run
from medst.neighbours.mpma import (
    MACMF,
    MPMA,
    FusionLayer,
    MemoryAttention,
    masked_count,
    masked_patch_loss,
    masked_token_loss,
    patchify,
    random_patch_mask,
    random_token_mask,
    unpatchify,
    visible_indices,
)
from medst.train.bench import synthetic_batch, synthetic_tokenizer
from medst.train.loop import Trainer
from medst.train.step import AmpPolicy, train_step


@pytest.fixture(scope="module")
def tokenizer():
    return synthetic_tokenizer(300)


# ---------------------------------------------------------------------------------------------------------
# Paired masking
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_patches, ratio", [(64, 0.75), (49, 0.75), (16, 0.5), (10, 0.15), (196, 0.9)])
def test_patch_mask_removes_exactly_the_ratio(num_patches, ratio):
    g = torch.Generator().manual_seed(0)
    mask = random_patch_mask(32, num_patches, ratio, generator=g)
    n_mask = masked_count(num_patches, ratio)
    assert n_mask == int(num_patches * ratio + 0.5)
    assert mask.shape == (32, num_patches) and mask.dtype == torch.bool
    assert (mask.sum(dim=1) == n_mask).all()
    assert len({tuple(row.tolist()) for row in mask}) > 1  # each image draws its own patches
    keep = visible_indices(mask, num_patches - n_mask)
    for row, kept in zip(mask, keep):
        assert kept.tolist() == torch.nonzero(~row).flatten().tolist()  # the kept patches, in image order


def test_patch_mask_refuses_ratios_that_keep_or_remove_everything():
    for ratio in (0.0, 0.01, 0.99, 1.0):
        with pytest.raises(ValueError, match="at least one"):
            random_patch_mask(2, 16, ratio)


def test_token_mask_keeps_the_ratio_and_never_masks_special_tokens(tokenizer):
    texts = ["effusion", "small left pleural effusion", " ".join(["the lung is clear"] * 12), "no change"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    ids, attention = enc["input_ids"], enc["attention_mask"]
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    ordinary = attention.bool() & ~torch.isin(ids, special)
    assert (~ordinary).any(dim=1).all() and (attention == 0).any()  # [CLS]/[SEP] everywhere, padding somewhere
    n = ordinary.sum(dim=1)
    for ratio in (0.15, 0.5):
        expected = torch.minimum(torch.clamp(torch.floor(n * ratio + 0.5), min=1), n).long()
        for seed in range(20):
            mask = random_token_mask(ids, attention, special, ratio, generator=torch.Generator().manual_seed(seed))
            assert not (mask & ~ordinary).any(), "a [CLS], [SEP], [PAD] or other special token was masked"
            assert torch.equal(mask.sum(dim=1), expected)
    assert expected[0] == 1  # a one-word report still has one token to fill in


# ---------------------------------------------------------------------------------------------------------
# Reconstruction losses
# ---------------------------------------------------------------------------------------------------------
def test_pixel_loss_reads_masked_patches_only():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 32, 32, generator=g)
    target = patchify(images, 8)  # [3, 16, 192]
    assert torch.equal(unpatchify(target, 8, (4, 4), 3), images)
    mask = random_patch_mask(3, 16, 0.75, generator=g)
    pred = torch.randn(3, 16, 192, generator=g, requires_grad=True)
    for norm_pix in (True, False):
        loss = masked_patch_loss(pred, target, mask, norm_pix=norm_pix)
        changed = torch.where(mask[..., None], target, torch.randn(target.shape, generator=g) * 100)
        assert torch.equal(masked_patch_loss(pred, changed, mask, norm_pix=norm_pix), loss)  # kept targets unread
        changed = torch.where(mask[..., None], target + torch.randn(target.shape, generator=g), target)
        assert not torch.equal(masked_patch_loss(pred, changed, mask, norm_pix=norm_pix), loss)
    (grad,) = torch.autograd.grad(masked_patch_loss(pred, images, mask, patch=8), pred)
    assert (grad[~mask] == 0).all() and (grad[mask] != 0).any()
    plain = ((pred - target) ** 2).mean(-1)[mask].mean()
    assert torch.allclose(masked_patch_loss(pred, target, mask, norm_pix=False), plain)


def test_token_loss_reads_masked_tokens_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 11, generator=g, requires_grad=True)
    labels = torch.randint(11, (2, 7), generator=g)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, 2], mask[1, 3], mask[1, 5] = True, True, True
    loss = masked_token_loss(logits, labels, mask)
    other = torch.where(mask, labels, (labels + 3) % 11)
    assert torch.equal(masked_token_loss(logits, other, mask), loss)  # unmasked labels are never read
    scores = torch.where(mask[..., None], logits, torch.full_like(logits, float("nan")))
    assert torch.equal(masked_token_loss(scores, labels, mask), loss)  # nor the scores there
    reference = torch.nn.functional.cross_entropy(logits[mask], labels[mask])
    assert torch.allclose(loss, reference)
    (grad,) = torch.autograd.grad(loss, logits)
    assert (grad[~mask] == 0).all()


# ---------------------------------------------------------------------------------------------------------
# MA-CMF
# ---------------------------------------------------------------------------------------------------------
def test_memory_fusion_is_permutation_equivariant_over_tokens():
    torch.manual_seed(0)
    x, context = torch.randn(2, 9, 32), torch.randn(2, 6, 32)
    context_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    perm, cperm = torch.randperm(9), torch.randperm(6)

    attention = MemoryAttention(32, heads=4, slots=5).eval()
    out = attention(x, context, context_mask)
    assert out.shape == x.shape
    assert torch.allclose(attention(x[:, perm], context, context_mask), out[:, perm], atol=1e-5)
    assert torch.allclose(attention(x, context[:, cperm], context_mask[:, cperm]), out, atol=1e-5)
    assert torch.allclose(attention(x[:, perm])[:, :], attention(x)[:, perm], atol=1e-5)  # the memory alone
    # padded context tokens are not read; the memory slots are
    noisy = torch.where(context_mask[..., None], context, torch.randn_like(context) * 50)
    assert torch.allclose(attention(x, noisy, context_mask), out, atol=1e-5)
    with torch.no_grad():
        attention.memory_v.add_(1.0)
    assert not torch.allclose(attention(x, context, context_mask), out, atol=1e-3)

    layer = FusionLayer(32, heads=4, slots=5).eval()
    x_mask = torch.ones(2, 9, dtype=torch.bool)
    out = layer(x, context, x_mask, context_mask)
    assert torch.allclose(layer(x[:, perm], context, x_mask, context_mask), out[:, perm], atol=1e-5)

    fusion = MACMF(image_dim=24, text_dim=32, dim=32, layers=2, heads=4, slots=5).eval()
    image = torch.randn(2, 9, 24)
    fused_image, fused_text = fusion(image, context, context_mask)
    p_image, p_text = fusion(image[:, perm], context[:, cperm], context_mask[:, cperm])
    assert torch.allclose(p_image, fused_image[:, perm], atol=1e-5)
    assert torch.allclose(p_text, fused_text[:, cperm], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------
def _phantom_batch(cfg, prepared_dir, tmp_path, n: int):
    tok = build_tokenizer(cfg, prepared_dir, cache_dir=tmp_path / "tokenizer")
    ds = StudyDataset(prepared_dir, split="train", image_size=cfg.data.image_size, train=False)
    return tok, collator_from_config(cfg, tok)([ds[i] for i in range(n)])


def test_tiny_mpma_overfits_one_batch(prepared_dir, tmp_path):
    """The reconstruction path can learn: on one batch of 4 phantom pairs, with the same masks every step, L_MIM
    and L_MLM each fall by at least 90 % within 200 steps (about 15 s on one CPU thread)."""
    torch.set_num_threads(1)
    cfg = load_profile("ci", ["model.method=mpma", "model.text.dropout=0.0", "data.augment=false"])
    tok, batch = _phantom_batch(cfg, prepared_dir, tmp_path, 4)
    torch.manual_seed(0)
    model = build_model(cfg, tok)
    assert isinstance(model, MPMA) and model.vision.lateral_experts is None  # one view, no lateral experts
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    start, history = time.perf_counter(), []
    model.train()
    for _ in range(200):
        masks = torch.Generator().manual_seed(1)  # the same masks at every step
        terms = model.reconstruction_terms(batch.frontal, batch.input_ids, batch.attention_mask, masks)
        (terms["mim"] + terms["mlm"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({k: float(v.detach()) for k, v in terms.items()})
    first, last = history[0], history[-1]
    for name in ("mim", "mlm"):
        assert last[name] <= 0.1 * first[name], f"{name} fell only from {first[name]:.4f} to {last[name]:.4f}"
    assert time.perf_counter() - start < 120


def test_an_mpma_step_never_waits_for_the_device(tokenizer, monkeypatch):
    """As Med-ST's (tests/test_host_syncs.py): masking, fusion and both losses run without reading the device."""
    from test_host_syncs import HostSyncs

    import medst.checks

    monkeypatch.setattr(medst.checks, "host_can_read", lambda t: False)  # input checks as on a GPU
    cfg = load_profile("ci", ["model.method=mpma"])
    model = build_model(cfg, tokenizer)
    batch = synthetic_batch(cfg, 2, 4, tokenizer, torch.device("cpu"))
    batch.attention_mask[:, -5:] = 0  # padded reports
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = AmpPolicy.from_config(cfg, "cpu")
    train_step(model, batch, optimizer, amp=amp, clip=1.0)  # first step: lazy initialisation
    with HostSyncs() as syncs:
        result = train_step(model, batch, optimizer, amp=amp, clip=1.0)
    assert syncs.ours() == [], f"host syncs inside an MPMA step: {syncs.ours()}"
    assert {"global", "local", "mim", "mlm"} <= set(result.terms)


def test_build_model_dispatches_on_method(tokenizer):
    cfg = load_profile("ci")
    assert cfg.model.method == "medst" and isinstance(build_model(cfg, tokenizer), MedST)
    model = build_model(cfg.override("model.method=mpma", "loss.local_weight=0"), tokenizer)
    assert isinstance(model, MPMA) and not model.uses_local and model.local_alignment is None
    with pytest.raises(ValueError, match="model.method"):
        build_model(cfg.override("model.method=clip"), tokenizer)


def test_mpma_run_trains_saves_loads_and_is_evaluated(prepared_dir, phantom_dir, tmp_path):
    from medst.eval.embed import embed_texts, load_model
    from medst.eval.run import evaluate

    run = tmp_path / "run"
    cfg = load_profile("ci", ["model.method=mpma", "train.steps=3", "train.checkpoint_every=3"])
    rows = Trainer.from_config(cfg, prepared_dir, run, device="cpu", progress=False).fit()  # train_step inside
    assert len(rows) == 3 and {"global", "local", "mim", "mlm"} <= set(rows[-1])
    assert all(torch.isfinite(torch.tensor([r["loss"] for r in rows])))
    assert json.loads((run / "config.json").read_text())["model"]["method"] == "mpma"

    model, tok, loaded_cfg = load_run(run)
    assert isinstance(model, MPMA) and loaded_cfg.model.method == "mpma" and not model.training
    texts = ["small left pleural effusion", "no acute cardiopulmonary process"]
    trained, random = load_model(run, "cpu"), load_model(run, "cpu", random_init=True, seed=0)
    assert isinstance(random.model, MPMA)
    assert not torch.allclose(embed_texts(trained, texts, progress=False), embed_texts(random, texts, progress=False))

    out = tmp_path / "results.json"
    evaluate(run, phantom_dir, "retrieval", device="cpu", progress=False, out=out)  # what `medst evaluate` runs
    saved = json.loads(out.read_text())
    assert set(saved) == {"retrieval", "meta"} and 0 <= saved["retrieval"]["i2t_r@5"] <= 1


def test_pretrain_command_takes_method_mpma_on_the_cpu_profile(prepared_dir, tmp_path, capsys):
    from medst.cli import main

    run = tmp_path / "cpu-run"
    main(["pretrain", "--profile", "cpu", "--data", str(prepared_dir), "--out", str(run), "--device", "cpu",
          "--set", "model.method=mpma", "--set", "train.steps=2", "--set", "train.sequences_per_batch=1",
          "--set", "train.singles_per_batch=4"])  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2
    model, _, cfg = load_run(run)
    assert isinstance(model, MPMA) and cfg.name == "cpu" and cfg.model.mpma.image_mask_ratio == 0.75


def _neighbours_script():
    return benchmark_script("neighbours")


def test_comparison_script_plan_and_table(tmp_path, capsys):
    """benchmarks/neighbours.py: --dry-run lists every (row, seed) run with its overrides and trains nothing; the
    table is mean ± std per row in the fixed order, a dash where a model has no pointing game, chance last."""
    script = _neighbours_script()
    script.main(["--dry-run", "--profile", "ci", "--seeds", "0,1", "--set", "train.steps=5", "--work", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.count("-> ") == 8 and "model.method=mpma" in out and "loss.local_weight=0" in out
    assert not (tmp_path / "runs").exists()

    rows = []
    for seed in (0, 1):
        for variant, r5 in (("MPMA", 0.10), ("Med-ST", 0.08), ("random init", 0.02), ("global", 0.06)):
            rows.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "retrieval_r@5": r5 + 0.01 * seed,
                    "retrieval_chance@5": 0.05,
                    "grounding_acc": float("nan") if variant == "global" else 0.1,
                    "grounding_chance": 0.08,
                    "rsna_auc": 0.5,
                }
            )
    table = script.in_order(pd.DataFrame(rows))
    assert list(table["variant"].drop_duplicates()) == ["random init", "global", "Med-ST", "MPMA"]
    paths = script.write_comparison(table, tmp_path / "tables", "python benchmarks/neighbours.py --profile ci")
    text = paths["markdown"].read_text()
    assert "python benchmarks/neighbours.py --profile ci" in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines[1:]] == ["random init", "global", "Med-ST", "MPMA", "chance"]
    assert "| MPMA | 2 | 0.105 ± 0.007 | 0.100 ± 0.000 | 0.500 ± 0.000 |" in text
    assert "| global | 2 | 0.065 ± 0.007 | — |" in text and lines[-1] == "| chance | | 0.050 | 0.080 | 0.500 |"
    assert len(pd.read_csv(paths["runs"])) == 8
