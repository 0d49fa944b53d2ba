"""Projection heads from backbone width D to the joint embedding size d (Method §2).

Both heads are Linear(D, 2048) -> BatchNorm -> ReLU -> Linear(2048, d) -> BatchNorm
without affine. The global head maps one vector per image / report; the local head maps
every patch / word token (the published 1x1 convolutions over tokens are exactly a
per-token linear layer).

The heads do NOT L2-normalise: the model normalises their outputs before the losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from medst.config import LossConfig
from medst.losses.local import LocalAlignment
from medst.models.norm import batch_norm_rows


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear -> BatchNorm1d(affine=False), on [n, in_dim]."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
        nn.BatchNorm1d(out_dim, affine=False),
    )


class GlobalHead(nn.Module):
    """Global projection: [B, in_dim] -> [B, out_dim] (not normalised; the model L2-normalises)."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> None:
        super().__init__()
        self.mlp = projection_mlp(in_dim, hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class LocalHead(nn.Module):
    """Per-token projection: [B, T, in_dim] (+ mask [B, T]) -> [B, T, out_dim].

    With a mask (ours), BatchNorm's statistics come from real words / patches only and
    invalid slots of the output are zero. With `mask=None` every token counts, which is the
    published behaviour (its BatchNorm also averages over padding words and zero-image
    lateral patches). Outputs are not normalised; the model L2-normalises them.

    The masked form projects every slot and takes the statistics over the valid ones
    (:func:`~medst.models.norm.batch_norm_rows`), rather than gathering the valid
    tokens first: the shapes then do not depend on the data, so a training step never waits
    for the device to count them (and torch.compile sees static shapes).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.mlp = projection_mlp(in_dim, hidden_dim, out_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = tokens.shape
        if mask is None:
            return self.mlp(tokens.reshape(B * T, D)).view(B, T, self.out_dim)
        if mask.shape != (B, T):
            raise ValueError(
                f"medst/models/heads.py: mask {tuple(mask.shape)} does not match tokens {tuple(tokens.shape)}"
            )
        valid = mask.bool().reshape(B * T)
        x = tokens.reshape(B * T, D)
        for layer in self.mlp:
            if isinstance(layer, nn.BatchNorm1d) and layer.training:
                x = batch_norm_rows(layer, x, valid)
            else:  # Linear, ReLU, and BatchNorm with its running statistics (per token)
                x = layer(x)
        return torch.where(valid[:, None], x, x.new_zeros(())).view(B, T, self.out_dim)


@dataclass
class ImageEmbedding:
    """global_: [B,d] unit vectors; patches: [B,P,d] unit vectors (zero where masked); patch_mask: [B,P] bool."""

    global_: torch.Tensor
    patches: torch.Tensor | None = None
    patch_mask: torch.Tensor | None = None


@dataclass
class TextEmbedding:
    """global_: [B,d] unit vectors; words: [B,W,d] unit vectors (zero where masked); word_mask: [B,W] bool."""

    global_: torch.Tensor
    words: torch.Tensor | None = None
    word_mask: torch.Tensor | None = None


@dataclass
class TrainingOutput:
    """What a model's ``forward(batch)`` returns for a training step: the weighted total loss and each term
    (detached) for logging."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]


class AlignedTowers(nn.Module):
    """The two towers and the heads that align them (Method §2, §4, §5), shared by Med-ST and its neighbours.

    Holds ``vision`` (width D_v) and ``text`` (width D_t), the global heads ``image_global`` / ``text_global``
    (D -> d), and, when ``loss.local_weight > 0``, the local heads ``image_local`` / ``text_local`` and the local
    alignment (Method §5); otherwise those three are None. Subclasses add their objective.
    """

    def __init__(self, vision: nn.Module, text: nn.Module, embed_dim: int, head_hidden: int, loss: LossConfig) -> None:
        super().__init__()
        self.loss_cfg = loss
        self.vision, self.text = vision, text
        dv, dt = vision.embed_dim, text.hidden_size
        self.image_global = GlobalHead(dv, head_hidden, embed_dim)
        self.text_global = GlobalHead(dt, head_hidden, embed_dim)
        if loss.local_weight > 0:
            self.image_local = LocalHead(dv, head_hidden, embed_dim)
            self.text_local = LocalHead(dt, head_hidden, embed_dim)
            self.local_alignment = LocalAlignment(
                embed_dim, loss.local_temperature, mask_words=loss.mask_words, weighting=loss.local_weighting
            )
        else:
            self.image_local = self.text_local = self.local_alignment = None

    @property
    def uses_local(self) -> bool:
        """True when the model has the local branch (its local heads and the local alignment)."""
        return self.local_alignment is not None

    def image_tokens(self, frontal, lateral=None, has_lateral=None, compact=None):
        """The vision tower's output for :meth:`encode_image` (a subclass may read fewer views)."""
        return self.vision(frontal, lateral, has_lateral, compact=compact)

    def encode_image(
        self,
        frontal: torch.Tensor,
        lateral: torch.Tensor | None = None,
        has_lateral: torch.Tensor | None = None,
        local: bool | None = None,
        compact: bool | None = None,
    ) -> ImageEmbedding:
        """frontal [B,3,H,W] (+ lateral, compact or full, and has_lateral [B]) -> normalised embeddings.
        ``compact=True``: the laterals are compact even with B rows (see :meth:`MoVE.forward`)."""
        out = self.image_tokens(frontal, lateral, has_lateral, compact)
        emb = ImageEmbedding(F.normalize(self.image_global(out.cls), dim=-1))
        if self.uses_local and local is not False:
            emb.patches = F.normalize(self.image_local(out.patches, out.patch_mask), dim=-1)
            emb.patch_mask = out.patch_mask
        return emb

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, local: bool | None = None
    ) -> TextEmbedding:
        """input_ids, attention_mask [B,T] -> normalised report and word embeddings."""
        out = self.text(input_ids, attention_mask)
        emb = TextEmbedding(F.normalize(self.text_global(out.report), dim=-1))
        if self.uses_local and local is not False:
            emb.words = F.normalize(self.text_local(out.words, out.word_mask), dim=-1)
            emb.word_mask = out.word_mask
        return emb
