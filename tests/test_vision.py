"""MoVE (Method §3): plain-ViT equivalence, routing, batch independence, init, checkpoints."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from medst.config import load_profile
from medst.models.build import build_vision
from medst.models.vision import MoVE, create_move

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)  # N = 16 patches per view
VARIANTS = {
    "plain": {},
    # layer scale, register tokens and position embeddings without a class slot (DeiT-3 style)
    "layerscale_reg": dict(init_values=0.1, reg_tokens=2, no_embed_class=True),
}
ATOL = 1e-5


def make_move(variant: str = "plain", lateral_init: str = "random", seed: int = 0, experts: str = "move") -> MoVE:
    torch.manual_seed(seed)
    return create_move(
        "vit_base_patch16_224", lateral_init=lateral_init, experts=experts, **TINY, **VARIANTS[variant]
    ).eval()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def reference_joint(move: MoVE, frontal: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    """One study, written out plainly: [3,H,W] x2 -> tokens [prefix + 2N, D] after the final norm."""
    vit = move.vit
    k = vit.num_prefix_tokens
    pos = vit.pos_embed[0]  # [(k if class slot) + N, D]
    patch_pos = pos if vit.no_embed_class else pos[k:]
    prefix = [vit.cls_token[0]] + ([vit.reg_token[0]] if vit.reg_token is not None else [])
    prefix = torch.cat(prefix, dim=0)  # [k, D]
    if not vit.no_embed_class:
        prefix = prefix + pos[:k]
    f = vit.patch_embed(frontal[None])[0] + patch_pos  # [N, D]
    lat = vit.patch_embed(lateral[None])[0] + patch_pos  # same positions as frontal
    x = torch.cat([prefix, f, lat], dim=0)
    n_frontal = k + f.shape[0]
    for blk, expert in zip(vit.blocks, move.lateral_experts):
        a = blk.attn
        h = blk.norm1(x)
        q, kk, v = a.qkv(h).view(x.shape[0], 3, a.num_heads, -1).permute(1, 2, 0, 3)
        probs = (q @ kk.transpose(-1, -2) * a.scale).softmax(-1)  # [heads, S, S]
        att = (probs @ v).transpose(0, 1).reshape(x.shape[0], -1)
        x = x + blk.ls1(a.proj(att))
        front = blk.ls2(blk.mlp(blk.norm2(x[:n_frontal])))
        side = expert.ls(expert.mlp(expert.norm(x[n_frontal:])))
        x = x + torch.cat([front, side], dim=0)
    return vit.norm(x)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_single_view_is_plain_vit(variant):
    move = make_move(variant)
    ref = timm.create_model("vit_base_patch16_224", num_classes=0, **TINY, **VARIANTS[variant]).eval()
    ref.load_state_dict(move.vit.state_dict())
    x = images(3, 1)
    with torch.no_grad():
        out = move(x)
        feats = ref.forward_features(x)
    k = ref.num_prefix_tokens
    assert out.patches.shape == (3, 16, 32) and out.patch_mask.all()
    assert torch.allclose(out.cls, feats[:, 0], atol=ATOL)
    assert torch.allclose(out.patches, feats[:, k:], atol=ATOL)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_joint_forward_matches_written_out_reference(variant):
    move = make_move(variant)
    for blk in move.vit.blocks:  # lateral expert must matter: make it differ from the frontal one
        assert not torch.allclose(blk.mlp.fc1.weight, move.lateral_experts[0].mlp.fc1.weight)
    f, lat = images(3, 2), images(3, 3)
    with torch.no_grad():
        out = move(f, lat)
        k = move.num_prefix_tokens
        for i in range(3):
            ref = reference_joint(move, f[i], lat[i])
            assert torch.allclose(out.cls[i], ref[0], atol=ATOL)
            assert torch.allclose(out.patches[i], ref[k:], atol=ATOL)
    assert out.patches.shape == (3, 32, 32) and out.patch_mask.all()


def test_mixed_batch_scatter_and_mask():
    move = make_move()
    f, lat = images(4, 4), images(4, 5)
    has = torch.tensor([True, False, False, True])
    with torch.no_grad():
        out = move(f, lat, has)
        plain = move.vit.forward_features(f)
    assert out.patches.shape == (4, 32, 32)
    assert out.patch_mask[:, :16].all() and torch.equal(out.patch_mask[:, 16:].all(1), has)
    assert (out.patches[~has][:, 16:] == 0).all()  # no fake lateral tokens
    # studies without a lateral are exactly the plain ViT
    assert torch.allclose(out.cls[~has], plain[~has, 0], atol=ATOL)
    assert torch.allclose(out.patches[~has][:, :16], plain[~has, 1:], atol=ATOL)
    # studies with a lateral are not (the lateral view changes them)
    assert not torch.allclose(out.cls[has], plain[has, 0], atol=1e-3)
    with torch.no_grad():
        for i in (0, 3):
            assert torch.allclose(out.patches[i], reference_joint(move, f[i], lat[i])[1:], atol=ATOL)


def test_study_independent_of_other_studies_and_padding():
    move = make_move()
    f, lat = images(4, 6), images(4, 7)
    with torch.no_grad():
        base = move(f, lat, torch.tensor([True, True, False, True]))
        # other studies' lateral content changes
        lat2 = lat.clone()
        lat2[1] = images(1, 8)[0]
        lat2[3] = 5.0
        changed = move(f, lat2, torch.tensor([True, True, False, True]))
        # batch composition: other studies lose / gain laterals
        fewer = move(f, lat, torch.tensor([True, False, False, False]))
        more = move(f, lat, torch.tensor([True, True, True, True]))
        # the study alone
        alone = move(f[:1], lat[:1])
        # padding: the ignored row of a full lateral tensor holds garbage
        lat3 = lat.clone()
        lat3[2] = 1e3
        padded = move(f, lat3, torch.tensor([True, True, False, True]))
    for other in (changed, fewer, more, alone):
        assert torch.allclose(base.cls[0], other.cls[0], atol=ATOL)
        assert torch.allclose(base.patches[0], other.patches[0], atol=ATOL)
    assert not torch.allclose(base.cls[1], changed.cls[1], atol=1e-3)  # sanity: the changed study did change
    assert torch.allclose(base.cls, padded.cls, atol=ATOL)
    assert torch.allclose(base.patches, padded.patches, atol=ATOL)
    # a study without a lateral is the same whether the batch has laterals or not
    assert torch.allclose(base.cls[2], move(f[2:3]).cls[0], atol=ATOL)


def test_compact_equals_full_lateral():
    move = make_move("layerscale_reg")
    f, lat = images(5, 9), images(5, 10)
    has = torch.tensor([False, True, True, False, True])
    with torch.no_grad():
        full = move(f, lat, has)
        compact = move(f, lat[has], has)
    assert torch.equal(full.patch_mask, compact.patch_mask)
    assert torch.allclose(full.cls, compact.cls, atol=ATOL)
    assert torch.allclose(full.patches, compact.patches, atol=ATOL)


def test_gradients_reach_both_experts():
    move = make_move().train()
    f, lat = images(4, 11).requires_grad_(), images(2, 12).requires_grad_()
    has = torch.tensor([True, False, True, False])
    out = move(f, lat, has)
    (out.cls.square().sum() + (out.patches * out.patch_mask[..., None]).square().sum()).backward()
    for blk, expert in zip(move.vit.blocks, move.lateral_experts):
        for p in (*blk.mlp.parameters(), *blk.attn.parameters(), *expert.parameters()):
            assert p.grad is not None and p.grad.abs().sum() > 0
    assert lat.grad.abs().sum() > 0 and f.grad.abs().sum() > 0
    # with no lateral anywhere the lateral experts take no part
    move.zero_grad(set_to_none=True)
    move(f.detach()).cls.sum().backward()
    assert all(p.grad is None for p in move.lateral_experts.parameters())


def test_lateral_init():
    frontal_init = make_move("layerscale_reg", lateral_init="frontal", seed=3)
    for blk, expert in zip(frontal_init.vit.blocks, frontal_init.lateral_experts):
        for a, b in zip((*blk.norm2.parameters(), *blk.mlp.parameters(), *blk.ls2.parameters()), expert.parameters()):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # a copy, not shared
    random_init = make_move("layerscale_reg", lateral_init="random", seed=3)
    for blk, expert in zip(random_init.vit.blocks, random_init.lateral_experts):
        assert not torch.equal(blk.mlp.fc1.weight, expert.mlp.fc1.weight)
        assert torch.equal(expert.norm.weight, torch.ones_like(expert.norm.weight))
        assert abs(float(expert.mlp.fc1.weight.detach().std()) - 0.02) < 0.005
    with pytest.raises(ValueError, match="lateral_init"):
        make_move(lateral_init="mean")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin", "-ddp.pth"])
def test_create_from_local_checkpoint(tmp_path, suffix):
    torch.manual_seed(42)
    vit = timm.create_model("vit_base_patch16_224", num_classes=5, **TINY)  # with a classifier, ignored
    path = tmp_path / f"vit{suffix}"
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    elif suffix == ".bin":  # a bare state dict, as transformers-style releases ship it
        torch.save(state, path)
    elif suffix == "-ddp.pth":  # saved from a DDP-wrapped model: every key starts with "module."
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        torch.save({"state_dict": state}, path)
    move = create_move("vit_base_patch16_224", checkpoint_path=str(path), lateral_init="frontal", **TINY).eval()
    for k, v in move.vit.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(move.lateral_experts[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])
    x = images(2, 13)
    vit.eval()
    with torch.no_grad():
        assert torch.allclose(move(x).cls, vit.forward_features(x)[:, 0], atol=ATOL)
    # a full MoVE state dict (with its lateral experts) round-trips
    full = tmp_path / "move.safetensors"
    save_file({k: v.contiguous() for k, v in move.state_dict().items()}, str(full))
    again = create_move("vit_base_patch16_224", checkpoint_path=str(full), **TINY).eval()
    with torch.no_grad():
        lat = images(2, 14)
        assert torch.equal(again(x, lat).patches, move(x, lat).patches)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        create_move("vit_base_patch16_224", checkpoint_path=str(tmp_path / "none.pth"), **TINY)
    for name, content in (
        ("tensor.pth", torch.zeros(3)),
        ("list.pth", [torch.zeros(3)]),
        ("numbers.pth", {"epoch": 3, "lr": 0.1}),
    ):
        torch.save(content, tmp_path / name)
        with pytest.raises(ValueError, match=f"{name} does not hold a state dict"):
            create_move("vit_base_patch16_224", checkpoint_path=str(tmp_path / name), **TINY)
    other = timm.create_model("vit_base_patch16_224", num_classes=0, **{**TINY, "depth": 3})
    path = tmp_path / "deeper.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="does not match"):
        create_move("vit_base_patch16_224", checkpoint_path=str(path), **TINY)


def test_bad_lateral_count():
    move = make_move()
    with pytest.raises(ValueError, match="lateral has 3 images"):
        move(images(4, 0), images(3, 1), torch.tensor([True, False, False, False]))
    with pytest.raises(ValueError, match="no lateral images"):
        move(images(2, 0), None, torch.tensor([True, False]))


def test_attention_probabilities_match_timm():
    move = make_move()
    f, lat = images(3, 15), images(3, 16)
    has = torch.tensor([True, False, True])
    captured = {}
    for blk in move.vit.blocks:
        blk.attn.fused_attn = False  # timm's explicit path exposes probabilities to attn_drop
    attn_drop = move.vit.blocks[1].attn.attn_drop
    hook = attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("p", []).append(o))
    with torch.no_grad():
        move(f, lat, has)
        hook.remove()
        probs = move.attention(f, lat, has, block=-1)
    with_lat, without = captured["p"]  # the two groups: studies with a lateral, then the others
    assert probs.shape == (3, 2, 33, 33)
    assert torch.allclose(probs[has], with_lat, atol=1e-6)
    assert torch.allclose(probs[1, :, :17, :17], without[0], atol=1e-6)
    assert (probs[1, :, 17:] == 0).all() and (probs[1, :, :, 17:] == 0).all()
    assert torch.allclose(probs[has].sum(-1), torch.ones(2, 2, 33), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# experts="shared": both views through one shared feed-forward (the chapter-4 baseline for the experts)
# ---------------------------------------------------------------------------------------------------------
def copy_frontal_into_lateral_experts(move: MoVE) -> None:
    for blk, expert in zip(move.vit.blocks, move.lateral_experts):
        expert.norm.load_state_dict(blk.norm2.state_dict())
        expert.mlp.load_state_dict(blk.mlp.state_dict())
        expert.ls.load_state_dict(blk.ls2.state_dict())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shared_ffn_equals_move_with_frontal_weights_in_lateral_experts(variant):
    shared = make_move(variant, experts="shared", seed=5)
    move = make_move(variant, seed=6)  # random lateral experts
    move.vit.load_state_dict(shared.vit.state_dict())
    f, lat = images(5, 20), images(5, 21)
    has = torch.tensor([True, False, True, True, False])  # some studies with a lateral, some without
    with torch.no_grad():
        a = shared(f, lat, has)
        before = move(f, lat, has)
        copy_frontal_into_lateral_experts(move)
        b = move(f, lat, has)
    assert a.patches.shape == (5, 32, 32) and torch.equal(a.patch_mask, b.patch_mask)
    # sanity: with its own (random) lateral experts MoVE differs on the studies that have a lateral
    assert not torch.allclose(a.cls[has], before.cls[has], atol=1e-3)
    assert torch.allclose(a.cls, b.cls, atol=ATOL)
    assert torch.allclose(a.patches, b.patches, atol=ATOL)
    # and the shared model is the written-out reference with the frontal FFN for lateral tokens
    with torch.no_grad():
        ref = reference_joint(move, f[0], lat[0])
    assert torch.allclose(a.patches[0], ref[move.num_prefix_tokens :], atol=ATOL)


def test_shared_ffn_has_no_lateral_expert_parameters():
    shared, move = make_move(experts="shared"), make_move()
    expert_count = sum(p.numel() for p in move.lateral_experts.parameters())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert expert_count > 0 and count(move) - count(shared) == expert_count
    assert shared.lateral_experts is None and count(shared) == count(shared.vit)
    assert not any("lateral" in name for name in shared.state_dict())
    # every parameter takes part in a mixed batch (DDP without unused parameters)
    shared.train()
    out = shared(images(3, 22), images(3, 23), torch.tensor([True, False, True]))
    (out.cls.square().sum() + out.patches.square().sum()).backward()
    assert all(p.grad is not None for p in shared.parameters())


def test_shared_ffn_checkpoint_and_config(tmp_path):
    shared = make_move(experts="shared", seed=7)
    path = tmp_path / "shared.safetensors"
    save_file({k: v.contiguous() for k, v in shared.state_dict().items()}, str(path))
    again = create_move("vit_base_patch16_224", checkpoint_path=str(path), experts="shared", **TINY).eval()
    f, lat = images(2, 24), images(2, 25)
    with torch.no_grad():
        assert torch.equal(again(f, lat).patches, shared(f, lat).patches)
    with pytest.raises(ValueError, match="experts='shared'"):
        create_move("vit_base_patch16_224", checkpoint_path=str(path), **TINY)
    # the profile's model.vision.experts reaches the tower
    assert build_vision(load_profile("ci", ["model.vision.experts=shared"])).lateral_experts is None
    assert build_vision(load_profile("ci")).lateral_experts is not None


def test_bad_experts_value_is_refused():
    with pytest.raises(ValueError, match=r"experts.*'move', 'shared'.*'mixture'"):
        make_move(experts="mixture")
    vit = timm.create_model("vit_base_patch16_224", num_classes=0, **TINY)
    with pytest.raises(ValueError, match=r"must be one of 'move', 'shared', got 'Shared'"):
        MoVE(vit, experts="Shared")
    with pytest.raises(ValueError, match="model.vision.experts"):
        build_vision(load_profile("ci", ["model.vision.experts=none"]))
