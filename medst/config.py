"""Run configuration: the three profiles (``ci``, ``cpu``, ``gpu``) and overrides.

A profile is a YAML file in ``medst/profiles``. It fixes the scale of everything a chapter or a
pre-training run does: how big the phantom is, how big the towers are, how long training runs. Any value
can be overridden with dotted keys, e.g. ``train.steps=200`` or ``model.vision.lateral_init=frontal``.

The defaults below are the published Med-ST settings (Method §7); the profiles only change scale.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROFILE_DIR = Path(__file__).with_name("profiles")
PROFILES = ("ci", "cpu", "gpu")


DEFAULT_GRADE_TIMEOUT = 600  # `medst grade`: seconds of wall clock per notebook (a ci chapter: about a minute)


@dataclass
class DataConfig:
    patients: int = 2000  # phantom patients (``medst synth --patients``)
    phantom_size: int = 128  # side of the phantom's stored images in pixels
    image_size: int = 224  # model input: crop size after resize-and-pad (Method §1)
    sequence_length: int = 4  # L: studies per temporal sequence
    max_length: int = 112  # text tokens including [CLS] and [SEP]
    num_workers: int = 0  # DataLoader workers
    use_cache: bool = True  # read the resized cache written by ``medst prepare``
    augment: bool = True  # random crops for training (False: centre crops, e.g. to compare runs exactly)
    ct_fraction: float = 0.0  # share of phantom patients that also get one CT volume (``medst synth --ct-fraction``;
    # the radiographs and reports do not change; chapter 11 and ``model.method: unimedi`` read the volumes)

    @property
    def cache_size(self) -> int:
        """Long side of the resized cache: 256 for a 224 crop, scaled alike for other sizes."""
        return round(self.image_size * 256 / 224)


@dataclass
class VisionConfig:
    name: str = "vit_base_patch16_224"  # timm model name
    pretrained: bool = False  # fetch ImageNet weights through timm (online only)
    checkpoint: str | None = None  # local weights file for the ViT
    lateral_init: str = "random"  # "random" (published) or "frontal" (copy the frontal expert)
    experts: str = "move"  # "move" (published: frontal + lateral FFN experts) or "shared"
    # (both views through one shared FFN: the ablation baseline, chapter 4)
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm overrides: img_size, patch_size, depth, ...
    init_from: str | None = None  # MGCA / Med-ST checkpoint (.ckpt or converted run folder): start the ViT and
    # the image heads from it; lateral experts as lateral_init
    # (medst/models/pretrained.py)


@dataclass
class TextConfig:
    kind: str = "hf"  # "hf" (name or local dir), "minilm" (offline package), "tiny" (trained here)
    name: str = "emilyalsentzer/Bio_ClinicalBERT"
    vocab_size: int = 4000  # "tiny": WordPiece vocabulary trained on the corpus
    hidden_size: int = 768  # "tiny": BERT width ...
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 3072
    dropout: float = 0.1  # dropout inside the text tower
    pool: str = "auto"  # global report feature: "cls" (paper), "mean", or "auto" (cls for "hf" only)
    position_ids: str = "real"  # "real" (0, 1, 2, ...) or "zeros": every position id 0, as the released
    # Med-ST and MGCA text towers were trained (medst/models/pretrained.py)
    lowercase: bool | None = None  # tokenizer lower-casing; None: as the tokenizer ships
    max_positions: int | None = None  # BERT position table of a tower built from sizes; None: max(max_length, 128)
    init_from: str | None = None  # MGCA / Med-ST checkpoint (.ckpt or converted run folder): a BERT of its
    # sizes, started from its weights, with its text heads


@dataclass
class MPMAConfig:
    """MPMA, the neighbour of chapter 10 (``model.method: mpma``; :mod:`medst.neighbours.mpma`).

    The alignment terms reuse ``loss.global_*`` and ``loss.local_*``; ``loss.temporal_*`` is not used."""

    image_mask_ratio: float = 0.75  # share of image patches removed before the encoder (MAE's 75 %)
    text_mask_ratio: float = 0.15  # share of a report's ordinary tokens replaced by [MASK] (BERT's 15 %)
    memory_slots: int = 16  # learned key/value slots of the memory-augmented cross-attention (MA-CMF)
    fusion_layers: int = 1  # MA-CMF layers (each: self-attention, memory-augmented cross-attention, MLP per stream)
    fusion_heads: int = 4  # attention heads of the fusion and of the pixel decoder
    fusion_dim: int | None = None  # width of the fusion; None: the text tower's width
    decoder_layers: int = 1  # transformer blocks of the light pixel decoder
    decoder_dim: int | None = None  # width of the pixel decoder; None: the fusion width
    norm_pix_loss: bool = True  # reconstruct per-patch normalised pixels (MAE)
    mim_weight: float = 1.0  # weight of the masked image reconstruction (pixel MSE on masked patches)
    mlm_weight: float = 1.0  # weight of the masked language modelling (cross-entropy on masked tokens)


@dataclass
class UniMedIConfig:
    """UniMedI, the neighbour of chapter 11 (``model.method: unimedi``; :mod:`medst.neighbours.unimedi`).

    One ViT reads radiographs (its 2-D patch embedding) and CT volumes (a 3-D patch embedding); both share the
    [CLS] token, the transformer blocks and the final norm. The alignment terms reuse ``loss.global_*``;
    ``loss.local_*`` and ``loss.temporal_*`` are not used."""

    volume_patch: list[int] = field(default_factory=lambda: [2, 16, 16])  # voxels of a 3-D patch: slices, rows,
    # columns; a slab = ``volume_patch[0]`` consecutive slices, the unit that slice selection picks
    volume_slices: int = 32  # slices of a volume as the model reads it (the loader resamples other depths)
    volumes_per_batch: int = 8  # CT volume-report pairs per step beside the radiograph batch (per process)
    top_k: int = 2  # slabs the report selects per volume: their mean slices are the pseudo 2-D images
    volume_weight: float = 1.0  # weight of the volume-report InfoNCE (3-D [CLS])
    pseudo_weight: float = 1.0  # weight of the pseudo-pair InfoNCE (selected slices through the 2-D path)
    selection_weight: float = 1.0  # weight of the slab-report alignment that trains the slice scorer (ours)
    selection_temperature: float = 0.1  # temperature of the slab scores inside that alignment


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 128  # d: size of the joint embedding space
    head_hidden: int = 2048  # hidden width of the projection heads
    method: str = "medst"  # "medst" (the book's model), "mpma" (chapter 10) or "unimedi" (chapter 11)
    mpma: MPMAConfig = field(default_factory=MPMAConfig)  # used when method is "mpma"
    unimedi: UniMedIConfig = field(default_factory=UniMedIConfig)  # used when method is "unimedi"


@dataclass
class LossConfig:
    global_weight: float = 1.0  # λ1
    local_weight: float = 1.0  # λ2
    temporal_weight: float = 1.0  # λ3
    global_temperature: float = 0.07  # τ
    local_temperature: float = 0.1  # τ_l
    temporal_temperature: float = 0.1  # T
    similarity: str = "l2"  # temporal similarity: "l2" or "cosine"
    variance_lambda: float = 1e-3
    huber_delta: float = 2.0
    fmc: bool = True  # temporal terms, switchable for ablations
    rmr: bool = True
    mask_words: bool = True  # False: published unmasked word side
    local_weighting: str = "detached"  # token weights ω: "learned" (published; collapses), "detached", "uniform"
    # When λ3 joins (chapter 7): the temporal term is off for the first `temporal_start` of train.steps, then its
    # weight rises linearly to λ3 over the next `temporal_ramp` (fractions; 0 and 0: on from the first step).
    temporal_start: float = 0.0
    temporal_ramp: float = 0.0

    def temporal_factor(self, step: int, steps: int) -> float:
        """The fraction of λ3 applied at optimiser step ``step`` (0-based) of ``steps``, in [0, 1]."""
        if not (0.0 <= self.temporal_start <= 1.0 and 0.0 <= self.temporal_ramp <= 1.0):
            raise ValueError(
                f"loss.temporal_start ({self.temporal_start}) and loss.temporal_ramp ({self.temporal_ramp}) "
                "are fractions of train.steps, between 0 and 1"
            )
        start, ramp = self.temporal_start * steps, self.temporal_ramp * steps
        if step < start:
            return 0.0
        return 1.0 if ramp <= 0 else min(1.0, (step - start + 1) / ramp)


@dataclass
class TrainConfig:
    steps: int = 1000
    sequences_per_batch: int = 10  # S per process
    singles_per_batch: int = 0  # single studies after the sequences
    lr: float = 4e-5
    weight_decay: float = 0.05
    warmup_ratio: float = 0.4  # linear warm-up over the first 40 % of steps
    grad_clip: float = 1.0
    accumulation: int = 1
    precision: str = "fp32"  # "fp32" or "bf16" (autocast, GPU)
    compile: bool = False
    group_bucket: int = 0  # > 0: pad MoVE's view groups to multiples of this (static shapes)
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0


@dataclass
class Config:
    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def override(self, *assignments: str) -> Config:
        """Return a copy with ``section.key=value`` assignments applied (values parsed as YAML)."""
        data = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not of the form section.key=value")
            key, raw = item.split("=", 1)
            node = data
            *parents, leaf = key.strip().split(".")
            for part in parents:
                if not isinstance(node, dict) or part not in node:
                    raise KeyError(f"unknown config key {key!r}")
                node = node[part]
            if not isinstance(node, dict) or (leaf not in node and parents[-1:] != ["kwargs"]):
                raise KeyError(f"unknown config key {key!r}")
            node[leaf] = _parse_value(raw)
        return Config.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        def build(kind, values):
            fields = {f.name: f for f in dataclasses.fields(kind)}
            unknown = set(values) - set(fields)
            if unknown:
                raise KeyError(f"unknown keys for {kind.__name__}: {sorted(unknown)}")
            out = {}
            for name, value in values.items():
                sub = _SECTIONS.get((kind, name))
                out[name] = build(sub, value) if sub is not None else value
            return kind(**out)

        return build(cls, data)


def _parse_value(raw: str) -> Any:
    """A command-line value as YAML, with ``1e-4`` read as a number (YAML 1.1 wants ``1.0e-4``)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


_SECTIONS = {
    (Config, "data"): DataConfig,
    (Config, "model"): ModelConfig,
    (Config, "loss"): LossConfig,
    (Config, "train"): TrainConfig,
    (ModelConfig, "vision"): VisionConfig,
    (ModelConfig, "text"): TextConfig,
    (ModelConfig, "mpma"): MPMAConfig,
    (ModelConfig, "unimedi"): UniMedIConfig,
}


def normalized(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict (``config.json``, a checkpoint's config) with every key it lacks set to its default.

    A run written before a key existed was trained with that key's default, so a missing key counts as the
    default. Keys the defaults do not know are kept, so that comparing two configs shows them; ``kwargs`` dicts
    are values, not sections (a saved ``kwargs`` is kept whole).
    """
    return _fill(saved, Config().to_dict())


def _fill(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out = dict(saved)
    for key, default in defaults.items():
        if key not in out:
            out[key] = default
        elif isinstance(default, dict) and isinstance(out[key], dict) and key != "kwargs":
            out[key] = _fill(out[key], default)
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys (``{"train": {"steps": 5}}`` -> ``{"train.steps": 5}``); ``kwargs`` dicts
    stay whole values."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "kwargs":
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def load_profile(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a profile by name (``ci``, ``cpu``, ``gpu``) or from a YAML file, then apply overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ValueError(f"unknown profile {name_or_path!r}; choose one of {', '.join(PROFILES)} or a YAML file")
    elif not path.exists():
        raise FileNotFoundError(f"profile file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("name", path.stem)
    return Config.from_dict(data).override(*overrides)
