"""The full Med-ST model: MoVE image tower, BERT text tower, heads and the three objectives (Method §7).

    L = λ1·L_global + λ2·L_local + λ3·L_temporal

Every term can be switched off (a weight of 0, or ``fmc``/``rmr`` false) for the ablations, and a switched-off
term's modules are not even built: the model holds only what its forward uses (Method §9), so several
processes never need DDP's ``find_unused_parameters``.

Embeddings are L2-normalised after the heads. The temporal loss uses the global embeddings of the first
``S·L`` pairs of a batch, which form ``S`` sequences of ``L`` time-ordered studies (Method §1, §6).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from einops import rearrange

from medst.config import Config, LossConfig
from medst.losses.contrastive import global_alignment_loss
from medst.losses.local import weight_stats
from medst.losses.temporal import fmc_loss, rmr_loss
from medst.models.build import build_text_encoder, build_vision
from medst.models.heads import AlignedTowers, TrainingOutput
from medst.models.pretrained import init_heads
from medst.models.text import load_tokenizer
from medst.models.weights import load_weights

# The neighbours of chapters 10 and 11, for the dispatch below. medst.neighbours (layer 3, as this package) builds on
# this package's towers and heads but never imports this module, so there is no cycle; the modules are bound, not
# their names, so that importing a neighbour first (which imports medst.models on its way) works as well.
from medst.neighbours import mpma as _mpma
from medst.neighbours import unimedi as _unimedi

MedSTOutput = TrainingOutput  # the loss and its terms (medst.models.heads)


class MedST(AlignedTowers):
    """Image tower ``vision`` (MoVE), text tower ``text`` (TextEncoder), projection heads and losses.

    Args:
        vision: a :class:`medst.models.vision.MoVE` (``forward(frontal, lateral, has_lateral)``).
        text: a :class:`medst.models.text.TextEncoder`.
        embed_dim: d, the joint embedding size (128).
        head_hidden: hidden width of the heads (2048).
        loss: weights, temperatures and switches of the objective.
    """

    def __init__(
        self,
        vision: nn.Module,
        text: nn.Module,
        embed_dim: int = 128,
        head_hidden: int = 2048,
        loss: LossConfig | None = None,
    ) -> None:
        loss = loss or LossConfig()
        super().__init__(vision, text, embed_dim, head_hidden, loss)
        # λ3's share at the current step (LossConfig.temporal_factor, set by the Trainer before each step); a
        # buffer, so that changing it neither waits for the device nor recompiles a compiled forward.
        self.register_buffer("temporal_scale", torch.ones(()), persistent=False)

    # inference (encode_image, encode_text): medst.models.heads.AlignedTowers

    # -- training -----------------------------------------------------------------------------------
    def forward(self, batch) -> MedSTOutput:
        """A :class:`medst.data.dataset.Batch` -> the weighted loss of Method §7 and its terms.

        Nothing here waits for the device (no ``.item()``, no data-dependent shapes), so that the host can queue
        the next step while this one runs; the training loop reads the values only at its log steps."""
        cfg = self.loss_cfg
        img = self.encode_image(batch.frontal, batch.lateral, batch.has_lateral, compact=True)
        txt = self.encode_text(batch.input_ids, batch.attention_mask)
        zero = img.global_.new_zeros(())
        terms: dict[str, torch.Tensor] = {}
        total = zero

        if cfg.global_weight > 0:
            terms["global"] = global_alignment_loss(img.global_, txt.global_, cfg.global_temperature)
            total = total + cfg.global_weight * terms["global"]
        if self.uses_local:
            local = self.local_alignment(txt.words, img.patches, txt.word_mask, img.patch_mask, return_details=True)
            terms["local"] = local.loss
            total = total + cfg.local_weight * terms["local"]
            # Signs of the weights' collapse, logged beside the loss (chapter 5).
            terms["local_word"], terms["local_patch"] = local.loss_word, local.loss_patch
            for side, weights, mask in (
                ("word", local.word_weights, txt.word_mask),
                ("patch", local.patch_weights, img.patch_mask),
            ):
                for name, value in weight_stats(weights, mask).items():
                    terms[f"{side}_{name}"] = value
        if cfg.temporal_weight > 0 and (cfg.fmc or cfg.rmr):
            temporal = self.temporal_terms(img.global_, txt.global_, batch.num_sequences, batch.sequence_length)
            terms.update(temporal)
            terms["temporal"] = sum(temporal.values(), zero)
            total = total + cfg.temporal_weight * self.temporal_scale * terms["temporal"]

        if dist.is_available() and dist.is_initialized() and batch.lateral.shape[0] == 0:
            # With several processes every parameter must take part in every step; a batch without any
            # lateral view leaves the lateral experts out, so they join with a zero contribution.
            total = total + sum(p.sum() for n, p in self.vision.named_parameters() if "lateral" in n) * 0.0
        return MedSTOutput(loss=total, terms={k: v.detach() for k, v in terms.items()})

    def temporal_terms(
        self, image: torch.Tensor, report: torch.Tensor, num_sequences: int, sequence_length: int
    ) -> dict[str, torch.Tensor]:
        """FMC and RMR in both directions over the first S·L pairs (Method §6); empty when S = 0."""
        cfg = self.loss_cfg
        if num_sequences == 0:
            return {}
        n = num_sequences * sequence_length
        # the batch's first S·L rows are its S sequences of L studies in time order (medst.data.dataset.Batch):
        # u [S, L, d] the image sequences, v [S, L, d] the report sequences
        u = rearrange(image[:n], "(s l) d -> s l d", s=num_sequences, l=sequence_length)
        v = rearrange(report[:n], "(s l) d -> s l d", s=num_sequences, l=sequence_length)
        kw = dict(temperature=cfg.temporal_temperature, similarity=cfg.similarity)
        out = {}
        if cfg.fmc:
            out["fmc"] = fmc_loss(u, v, **kw) + fmc_loss(v, u, **kw)
        if cfg.rmr:
            rkw = dict(kw, variance_lambda=cfg.variance_lambda, huber_delta=cfg.huber_delta)
            out["rmr"] = rmr_loss(u, v, **rkw) + rmr_loss(v, u, **rkw)
        return out


def build_medst(cfg: Config, tokenizer, load_init: bool = True) -> MedST:
    """The model a profile describes, around ``tokenizer`` (see :mod:`medst.models.build`).

    ``model.vision.init_from`` / ``model.text.init_from`` start the towers and their heads from a released
    checkpoint (:mod:`medst.models.pretrained`); ``load_init=False`` builds the same architecture without reading
    them, for a caller that loads a run's own weights next."""
    model = MedST(
        build_vision(cfg, load_init),
        build_text_encoder(cfg, tokenizer, load_init),
        embed_dim=cfg.model.embed_dim,
        head_hidden=cfg.model.head_hidden,
        loss=cfg.loss,
    )
    if load_init and (cfg.model.vision.init_from or cfg.model.text.init_from):
        init_heads(model, cfg)
    return model


METHODS = ("medst", "mpma", "unimedi")  # model.method: Med-ST, or the neighbours MPMA (chapter 10), UniMedI (11)


def build_model(cfg: Config, tokenizer, load_init: bool = True) -> nn.Module:
    """The model of ``model.method``: :func:`build_medst` for ``medst``, :func:`medst.neighbours.mpma.build_mpma`
    for ``mpma``, :func:`medst.neighbours.unimedi.build_unimedi` for ``unimedi``. All take the same arguments and
    give a module with ``forward(batch) -> .loss, .terms`` and the embedding methods the evaluation uses; training,
    checkpoints and :func:`load_run` go through here."""
    method = cfg.model.method
    if method == "medst":
        return build_medst(cfg, tokenizer, load_init)
    if method == "mpma":
        return _mpma.build_mpma(cfg, tokenizer, load_init)
    if method == "unimedi":
        return _unimedi.build_unimedi(cfg, tokenizer, load_init)
    raise ValueError(f"model.method must be one of {', '.join(METHODS)}, not {method!r}")


def load_run(run_dir, device: str | torch.device = "cpu") -> tuple[nn.Module, object, Config]:
    """Load a pre-trained run folder (``config.json``, ``tokenizer/``, ``model.safetensors``) for inference.

    Returns ``(model in eval mode, tokenizer, config)``; the model is the run's ``model.method`` (:func:`build_model`).
    Nothing pickled is executed: weights are safetensors.
    A run folder without ``tokenizer/`` (``medst convert`` without ``--tokenizer``) reads its tokenizer from
    ``model.text.name`` (hub name or local folder) with the lower-casing of ``model.text.lowercase``.
    """
    from transformers import AutoTokenizer

    run_dir = Path(run_dir)
    missing = [n for n in ("config.json", "model.safetensors") if not (run_dir / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"{run_dir} is not a finished run folder (missing {', '.join(missing)}); train one with `medst pretrain`"
        )
    cfg = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    cfg.model.vision.pretrained = False  # the run's weights replace any initialisation
    if (run_dir / "tokenizer").exists():
        tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"))
    else:
        try:
            tokenizer = load_tokenizer(cfg.model.text.name, lowercase=cfg.model.text.lowercase)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"{run_dir} has no tokenizer/ folder and its tokenizer {cfg.model.text.name!r} (model.text.name) "
                f"cannot be loaded ({type(err).__name__}; offline?): put the tokenizer in {run_dir / 'tokenizer'} "
                "(for a converted release: medst convert --tokenizer DIR)"
            ) from err
    model = build_model(cfg, tokenizer, load_init=False)
    load_weights(model, run_dir / "model.safetensors")
    return model.to(device).eval(), tokenizer, cfg
