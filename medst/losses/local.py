"""Modality-weighted local alignment (Method §5).

Words of a report and patches of its image(s) are aligned token by token.
Each side (words, then patches) does four steps:

1. cross-attention of its tokens over the other modality's tokens,
   ``a_ij = softmax_j(<x_i, y_j> / τ_l)`` and a context ``c_i = Σ_j a_ij y_j``;
2. interaction vectors ``e_i = normalise(x_i ⊙ c_i)``;
3. token weights ``ω`` = the attention weights of a single-head
   :class:`torch.nn.MultiheadAttention` whose query is the mean interaction
   vector and whose keys are the interaction vectors;
4. a token-level InfoNCE on ``m_ik = <x_i, c_k> / τ_l`` in both directions
   (rows and columns), each cross-entropy weighted by ``ω_i`` and summed over
   tokens, averaged over the batch; the two directions are averaged.

``L_local = L_word + L_patch``.

Published details kept on purpose (read from the public code):

* word side: the context is re-normalised, ``c_i = normalise(Σ_j a_ij p_j)``,
  and ``ω`` is divided by its sum (a no-op up to rounding, since a softmax
  already sums to 1);
* patch side: the context ``c_j = Σ_i a_ji w_i`` is **not** re-normalised
  before the product and the similarities, and ``ω`` is used as the attention
  returns it;
* the weighting attentions' outputs are discarded; only their weights are
  used. Their output projections would never receive a gradient, so they are
  frozen (``requires_grad=False``); the value rows of ``in_proj_weight`` get
  a zero gradient.

Masking (**ours**): padded words (``word_mask``) and the patches of a missing
lateral view (``patch_mask``) are removed everywhere they could enter — as
cross-attention keys (``-inf``), in the mean query, as keys of the weighting
attention (``key_padding_mask``), as rows and columns of both
cross-entropies and in the weighted sums. Masked tokens therefore get exactly
zero gradient and the loss equals the loss of the truncated, unpadded
inputs. ``mask_words=False`` reproduces the published word side, which does
not mask padded words (they enter its cross-entropy and weights); the patch
side masks padded words as cross-attention keys in both settings, as the
published code does. With no padding both settings give the same loss.
``patch_mask=None`` treats every patch as real, as the published code does
(it keeps the 196 tokens of the all-zero image of a missing lateral).

**The learned weights collapse, and the remedy** (``weighting``). In the published model the weighting
attentions receive the gradient of the very loss their weights multiply: the derivative of ``Σ_i ω_i·CE_i``
with respect to ``ω_i`` is ``CE_i``, so every step moves weight from hard tokens to easy ones, and the
minimum is reached by putting all the weight on the single easiest token (the loss then falls to about zero
while almost nothing is aligned). ``weighting`` chooses what the weights are:

* ``"learned"``: the published form, ω from the attention with the loss's gradient flowing into it;
* ``"detached"`` (**ours**): the same attention computes ω, but no gradient of the loss flows into ω, so ω
  stays a function of the interaction vectors that the loss cannot bend towards easy tokens; the weighting
  attentions then receive no gradient at all and are frozen at their initial values;
* ``"uniform"`` (**ours**): ω_i = 1 / (number of valid tokens), the unweighted token InfoNCE.

Details the paper leaves open, settled from the public code: the cross-
attention of step 1 has no parameters (a plain softmax of the scaled dot
products); the weighting attention is ``nn.MultiheadAttention`` with its
default in-projection biases, scaling ``1/√d`` and no dropout; the mean query
is taken over the valid tokens (published: over all slots, which the word
side reproduces with ``mask_words=False``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medst import checks

__all__ = ["LocalAlignment", "LocalAlignmentOutput", "WEIGHTINGS", "weight_stats"]

WEIGHTINGS = ("learned", "detached", "uniform")


@dataclass
class LocalAlignmentOutput:
    """Loss terms and intermediate quantities of :class:`LocalAlignment`.

    Shapes: B pairs, W word slots, P patch slots. Masked entries of the maps
    and weights are exactly zero.
    """

    loss: Tensor  # [] L_word + L_patch
    loss_word: Tensor  # [] word side
    loss_patch: Tensor  # [] patch side
    word_to_patch: Tensor  # [B, W, P] cross-attention a_ij of words over patches
    patch_to_word: Tensor  # [B, P, W] cross-attention a_ji of patches over words
    word_weights: Tensor  # [B, W] ω of the words (sums to 1 over valid words)
    patch_weights: Tensor  # [B, P] ω of the patches (sums to 1 over valid patches)


def cross_attend(queries: Tensor, keys: Tensor, key_mask: Tensor | None, temperature: float) -> tuple[Tensor, Tensor]:
    """Parameter-free cross-attention, Method §5 step 1.

    Args:
        queries: [B, Q, d]; keys: [B, K, d] (keys are also the values).
        key_mask: [B, K] bool, True = valid key; None = all valid.
    Returns:
        attention [B, Q, K] (rows sum to 1 over valid keys, 0 on masked ones)
        and context [B, Q, d] = attention @ keys (not normalised).
    """
    scores = queries @ keys.transpose(1, 2) / temperature
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
    attention = scores.softmax(dim=-1)
    return attention, attention @ keys


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over dim 1 of x [B, Q, d] counting only valid rows of mask [B, Q] -> [B, d]."""
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype)
    return (x * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True)


def modality_weights(weighting: nn.MultiheadAttention, interactions: Tensor, mask: Tensor | None) -> Tensor:
    """Token weights ω, Method §5 step 3.

    Single-head attention with query = mean interaction vector and keys =
    values = interaction vectors; its attention weights are returned.

    Args:
        interactions: [B, Q, d] normalised interaction vectors e_i.
        mask: [B, Q] bool, True = valid; masked keys get weight exactly 0.
    Returns:
        ω [B, Q], summing to 1 over valid tokens.
    """
    query = masked_mean(interactions, mask)[:, None, :]  # [B, 1, d]
    key_padding_mask = None if mask is None else ~mask
    _, weights = weighting(query, interactions, interactions, key_padding_mask=key_padding_mask, need_weights=True)
    return weights[:, 0, :]  # [B, 1, Q] -> [B, Q]


def uniform_weights(mask: Tensor | None, like: Tensor) -> Tensor:
    """ω_i = 1/(valid tokens) on valid tokens, 0 on masked ones: [B, Q] (``like``: [B, Q, d] for shape/dtype)."""
    if mask is None:
        return like.new_full(like.shape[:2], 1.0 / like.shape[1])
    valid = mask.to(like.dtype)
    return valid / valid.sum(dim=1, keepdim=True)


def weight_stats(weights: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
    """How concentrated token weights are: the signs of the collapse.

    Args:
        weights: [B, Q] ω, summing to 1 over valid tokens.
        mask: [B, Q] bool, True = valid; None = all valid.
    Returns:
        ``max_weight``: mean over the batch of max_i ω_i (1/Q for uniform weights, 1 when collapsed);
        ``entropy``: mean over the batch of H(ω) / log(valid tokens), 1 for uniform weights, 0 when collapsed.
    """
    weights = weights.detach().float()
    count = weights.new_full(weights.shape[:1], weights.shape[1]) if mask is None else mask.sum(dim=1).float()
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(dim=1)
    norm = torch.where(count > 1, entropy / count.clamp_min(2).log(), torch.ones_like(entropy))
    return {"max_weight": weights.max(dim=1).values.mean(), "entropy": norm.mean()}


def weighted_token_infonce(similarity: Tensor, weights: Tensor, mask: Tensor | None) -> Tensor:
    """Weighted token-level InfoNCE in both directions, Method §5 step 4.

    ``Σ_i ω_i CE(m_i,:, i)`` and ``Σ_i ω_i CE(m_:,i, i)``, each summed over
    tokens and averaged over the batch, then the two averaged.

    Args:
        similarity: [B, Q, Q] logits m_ik (already divided by the temperature).
        weights: [B, Q] ω (zero on masked tokens).
        mask: [B, Q] bool, True = valid; masked rows and columns are removed.
    Returns:
        scalar loss.
    """
    if mask is not None:
        # Drop every entry in a masked row or column except the diagonal: a valid
        # token never sees a masked one, and a masked token's own CE is over its
        # single diagonal entry, exactly 0 with zero gradient.
        pair = mask[:, :, None] & mask[:, None, :]
        eye = torch.eye(similarity.shape[1], dtype=torch.bool, device=similarity.device)
        similarity = similarity.masked_fill(~(pair | eye), float("-inf"))
    ce_rows = -similarity.log_softmax(dim=2).diagonal(dim1=1, dim2=2)  # [B, Q]: CE(m_i,:, i)
    ce_cols = -similarity.log_softmax(dim=1).diagonal(dim1=1, dim2=2)  # [B, Q]: CE(m_:,i, i)
    loss_rows = (weights * ce_rows).sum(dim=1).mean()
    loss_cols = (weights * ce_cols).sum(dim=1).mean()
    return (loss_rows + loss_cols) / 2


class LocalAlignment(nn.Module):
    """Modality-weighted local alignment loss ``L_word + L_patch`` (Method §5).

    Args:
        dim: embedding size d of the local embeddings.
        temperature: τ_l of the cross-attention and of the token InfoNCE (0.1).
        mask_words: mask padded words on the word side (**ours**, default);
            False reproduces the published word side, which lets padded words
            into its cross-entropy and weights.
        weighting: what the token weights ω are: ``"learned"`` (published; they
            collapse onto the easiest token), ``"detached"`` (ω from the same
            attention, no gradient of the loss into it) or ``"uniform"`` (see
            the module docstring).

    Modules: ``word_weighting`` and ``patch_weighting``, single-head
    :class:`torch.nn.MultiheadAttention` layers producing ω (step 3).
    """

    def __init__(self, dim: int, temperature: float = 0.1, mask_words: bool = True, weighting: str = "learned") -> None:
        super().__init__()
        if dim <= 0 or temperature <= 0:
            raise ValueError(f"LocalAlignment: dim and temperature must be positive, got {dim}, {temperature}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"LocalAlignment: weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
        self.dim = dim
        self.temperature = temperature
        self.mask_words = mask_words
        self.weighting = weighting
        self.word_weighting = nn.MultiheadAttention(dim, 1, batch_first=True)
        self.patch_weighting = nn.MultiheadAttention(dim, 1, batch_first=True)
        for attention in (self.word_weighting, self.patch_weighting):
            # Only the attention weights are used, never the attention output, so the
            # output projection never receives a gradient: freeze it, so that every
            # trainable parameter takes part in each step (DDP needs no
            # find_unused_parameters) while state dicts keep the usual names.
            attention.out_proj.requires_grad_(False)
            if weighting != "learned":  # no gradient ever reaches them: frozen, kept for the state dict
                attention.requires_grad_(False)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, temperature={self.temperature}, mask_words={self.mask_words}, weighting={self.weighting}"
        )

    def token_weights(self, weighting: nn.MultiheadAttention, interactions: Tensor, mask: Tensor | None) -> Tensor:
        """ω [B, Q] of one side, as ``self.weighting`` says (step 3 and its remedies)."""
        if self.weighting == "uniform":
            return uniform_weights(mask, interactions)
        if self.weighting == "detached":
            with torch.no_grad():
                return modality_weights(weighting, interactions.detach(), mask)
        return modality_weights(weighting, interactions, mask)

    def forward(
        self,
        words: Tensor,
        patches: Tensor,
        word_mask: Tensor | None = None,
        patch_mask: Tensor | None = None,
        return_details: bool = False,
    ) -> Tensor | LocalAlignmentOutput:
        """Local alignment loss.

        Args:
            words: [B, W, d] L2-normalised word embeddings.
            patches: [B, P, d] L2-normalised patch embeddings (P = N for one
                view, 2N for frontal then lateral).
            word_mask: [B, W] bool, True = real word, False = padding; None = all real.
            patch_mask: [B, P] bool, True = real patch, False = missing view; None = all real.
            return_details: return a :class:`LocalAlignmentOutput` with the
                cross-attention maps and weights instead of the scalar loss.
        Returns:
            scalar ``L_word + L_patch`` or a :class:`LocalAlignmentOutput`.
        """
        self._check(words, patches, word_mask, patch_mask)
        tau = self.temperature

        # Word side: words attend over patches; padded words are masked only with mask_words.
        word_side_mask = word_mask if self.mask_words else None
        word_to_patch, word_context = cross_attend(words, patches, patch_mask, tau)
        word_context = F.normalize(word_context, dim=-1)  # published: re-normalised
        word_inter = F.normalize(words * word_context, dim=-1)  # [B, W, d]
        word_weights = self.token_weights(self.word_weighting, word_inter, word_side_mask)
        word_weights = word_weights / word_weights.sum(dim=1, keepdim=True)
        word_sim = words @ word_context.transpose(1, 2) / tau  # [B, W, W]
        loss_word = weighted_token_infonce(word_sim, word_weights, word_side_mask)

        # Patch side: patches attend over words (padded words always masked as keys).
        patch_to_word, patch_context = cross_attend(patches, words, word_mask, tau)
        patch_inter = F.normalize(patches * patch_context, dim=-1)  # context not re-normalised
        patch_weights = self.token_weights(self.patch_weighting, patch_inter, patch_mask)
        patch_sim = patches @ patch_context.transpose(1, 2) / tau  # [B, P, P]
        loss_patch = weighted_token_infonce(patch_sim, patch_weights, patch_mask)

        loss = loss_word + loss_patch
        if not return_details:
            return loss
        if word_mask is not None:  # padded words' own rows carry no meaning: zero them
            word_to_patch = word_to_patch * word_mask[..., None]
        if patch_mask is not None:
            patch_to_word = patch_to_word * patch_mask[..., None]
        return LocalAlignmentOutput(
            loss=loss,
            loss_word=loss_word,
            loss_patch=loss_patch,
            word_to_patch=word_to_patch,
            patch_to_word=patch_to_word,
            word_weights=word_weights,
            patch_weights=patch_weights,
        )

    def _check(self, words: Tensor, patches: Tensor, word_mask: Tensor | None, patch_mask: Tensor | None) -> None:
        if words.dim() != 3 or patches.dim() != 3:
            raise ValueError(
                f"LocalAlignment: words and patches must be [B, W, d] and [B, P, d], "
                f"got {tuple(words.shape)} and {tuple(patches.shape)}"
            )
        if words.shape[0] != patches.shape[0] or words.shape[2] != self.dim or patches.shape[2] != self.dim:
            raise ValueError(
                f"LocalAlignment(dim={self.dim}): batch sizes and embedding sizes must agree, "
                f"got words {tuple(words.shape)} and patches {tuple(patches.shape)}"
            )
        for name, mask, ref in (("word_mask", word_mask, words), ("patch_mask", patch_mask, patches)):
            if mask is None:
                continue
            if mask.dtype != torch.bool or mask.shape != ref.shape[:2]:
                raise ValueError(
                    f"LocalAlignment: {name} must be a bool tensor of shape "
                    f"{tuple(ref.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}"
                )
            checks.check(mask.any(dim=1).all(), f"LocalAlignment: every pair needs at least one valid entry in {name}")
