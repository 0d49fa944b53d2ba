"""MPMA, a neighbour of Med-ST: paired masking with alignment (chapter 10).

MPMA ("Multi-task Paired Masking with Alignment", Zhang et al., IEEE TMM 2023, arXiv 2305.07920) learns from the
same image-report pairs as Med-ST, but mostly by *reconstruction*: it hides most of the image and part of the
report at once and rebuilds each with the help of the other. Its three parts, as the paper names them:

1. **Paired masking.** A share ``r_I`` of the image's patches is removed before the image encoder, which reads
   only the visible ones (as in MAE), and a share ``r_T`` of the report's ordinary tokens is replaced by [MASK]
   (as in BERT); [CLS], [SEP] and [PAD] are never masked.
2. **MA-CMF**, the Memory-Augmented Cross-Modal Fusion: the visible image tokens and the masked report's tokens
   each attend to the other modality *and* to ``S`` learned memory slots (keys and values that belong to no
   input, shared by every pair), then a light pixel decoder rebuilds the removed patches and an MLM head the
   masked words:

       L_MIM = mean over masked patches n of  ||x̂_n − norm(x_n)||² / (p²C)
       L_MLM = mean over masked tokens t of  −log p(w_t | visible patches, unmasked words)

3. **GLA**, the Global and Local Alignment of the *unmasked* pair: the global image-report InfoNCE of Method §4
   (:func:`medst.losses.contrastive.global_alignment_loss`) and the word-patch alignment of Method §5
   (:class:`medst.losses.local.LocalAlignment`), with Med-ST's heads (Method §2).

   L = λ1·L_global + λ2·L_local + λ_MIM·L_MIM + λ_MLM·L_MLM

with λ1, λ2 and the temperatures from ``loss.*`` (Med-ST's) and λ_MIM, λ_MLM from ``model.mpma.*``.

**Reused from medst**: the towers (a timm ViT and a BERT, built by :mod:`medst.models.build`), the projection
heads, both alignment losses, the batches, the training step and the evaluation.

**Where GLA is Med-ST's and where it may differ.** GLA aligns the two modalities globally (one vector per image
and per report) and locally (image regions with words). The global term is the same symmetric InfoNCE as Med-ST's.
The local term here is Med-ST's token-level alignment (Method §5) with Med-ST's token weights
(``loss.local_weighting``) and temperature: one way of aligning regions with words, not necessarily the paper's
form of it (its weighting of tokens in particular is Med-ST's own).

**Choices.** The paper's summary of MPMA names its modules and losses but not the sizes and forms below; each
is ours, stated with its reason (each can be changed in ``model.mpma``):

* the ratios: not given there; we use ``r_I = 0.75`` (MAE's ratio, for an MAE-style image branch) and
  ``r_T = 0.15`` (BERT's), each the *exact* count ``round(r·n)`` per image and per report (at least one token per
  report, so that every report takes part in L_MLM), drawn uniformly at random;
* how a token is masked: we always put [MASK] (no 80/10/10 rule), because the alignment reads the unmasked report
  in a pass of its own, so the masked pass never has to look like a clean one;
* which pair GLA aligns: we align the *unmasked* pair, in its own pass, because those are the embeddings the
  evaluation reads; reconstruction uses the masked pair (so both towers run twice per step, the image tower on a
  quarter of its patches the second time);
* the form of MA-CMF: not given there; we use layers of pre-norm self-attention, memory-augmented cross-attention
  and an MLP, one stack per modality, updated side by side (``fusion_layers``); the memory appends ``S = 16``
  learned keys and values to the other modality's (the form of memory-augmented attention); the fusion is as wide
  as the text tower;
* the reconstruction targets and decoder: per-patch normalised pixels (MAE's ``norm_pix_loss``), one pre-norm
  transformer block with learned position embeddings, because a light decoder keeps the encoder doing the work;
  λ_MIM = λ_MLM = 1, the simplest weighting, with Med-ST's λ1, λ2 for the alignment terms;
* views: the paper pairs one image with a report; MPMA here reads the frontal image only, in training and in
  evaluation. The ViT is built with ``model.vision.experts=shared`` whatever the config says, so it has no
  lateral experts (that would never train), and a lateral given to :meth:`MPMA.encode_image` is ignored.

No temporal term: ``loss.temporal_*`` is not used.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from medst.config import Config, LossConfig, MPMAConfig
from medst.losses.contrastive import global_alignment_loss
from medst.models.build import build_text_encoder, build_vision
from medst.models.heads import AlignedTowers, TrainingOutput
from medst.models.pretrained import init_heads

__all__ = [
    "MPMA",
    "MPMAOutput",
    "MPMAReconstruction",
    "MemoryAttention",
    "FusionLayer",
    "MACMF",
    "PixelDecoder",
    "MLMHead",
    "build_mpma",
    "masked_count",
    "random_patch_mask",
    "random_token_mask",
    "visible_indices",
    "patchify",
    "unpatchify",
    "normalise_patches",
    "masked_patch_loss",
    "masked_token_loss",
]


# ---------------------------------------------------------------------------------------------------------
# Paired masking
# ---------------------------------------------------------------------------------------------------------
def masked_count(n: int | Tensor, ratio: float) -> int | Tensor:
    """How many of ``n`` items a ratio masks: ``round(ratio·n)``, halves rounded up (an int, or a long tensor)."""
    if isinstance(n, Tensor):
        return torch.floor(n.to(torch.float64) * ratio + 0.5).long()
    return int(math.floor(n * ratio + 0.5))


def random_patch_mask(
    batch: int, num_patches: int, ratio: float, *, device=None, generator: torch.Generator | None = None
) -> Tensor:
    """Which patches each image loses: [batch, N] bool, True = removed; exactly ``masked_count(N, ratio)`` per row,
    chosen uniformly at random (a random permutation per row, MAE's "shuffle and keep the first")."""
    n_mask = masked_count(num_patches, ratio)
    if not 0 < n_mask < num_patches:
        raise ValueError(
            f"medst/neighbours/mpma.py: image mask ratio {ratio} removes {n_mask} of {num_patches} patches; "
            "at least one must be removed and one kept"
        )
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    rank = noise.argsort(dim=1).argsort(dim=1)  # each patch's place in a random order of its row
    return rank < n_mask


def visible_indices(mask: Tensor, keep: int) -> Tensor:
    """[B, N] bool (True = removed; ``keep`` False entries in every row) -> [B, keep] long: the kept patches of
    each row, in image order. ``keep`` is given, not counted, so that nothing waits for the device."""
    order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # kept (0) first, each group in image order
    return order[:, :keep]


def random_token_mask(
    input_ids: Tensor,
    attention_mask: Tensor,
    special_ids: Tensor,
    ratio: float,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Which report tokens become [MASK]: [B, T] bool.

    Only ordinary tokens can be masked (never [CLS], [SEP], [PAD] or any id in ``special_ids``, nor a position
    ``attention_mask`` drops). Each report with ``n`` ordinary tokens gets exactly ``max(1, masked_count(n, ratio))``
    of them (0 when ``n`` is 0), chosen uniformly at random; nothing here reads the device on the host.
    """
    maskable = attention_mask.bool() & ~torch.isin(input_ids, special_ids.to(input_ids.device))
    n = maskable.sum(dim=1)
    k = torch.minimum(masked_count(n, ratio).clamp_min(1), n)  # [B]
    noise = torch.rand(input_ids.shape, device=input_ids.device, generator=generator)
    noise = torch.where(maskable, noise, torch.full_like(noise, 2.0))  # the maskable tokens sort first
    rank = noise.argsort(dim=1).argsort(dim=1)
    return rank < k[:, None]


# ---------------------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------------------
def patchify(images: Tensor, patch: int) -> Tensor:
    """[B, C, H, W] -> [B, N, p²·C], patches in the ViT's row-major order."""
    return rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch, q=patch)


def unpatchify(patches: Tensor, patch: int, grid: tuple[int, int], channels: int) -> Tensor:
    """[B, N, p²·C] -> [B, C, H, W], the inverse of :func:`patchify`."""
    h, w = grid
    return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=h, w=w, p=patch, q=patch, c=channels)


def normalise_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Each patch to zero mean and unit variance over its pixels (the ``norm_pix_loss`` target of MAE): [.., P]."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


def masked_patch_loss(
    pred: Tensor, images_or_patches: Tensor, mask: Tensor, *, patch: int | None = None, norm_pix: bool = True
) -> Tensor:
    """L_MIM: the mean squared error over the pixels of the *removed* patches only.

    Args:
        pred: [B, N, P] predicted patches (P = p²·C).
        images_or_patches: the targets, [B, C, H, W] images (give ``patch``) or [B, N, P] patches.
        mask: [B, N] bool, True = removed: only these patches count; a kept patch's target is never read.
        norm_pix: compare with per-patch normalised targets (:func:`normalise_patches`).
    Returns:
        scalar: Σ_n mask_n·mean_P (pred − target)² / Σ_n mask_n.
    """
    target = patchify(images_or_patches, patch) if images_or_patches.dim() == 4 else images_or_patches
    if norm_pix:
        target = normalise_patches(target)
    per_patch = (pred - target).pow(2).mean(dim=-1)  # [B, N]
    per_patch = torch.where(mask, per_patch, torch.zeros_like(per_patch))  # kept patches: exactly 0, no gradient
    return per_patch.sum() / mask.sum().clamp_min(1)


def masked_token_loss(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """L_MLM: cross-entropy of the original token at the *masked* positions only.

    Args:
        logits: [B, T, V]; labels: [B, T] the original ids; mask: [B, T] bool, True = masked (scored).
    Returns:
        scalar: the mean over masked tokens of −log softmax(logits)[label]; unmasked labels are never read.
    """
    ignore = -100
    targets = torch.where(mask, labels, torch.full_like(labels, ignore))
    total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=ignore, reduction="sum")
    return total / mask.sum().clamp_min(1)


# ---------------------------------------------------------------------------------------------------------
# MA-CMF: memory-augmented cross-modal fusion
# ---------------------------------------------------------------------------------------------------------
class MemoryAttention(nn.Module):
    """Multi-head cross-attention whose keys and values are the context's plus ``slots`` learned memory slots.

        a = softmax( q·[k_ctx ; m_k]ᵀ / √d_h ),   out = W_o · a·[v_ctx ; m_v]

    Queries x [B, N, D], context [B, M, D] (None: the memory alone), context_mask [B, M] bool (True = real
    token) -> [B, N, D]. Each query is handled on its own, so permuting the queries permutes the output
    (permutation-equivariant), and permuting the context (with its mask) changes nothing.
    """

    def __init__(self, dim: int, heads: int, slots: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"medst/neighbours/mpma.py: width {dim} is not divisible by {heads} heads")
        if slots < 1:
            raise ValueError(f"medst/neighbours/mpma.py: the memory needs at least one slot, got {slots}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.memory_k = nn.Parameter(torch.randn(slots, dim) * 0.02)  # m_k: learned keys, shared by every pair
        self.memory_v = nn.Parameter(torch.randn(slots, dim) * 0.02)  # m_v: learned values

    @property
    def slots(self) -> int:
        return int(self.memory_k.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        B = x.shape[0]
        mem_k = self.memory_k.expand(B, -1, -1)
        mem_v = self.memory_v.expand(B, -1, -1)
        if context is None:
            keys, values, allowed = mem_k, mem_v, None
        else:
            k, v = self.kv(context).chunk(2, dim=-1)
            keys, values = torch.cat([k, mem_k], dim=1), torch.cat([v, mem_v], dim=1)
            allowed = None
            if context_mask is not None:  # memory slots are always attended to
                always = context_mask.new_ones(B, self.slots)
                allowed = torch.cat([context_mask.bool(), always.bool()], dim=1)[:, None, None, :]  # [B,1,1,M+S]
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (self.q(x), keys, values))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class FusionLayer(nn.Module):
    """One MA-CMF layer of one modality's stream (pre-norm):

        x = x + SelfAttn(LN(x))                       within the modality (padding masked)
        x = x + MemoryAttn(LN(x), LN(y) ; memory)     the other modality y and the memory slots
        x = x + MLP(LN(x))

    x [B, N, D], y [B, M, D] -> [B, N, D]."""

    def __init__(self, dim: int, heads: int, slots: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.cross_attn = MemoryAttention(dim, heads, slots)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(
        self, x: Tensor, context: Tensor, x_mask: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Tensor:
        """x_mask / context_mask: [B, N] / [B, M] bool, True = real token (None: all real)."""
        h = self.norm_self(x)
        pad = None if x_mask is None else ~x_mask.bool()
        x = x + self.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        x = x + self.cross_attn(self.norm_cross(x), self.norm_context(context), context_mask)
        return x + self.mlp(self.norm_mlp(x))


class MACMF(nn.Module):
    """Memory-Augmented Cross-Modal Fusion: visible image tokens and masked report tokens, fused side by side.

    Args:
        image_dim, text_dim: widths of the two towers; dim: the fusion width (both are projected to it).
        layers: fusion layers per modality; heads: attention heads; slots: memory slots per cross-attention.

    ``forward(image [B, K, Dv], text [B, T, Dt], text_mask [B, T] bool)`` -> (image [B, K, dim], text [B, T, dim]):
    in every layer each stream reads the other stream's output of the previous layer (and its memory).
    """

    def __init__(self, image_dim: int, text_dim: int, dim: int, layers: int, heads: int, slots: int) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"medst/neighbours/mpma.py: MA-CMF needs at least one layer, got {layers}")
        self.image_in = nn.Linear(image_dim, dim)
        self.text_in = nn.Linear(text_dim, dim)
        self.image_layers = nn.ModuleList(FusionLayer(dim, heads, slots) for _ in range(layers))
        self.text_layers = nn.ModuleList(FusionLayer(dim, heads, slots) for _ in range(layers))
        self.image_norm = nn.LayerNorm(dim)
        self.text_norm = nn.LayerNorm(dim)

    def forward(self, image: Tensor, text: Tensor, text_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, y = self.image_in(image), self.text_in(text)
        for image_layer, text_layer in zip(self.image_layers, self.text_layers):
            x, y = (
                image_layer(x, y, None, text_mask),  # image tokens read the report (its padding masked) + memory
                text_layer(y, x, text_mask, None),  # report tokens read the visible patches + memory
            )
        return self.image_norm(x), self.text_norm(y)


# ---------------------------------------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------------------------------------
class PixelDecoder(nn.Module):
    """A light MAE-style decoder: fused visible tokens -> every patch's pixels.

    The ``prefix`` tokens ([CLS]) come first, then the K visible patches; a learned [MASK] token fills each
    removed patch's place, learned position embeddings are added, pre-norm transformer blocks run over all
    ``prefix + N`` tokens, and a linear layer predicts each patch's p²·C pixels.

    ``forward(tokens [B, prefix + K, D_in], keep [B, K] long)`` -> [B, N, p²·C].
    """

    def __init__(
        self, in_dim: int, dim: int, layers: int, heads: int, num_patches: int, patch_pixels: int, prefix: int = 1
    ) -> None:
        super().__init__()
        self.prefix, self.num_patches = prefix, num_patches
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, prefix + num_patches, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, int(4 * dim), dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_pixels)

    def forward(self, tokens: Tensor, keep: Tensor) -> Tensor:
        x = self.embed(tokens)
        B, _, D = x.shape
        k = self.prefix
        full = self.mask_token.expand(B, self.num_patches, D)
        full = full.scatter(1, keep[..., None].expand(-1, -1, D), x[:, k:])  # visible patches back in place
        x = torch.cat([x[:, :k], full], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, k:]


class MLMHead(nn.Module):
    """BERT's prediction head: [B, T, D] -> [B, T, vocab] = Linear(LN(GELU(Linear(x))))."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.decoder = nn.Linear(dim, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x))


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------
MPMAOutput = TrainingOutput  # the loss and its terms, as Med-ST's (medst.models.heads)


@dataclass
class MPMAReconstruction:
    """One masked pass (:meth:`MPMA.reconstruct`).

    image_mask: [B, N] bool, True = removed patch; pixels: [B, N, p²·C] predicted patches (normalised per patch
    when ``norm_pix_loss``); token_mask: [B, T] bool, True = masked token; masked_ids: [B, T] the ids the text
    tower read; logits: [B, T, V] the MLM head's scores.
    """

    image_mask: Tensor
    pixels: Tensor
    token_mask: Tensor
    masked_ids: Tensor
    logits: Tensor


class MPMA(AlignedTowers):
    """Paired masking, MA-CMF and GLA around medst's towers (see the module docstring).

    Args:
        vision: a :class:`medst.models.vision.MoVE` (read as a plain ViT: frontal view only).
        text: a :class:`medst.models.text.TextEncoder`; its tokenizer needs a [MASK] token.
        embed_dim, head_hidden: the joint embedding size d and the heads' hidden width (Method §2).
        loss: λ1, λ2, temperatures and local-alignment options (``loss.*``, as Med-ST's).
        mpma: ratios, memory, fusion and decoder sizes, λ_MIM and λ_MLM (``model.mpma``).

    The interface is Med-ST's (:class:`medst.models.medst.MedST`): ``forward(batch) -> .loss, .terms`` for
    :func:`medst.train.step.train_step`, and ``encode_image`` / ``encode_text`` / ``local_alignment`` /
    ``uses_local`` for the evaluation (:mod:`medst.eval`).
    """

    def __init__(
        self,
        vision: nn.Module,
        text: nn.Module,
        embed_dim: int = 128,
        head_hidden: int = 2048,
        loss: LossConfig | None = None,
        mpma: MPMAConfig | None = None,
    ) -> None:
        loss = loss or LossConfig()
        super().__init__(vision, text, embed_dim, head_hidden, loss)  # GLA's heads (Method §2, §4, §5)
        self.mpma_cfg = mpma = mpma or MPMAConfig()
        dv, dt = vision.embed_dim, text.hidden_size
        # paired masking
        tok = text.tokenizer
        if tok.mask_token_id is None:
            raise ValueError("medst/neighbours/mpma.py: the tokenizer has no [MASK] token, which MLM needs")
        self.mask_token_id = int(tok.mask_token_id)
        self.register_buffer("special_ids", torch.tensor(sorted(set(tok.all_special_ids))), persistent=False)
        embed = vision.vit.patch_embed
        self.patch = int(embed.patch_size[0])
        self.channels = int(embed.proj.in_channels)
        self.grid = tuple(int(g) for g in embed.grid_size)
        # MA-CMF and the two reconstruction heads
        dim = mpma.fusion_dim or dt
        self.fusion = MACMF(dv, dt, dim, mpma.fusion_layers, mpma.fusion_heads, mpma.memory_slots)
        self.pixel_decoder = PixelDecoder(
            dim,
            mpma.decoder_dim or dim,
            mpma.decoder_layers,
            mpma.fusion_heads,
            vision.num_patches,
            self.patch**2 * self.channels,
            prefix=vision.num_prefix_tokens,
        )
        self.mlm_head = MLMHead(dim, int(text.model.config.vocab_size))

    # -- inference (the unmasked pair; encode_image, encode_text: medst.models.heads.AlignedTowers) ------
    def image_tokens(self, frontal, lateral=None, has_lateral=None, compact=None):
        """The frontal image only: ``lateral``, ``has_lateral`` and ``compact`` are accepted for Med-ST's
        interface and ignored (MPMA reads one view)."""
        return self.vision(frontal)

    # -- the masked pair ----------------------------------------------------------------------------
    def encode_visible(self, images: Tensor, keep: Tensor) -> Tensor:
        """The image encoder on the visible patches only: images [B,3,H,W], keep [B,K] -> [B, prefix + K, Dv].

        Patch and position embeddings are the ViT's (each kept patch keeps its own position); the timm blocks
        and the final norm then run on the ``prefix + K`` tokens alone."""
        vit, k = self.vision.vit, self.vision.num_prefix_tokens
        x = self.vision.embed(images)  # [B, prefix + N, D]
        patches = torch.gather(x[:, k:], 1, keep[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :k], patches], dim=1)
        for block in vit.blocks:
            x = block(x)
        return vit.norm(x)

    def token_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The text tower's last hidden states per token (not merged into words): [B,T] -> [B,T,Dt]."""
        extra = {"position_ids": torch.zeros_like(input_ids)} if self.text.position_ids == "zeros" else {}
        return self.text.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state

    def reconstruct(
        self, frontal: Tensor, input_ids: Tensor, attention_mask: Tensor, generator: torch.Generator | None = None
    ) -> MPMAReconstruction:
        """Mask both modalities, fuse them (MA-CMF) and predict the removed patches and the masked tokens.

        ``generator`` draws the masks (default: torch's global generator), e.g. the same masks before and after
        training."""
        cfg = self.mpma_cfg
        B = frontal.shape[0]
        image_mask = random_patch_mask(
            B, self.vision.num_patches, cfg.image_mask_ratio, device=frontal.device, generator=generator
        )
        token_mask = random_token_mask(
            input_ids, attention_mask, self.special_ids, cfg.text_mask_ratio, generator=generator
        )
        keep = visible_indices(
            image_mask, self.vision.num_patches - masked_count(self.vision.num_patches, cfg.image_mask_ratio)
        )
        visible = self.encode_visible(frontal, keep)  # [B, prefix + K, Dv]
        masked_ids = input_ids.masked_fill(token_mask, self.mask_token_id)
        tokens = self.token_states(masked_ids, attention_mask)  # [B, T, Dt]
        fused_image, fused_text = self.fusion(visible, tokens, attention_mask.bool())
        return MPMAReconstruction(
            image_mask=image_mask,
            pixels=self.pixel_decoder(fused_image, keep),
            token_mask=token_mask,
            masked_ids=masked_ids,
            logits=self.mlm_head(fused_text),
        )

    def reconstruction_terms(
        self, frontal: Tensor, input_ids: Tensor, attention_mask: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """``{"mim": L_MIM, "mlm": L_MLM}`` of one masked pass (:meth:`reconstruct`)."""
        rec = self.reconstruct(frontal, input_ids, attention_mask, generator)
        return {
            "mim": masked_patch_loss(
                rec.pixels, frontal, rec.image_mask, patch=self.patch, norm_pix=self.mpma_cfg.norm_pix_loss
            ),
            "mlm": masked_token_loss(rec.logits, input_ids, rec.token_mask),
        }

    # -- training -----------------------------------------------------------------------------------
    def forward(self, batch) -> MPMAOutput:
        """A :class:`medst.data.dataset.Batch` -> L = λ1·L_global + λ2·L_local + λ_MIM·L_MIM + λ_MLM·L_MLM and its
        terms. Only the frontal images are read; sequences count as single pairs (no temporal term)."""
        cfg, m = self.loss_cfg, self.mpma_cfg
        img = self.encode_image(batch.frontal)
        txt = self.encode_text(batch.input_ids, batch.attention_mask)
        terms: dict[str, Tensor] = {}
        total = img.global_.new_zeros(())
        if cfg.global_weight > 0:
            terms["global"] = global_alignment_loss(img.global_, txt.global_, cfg.global_temperature)
            total = total + cfg.global_weight * terms["global"]
        if self.uses_local:
            local = self.local_alignment(txt.words, img.patches, txt.word_mask, img.patch_mask, return_details=True)
            terms["local"], terms["local_word"], terms["local_patch"] = local.loss, local.loss_word, local.loss_patch
            total = total + cfg.local_weight * terms["local"]
        rec = self.reconstruction_terms(batch.frontal, batch.input_ids, batch.attention_mask)
        terms.update(rec)
        total = total + m.mim_weight * rec["mim"] + m.mlm_weight * rec["mlm"]
        return MPMAOutput(loss=total, terms={k: v.detach() for k, v in terms.items()})


def build_mpma(cfg: Config, tokenizer, load_init: bool = True) -> MPMA:
    """The MPMA model a profile describes (``model.method: mpma``), on the same towers as Med-ST.

    The ViT is built with ``model.vision.experts=shared`` (one view, no lateral experts; see the module
    docstring). ``model.vision.init_from`` / ``model.text.init_from`` start the towers and their heads from a
    released checkpoint as for Med-ST; ``load_init=False`` builds the architecture without reading them."""
    one_view = copy.deepcopy(cfg)
    one_view.model.vision.experts = "shared"
    model = MPMA(
        build_vision(one_view, load_init),
        build_text_encoder(one_view, tokenizer, load_init),
        embed_dim=cfg.model.embed_dim,
        head_hidden=cfg.model.head_hidden,
        loss=cfg.loss,
        mpma=cfg.model.mpma,
    )
    if load_init and (cfg.model.vision.init_from or cfg.model.text.init_from):
        init_heads(model, one_view)
    return model
