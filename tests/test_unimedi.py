"""UniMedI, the neighbour of chapter 11 (medst.neighbours.unimedi): a radiograph read by UniMedI is read exactly as by
the 2-D tower alone, text-guided selection finds the slabs a report speaks about, the volume path has the shapes
and errors it documents, each term trains what it should, a tiny UniMedI overfits one paired batch, and a UniMedI
run saves and loads like a Med-ST run."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch
import torch.nn.functional as F

from medst.config import load_profile
from medst.data.volumes import PairedBatch, VolumeBatch, slab_images
from medst.losses.contrastive import global_alignment_loss
from medst.models.build import build_vision
from medst.models.heads import AlignedTowers
from medst.models.medst import METHODS, MedST, build_model, load_run
from medst.models.weights import save_weights
from medst.neighbours import UniMedI as ExportedUniMedI
from medst.neighbours.unimedi import (
    UniMedI,
    VolumeEmbed,
    select_slabs,
    selection_loss,
    slab_scores,
    slab_slices,
)
from medst.train.bench import bench_model, synthetic_batch, synthetic_tokenizer
from medst.train.step import AmpPolicy, train_step

SLICES = 8  # a tiny volume: 8 slices of 64 x 64 (the ci image size) -> 4 slabs of 2 slices, 4 x 4 patches each
OVERRIDES = ["model.method=unimedi", f"model.unimedi.volume_slices={SLICES}", "model.text.dropout=0.0"]


@pytest.fixture(scope="module")
def tokenizer():
    return synthetic_tokenizer(300)


@pytest.fixture(scope="module")
def cfg():
    return load_profile("ci", OVERRIDES)


def _model(cfg, tokenizer, seed: int = 0) -> UniMedI:
    torch.manual_seed(seed)
    model = build_model(cfg, tokenizer)
    assert isinstance(model, UniMedI) and isinstance(model, ExportedUniMedI)
    return model


def _volume_batch(cfg, tokenizer, n: int, seed: int) -> VolumeBatch:
    """n random volumes in [-1, 1] with random full-length reports (the shapes the loader gives)."""
    g = torch.Generator().manual_seed(seed)
    size, T = cfg.data.image_size, cfg.data.max_length
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    ids = ordinary[torch.randint(len(ordinary), (n, T), generator=g)]
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    volumes = torch.rand(n, 1, cfg.model.unimedi.volume_slices, size, size, generator=g) * 2 - 1
    return VolumeBatch(
        volumes=volumes,
        input_ids=ids,
        attention_mask=torch.ones(n, T, dtype=torch.long),
        study_ids=list(range(n)),
        subject_ids=list(range(n)),
        texts=[""] * n,
    )


def _paired_batch(cfg, tokenizer, singles: int, volumes: int, seed: int) -> PairedBatch:
    torch.manual_seed(seed)
    xray = synthetic_batch(cfg, 0, singles, tokenizer, torch.device("cpu"))
    return PairedBatch(xray=xray, ct=_volume_batch(cfg, tokenizer, volumes, seed + 1))


# ---------------------------------------------------------------------------------------------------------
# (1) The 2-D path is the 2-D tower's
# ---------------------------------------------------------------------------------------------------------
def test_a_radiograph_through_unimedi_is_the_2d_tower(cfg, tokenizer):
    model = _model(cfg, tokenizer).eval()
    assert model.vision.lateral_experts is None and not model.uses_local and model.image_local is None
    plain = build_vision(cfg.override("model.vision.experts=shared"))  # a 2-D-only tower built like MPMA's
    plain.load_state_dict(model.vision.state_dict())
    plain.eval()
    batch = synthetic_batch(cfg, 0, 4, tokenizer, torch.device("cpu"))  # studies 0 and 2 have a lateral
    with torch.no_grad():
        mine = model.image_tokens(batch.frontal, batch.lateral, batch.has_lateral, compact=True)  # lateral ignored
        ref = plain(batch.frontal)
    assert torch.equal(mine.cls, ref.cls) and torch.equal(mine.patches, ref.patches)

    # the heads: AlignedTowers (as MPMA's) on the same weights; UniMedI only adds the volume tokenizer and slice_head
    towers = AlignedTowers(
        plain, model.text, cfg.model.embed_dim, cfg.model.head_hidden, dataclasses.replace(cfg.loss, local_weight=0)
    )
    result = towers.load_state_dict(model.state_dict(), strict=False)
    assert result.missing_keys == []
    extra = result.unexpected_keys
    assert extra and all(k.startswith(("volume_embed.", "slice_head.")) for k in extra)
    towers.eval()
    with torch.no_grad():
        image = model.encode_image(batch.frontal, batch.lateral, batch.has_lateral)
        expected = towers.encode_image(batch.frontal)
        assert torch.equal(image.global_, expected.global_) and image.patches is None
        # a plain radiograph Batch -> the 2-D term only, the global InfoNCE of Method §4
        out = model(batch)
        text = towers.encode_text(batch.input_ids, batch.attention_mask)
    assert set(out.terms) == {"global"}
    reference = global_alignment_loss(expected.global_, text.global_, cfg.loss.global_temperature)
    assert torch.equal(out.terms["global"], reference) and torch.equal(out.loss, cfg.loss.global_weight * reference)


# ---------------------------------------------------------------------------------------------------------
# (2) Text-guided selection
# ---------------------------------------------------------------------------------------------------------
def _oracle_slabs(findings: list[list[int]], slabs: int, dim: int, seed: int = 0):
    """Unit slab embeddings where slab s of volume v is cos_s·u_v + sin_s·w (w a unit vector orthogonal to u_v),
    cos_s decreasing over the finding slabs in the order listed and 0 for the others; the report is u_v."""
    g = torch.Generator().manual_seed(seed)
    reports = F.normalize(torch.randn(len(findings), dim, generator=g), dim=-1)
    out = torch.empty(len(findings), slabs, dim)
    for v, finding in enumerate(findings):
        u = reports[v]
        for s in range(slabs):
            w = torch.randn(dim, generator=g)
            w = F.normalize(w - (w @ u) * u, dim=0)
            a = 0.9 - 0.2 * finding.index(s) if s in finding else 0.0
            out[v, s] = a * u + math.sqrt(1 - a * a) * w
    return out, reports


def test_oracle_selection_finds_the_slabs_a_report_speaks_about():
    findings = [[2, 3], [0, 5], [7, 6]]
    slabs, reports = _oracle_slabs(findings, slabs=8, dim=16)
    scores = slab_scores(slabs, reports)
    assert scores.shape == (3, 8)
    assert torch.allclose(scores[0, 2], torch.tensor(0.9)) and scores[0, 0].abs() < 1e-5
    assert select_slabs(slabs, reports, 2).tolist() == findings  # exactly the finding slabs, best first
    for k in (3, 5, 8):  # more than the finding slabs: they still come first
        chosen = select_slabs(slabs, reports, k)
        assert chosen.shape == (3, k) and chosen.dtype == torch.long
        assert chosen[:, :2].tolist() == findings
        assert all(set(row[2:]).isdisjoint(f) for row, f in zip(chosen.tolist(), findings))
    # a volume with three finding slabs, alone
    one, report = _oracle_slabs([[4, 1, 2]], slabs=6, dim=16, seed=1)
    assert select_slabs(one, report, 3).tolist() == [[4, 1, 2]]
    assert select_slabs(one, report, 4)[0, :3].tolist() == [4, 1, 2]
    with pytest.raises(ValueError, match="cannot select"):
        select_slabs(one, report, 7)
    with pytest.raises(ValueError, match="slab_scores expects"):
        slab_scores(one, report[0])


def test_slab_slices_map_slabs_to_the_slices_they_cover():
    assert slab_slices(0, 2) == [0, 1] and slab_slices(3, 2) == [6, 7] and slab_slices(2, 4) == [8, 9, 10, 11]
    truth = {10, 11, 12, 13}  # ground-truth finding slices (0-based k, as ground_truth/ct_slices.csv)
    volume = torch.full((1, 1, 16, 8, 8), -1.0)
    volume[0, 0, sorted(truth)] = 1.0
    slab = 2
    means = slab_images(volume, slab)[0, :, 0].mean(dim=(1, 2))  # [S] mean brightness of each slab image
    bright = torch.nonzero(means > 0).flatten().tolist()
    assert sorted(i for s in bright for i in slab_slices(s, slab)) == sorted(truth)
    for s in range(volume.shape[2] // slab):  # slab_images' slab s is the mean of exactly slab_slices(s)
        expected = volume[0, 0, slab_slices(s, slab)].mean(dim=0)
        assert torch.equal(slab_images(volume, slab)[0, s, 0], expected)
    with pytest.raises(ValueError):
        slab_slices(1, 0)


# ---------------------------------------------------------------------------------------------------------
# (3) The volume path: shapes and errors
# ---------------------------------------------------------------------------------------------------------
def test_volume_embed_tokens_positions_and_errors():
    embed = VolumeEmbed(8, patch=(2, 4, 4), slices=6, size=(12, 8))
    assert embed.grid == (3, 3, 2) and embed.slab == 2
    for table in (embed.pos_depth, embed.pos_plane):  # learned tables, started as timm starts its own (std 0.02)
        assert table.requires_grad and 0.01 < float(table.detach().std()) < 0.04
    tokens, grid = embed(torch.randn(2, 1, 6, 12, 8))
    assert tokens.shape == (2, 3 * 3 * 2, 8) and grid == (3, 3, 2)
    with torch.no_grad():  # with a zero tokenizer only the positions are left: slab-major order, factorised
        embed.proj.weight.zero_()
        embed.proj.bias.zero_()
    tokens, _ = embed(torch.randn(1, 1, 6, 12, 8))
    for s in range(3):
        for i in range(3):
            for j in range(2):
                expected = embed.pos_depth[s] + embed.pos_plane[i, j]
                assert torch.equal(tokens[0, (s * 3 + i) * 2 + j], expected)
    tokens, grid = embed(torch.randn(1, 1, 4, 8, 4))  # a smaller volume: the first slabs, the top-left positions
    assert grid == (2, 2, 1) and torch.equal(tokens[0, 3], embed.pos_depth[1] + embed.pos_plane[1, 0])
    for shape, match in (
        ((1, 1, 5, 12, 8), "whole patches"),
        ((1, 1, 6, 10, 8), "whole patches"),
        ((1, 1, 8, 12, 8), "exceeds the position tables"),
        ((1, 1, 6, 16, 8), "exceeds the position tables"),
        ((1, 1, 6, 12, 12), "exceeds the position tables"),
        ((1, 2, 6, 12, 8), "expects volumes"),
        ((1, 6, 12, 8), "expects volumes"),
    ):
        with pytest.raises(ValueError, match=match):
            embed(torch.randn(shape))
    with pytest.raises(ValueError, match="whole patches"):
        VolumeEmbed(8, patch=(2, 4, 4), slices=7, size=12)
    with pytest.raises(ValueError, match="3 positive sizes"):
        VolumeEmbed(8, patch=(4, 4), slices=8, size=12)


def test_volume_tokens_and_encode_volume_shapes(cfg, tokenizer):
    model = _model(cfg, tokenizer).eval()
    D_v, d = model.vision.embed_dim, cfg.model.embed_dim
    volumes = _volume_batch(cfg, tokenizer, 3, seed=0).volumes  # [3, 1, 8, 64, 64]
    with torch.no_grad():
        cls, tokens = model.volume_tokens(volumes)
        emb = model.encode_volume(volumes)
        small_cls, small = model.volume_tokens(volumes[:, :, :4, :32, :32])  # fewer slabs, a smaller plane
    assert cls.shape == (3, D_v) and tokens.shape == (3, SLICES // 2, (64 // 16) ** 2, D_v)
    assert small_cls.shape == (3, D_v) and small.shape == (3, 2, 4, D_v)
    assert emb.global_.shape == (3, d) and emb.slabs.shape == (3, SLICES // 2, d)
    assert torch.allclose(emb.global_.norm(dim=-1), torch.ones(3))
    assert torch.allclose(emb.slabs.norm(dim=-1), torch.ones(3, SLICES // 2))
    # the volume sequence starts with the ViT's [CLS] and its position-0 embedding only (the 2-D table's other
    # entries belong to radiograph patches)
    vit = model.vision.vit
    with torch.no_grad():
        vit.pos_embed[:, 1:] += 1.0
        assert torch.equal(model.volume_tokens(volumes)[0], cls)
        vit.pos_embed[:, :1] += 1.0
        assert not torch.allclose(model.volume_tokens(volumes)[0], cls)
    with pytest.raises(ValueError, match="whole patches"):
        model.encode_volume(volumes[:, :, :7])
    with pytest.raises(ValueError, match="exceeds the position tables"):
        model.encode_volume(torch.zeros(1, 1, 2 * SLICES, 64, 64))
    with pytest.raises(ValueError, match="top_k"):
        build_model(cfg.override("model.unimedi.top_k=5"), tokenizer)  # 4 slabs


# ---------------------------------------------------------------------------------------------------------
# (4) What each term trains
# ---------------------------------------------------------------------------------------------------------
def test_each_term_reaches_the_parameters_it_should(cfg, tokenizer):
    model = _model(cfg, tokenizer).train()
    terms = model.volume_terms(_volume_batch(cfg, tokenizer, 4, seed=2))
    assert set(terms) == {"volume", "pseudo", "selection"} and all(t.requires_grad for t in terms.values())
    vit = model.vision.vit
    params = {
        "slice_head": model.slice_head.weight,
        "tokenizer": model.volume_embed.proj.weight,
        "depth table": model.volume_embed.pos_depth,
        "plane table": model.volume_embed.pos_plane,
        "block 0": vit.blocks[0].attn.qkv.weight,
        "cls": vit.cls_token,
        "2-D patch embedding": vit.patch_embed.proj.weight,
        "image head": model.image_global.mlp[0].weight,
        "text head": model.text_global.mlp[0].weight,
    }

    def reached(term: str) -> set[str]:
        grads = torch.autograd.grad(terms[term], list(params.values()), retain_graph=True, allow_unused=True)
        return {name for name, g in zip(params, grads) if g is not None and g.abs().sum() > 0}

    # L_sel trains the scorer (and the 3-D path under it), not the global head
    volume_path = {"tokenizer", "depth table", "plane table", "block 0", "cls"}
    assert reached("selection") == volume_path | {"slice_head", "text head"}
    # the volume InfoNCE trains the 3-D tokenizer, the shared blocks and the common head, not the scorer
    assert reached("volume") == volume_path | {"image head", "text head"}
    # the pseudo pairs go through the 2-D path with gradient; the selection itself is not differentiated
    assert reached("pseudo") == {"2-D patch embedding", "block 0", "cls", "image head", "text head"}


def test_selection_loss_is_a_multiple_instance_infonce():
    findings = [[1], [3], [0], [2]]
    slabs, reports = _oracle_slabs(findings, slabs=4, dim=64)  # reports nearly orthogonal to each other
    aligned = selection_loss(slabs, reports, temperature=0.1, global_temperature=0.07)
    shuffled = selection_loss(slabs, reports.roll(1, dims=0), temperature=0.1, global_temperature=0.07)
    assert aligned < 0.1 < shuffled  # the best slab of volume i matches report i: a low loss; mismatched: high
    # with one slab per volume it is the global InfoNCE of Method §4
    one = F.normalize(torch.randn(5, 1, 8), dim=-1)
    text = F.normalize(torch.randn(5, 8), dim=-1)
    expected = global_alignment_loss(one[:, 0], text, 0.07)
    assert torch.allclose(selection_loss(one, text, 0.1, 0.07), expected, atol=1e-5)
    with pytest.raises(ValueError, match="selection_loss expects"):
        selection_loss(one[:, 0], text)


# ---------------------------------------------------------------------------------------------------------
# (5) Training
# ---------------------------------------------------------------------------------------------------------
def test_tiny_unimedi_overfits_one_paired_batch(cfg, tokenizer):
    """All four terms can learn together: on one fixed batch of 4 radiograph and 4 volume pairs, the total loss
    falls by at least 90 % and each term by at least 80 % within 60 steps (a few seconds on one CPU thread)."""
    torch.set_num_threads(1)
    batch = _paired_batch(cfg, tokenizer, singles=4, volumes=4, seed=5)
    model = _model(cfg, tokenizer, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    start, history = time.perf_counter(), []
    model.train()
    for _ in range(60):
        out = model(batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"loss": float(out.loss.detach()), **{k: float(v) for k, v in out.terms.items()}})
    first, last = history[0], history[-1]
    assert set(first) == {"loss", "global", "volume", "pseudo", "selection"}
    assert last["loss"] < 0.1 * first["loss"], f"the loss fell only from {first['loss']:.3f} to {last['loss']:.3f}"
    for name in ("global", "volume", "pseudo", "selection"):
        assert last[name] < 0.2 * first[name], f"{name} fell only from {first[name]:.3f} to {last[name]:.3f}"
    assert time.perf_counter() - start < 60


def test_a_unimedi_step_never_waits_for_the_device(cfg, tokenizer, monkeypatch):
    """As Med-ST's (tests/test_host_syncs.py): selection, gathering the pseudo images and every term run without
    reading the device."""
    from test_host_syncs import HostSyncs

    import medst.checks

    monkeypatch.setattr(medst.checks, "host_can_read", lambda t: False)  # input checks as on a GPU
    model = _model(cfg, tokenizer)
    batch = _paired_batch(cfg, tokenizer, singles=4, volumes=3, seed=7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = AmpPolicy.from_config(cfg, "cpu")
    train_step(model, [batch], optimizer, amp=amp, clip=1.0)  # first step: lazy initialisation
    with HostSyncs() as syncs:
        result = train_step(model, [batch], optimizer, amp=amp, clip=1.0)
    assert syncs.ours() == [], f"host syncs inside a UniMedI step: {syncs.ours()}"
    assert set(result.terms) == {"global", "volume", "pseudo", "selection"}


# ---------------------------------------------------------------------------------------------------------
# (6) build_model and a run folder
# ---------------------------------------------------------------------------------------------------------
def test_build_model_dispatches_on_unimedi_and_a_run_round_trips(cfg, tokenizer, tmp_path):
    assert "unimedi" in METHODS
    assert isinstance(build_model(load_profile("ci"), tokenizer), MedST)
    local = cfg.override("loss.local_weight=1.0", "model.vision.experts=move")  # both are overridden for UniMedI
    model = _model(local, tokenizer)
    assert model.local_alignment is None and model.vision.lateral_experts is None
    assert local.loss.local_weight == 1.0 and local.model.vision.experts == "move"  # the caller's config is intact
    with pytest.raises(ValueError, match="unimedi"):
        build_model(cfg.override("model.method=clip"), tokenizer)

    run = tmp_path / "run"
    run.mkdir()
    model.train()
    model(_paired_batch(cfg, tokenizer, 4, 4, seed=3))  # moves the BatchNorm statistics off their start
    save_weights(model, run / "model.safetensors")
    (run / "config.json").write_text(local.to_json())
    tokenizer.save_pretrained(str(run / "tokenizer"))
    loaded, tok, loaded_cfg = load_run(run)
    assert isinstance(loaded, UniMedI) and loaded_cfg.model.method == "unimedi" and not loaded.training
    assert loaded_cfg.model.unimedi.volume_slices == SLICES and len(tok) == len(tokenizer)

    model.eval()
    batch = _paired_batch(cfg, tokenizer, 3, 3, seed=4)
    with torch.no_grad():
        frontal, volumes = batch.xray.frontal, batch.ct.volumes
        assert torch.equal(model.encode_image(frontal).global_, loaded.encode_image(frontal).global_)
        mine, again = model.encode_volume(volumes), loaded.encode_volume(volumes)
        assert torch.equal(mine.global_, again.global_) and torch.equal(mine.slabs, again.slabs)
        ids, mask = batch.ct.input_ids, batch.ct.attention_mask
        assert torch.equal(model.encode_text(ids, mask).global_, loaded.encode_text(ids, mask).global_)
        assert torch.equal(model(batch).loss, loaded(batch).loss)
    fresh = _model(local, tokenizer, seed=9).eval()
    with torch.no_grad():
        assert not torch.equal(fresh.encode_volume(volumes).global_, mine.global_)


def test_medst_bench_refuses_unimedi_rather_than_timing_half_a_step(cfg):
    with pytest.raises(ValueError, match="CT volumes"):
        bench_model(cfg, torch.device("cpu"), sequences=1, steps=1, warmup=0)


def test_selection_ties_go_to_the_lower_slab():
    slabs = F.normalize(torch.ones(3, 16, 4), dim=-1)  # every slab scores the same against any report
    reports = F.normalize(torch.randn(3, 4), dim=-1)
    assert select_slabs(slabs, reports, 2).tolist() == [[0, 1]] * 3
    slabs[1, 9] *= 2  # one slab of volume 1 now scores highest; the rest stay tied
    assert select_slabs(slabs, reports.abs(), 3)[1].tolist() == [9, 0, 1]
