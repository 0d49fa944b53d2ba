"""MoVE, the Mixture of View Experts image encoder (Method §3).

A timm `VisionTransformer` reads the frontal and the lateral radiograph of a study
together as one sequence

    [CLS, f_1 .. f_N, l_1 .. l_N]        (1 + 2N tokens)

Both views share the patch embedding and the 2-D position embedding (lateral patch k
gets the same position embedding as frontal patch k). In every block

    x = x + Attn(norm1(x))                                  one attention, both views
    x = x + [ FFN_frontal(x_cls,f) ; FFN_lateral(x_l) ]     two feed-forward experts

The frontal expert is the timm block's own norm2/mlp (and layer scale); the lateral
expert is a second norm + MLP per block (`MoVE.lateral_experts`). Attention and MLP
code is timm's; only the routing is written here.

`experts="shared"` is the ablation baseline of chapter 4 (what do the experts buy?): both
views, one shared attention and ONE shared feed-forward (the timm block's norm2/mlp/ls2
for every token), no lateral experts and no extra parameters. It equals MoVE whose
lateral experts hold the frontal expert's weights, tied.

Studies without a lateral (ours, Method §3.4) never spend compute on a fake view: the
batch is split into the studies with a lateral (1 + 2N tokens) and those without
(1 + N tokens), each group runs through the blocks in one batched call, and the
results are scattered back. A study without a lateral is exactly a plain ViT, so
single-view input (downstream tasks) is `vit.forward_features` (Method §3.5).

The split needs no host synchronisation when the laterals come compact (one row per study
that has one, as in a training `Batch`): the size of the lateral group is the number of
lateral rows, a shape the host knows, and the routing indices are computed on the device.
Group sizes still change from batch to batch, which makes `torch.compile` recompile;
`group_bucket = k` (ours, `train.group_bucket`) gives the groups a few fixed sizes instead:
the caller pads the compact laterals to a multiple of k (`Batch.pad_laterals`), the
single-view group is padded alike, and the padding rows are computed and dropped. The
result is the same as without padding (a ViT treats each study on its own).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from medst import checks

BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
# "move": frontal + lateral feed-forward experts (published); "shared": one feed-forward for both views (baseline)
EXPERTS = ("move", "shared")


@dataclass
class VisionOutput:
    """What `MoVE.forward` returns.

    cls:        [B, D] the [CLS] token after the final norm (global image feature).
    patches:    [B, P, D] patch tokens after the final norm: frontal patches, then
                lateral patches; P = 2N if any study in the batch has a lateral, else N.
    patch_mask: [B, P] bool, False for the lateral slots of studies without a lateral
                (those slots hold zeros).
    """

    cls: torch.Tensor
    patches: torch.Tensor
    patch_mask: torch.Tensor


class LateralExpert(nn.Module):
    """Feed-forward expert for lateral tokens: [n, S, D] -> [n, S, D] = ls(mlp(norm(x))).

    The residual add (and drop path) happens in the block, shared with the frontal expert.
    """

    def __init__(self, norm: nn.Module, mlp: nn.Module, ls: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.mlp = mlp
        self.ls = ls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls(self.mlp(self.norm(x)))


def _check_lateral_init(init: str) -> None:
    if init not in ("random", "frontal"):
        raise ValueError(f"medst/models/vision.py: lateral_init must be 'random' or 'frontal', got {init!r}")


def _check_experts(experts: str) -> None:
    if experts not in EXPERTS:
        raise ValueError(
            f"medst/models/vision.py: experts (model.vision.experts) must be one of "
            f"{', '.join(repr(e) for e in EXPERTS)}, got {experts!r}"
        )


def _reset_parameters(module: nn.Module) -> None:
    """Fresh init like a timm ViT: Linear trunc-normal(0.02) with zero bias; norms and layer scale reset."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def make_lateral_expert(block: nn.Module, init: str = "random") -> LateralExpert:
    """A lateral expert shaped like `block`'s norm2/mlp/ls2.

    init="random": fresh weights (published). init="frontal": a copy of the block's
    frontal norm + MLP + layer scale (ours, option; Method §3.6).
    """
    _check_lateral_init(init)
    expert = LateralExpert(copy.deepcopy(block.norm2), copy.deepcopy(block.mlp), copy.deepcopy(block.ls2))
    if init == "random":
        _reset_parameters(expert)
    return expert


class MoVE(nn.Module):
    """Mixture of View Experts around a timm VisionTransformer (Method §3).

    Args:
        vit: a timm `VisionTransformer` with a class token (its classifier is dropped).
        lateral_init: "random" (published) or "frontal" (copy the frontal expert).
        experts: "move" (published: a lateral feed-forward expert per block) or "shared"
            (the ablation baseline of chapter 4: both views, one shared feed-forward, i.e.
            lateral tokens go through the block's own norm2/mlp/ls2; `lateral_experts` is
            None and the model has exactly the plain ViT's parameters, so DDP sees no
            unused ones; `lateral_init` is then irrelevant).
        group_bucket: 0 (groups of their exact sizes) or k > 0: compact laterals may carry up to
            k - 1 padding rows after the real ones, and the single-view group is padded to a
            multiple of k (static shapes for torch.compile; see the module docstring).
    """

    def __init__(
        self, vit: nn.Module, lateral_init: str = "random", experts: str = "move", group_bucket: int = 0
    ) -> None:
        super().__init__()
        if group_bucket < 0:
            raise ValueError(f"medst/models/vision.py: group_bucket must be >= 0, got {group_bucket}")
        self.group_bucket = int(group_bucket)  # see the module docstring; 0: groups of their exact sizes
        _check_experts(experts)
        _check_lateral_init(lateral_init)
        name = type(vit).__name__
        if getattr(vit, "cls_token", None) is None:
            raise ValueError(f"medst/models/vision.py: {name} has no class token; MoVE reads the [CLS] output")
        if not isinstance(vit.patch_drop, nn.Identity):
            raise ValueError("medst/models/vision.py: patch dropout is not supported by MoVE (use patch_drop_rate=0)")
        for i, blk in enumerate(vit.blocks):
            missing = [p for p in BLOCK_PARTS if not hasattr(blk, p)]
            if missing:
                raise ValueError(
                    f"medst/models/vision.py: block {i} ({type(blk).__name__}) lacks {missing}; "
                    "MoVE needs pre-norm timm `Block`s (norm1/attn/ls1, norm2/mlp/ls2)"
                )
        # MoVE returns [CLS] and patch tokens after the final norm: no pooling or classifier.
        vit.reset_classifier(0)
        vit.fc_norm = nn.Identity()
        if getattr(vit, "attn_pool", None) is not None:
            vit.attn_pool = None
        self.vit = vit
        self.experts = experts
        self.lateral_experts: nn.ModuleList | None = None
        if experts == "move":
            self.lateral_experts = nn.ModuleList(make_lateral_expert(blk, lateral_init) for blk in vit.blocks)

    # ------------------------------------------------------------------ sizes
    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.vit.num_prefix_tokens)

    @property
    def num_patches(self) -> int:
        """N, patches per view."""
        return int(self.vit.patch_embed.num_patches)

    # ------------------------------------------------------------- embedding
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] -> [n, prefix + N, D]: timm's patch + position embedding ([CLS] first)."""
        vit = self.vit
        x = vit._pos_embed(vit.patch_embed(images))
        return vit.norm_pre(vit.patch_drop(x))

    def embed_pair(self, frontal: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        """[n,3,H,W] x2 -> [n, prefix + 2N, D]; lateral patches get the frontal patches' position embeddings."""
        lat = self.embed(lateral)[:, self.num_prefix_tokens :]  # drop the lateral's own [CLS]
        return torch.cat([self.embed(frontal), lat], dim=1)

    # ---------------------------------------------------------------- blocks
    def joint_block(self, i: int, x: torch.Tensor, n_frontal: int) -> torch.Tensor:
        """Block i on [n, n_frontal + N, D]: shared attention, then frontal / lateral experts
        (with experts="shared": the block's one feed-forward on every token)."""
        blk = self.vit.blocks[i]
        x = x + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x))))
        if self.lateral_experts is None:  # shared feed-forward for both views
            return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        front = blk.ls2(blk.mlp(blk.norm2(x[:, :n_frontal])))
        side = self.lateral_experts[i](x[:, n_frontal:])
        return x + blk.drop_path2(torch.cat([front, side], dim=1))

    def _run(self, x: torch.Tensor, joint: bool, capture: int | None = None):
        """Blocks + final norm on [n, S, D]; joint: S = prefix + 2N with experts, else a plain ViT.

        Returns (tokens [n, S, D], block `capture`'s attention [n, heads, S, S] or None).
        """
        k = self.num_prefix_tokens
        n_frontal = k + (x.shape[1] - k) // 2
        probs = None
        for i, blk in enumerate(self.vit.blocks):
            if capture == i:
                probs = self.block_attention(i, x)
            x = self.joint_block(i, x, n_frontal) if joint else blk(x)
        return self.vit.norm(x), probs

    def block_attention(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Attention probabilities of block i for its input x [n, S, D] -> [n, heads, S, S].

        Recomputed from the block's qkv weights (the forward pass itself keeps timm's
        fused scaled-dot-product attention, which does not expose the probabilities).
        """
        blk = self.vit.blocks[i]
        attn = blk.attn
        qkv = rearrange(attn.qkv(blk.norm1(x)), "n s (qkv heads d) -> qkv n heads s d", qkv=3, heads=attn.num_heads)
        q, k, _ = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        return (q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)

    # --------------------------------------------------------------- forward
    def _split(self, frontal, lateral, has_lateral, compact: bool | None = None):
        """Check inputs; return (has_lateral [B] bool on the device, compact laterals or None).

        Compact laterals hold the studies with a lateral in batch order, then (with
        `group_bucket`) up to group_bucket - 1 ignored padding rows. `compact=None` infers the
        form: B rows are the full form (row i belongs to study i), fewer rows are compact.
        Only the full form with some laterals missing reads `has_lateral` on the host.
        """
        B = frontal.shape[0]
        if lateral is None:
            if has_lateral is not None:
                checks.check(
                    ~has_lateral.any(),
                    "medst/models/vision.py: has_lateral marks laterals but no lateral images were given",
                )
            return torch.zeros(B, dtype=torch.bool, device=frontal.device), None
        if lateral.shape[1:] != frontal.shape[1:]:
            raise ValueError(
                f"medst/models/vision.py: lateral images {tuple(lateral.shape[1:])} differ from frontal "
                f"{tuple(frontal.shape[1:])}"
            )
        rows = lateral.shape[0]
        if has_lateral is None:
            if rows != B:
                raise ValueError(f"medst/models/vision.py: {rows} lateral images for {B} studies; pass has_lateral")
            return torch.ones(B, dtype=torch.bool, device=frontal.device), lateral
        has_lateral = has_lateral.to(device=frontal.device, dtype=torch.bool)
        if has_lateral.shape != (B,):
            raise ValueError(f"medst/models/vision.py: has_lateral {tuple(has_lateral.shape)} must be [{B}]")
        if compact is None:
            compact = rows != B
        if not compact:  # full form: which rows are real is known from has_lateral only (a host sync)
            if rows != B:
                raise ValueError(f"medst/models/vision.py: full-form laterals need {B} rows, got {rows}")
            n_lat = int(has_lateral.sum())
            return has_lateral, (lateral[has_lateral] if n_lat < B else lateral)
        if rows > B:
            raise ValueError(f"medst/models/vision.py: lateral has {rows} images for {B} studies")
        slack = max(self.group_bucket - 1, 0)
        n_lat = has_lateral.sum()
        if torch.compiler.is_compiling():
            pass
        elif checks.host_can_read(n_lat):  # say exactly what is wrong
            n = int(n_lat)
            if not rows - slack <= n <= rows:
                raise ValueError(
                    f"medst/models/vision.py: lateral has {rows} images; expected {B} (full) "
                    f"or {n} (compact, one per study with has_lateral"
                    + (f", plus at most {slack} padding rows)" if slack else ")")
                )
        else:
            checks.check(
                (n_lat <= rows) & (n_lat >= rows - slack),
                f"medst/models/vision.py: compact laterals: "
                f"{rows} rows do not match has_lateral (at most {slack} padding rows)",
            )
        return has_lateral, lateral

    def _group_sizes(self, B: int, rows: int) -> tuple[int, int]:
        """Sizes of the (lateral, single-view) groups for B studies and `rows` compact lateral rows."""
        k = self.group_bucket
        if k == 0:
            return rows, B - rows
        # B - rows single-view studies, plus one for each padding row of the laterals (at most k - 1)
        return rows, min(B, -(-(B - rows + k - 1) // k) * k)

    def _encode(self, frontal, lateral, has_lateral, capture: int | None = None, compact: bool | None = None):
        """Tokens [B, prefix + P, D], patch mask [B, P], optional attention [B, heads, S, S]."""
        has_lateral, lateral = self._split(frontal, lateral, has_lateral, compact)
        B, k = frontal.shape[0], self.num_prefix_tokens
        rows = 0 if lateral is None else lateral.shape[0]
        if rows == 0:  # single view everywhere: a plain ViT
            x, probs = self._run(self.embed(frontal), joint=False, capture=capture)
            return x, torch.ones(B, x.shape[1] - k, dtype=torch.bool, device=x.device), probs
        n_lat, n_one = self._group_sizes(B, rows)
        if n_one == 0:  # a lateral for every study
            x, probs = self._run(self.embed_pair(frontal, lateral), joint=True, capture=capture)
            return x, torch.ones(B, x.shape[1] - k, dtype=torch.bool, device=x.device), probs
        # Mixed batch: the two groups run separately, each as one batched call. The routing is computed on the
        # device: a stable sort puts the studies with a lateral first, in batch order (matching the compact
        # rows), another puts those without first. Rows past a group's real studies are padding.
        flag = has_lateral.to(torch.uint8)
        idx_lat = torch.argsort(1 - flag, stable=True)[:n_lat]
        idx_one = torch.argsort(flag, stable=True)[:n_one]
        x_lat, p_lat = self._run(self.embed_pair(frontal[idx_lat], lateral), joint=True, capture=capture)
        x_one, p_one = self._run(self.embed(frontal[idx_one]), joint=False, capture=capture)
        N = x_one.shape[1] - k
        # study i's row in [x_lat; x_one]: its rank among the studies with (or without) a lateral
        rank = torch.cumsum(flag, 0) - 1, torch.cumsum(1 - flag, 0) - 1
        source = torch.where(has_lateral, rank[0], n_lat + rank[1])
        x = torch.cat([x_lat, F.pad(x_one, (0, 0, 0, N))], dim=0)[source]
        probs = None
        if capture is not None:
            probs = torch.cat([p_lat, F.pad(p_one, (0, N, 0, N))], dim=0)[source]
        mask = torch.ones(B, 2 * N, dtype=torch.bool, device=x.device)
        mask[:, N:] = has_lateral[:, None]
        return x, mask, probs

    def forward(
        self,
        frontal: torch.Tensor,
        lateral: torch.Tensor | None = None,
        has_lateral: torch.Tensor | None = None,
        compact: bool | None = None,
    ) -> VisionOutput:
        """Encode studies (Method §3).

        Args:
            frontal: [B, 3, H, W].
            lateral: None, compact [has_lateral.sum(), 3, H, W] (studies with a lateral,
                in batch order; with `group_bucket`, then padding rows) or full [B, 3, H, W]
                (rows without a lateral are ignored).
            has_lateral: [B] bool; None means every study has one if `lateral` is given.
            compact: True if `lateral` is compact even with B rows (a padded batch); None
                infers the form from the number of rows.
        Returns:
            VisionOutput(cls [B, D], patches [B, P, D], patch_mask [B, P]).
        """
        x, mask, _ = self._encode(frontal, lateral, has_lateral, compact=compact)
        k = self.num_prefix_tokens
        return VisionOutput(cls=x[:, 0], patches=x[:, k:], patch_mask=mask)

    @torch.no_grad()
    def attention(
        self,
        frontal: torch.Tensor,
        lateral: torch.Tensor | None = None,
        has_lateral: torch.Tensor | None = None,
        block: int = -1,
    ) -> torch.Tensor:
        """Attention probabilities of one block: [B, heads, S, S], S = prefix + P.

        Token order as in the sequence: prefix ([CLS]), N frontal, N lateral patches.
        Rows/columns of a missing lateral are zero. Use e.g. probs[:, :, 1:1+N, 1+N:]
        for how much each frontal patch attends to the lateral view.
        """
        depth = len(self.vit.blocks)
        if not -depth <= block < depth:
            raise IndexError(f"medst/models/vision.py: block {block} out of range for a {depth}-block ViT")
        _, _, probs = self._encode(frontal, lateral, has_lateral, capture=block % depth)
        return probs


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Weights from a .safetensors, .pth or .bin file, read by timm's ``load_state_dict``: torch files with
    ``weights_only=True``; a ``state_dict`` or ``model`` entry is unwrapped (EMA weights are not picked), and the
    ``module.`` / ``_orig_mod.`` prefixes of DDP and ``torch.compile`` are stripped."""
    from timm.models import load_state_dict

    if not os.path.isfile(path):
        raise FileNotFoundError(f"medst/models/vision.py: checkpoint file not found: {path}")
    try:
        state = load_state_dict(path, use_ema=False, device="cpu", weights_only=True)
    except AttributeError as err:  # timm calls .items() on whatever the file holds
        raise ValueError(f"medst/models/vision.py: {path} does not hold a state dict") from err
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"medst/models/vision.py: {path} does not hold a state dict (not every value is a tensor)")
    return state


def create_move(
    model_name: str = "vit_base_patch16_224",
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    lateral_init: str = "random",
    experts: str = "move",
    **timm_kwargs,
) -> MoVE:
    """Build a MoVE image encoder through `timm.create_model`.

    Args:
        model_name: any timm ViT with a class token (e.g. "vit_base_patch16_224",
            "vit_small_patch16_224"); tiny profiles pass e.g. img_size=64, patch_size=8,
            embed_dim=64, depth=2, num_heads=2.
        pretrained: timm's own pretrained weights (needs the hub unless cached).
        checkpoint_path: a local file (.safetensors, .pth or .bin) holding either a ViT state
            dict (timm key names; the classifier is ignored, position embeddings are
            resized by timm's filter) or a full MoVE state dict (keys `vit.*`, and
            `lateral_experts.*` unless it was saved with experts="shared").
        lateral_init: "random" (published) or "frontal" (copy of the loaded frontal MLPs).
        experts: "move" (published) or "shared" (one feed-forward for both views: the
            ablation baseline of chapter 4, see `MoVE`).
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    vit = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **timm_kwargs)
    if not isinstance(vit, VisionTransformer):
        raise ValueError(
            f"medst/models/vision.py: {model_name} is a {type(vit).__name__}, not a timm VisionTransformer"
        )
    _check_experts(experts)  # before reading any file
    state = _read_state_dict(str(checkpoint_path)) if checkpoint_path else None
    if state is not None and any(k.startswith(("vit.", "lateral_experts.")) for k in state):  # a full MoVE state
        saved = "move" if any(k.startswith("lateral_experts.") for k in state) else "shared"
        if saved != experts:
            raise ValueError(
                f"medst/models/vision.py: {checkpoint_path} holds a MoVE saved with experts={saved!r}, "
                f"but experts={experts!r} was asked for"
            )
        move = MoVE(vit, lateral_init="random", experts=experts)
        move.load_state_dict(state, strict=True)
        return move
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.", "attn_pool."))}
        state = checkpoint_filter_fn(state, vit)
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.", "attn_pool."))}
        result = vit.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(("head.", "fc_norm.", "attn_pool."))]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"medst/models/vision.py: {checkpoint_path} does not match {model_name}: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
            )
    return MoVE(vit, lateral_init=lateral_init, experts=experts)
