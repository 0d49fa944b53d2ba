"""UniMedI, a neighbour of Med-ST: one ViT for radiographs and CT volumes, joined through the reports (chapter 11).

UniMedI ("Unified Medical Image Pre-training in Language-Guided Common Semantic Space", He et al., ECCV 2024,
arXiv 2311.14851) learns from 2-D radiographs and 3-D CT volumes with *one* vision transformer, and uses the
diagnostic reports as the common semantic space of both: each modality is aligned with its reports, and there are
almost no patients with both. To tie the two dimensions together more closely, the report of a volume guides the
choice of the few 2-D slices it speaks about; those slices, read by the 2-D path, act as *pseudo 2-D pairs* with
the report. Its parts, as built here:

1. **Two tokenizers, one transformer.** A radiograph is tokenised by the ViT's own 2-D patch embedding, a volume by
   a 3-D patch embedding (:class:`VolumeEmbed`); both sequences take the ViT's [CLS] token and run through the same
   transformer blocks and final norm, and both [CLS] outputs go through the same global head ``image_global``:
   one common space.
2. **Alignment with the reports.** The global image-report InfoNCE of Method §4
   (:func:`medst.losses.contrastive.global_alignment_loss`) for radiograph-report pairs and for volume-report pairs.
3. **Text-guided slice selection.** The slabs of a volume (``volume_patch[0]`` consecutive slices, the depth of
   one 3-D patch) are scored against the volume's report (:func:`slab_scores`), the ``top_k`` best are selected
   (:func:`select_slabs`), and their mean slices (:func:`medst.data.volumes.slab_images`) go through the 2-D path;
   the mean of their 2-D embeddings is aligned with the report like a radiograph.

   L = λ_g·InfoNCE(radiograph, report) + λ_vol·InfoNCE(volume, report) + λ_pseudo·InfoNCE(pseudo image, report)
       + λ_sel·L_sel

with λ_g and the temperature τ_g from ``loss.global_*`` (Med-ST's) and the others from ``model.unimedi``.

**Reused from medst**: the towers (a timm ViT and a BERT, built by :mod:`medst.models.build`), the global heads,
the global alignment loss, the batches (:mod:`medst.data.volumes`), the training step and the evaluation.

**The paper's idea and our choices.** No code of UniMedI is public, and its description leaves the sizes and
several forms open; each choice below is ours, with its reason (the sizes can be changed in ``model.unimedi``):

* the 3-D tokenizer: a Conv3d whose kernel and stride are ``volume_patch`` (default 2 slices × 16 × 16 voxels), so
  that a token covers one slab of the volume; a learned in-plane position table (rows × columns) and a learned
  depth table (one entry per slab), added together (factorised: fewer parameters than one table per 3-D position,
  and every slab shares the in-plane layout). Both are trunc-normal(0.02) like timm's position table. The [CLS]
  token keeps its 2-D position-0 embedding;
* how the slices are scored: the paper describes an *attentive* slice selection guided by the text; we score each
  slab directly with the report embedding: the mean of the slab's output
  tokens through ``slice_head`` (a Linear(D_v, d), ours), normalised, dotted with the normalised report embedding.
  The scores say which slabs the report speaks about, so selection can be checked against the phantom's ground
  truth slice by slice (chapter 11);
* what trains the scorer: a multiple-instance alignment ``L_sel`` (ours). A volume is a bag of slabs; its logit
  against report j is a soft maximum over its slabs, τ_s·logsumexp_s(<report_j, slab_s>/τ_s), and a symmetric
  InfoNCE over the batch (with τ_g) asks the best slabs of volume i to match report i better than report j.
  Selection itself (the top-k) is not differentiated: it runs under ``torch.no_grad()`` on detached embeddings;
* the pseudo 2-D image: the mean slice of each selected slab, copied to three channels (``slab_images``); the
  ``top_k`` selected images of a volume give one embedding, the normalised mean of their 2-D global embeddings, so
  that a volume gives one pseudo pair per report (the InfoNCE then has no duplicate positives);
* left out: the paper's self-distillation (a teacher-student term between masked and full views across the two
  dimensions); chapter 11 says so beside the results;
* views: as MPMA (chapter 10), the 2-D path reads the frontal image only, and the ViT is built with
  ``model.vision.experts=shared`` whatever the config says; the local branch is off (``loss.local_weight`` is
  treated as 0, so no local heads are built) and ``loss.temporal_*`` is not used.

**Shapes.** Radiographs [B, 3, H, W]; volumes [V, 1, D, H_v, W_v] (D = ``volume_slices``, H_v = W_v =
``data.image_size``; :mod:`medst.data.volumes`); patch (p_d, p_h, p_w) = ``volume_patch``; S = D / p_d slabs,
P = (H_v / p_h)·(W_v / p_w) in-plane patches, so a volume is 1 + S·P tokens of width D_v; joint size d.

A 2-D study read by UniMedI gives exactly what the 2-D tower alone gives (:meth:`UniMedI.image_tokens`), so the
evaluation of radiographs is Med-ST's; chapter 11 builds this model, trains it on phantom radiographs and volumes,
and compares it with Med-ST.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from medst.config import Config, LossConfig, UniMedIConfig
from medst.data.volumes import PairedBatch, VolumeBatch, slab_images
from medst.losses.contrastive import gather_with_grad, global_alignment_loss
from medst.models.build import build_text_encoder, build_vision
from medst.models.heads import AlignedTowers, TrainingOutput
from medst.models.pretrained import init_heads

__all__ = [
    "UniMedI",
    "UniMedIOutput",
    "VolumeEmbed",
    "VolumeEmbedding",
    "build_unimedi",
    "select_slabs",
    "selection_loss",
    "slab_scores",
    "slab_slices",
]

_WHERE = "medst/neighbours/unimedi.py"


# ---------------------------------------------------------------------------------------------------------
# The 3-D tokenizer
# ---------------------------------------------------------------------------------------------------------
class VolumeEmbed(nn.Module):
    """3-D patch embedding: a Conv3d tokenizer and factorised learned positions (see the module docstring).

    Args:
        embed_dim: D_v, the ViT's width.
        patch: (p_d, p_h, p_w) voxels of a 3-D patch (kernel = stride); p_d slices make a slab.
        slices: the most slices a volume may have (the depth table holds ``slices // p_d`` slabs).
        size: the largest in-plane size (rows, columns), or one int for both; the in-plane table holds
            ``(rows // p_h) × (columns // p_w)`` positions.
        in_chans: channels of a volume (1: CT).

    ``forward(volumes [V, 1, D, H, W])`` -> (tokens [V, S·P, D_v], grid (S, g_h, g_w)), S = D / p_d,
    P = g_h·g_w = (H / p_h)·(W / p_w); tokens in slab-major order (slab, then row, then column); token (s, i, j) gets
    ``pos_depth[s] + pos_plane[i, j]``. A smaller volume uses the first slabs / the top-left part of the tables.
    """

    def __init__(
        self,
        embed_dim: int,
        patch: Sequence[int] = (2, 16, 16),
        slices: int = 32,
        size: int | Sequence[int] = 224,
        in_chans: int = 1,
    ) -> None:
        super().__init__()
        patch = tuple(int(p) for p in patch)
        if len(patch) != 3 or min(patch) < 1:
            raise ValueError(f"{_WHERE}: volume_patch must be 3 positive sizes (slices, rows, columns), got {patch}")
        size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        extent = (int(slices), *size)
        for n, p, what in zip(extent, patch, ("slices", "rows", "columns")):
            if n < p or n % p:
                raise ValueError(f"{_WHERE}: volumes of {n} {what} do not split into whole patches of {p}")
        self.patch, self.in_chans = patch, int(in_chans)
        self.grid = tuple(n // p for n, p in zip(extent, patch))  # (slabs, rows, columns) of the tables
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch, stride=patch)
        self.pos_depth = nn.Parameter(torch.zeros(self.grid[0], embed_dim))  # [S_max, D_v]
        self.pos_plane = nn.Parameter(torch.zeros(self.grid[1], self.grid[2], embed_dim))  # [g_h, g_w, D_v]
        nn.init.trunc_normal_(self.pos_depth, std=0.02)
        nn.init.trunc_normal_(self.pos_plane, std=0.02)

    @property
    def slab(self) -> int:
        """p_d, the slices of one slab."""
        return self.patch[0]

    def forward(self, volumes: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        if volumes.ndim != 5 or volumes.shape[1] != self.in_chans:
            raise ValueError(
                f"{_WHERE}: VolumeEmbed expects volumes [V, {self.in_chans}, D, H, W], got {tuple(volumes.shape)}"
            )
        names = ("slices", "rows", "columns")
        for n, p, g, what in zip(volumes.shape[2:], self.patch, self.grid, names):
            if n == 0 or n % p:
                raise ValueError(f"{_WHERE}: a volume of {n} {what} does not split into whole patches of {p}")
            if n > g * p:
                raise ValueError(
                    f"{_WHERE}: a volume of {n} {what} exceeds the position tables ({g * p} {what}; "
                    "model.unimedi.volume_slices and data.image_size set them)"
                )
        x = self.proj(volumes)  # [V, D_v, S, g_h, g_w]
        s, h, w = (int(n) for n in x.shape[2:])
        x = rearrange(x, "v d s h w -> v s h w d") + self.pos_depth[:s, None, None] + self.pos_plane[None, :h, :w]
        return rearrange(x, "v s h w d -> v (s h w) d"), (s, h, w)


# ---------------------------------------------------------------------------------------------------------
# Text-guided slice selection
# ---------------------------------------------------------------------------------------------------------
def slab_scores(slabs: Tensor, reports: Tensor) -> Tensor:
    """How much each slab matches its volume's report: slabs [V, S, d], reports [V, d] -> [V, S] dot products
    (cosines for the normalised embeddings of :meth:`UniMedI.encode_volume` and ``encode_text``)."""
    if slabs.ndim != 3 or reports.ndim != 2 or slabs.shape[0] != reports.shape[0] or slabs.shape[2] != reports.shape[1]:
        raise ValueError(
            f"{_WHERE}: slab_scores expects slabs [V, S, d] and reports [V, d], got {tuple(slabs.shape)} and "
            f"{tuple(reports.shape)}"
        )
    return torch.einsum("vsd,vd->vs", slabs, reports)


def select_slabs(slabs: Tensor, reports: Tensor, k: int) -> Tensor:
    """Text-guided selection: the ``k`` slabs of each volume that best match its report, highest score first.

    slabs [V, S, d], reports [V, d] -> LongTensor [V, k] of slab indices; equal scores: the lower slab first (a
    stable sort: ``torch.topk`` has no fixed order for ties). Not differentiable (an index); the model calls it
    under ``torch.no_grad()``."""
    scores = slab_scores(slabs, reports)
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"{_WHERE}: cannot select {k} of {scores.shape[1]} slabs (model.unimedi.top_k)")
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def slab_slices(slab_index: int, slab: int) -> list[int]:
    """The slice indices (0 = most inferior) that slab ``slab_index`` of ``slab`` slices covers."""
    if slab < 1 or slab_index < 0:
        raise ValueError(f"{_WHERE}: slab_slices needs slab >= 1 and slab_index >= 0, got {slab}, {slab_index}")
    return list(range(slab_index * slab, (slab_index + 1) * slab))


def selection_loss(
    slabs: Tensor, reports: Tensor, temperature: float = 0.1, global_temperature: float = 0.07
) -> Tensor:
    """L_sel, the multiple-instance slab-report alignment that trains the slice scorer (ours; module docstring).

    Args:
        slabs: [V, S, d] normalised slab embeddings; reports: [V, d] normalised, row i = volume i's report.
        temperature: τ_s of the soft maximum over slabs; global_temperature: τ_g of the InfoNCE.
    Returns:
        scalar: CE(volume -> reports) + CE(report -> volumes) with logits
        ``τ_s·logsumexp_s(<report_j, slab_is>/τ_s) / τ_g``, each a mean over the V local rows; with several processes
        the negatives are the whole global batch, as in :func:`~medst.losses.contrastive.global_alignment_loss`.
    """
    if slabs.ndim != 3 or reports.shape != (slabs.shape[0], slabs.shape[2]):
        raise ValueError(
            f"{_WHERE}: selection_loss expects slabs [V, S, d] and reports [V, d], got {tuple(slabs.shape)} and "
            f"{tuple(reports.shape)}"
        )
    S = slabs.shape[1]
    all_slabs, offset = gather_with_grad(rearrange(slabs, "v s d -> v (s d)"))
    all_slabs = rearrange(all_slabs, "n (s d) -> n s d", s=S)
    all_reports, _ = gather_with_grad(reports)
    targets = torch.arange(slabs.shape[0], device=slabs.device) + offset

    def bag_logits(sims: Tensor) -> Tensor:  # [rows, cols, S] slab-report dot products -> [rows, cols]
        return temperature * torch.logsumexp(sims / temperature, dim=-1) / global_temperature

    v2t = bag_logits(torch.einsum("vsd,nd->vns", slabs, all_reports))  # row i: volume i vs every report
    t2v = bag_logits(torch.einsum("nsd,vd->vns", all_slabs, reports))  # row j: report j vs every volume
    return F.cross_entropy(v2t, targets) + F.cross_entropy(t2v, targets)


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------
UniMedIOutput = TrainingOutput  # the loss and its terms, as Med-ST's (medst.models.heads)


@dataclass
class VolumeEmbedding:
    """global_: [V, d] unit vectors (the volume's [CLS] through ``image_global``); slabs: [V, S, d] unit vectors
    (each slab's mean token through ``slice_head``)."""

    global_: Tensor
    slabs: Tensor


class UniMedI(AlignedTowers):
    """One ViT for radiographs and volumes, aligned with the reports, with text-guided slice selection (see the
    module docstring).

    Args:
        vision: a :class:`medst.models.vision.MoVE` (read as a plain ViT: frontal view only; shared with volumes).
        text: a :class:`medst.models.text.TextEncoder`.
        embed_dim, head_hidden: the joint embedding size d and the heads' hidden width (Method §2).
        loss: λ_g and τ_g (``loss.global_*``); ``local_weight`` is taken as 0 (no local heads are built).
        unimedi: the 3-D patch, slices, top-k, the three weights and τ_s (``model.unimedi``).
        volume_size: the in-plane size of the volumes (``data.image_size``); default the ViT's image size.

    The interface is Med-ST's (:class:`medst.models.medst.MedST`): ``forward(batch) -> .loss, .terms`` for
    :func:`medst.train.step.train_step`, ``encode_image`` / ``encode_text`` / ``uses_local`` for the evaluation, and
    :meth:`encode_volume` for volumes.
    """

    def __init__(
        self,
        vision: nn.Module,
        text: nn.Module,
        embed_dim: int = 128,
        head_hidden: int = 2048,
        loss: LossConfig | None = None,
        unimedi: UniMedIConfig | None = None,
        volume_size: int | Sequence[int] | None = None,
    ) -> None:
        loss = dataclasses.replace(loss or LossConfig(), local_weight=0.0)  # global alignment only
        super().__init__(vision, text, embed_dim, head_hidden, loss)
        self.unimedi_cfg = u = unimedi or UniMedIConfig()
        size = volume_size if volume_size is not None else tuple(vision.vit.patch_embed.img_size)
        self.volume_embed = VolumeEmbed(vision.embed_dim, u.volume_patch, u.volume_slices, size)
        self.slice_head = nn.Linear(vision.embed_dim, embed_dim)  # slab tokens -> d, for the slab scores (ours)
        if not 1 <= u.top_k <= self.volume_embed.grid[0]:
            raise ValueError(
                f"{_WHERE}: model.unimedi.top_k = {u.top_k} must be between 1 and the {self.volume_embed.grid[0]} "
                "slabs of a volume"
            )

    @property
    def slab(self) -> int:
        """Slices per slab (``volume_patch[0]``)."""
        return self.volume_embed.slab

    # -- the 2-D path (encode_image, encode_text: medst.models.heads.AlignedTowers) ------------------------
    def image_tokens(self, frontal, lateral=None, has_lateral=None, compact=None):
        """The frontal image only: ``lateral``, ``has_lateral`` and ``compact`` are accepted for Med-ST's
        interface and ignored (UniMedI reads one view, as MPMA)."""
        return self.vision(frontal)

    # -- the 3-D path ------------------------------------------------------------------------------------
    def _prefix_tokens(self, n: int) -> Tensor:
        """The ViT's prefix ([CLS], and register tokens if it has them) with their position embeddings, as timm's
        ``_pos_embed`` adds them: [n, prefix, D_v]."""
        vit = self.vision.vit
        reg = getattr(vit, "reg_token", None)
        prefix = vit.cls_token if reg is None else torch.cat([vit.cls_token, reg], dim=1)
        if vit.pos_embed is not None and not getattr(vit, "no_embed_class", False):
            prefix = prefix + vit.pos_embed[:, : prefix.shape[1]]
        return prefix.expand(n, -1, -1)

    def volume_tokens(self, volumes: Tensor) -> tuple[Tensor, Tensor]:
        """Volumes [V, 1, D, H, W] -> (cls [V, D_v], tokens [V, S, P, D_v]) after the shared blocks and final norm.

        The sequence is the ViT's prefix ([CLS] + its position-0 embedding) and the :class:`VolumeEmbed` tokens; the
        dropout / pre-norm layers apply as in timm's ``forward_features``."""
        vit, k = self.vision.vit, self.vision.num_prefix_tokens
        x, (s, _, _) = self.volume_embed(volumes)
        x = torch.cat([self._prefix_tokens(x.shape[0]).to(x.dtype), x], dim=1)
        x = vit.norm_pre(vit.patch_drop(vit.pos_drop(x)))
        x = vit.norm(vit.blocks(x))
        return x[:, 0], rearrange(x[:, k:], "v (s p) d -> v s p d", s=s)

    def encode_volume(self, volumes: Tensor) -> VolumeEmbedding:
        """Volumes [V, 1, D, H, W] -> VolumeEmbedding(global_ [V, d], slabs [V, S, d]), both normalised; the
        global embedding is in the radiographs' space (the same head ``image_global``)."""
        cls, tokens = self.volume_tokens(volumes)
        return VolumeEmbedding(
            global_=F.normalize(self.image_global(cls), dim=-1),
            slabs=F.normalize(self.slice_head(tokens.mean(dim=2)), dim=-1),
        )

    def pseudo_images(self, volumes: Tensor, chosen: Tensor) -> Tensor:
        """The selected slabs' mean slices: volumes [V, 1, D, H, W], chosen [V, k] -> [V, k, 3, H, W]."""
        images = slab_images(volumes, self.slab)  # [V, S, 3, H, W]
        rows = torch.arange(images.shape[0], device=images.device)[:, None]
        return images[rows, chosen]

    # -- training -----------------------------------------------------------------------------------
    def volume_terms(self, ct: VolumeBatch) -> dict[str, Tensor]:
        """The 3-D terms of a :class:`~medst.data.volumes.VolumeBatch`, not weighted: ``volume`` (volume-report
        InfoNCE), ``pseudo`` (selected slab images through the 2-D path vs report) and ``selection`` (L_sel). A
        term whose weight in ``model.unimedi`` is 0 is not computed."""
        u, tau = self.unimedi_cfg, self.loss_cfg.global_temperature
        vol = self.encode_volume(ct.volumes)
        txt = self.encode_text(ct.input_ids, ct.attention_mask)
        terms: dict[str, Tensor] = {}
        if u.volume_weight > 0:
            terms["volume"] = global_alignment_loss(vol.global_, txt.global_, tau)
        if u.pseudo_weight > 0:
            with torch.no_grad():
                chosen = select_slabs(vol.slabs.detach(), txt.global_.detach(), u.top_k)  # [V, k]
            images = self.pseudo_images(ct.volumes, chosen)
            emb = self.encode_image(rearrange(images, "v k c h w -> (v k) c h w")).global_
            pseudo = F.normalize(rearrange(emb, "(v k) d -> v k d", k=u.top_k).mean(dim=1), dim=-1)
            terms["pseudo"] = global_alignment_loss(pseudo, txt.global_, tau)
        if u.selection_weight > 0:
            terms["selection"] = selection_loss(vol.slabs, txt.global_, u.selection_temperature, tau)
        return terms

    def forward(self, batch) -> UniMedIOutput:
        """A :class:`~medst.data.volumes.PairedBatch` -> L = λ_g·L_global + λ_vol·L_volume + λ_pseudo·L_pseudo
        + λ_sel·L_sel and its terms (detached). A radiograph :class:`~medst.data.dataset.Batch` (or a paired batch
        without volumes) gives the 2-D term only. Only frontal images are read; sequences count as single pairs."""
        cfg, u = self.loss_cfg, self.unimedi_cfg
        xray = batch.xray if isinstance(batch, PairedBatch) else batch
        img = self.encode_image(xray.frontal)
        txt = self.encode_text(xray.input_ids, xray.attention_mask)
        terms: dict[str, Tensor] = {}
        total = img.global_.new_zeros(())
        if cfg.global_weight > 0:
            terms["global"] = global_alignment_loss(img.global_, txt.global_, cfg.global_temperature)
            total = total + cfg.global_weight * terms["global"]
        if isinstance(batch, PairedBatch) and batch.ct.size > 0:
            volume = self.volume_terms(batch.ct)
            terms.update(volume)
            weights = {"volume": u.volume_weight, "pseudo": u.pseudo_weight, "selection": u.selection_weight}
            for name, value in volume.items():
                total = total + weights[name] * value
        return UniMedIOutput(loss=total, terms={k: v.detach() for k, v in terms.items()})


def build_unimedi(cfg: Config, tokenizer, load_init: bool = True) -> UniMedI:
    """The UniMedI model a profile describes (``model.method: unimedi``), on the same towers as Med-ST.

    The ViT is built with ``model.vision.experts=shared`` (one view, no lateral experts) and the local branch is
    off (``loss.local_weight`` 0 in the copy of the config it is built with); volumes are ``data.image_size``
    pixels in-plane and at most ``model.unimedi.volume_slices`` slices. ``model.vision.init_from`` /
    ``model.text.init_from`` start the towers and their global heads from a released checkpoint as for Med-ST
    (the volume tokenizer and ``slice_head`` start fresh); ``load_init=False`` builds the architecture without
    reading them."""
    built = copy.deepcopy(cfg)
    built.model.vision.experts = "shared"
    built.loss.local_weight = 0.0
    model = UniMedI(
        build_vision(built, load_init),
        build_text_encoder(built, tokenizer, load_init),
        embed_dim=cfg.model.embed_dim,
        head_hidden=cfg.model.head_hidden,
        loss=built.loss,
        unimedi=cfg.model.unimedi,
        volume_size=cfg.data.image_size,
    )
    if load_init and (cfg.model.vision.init_from or cfg.model.text.init_from):
        init_heads(model, built)
    return model
