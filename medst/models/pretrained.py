"""Released Med-ST and MGCA weights in medst modules: the name tables, safe reading, ``model.*.init_from``
(Method §7.3, §7.4).

Both releases are PyTorch Lightning checkpoints (``.ckpt``): a dict whose ``state_dict`` holds the weights under
the published module names, next to ``hyper_parameters``, ``epoch``, optimizer and callback states. This module
reads one safely (:func:`load_lightning_checkpoint`), renames its weights to medst's (:func:`map_state_dict`) and
loads them strictly (:func:`load_into`); :func:`init_vision` / :func:`init_text_encoder` / :func:`init_heads`
start a pre-training run from one (or from a run folder written by ``medst convert``), as the published Med-ST run
starts from MGCA. :mod:`medst.convert` writes a whole release as a medst run folder.

Name mapping, published -> medst (first matching row wins; ``<i>`` is a block / layer index):

====================================================  =============================================
published key                                         medst key
====================================================  =============================================
``img_encoder_q.model.blocks.<i>.norm2_l.*``          ``vision.lateral_experts.<i>.norm.*``
``img_encoder_q.model.blocks.<i>.mlp_l.*``            ``vision.lateral_experts.<i>.mlp.*``
``img_encoder_q.model.*``                             ``vision.vit.*`` (timm ViT: the same names)
``img_encoder_q.global_embed.head.*``                 ``image_global.mlp.*``
``img_encoder_q.local_embed.head.*``                  ``image_local.mlp.*`` (1x1 Conv1d -> Linear)
``text_encoder_q.model.*``                            ``text.model.*`` (HF ``BertModel``: same names)
``text_encoder_q.global_embed.head.*``                ``text_global.mlp.*``
``text_encoder_q.local_embed.head.*``                 ``text_local.mlp.*`` (1x1 Conv1d -> Linear)
``word_element_wise_multi_head.*``                    ``local_alignment.word_weighting.*``
``patch_element_wise_multi_head.*``                   ``local_alignment.patch_weighting.*``
====================================================  =============================================

Held by the releases but never used by their forward pass, so dropped (and listed): the BERT's cross-attention
layers (the text tower runs in ``mode="text"``) and pooler, its ``position_ids`` buffer, the
``patch_local_atten_layer`` / ``word_local_atten_layer`` (``use_local_atten`` is off), Med-ST's
``global_embed_la`` / ``local_embed_la`` heads and MGCA's ``prototype_layer``. Any other key of the checkpoint, and
any medst key that no published key fills, is an error naming the keys.

Filled here because the releases do not hold them: ``text.model.embeddings.token_type_embeddings.weight`` is zero
(the BLIP-style BERT of both releases has no token-type embedding; a zero row adds nothing), and for MGCA the two
weighting attentions of the local alignment (MGCA has none; the converted config sets ``loss.local_weighting=uniform``)
and no lateral experts (``model.vision.experts=shared``: MGCA reads one view).

**How the released text tower must be run** (Method §9.1, §9.2). The published text encoder calls its BERT as
``model(ids, attention_mask, token_type_ids, ...)``, but the third positional parameter of that BERT's ``forward``
is ``position_ids``. Single-sentence token-type ids are all zero, so every token was embedded at position 0 during
pre-training and in the released evaluation code: run it with ``model.text.position_ids=zeros``
(:class:`medst.models.text.TextEncoder`). Its tokenizer is
``BertTokenizer.from_pretrained("emilyalsentzer/Bio_ClinicalBERT")``, which lower-cases although that vocabulary is
cased: ``model.text.lowercase=true``.

**Loading is safe.** Checkpoints are read with ``torch.load(weights_only=True)``: nothing pickled is executed.
Besides tensors and plain containers a Lightning checkpoint may hold a few harmless classes
(:data:`SAFE_GLOBALS`: ``argparse.Namespace``, ``pathlib`` paths, Lightning's ``AttributeDict``, NumPy scalars);
anything else is refused with the class named.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import pickle
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open

from medst.config import Config
from medst.models.text import TextEncoder
from medst.models.vision import MoVE, create_move

SOURCES = ("medst-official", "mgca")
BIO_CLINICAL_BERT = "emilyalsentzer/Bio_ClinicalBERT"

# -- the name tables (Method §7.4) ------------------------------------------------------------------------------------

# (published key pattern, medst key template); first match wins
RENAMES: tuple[tuple[str, str], ...] = (
    (r"img_encoder_q\.model\.blocks\.(\d+)\.norm2_l\.(.+)", r"vision.lateral_experts.\1.norm.\2"),
    (r"img_encoder_q\.model\.blocks\.(\d+)\.mlp_l\.(.+)", r"vision.lateral_experts.\1.mlp.\2"),
    (r"img_encoder_q\.model\.(.+)", r"vision.vit.\1"),
    (r"img_encoder_q\.global_embed\.head\.(.+)", r"image_global.mlp.\1"),
    (r"img_encoder_q\.local_embed\.head\.(.+)", r"image_local.mlp.\1"),
    (r"text_encoder_q\.model\.(.+)", r"text.model.\1"),
    (r"text_encoder_q\.global_embed\.head\.(.+)", r"text_global.mlp.\1"),
    (r"text_encoder_q\.local_embed\.head\.(.+)", r"text_local.mlp.\1"),
    (r"word_element_wise_multi_head\.(.+)", r"local_alignment.word_weighting.\1"),
    (r"patch_element_wise_multi_head\.(.+)", r"local_alignment.patch_weighting.\1"),
)

_BERT_UNUSED = (
    (
        r"text_encoder_q\.model\.encoder\.layer\.\d+\.crossattention\..+",
        "BERT cross-attention (the text tower runs in mode='text')",
    ),
    (r"text_encoder_q\.model\.pooler\..+", "BERT pooler (never called)"),
    (r"text_encoder_q\.model\.embeddings\.position_ids", "BERT position-id buffer (positions were passed in)"),
    (r"(patch|word)_local_atten_layer\..+", "local attention layers (use_local_atten is off)"),
)
# (published key pattern, why it is dropped) per source: parameters the release holds but never uses
DROPPED: dict[str, tuple[tuple[str, str], ...]] = {
    "medst-official": _BERT_UNUSED
    + ((r"img_encoder_q\.(global|local)_embed_la\..+", "lateral heads *_embed_la (never called)"),),
    "mgca": _BERT_UNUSED + ((r"prototype_layer\..+", "MGCA's prototypes (its cluster loss; no medst counterpart)"),),
}


def _zeros(target: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(target)


def _own(target: torch.Tensor) -> torch.Tensor:
    return target.clone()


# (medst key pattern, what is filled, tensor from the freshly built module's own tensor) per source
Fills = tuple[tuple[str, str, Callable[[torch.Tensor], torch.Tensor]], ...]
_FILL_BERT: Fills = (
    (
        r"(.*\.)?embeddings\.token_type_embeddings\.weight",
        "token-type embedding set to zero (the released BERT has none)",
        _zeros,
    ),
    (r"(.*\.)?embeddings\.(position_ids|token_type_ids)", "BERT index buffer (its own)", _own),
)
FILLED: dict[str, Fills] = {  # see load_into
    "medst-official": _FILL_BERT,
    "mgca": _FILL_BERT + ((r"local_alignment\..+", "weighting attentions initialised fresh (MGCA has none)", _own),),
}

# (medst key pattern, reshape): the published local heads are 1x1 Conv1d layers, medst's are Linear layers
RESHAPES: tuple[tuple[str, Callable[[torch.Tensor], torch.Tensor]], ...] = (
    (r"(image|text)_local\.mlp\.\d+\.weight", lambda w: w.squeeze(-1) if w.dim() == 3 else w),
)


class ConversionError(ValueError):
    """A checkpoint that cannot be converted faithfully (unknown, missing or mis-shaped keys)."""


# -- reading a checkpoint without running pickled code -----------------------------------------------------------


class LightningAttributeDict(dict):
    """Stand-in for Lightning's ``AttributeDict`` (a dict with attribute access): unpickling one gives a plain dict
    (the safe unpickler fills only plain dicts)."""

    def __new__(cls, *args, **kwargs) -> dict:  # type: ignore[misc]
        return {}


def _numpy_globals() -> list[tuple[object, str]]:
    """NumPy scalars (numbers and booleans only) under the names NumPy 1 and 2 pickle them by."""
    core = getattr(np, "_core", None) or np.core
    out: list[tuple[object, str]] = [(np.dtype, "numpy.dtype")]
    out += [
        (core.multiarray.scalar, f"{module}.scalar") for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    ]
    dtypes = getattr(np, "dtypes", None)
    for name in (
        "Bool",
        "Int8",
        "Int16",
        "Int32",
        "Int64",
        "UInt8",
        "UInt16",
        "UInt32",
        "UInt64",
        "Float16",
        "Float32",
        "Float64",
    ):
        cls = getattr(dtypes, f"{name}DType", None)
        if cls is not None:
            out.append((cls, f"numpy.dtypes.{name}DType"))
    return out


# (object, the name a pickle refers to it by): what a Lightning checkpoint may hold besides tensors and containers
SAFE_GLOBALS: tuple[tuple[object, str], ...] = (
    (argparse.Namespace, "argparse.Namespace"),
    (pathlib.PurePosixPath, "pathlib.PosixPath"),
    (pathlib.PurePosixPath, "pathlib.PurePosixPath"),
    (pathlib.PureWindowsPath, "pathlib.WindowsPath"),
    (pathlib.PureWindowsPath, "pathlib.PureWindowsPath"),
    (LightningAttributeDict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (LightningAttributeDict, "lightning_fabric.utilities.data.AttributeDict"),
    (LightningAttributeDict, "lightning.fabric.utilities.data.AttributeDict"),
    *_numpy_globals(),
)


def load_lightning_checkpoint(path: str | Path) -> dict:
    """Read a Lightning ``.ckpt`` with ``torch.load(weights_only=True)`` and the :data:`SAFE_GLOBALS` allow-list.

    Returns the checkpoint dict (``state_dict`` mapped into memory when the file allows). A file that refers to
    any other class or function is refused with a :class:`ConversionError` naming it; nothing in it is run.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"medst/models/pretrained.py: checkpoint file not found: {path}")
    version = tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2])
    if version < (2, 6):
        raise RuntimeError(
            f"medst/models/pretrained.py: reading {path} safely needs torch >= 2.6 (found {torch.__version__})"
        )
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        try:
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:  # an old (non-zip) file cannot be memory-mapped
                if "mmap" not in str(err).lower() and "zip" not in str(err).lower():
                    raise
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            if found:
                why = (
                    f"it refers to {found.group(1)}, which is not on medst's allow-list of what a Lightning "
                    "checkpoint may hold (argparse.Namespace, pathlib paths, Lightning's AttributeDict, NumPy "
                    "scalars)"
                )
            else:
                detail = re.search(
                    r"WeightsUnpickler error: *(.+?)(?: Check the documentation|$)", " ".join(str(err).split())
                )
                why = f"it holds an object torch cannot read safely ({detail.group(1) if detail else err})"
            raise ConversionError(f"{path}: refused: {why}; it was not loaded and nothing in it was run") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConversionError(f"{path}: not a Lightning checkpoint (no 'state_dict' dict at the top level)")
    bad = [k for k, v in ckpt["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: state_dict entries that are not tensors: {bad[:5]}")
    return ckpt


# -- mapping names -----------------------------------------------------------------------------------------------


@dataclass
class Mapped:
    """The outcome of :func:`map_state_dict`.

    tensors: medst key -> tensor (local-head weights already [out, in]).
    dropped: published key -> why it was dropped.
    source:  published key of each medst key.
    """

    tensors: dict[str, torch.Tensor]
    dropped: dict[str, str] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)


def detect_source(state: Iterable[str]) -> str:
    """``medst-official`` if the state holds lateral experts or weighting attentions, else ``mgca``."""
    keys = list(state)
    if any(".mlp_l." in k or ".norm2_l." in k or "element_wise_multi_head" in k for k in keys):
        return "medst-official"
    return "mgca"


def map_state_dict(state: dict[str, torch.Tensor], source: str, where: str = "checkpoint") -> Mapped:
    """Published names -> medst names with the tables above; an unknown key is a :class:`ConversionError`."""
    if source not in SOURCES:
        raise ValueError(f"medst/models/pretrained.py: source must be one of {', '.join(SOURCES)}, not {source!r}")
    out = Mapped({})
    unknown = []
    for key, tensor in state.items():
        reason = next((why for pattern, why in DROPPED[source] if re.fullmatch(pattern, key)), None)
        if reason is not None:
            out.dropped[key] = reason
            continue
        target = next((re.sub(f"^{p}$", t, key) for p, t in RENAMES if re.fullmatch(p, key)), None)
        if target is None:
            unknown.append(key)
            continue
        for pattern, reshape in RESHAPES:
            if re.fullmatch(pattern, target):
                tensor = reshape(tensor)
        out.tensors[target] = tensor
        out.source[target] = key
    if unknown:
        raise ConversionError(
            f"{where}: {len(unknown)} key(s) that the released {source} model does not have "
            f"(not converted): {', '.join(sorted(unknown))}"
        )
    return out


def load_into(
    module: nn.Module,
    tensors: dict[str, torch.Tensor],
    where: str,
    fills: Fills = (),
    published: dict[str, str] | None = None,
    prefix: str = "",
) -> list[str]:
    """Load ``tensors`` (keys relative to ``module``, which is ``prefix`` in the medst model) strictly; a key they
    lack may only be filled by a row of ``fills`` (a :data:`FILLED` table: pattern, what, tensor from the module's
    own).

    Every missing, unexpected or mis-shaped key is listed in one :class:`ConversionError` by its medst name, and by
    its published name when ``published`` (medst key -> published key) has it. Returns the filled keys.
    """

    def named(key: str) -> str:
        full = prefix + key
        return f"{published[full]} (as {full})" if published and full in published else full

    target = module.state_dict()
    filled, missing = {}, []
    for key, tensor in target.items():
        if key in tensors:
            continue
        make = next((make for pattern, _, make in fills if re.fullmatch(pattern, key)), None)
        if make is None:
            missing.append(named(key))
        else:
            filled[key] = make(tensor)
    unexpected = [named(k) for k in sorted(set(tensors) - set(target))]
    shapes = [
        f"{named(k)}: checkpoint {list(tensors[k].shape)}, medst {list(target[k].shape)}"
        for k in tensors
        if k in target and tensors[k].shape != target[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected (medst has no such parameter): {', '.join(unexpected)}")
    if shapes:
        more = f"; and {len(shapes) - 10} more" if len(shapes) > 10 else ""
        problems.append(
            f"{len(shapes)} shape(s) differ (the sizes come from the config: model.vision.name/kwargs, "
            "model.text.*, model.embed_dim, model.head_hidden): " + "; ".join(shapes[:10]) + more
        )
    if problems:
        raise ConversionError(f"{where}: does not match the medst model:\n  " + "\n  ".join(problems))
    module.load_state_dict({**{k: v.to(target[k].dtype) for k, v in tensors.items()}, **filled}, strict=True)
    return sorted(filled)


def subset(entries: dict, prefix: str) -> dict:
    """The entries under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in entries.items() if k.startswith(prefix)}


def load_part(module: nn.Module, init: Mapped, prefix: str, where: str, fills: Fills = ()) -> list[str]:
    """:func:`load_into` ``module`` from the entries of ``init`` under ``prefix`` (errors name published keys)."""
    return load_into(module, subset(init.tensors, prefix), where, fills, init.source, prefix)


# -- sizes read from the weights ---------------------------------------------------------------------------------

VIT_BASE = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0)


def _count(tensors: Iterable[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in tensors if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def vision_sizes(tensors: dict[str, torch.Tensor], prefix: str = "vision.vit.") -> dict:
    """timm ViT arguments read from the weights: img_size, patch_size, embed_dim, depth, mlp_ratio, and num_heads =
    embed_dim // 64 (heads cannot be read from weights; 64 per head is ViT's rule, 12 for ViT-B)."""
    try:
        dim = int(tensors[prefix + "cls_token"].shape[-1])
        patch = int(tensors[prefix + "patch_embed.proj.weight"].shape[-1])
        tokens = int(tensors[prefix + "pos_embed"].shape[1]) - 1
        hidden = int(tensors[prefix + "blocks.0.mlp.fc1.weight"].shape[0])
    except KeyError as err:
        raise ConversionError(f"no ViT weights under {prefix!r} ({err.args[0]} is missing)") from None
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ConversionError(f"{prefix}pos_embed holds {tokens} patch positions, not a square grid")
    return dict(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=dim,
        depth=_count(tensors, re.escape(prefix) + r"blocks\.(\d+)\."),
        num_heads=max(1, dim // 64),
        mlp_ratio=hidden / dim,
    )


def text_sizes(tensors: dict[str, torch.Tensor], prefix: str = "text.model.") -> dict:
    """BERT sizes read from the weights: vocab_size, hidden_size, num_layers, intermediate_size, max_positions."""
    try:
        vocab, hidden = (int(s) for s in tensors[prefix + "embeddings.word_embeddings.weight"].shape)
        positions = int(tensors[prefix + "embeddings.position_embeddings.weight"].shape[0])
        inner = int(tensors[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0])
    except KeyError as err:
        raise ConversionError(f"no BERT weights under {prefix!r} ({err.args[0]} is missing)") from None
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inner,
        max_positions=positions,
        num_layers=_count(tensors, re.escape(prefix) + r"encoder\.layer\.(\d+)\."),
    )


# -- starting a run from a release (model.vision.init_from, model.text.init_from) -------------------------------


def read_init_state(path: str | Path, prefixes: tuple[str, ...]) -> Mapped:
    """medst-named tensors under ``prefixes`` from a converted run folder or a released ``.ckpt``.

    A ``.ckpt`` is mapped with the tables above (its source is detected: lateral experts or weighting attentions
    mean Med-ST, else MGCA; a key neither release has is an error); its local-head weights come out [out, in].
    """
    path = Path(path)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{path}: no model.safetensors (init_from takes a run folder or a .ckpt file)")
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            return Mapped({k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)})
    ckpt = load_lightning_checkpoint(path)
    state = ckpt["state_dict"]
    mapped = map_state_dict(state, detect_source(state), where=str(path))
    keep = [k for k in mapped.tensors if k.startswith(prefixes)]
    return Mapped({k: mapped.tensors[k] for k in keep}, source={k: mapped.source[k] for k in keep})


def copy_frontal_experts(move: MoVE) -> None:
    """Lateral expert i := a copy of block i's frontal norm2 / mlp / ls2 (``lateral_init=frontal``)."""
    for expert, block in zip(move.lateral_experts, move.vit.blocks):
        expert.norm.load_state_dict(block.norm2.state_dict())
        expert.mlp.load_state_dict(block.mlp.state_dict())
        expert.ls.load_state_dict(block.ls2.state_dict())


def init_vision(cfg: Config) -> MoVE:
    """The MoVE tower of ``cfg`` with its ViT from ``model.vision.init_from``.

    The lateral experts come from the checkpoint when it has them (a Med-ST release or run); otherwise (MGCA, as the
    published Med-ST run starts) they follow ``model.vision.lateral_init``: fresh weights (``random``, published) or
    a copy of the loaded frontal experts (``frontal``).
    """
    v = cfg.model.vision
    if v.checkpoint:
        raise ValueError("model.vision.checkpoint and model.vision.init_from are both set; choose one")
    init = read_init_state(v.init_from, ("vision.",))
    move = create_move(v.name, pretrained=False, lateral_init="random", experts=v.experts, **v.kwargs)
    where = f"model.vision.init_from={v.init_from}"
    load_part(move.vit, init, "vision.vit.", where)
    if move.lateral_experts is not None and subset(init.tensors, "vision.lateral_experts."):
        load_part(move.lateral_experts, init, "vision.lateral_experts.", where)
        how = "from the checkpoint"
    elif move.lateral_experts is not None and v.lateral_init == "frontal":
        copy_frontal_experts(move)
        how = "copied from the frontal experts"
    else:
        how = "fresh (random)" if move.lateral_experts is not None else "none (experts=shared)"
    print(f"{where}: ViT loaded; lateral experts {how}", flush=True)
    return move


def init_text_encoder(cfg: Config, tokenizer) -> TextEncoder:
    """A BERT sized like the one in ``model.text.init_from``, with its weights, around ``tokenizer``.

    Its sizes (hidden_size, num_layers, intermediate_size, max_positions) are read from the checkpoint and written
    into ``cfg.model.text``, so that the run's config.json describes the tower it trains; the heads are
    ``model.text.num_heads``. The tokenizer must have the checkpoint's vocabulary (Bio_ClinicalBERT's for MGCA).
    """
    t = cfg.model.text
    where = f"model.text.init_from={t.init_from}"
    init = read_init_state(t.init_from, ("text.model.",))
    sizes = text_sizes(init.tensors)
    if len(tokenizer) != sizes["vocab_size"]:
        raise ConversionError(
            f"{where}: its text tower embeds {sizes['vocab_size']} tokens, the tokenizer has "
            f"{len(tokenizer)}; point model.text.name at the matching tokenizer (for MGCA a local "
            f"copy of {BIO_CLINICAL_BERT})"
        )
    changed = [
        f"{k} {getattr(t, k)} -> {sizes[k]}"
        for k in ("hidden_size", "num_layers", "intermediate_size", "max_positions")
        if getattr(t, k) != sizes[k]
    ]
    for k in ("hidden_size", "num_layers", "intermediate_size", "max_positions"):
        setattr(t, k, sizes[k])
    pool = "cls" if t.pool == "auto" else t.pool
    encoder = TextEncoder.from_config(
        tokenizer,
        hidden_size=t.hidden_size,
        num_layers=t.num_layers,
        num_heads=t.num_heads,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=t.max_positions,
        pool=pool,
        position_ids=t.position_ids,
        dropout=t.dropout,
    )
    load_part(encoder.model, init, "text.model.", where, _FILL_BERT)
    sizes_note = f"; model.text sizes from the checkpoint: {', '.join(changed)}" if changed else ""
    print(f"{where}: BERT loaded{sizes_note}", flush=True)
    if t.position_ids == "real":
        print(
            f"note: {where}: that tower was trained with every position id 0; model.text.position_ids=zeros "
            "continues it as the published run did",
            flush=True,
        )
    return encoder


HEADS = {"vision": ("image_global.", "image_local."), "text": ("text_global.", "text_local.")}


def init_heads(model: nn.Module, cfg: Config) -> None:
    """Projection heads of the towers that have ``init_from``, from the same checkpoints (as the published run
    starts from all of MGCA's matching weights). A head the model does not build (no local loss) is skipped."""
    for tower, path in (("vision", cfg.model.vision.init_from), ("text", cfg.model.text.init_from)):
        if not path:
            continue
        init = read_init_state(path, HEADS[tower])
        for prefix in HEADS[tower]:
            head = getattr(model, prefix.rstrip("."), None)
            if head is not None:
                load_part(head, init, prefix, f"model.{tower}.init_from={path} ({prefix.rstrip('.')})")
