"""``medst convert``: a released Med-ST or MGCA checkpoint as a medst run folder (Method §7.4).

:func:`convert` reads a Lightning ``.ckpt`` safely, maps its weights onto a medst model of the release's sizes
(the tables and the loading rules are in :mod:`medst.models.pretrained`) and writes a run folder
(``model.safetensors``, ``config.json``, ``tokenizer/``) that :func:`medst.models.medst.load_run`,
``medst evaluate`` and the chapters read like any trained run.

The converted config (:func:`published_config`) takes the sizes from the weights and the loss settings from the
release's hyper-parameters. It sets ``model.text.position_ids=zeros`` and ``model.text.lowercase=true``: the released
text tower was trained with every position id 0 and a lower-casing tokenizer (Method §9.1, §9.2), and must be run
that way to reproduce its embeddings.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from medst.config import Config
from medst.models.medst import build_medst
from medst.models.pretrained import (
    BIO_CLINICAL_BERT,
    FILLED,
    VIT_BASE,
    ConversionError,
    load_into,
    load_lightning_checkpoint,
    map_state_dict,
    text_sizes,
    vision_sizes,
)
from medst.models.text import SPECIAL_TOKENS, load_tokenizer
from medst.models.weights import save_weights

MAX_LENGTH = 112  # tokens per report in both releases (their datasets' max_words)

# -- the config of a release -------------------------------------------------------------------------------------


def published_config(tensors: dict[str, torch.Tensor], source: str, hparams: dict, name: str) -> Config:
    """The medst config of a released model: sizes from the weights, loss settings from its hyper-parameters.

    The text tower is a BERT built from these sizes (``kind: tiny``; weights and tokenizer come from the run folder,
    ``name`` is where the tokenizer is read when the folder has none), run with position ids 0 and a lower-casing
    tokenizer. Attention heads are width // 64 (ViT-B and BERT-base: 12); ``medst convert --set`` changes them.
    """
    v, t = vision_sizes(tensors), text_sizes(tensors)
    hp = {k: v_ for k, v_ in dict(hparams or {}).items() if isinstance(v_, (int, float)) and not isinstance(v_, bool)}
    official = source == "medst-official"
    cfg = Config(name=source)
    cfg.data.image_size = v["img_size"]
    cfg.data.max_length = MAX_LENGTH
    m = cfg.model
    m.vision.name = "vit_base_patch16_224"
    m.vision.kwargs = {} if v == VIT_BASE else v  # ViT-B/16 at 224: timm's own sizes
    m.vision.pretrained = False
    m.vision.experts = "move" if official else "shared"
    m.text.kind, m.text.name, m.text.pool = "tiny", name, "cls"
    m.text.position_ids, m.text.lowercase = "zeros", True
    m.text.vocab_size, m.text.hidden_size = t["vocab_size"], t["hidden_size"]
    m.text.num_layers, m.text.intermediate_size = t["num_layers"], t["intermediate_size"]
    m.text.num_heads, m.text.max_positions = max(1, t["hidden_size"] // 64), t["max_positions"]
    head = tensors.get("image_global.mlp.3.weight")
    if head is None:
        raise ConversionError("no global image head (img_encoder_q.global_embed) in the checkpoint")
    m.embed_dim, m.head_hidden = int(head.shape[0]), int(head.shape[1])
    loss = cfg.loss
    loss.global_temperature = float(hp.get("softmax_temperature", loss.global_temperature))
    loss.local_temperature = float(hp.get("local_temperature", loss.local_temperature))
    loss.global_weight = float(hp.get("lambda_1", loss.global_weight))
    loss.local_weight = float(hp.get("lambda_2", loss.local_weight))
    if official:
        loss.temporal_weight = float(hp.get("lambda_3", loss.temporal_weight))
        loss.huber_delta = float(hp.get("huber_delta", loss.huber_delta))
        loss.local_weighting, loss.mask_words = "learned", False  # the published local loss
    else:  # MGCA: no temporal objective, no weighting attentions
        loss.temporal_weight, loss.local_weighting = 0.0, "uniform"
    return cfg


# -- the run folder ----------------------------------------------------------------------------------------------


@dataclass
class ConvertReport:
    """What :func:`convert` did, for printing: dropped keys by reason, filled keys, notes."""

    run: Path
    source: str
    dropped: dict[str, str]
    filled: list[str]
    notes: list[str]

    def lines(self) -> list[str]:
        out = [f"converted {self.source} -> {self.run}"]
        by_reason: dict[str, list[str]] = {}
        for key, why in self.dropped.items():
            by_reason.setdefault(why, []).append(key)
        for why, keys in by_reason.items():
            out.append(f"dropped {len(keys)} tensor(s), {why}: {', '.join(_modules(keys))}")
        if self.filled:
            out.append(f"filled (not in the release): {', '.join(_modules(self.filled))}")
        out += [f"note: {n}" for n in self.notes]
        return out


_LEAVES = ("weight", "bias", "in_proj_weight", "in_proj_bias", "running_mean", "running_var", "num_batches_tracked")


def _modules(keys: Iterable[str]) -> list[str]:
    """Tensor names -> the modules holding them, block / layer indices written ``<i>`` (for printing)."""
    out = set()
    for key in keys:
        key = re.sub(r"\.\d+(?=\.|$)", ".<i>", key)
        head, _, leaf = key.rpartition(".")
        out.add(head if head and leaf in _LEAVES else key)
    return sorted(out)


def placeholder_tokenizer(vocab_size: int):
    """A WordPiece tokenizer of ``vocab_size`` entries ([PAD] [UNK] [CLS] [SEP] [MASK], then fillers): only to
    build a text tower of the right shape when the real tokenizer is not at hand."""
    words = list(SPECIAL_TOKENS) + [f"[unused{i}]" for i in range(vocab_size - len(SPECIAL_TOKENS))]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(words) + "\n")
        return load_tokenizer(tmp, lowercase=True)


def convert(
    checkpoint: str | Path,
    source: str,
    out: str | Path,
    tokenizer: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> ConvertReport:
    """Write a medst run folder from a released Lightning checkpoint.

    Args:
        checkpoint: the ``.ckpt`` file.
        source: ``medst-official`` (Med-ST, ICML 2024) or ``mgca`` (MGCA ViT-B/16).
        out: run folder to write (``model.safetensors``, ``config.json``, ``tokenizer/`` when ``tokenizer``).
        tokenizer: a local tokenizer folder with the release's vocabulary (Bio_ClinicalBERT's); saved lower-casing.
            None: the config names ``emilyalsentzer/Bio_ClinicalBERT`` and ``load_run`` reads it from the hub.
        overrides: ``section.key=value`` changes to the inferred config (e.g. attention heads).
    Returns:
        a :class:`ConvertReport` (its ``lines()`` are what ``medst convert`` prints).
    """
    checkpoint, out = Path(checkpoint), Path(out)
    ckpt = load_lightning_checkpoint(checkpoint)
    mapped = map_state_dict(ckpt["state_dict"], source, where=str(checkpoint))
    hparams = ckpt.get("hyper_parameters") or {}
    hparams = vars(hparams) if isinstance(hparams, argparse.Namespace) else hparams
    cfg = published_config(mapped.tensors, source, hparams, BIO_CLINICAL_BERT).override(*overrides)
    vocab = cfg.model.text.vocab_size
    notes = [
        "text tower set to position_ids=zeros and a lower-casing tokenizer, as the released model was "
        "trained (its encoder passed token_type_ids where its BERT expects position_ids)"
    ]
    if tokenizer is not None:
        tok = load_tokenizer(str(tokenizer), lowercase=True)
        if len(tok) != vocab:
            raise ConversionError(
                f"{tokenizer}: the tokenizer has {len(tok)} tokens, {checkpoint} embeds {vocab}: "
                "pass the tokenizer of the released text tower (Bio_ClinicalBERT's vocabulary)"
            )
    else:
        tok = placeholder_tokenizer(vocab)
        notes.append(
            f"no --tokenizer: config.json names {BIO_CLINICAL_BERT!r}; load_run reads that tokenizer from "
            "the hub (or its cache) with lower-casing; offline, rerun with --tokenizer DIR"
        )
    model = build_medst(cfg, tok, load_init=False)
    filled = load_into(model, mapped.tensors, str(checkpoint), FILLED[source], mapped.source)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(
        model,
        out / "model.safetensors",
        metadata={"config": cfg.to_json(), "converted_from": f"{source}:{checkpoint.name}"},
    )
    (out / "config.json").write_text(cfg.to_json())
    if tokenizer is not None:
        tok.save_pretrained(str(out / "tokenizer"))
    return ConvertReport(out, source, mapped.dropped, filled, notes)


def convert_main(args: argparse.Namespace) -> None:
    """``medst convert`` (args: source, checkpoint, out, tokenizer, overrides)."""
    report = convert(args.checkpoint, args.source, args.out, tokenizer=args.tokenizer, overrides=args.overrides)
    print("\n".join(report.lines()))
