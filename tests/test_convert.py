"""Loading the released Med-ST and MGCA checkpoints (medst/convert.py, medst/models/pretrained.py), checked
against a re-implementation.

The released models cannot be downloaded here, so this file re-implements their forward pass at a small width with
exactly the published module names (so the state dict has the published keys and shapes): a ViT whose blocks carry
a lateral feed-forward expert (``mlp_l``, ``norm2_l``), a BLIP-style BERT without token-type embeddings but with
cross-attention layers and a pooler, 1x1-convolution local heads, and the unused parameters of the release. The
text path embeds every token at position 0, as the released encoder does. Checkpoints are wrapped like Lightning's.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from medst.cli import main
from medst.config import Config
from medst.convert import convert, published_config
from medst.models.medst import build_medst, load_run
from medst.models.pretrained import ConversionError, load_lightning_checkpoint, map_state_dict, read_init_state
from medst.models.text import load_tokenizer
from medst.models.weights import save_weights

WIDTH, DEPTH, HEADS, PATCH, IMAGE = 64, 2, 2, 8, 32
HIDDEN, LAYERS, INTER, POSITIONS = 64, 2, 128, 40
EMBED, HEAD_HIDDEN = 32, 96
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "The",
    "the",
    "Heart",
    "heart",
    "is",
    "normal",
    "size",
    "small",
    "left",
    "right",
    "pleural",
    "effusion",
    "no",
    "pneu",
    "##mo",
    "##thorax",
    "lungs",
    "are",
    "clear",
    "stable",
    ".",
    ",",
    "##s",
    "increased",
    "mild",
    "edema",
]
REPORTS = [
    "The Heart size is normal.",
    "Small left pleural effusion, no pneumothorax.",
    "lungs are clear",
    "stable mild edema",
]
HEAD_OPTS = ["model.vision.kwargs.num_heads=2", "model.text.num_heads=2"]


# -- the published model, re-implemented (names and shapes as released) ------------------------------------------


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, lateral: bool) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, 4 * dim)
        if lateral:
            self.mlp_l, self.norm2_l = Mlp(dim, 4 * dim), nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x, n_frontal: int):
        x = x + self.attn(self.norm1(x))
        front = self.mlp(self.norm2(x[:, :n_frontal]))
        if n_frontal == x.shape[1]:
            return x + front
        return x + torch.cat([front, self.mlp_l(self.norm2_l(x[:, n_frontal:]))], dim=1)


class PatchEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, WIDTH, PATCH, PATCH)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    def __init__(self, lateral: bool) -> None:
        super().__init__()
        n = (IMAGE // PATCH) ** 2
        self.patch_embed = PatchEmbed()
        self.cls_token = nn.Parameter(torch.randn(1, 1, WIDTH) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, WIDTH) * 0.02)
        self.blocks = nn.ModuleList(Block(WIDTH, HEADS, lateral) for _ in range(DEPTH))
        self.norm = nn.LayerNorm(WIDTH, eps=1e-6)

    def forward(self, frontal, lateral=None):
        B = frontal.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), self.patch_embed(frontal)], 1) + self.pos_embed
        n_frontal = x.shape[1]
        if lateral is not None:  # lateral patches take the frontal patches' position embeddings
            x = torch.cat([x, self.patch_embed(lateral) + self.pos_embed[:, 1:]], 1)
        for blk in self.blocks:
            x = blk(x, n_frontal)
        return self.norm(x)


class GlobalEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(dim, HEAD_HIDDEN),
            nn.BatchNorm1d(HEAD_HIDDEN),
            nn.ReLU(),
            nn.Linear(HEAD_HIDDEN, EMBED),
            nn.BatchNorm1d(EMBED, affine=False),
        )

    def forward(self, x):
        return self.head(x)


class LocalEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv1d(dim, HEAD_HIDDEN, 1),
            nn.BatchNorm1d(HEAD_HIDDEN),
            nn.ReLU(),
            nn.Conv1d(HEAD_HIDDEN, EMBED, 1),
            nn.BatchNorm1d(EMBED, affine=False),
        )

    def forward(self, x):  # [B, T, C] -> [B, T, EMBED]
        return self.head(x.permute(0, 2, 1)).permute(0, 2, 1)


class ImageEncoder(nn.Module):
    def __init__(self, official: bool) -> None:
        super().__init__()
        self.model = ViT(lateral=official)
        self.global_embed, self.local_embed = GlobalEmbedding(WIDTH), LocalEmbedding(WIDTH)
        if official:
            self.global_embed_la, self.local_embed_la = GlobalEmbedding(WIDTH), LocalEmbedding(WIDTH)


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))

    def forward(self, x, mask_add):
        B, T, C = x.shape
        q, k, v = (f(x).view(B, T, HEADS, C // HEADS).transpose(1, 2) for f in (self.query, self.key, self.value))
        probs = ((q @ k.transpose(-1, -2)) / (C // HEADS) ** 0.5 + mask_add).softmax(-1)
        return (probs @ v).transpose(1, 2).reshape(B, T, C)


class DenseNorm(nn.Module):
    def __init__(self, d_in: int) -> None:
        super().__init__()
        self.dense, self.LayerNorm = nn.Linear(d_in, HIDDEN), nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self, self.output = SelfAttention(), DenseNorm(HIDDEN)

    def forward(self, x, mask_add):
        return self.output(self.self(x, mask_add), x)


class Intermediate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(HIDDEN, INTER)


class BertLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention, self.crossattention = BertAttention(), BertAttention()  # cross-attention: never used
        self.intermediate, self.output = Intermediate(), DenseNorm(INTER)

    def forward(self, x, mask_add):
        x = self.attention(x, mask_add)
        return self.output(F.gelu(self.intermediate.dense(x)), x)


class Embeddings(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, HIDDEN, padding_idx=0)
        self.position_embeddings = nn.Embedding(POSITIONS, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.register_buffer("position_ids", torch.arange(POSITIONS).expand((1, -1)))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer() for _ in range(LAYERS))


class Pooler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(HIDDEN, HIDDEN)


class Bert(nn.Module):
    """BLIP-style BERT: word + position embeddings (no token types), self-attention layers (+ unused cross)."""

    def __init__(self, vocab: int, pooler: bool) -> None:
        super().__init__()
        self.embeddings, self.encoder = Embeddings(vocab), Encoder()
        if pooler:
            self.pooler = Pooler()

    def forward(self, ids, mask, position_ids):
        e = self.embeddings
        x = e.LayerNorm(e.word_embeddings(ids) + e.position_embeddings(position_ids))
        mask_add = (1.0 - mask[:, None, None, :].float()) * -10000.0
        for layer in self.encoder.layer:
            x = layer(x, mask_add)
        return x


class TextEncoder(nn.Module):
    def __init__(self, vocab: int, official: bool) -> None:
        super().__init__()
        self.model = Bert(vocab, pooler=official)
        self.global_embed, self.local_embed = GlobalEmbedding(HIDDEN), LocalEmbedding(HIDDEN)


class Published(nn.Module):
    """The released Lightning module's parameters (``official``: Med-ST; else MGCA) and its inference path."""

    def __init__(self, vocab: int, official: bool = True) -> None:
        super().__init__()
        self.img_encoder_q, self.text_encoder_q = ImageEncoder(official), TextEncoder(vocab, official)
        self.patch_local_atten_layer = nn.MultiheadAttention(EMBED, 1, batch_first=True)
        self.word_local_atten_layer = nn.MultiheadAttention(EMBED, 1, batch_first=True)
        if official:
            self.word_element_wise_multi_head = nn.MultiheadAttention(EMBED, 1, batch_first=True)
            self.patch_element_wise_multi_head = nn.MultiheadAttention(EMBED, 1, batch_first=True)
        else:
            self.prototype_layer = nn.Linear(EMBED, 20, bias=False)

    def image(self, frontal, lateral=None):
        """-> global [B, EMBED], patches [B, P, EMBED], both L2-normalised."""
        enc = self.img_encoder_q
        x = enc.model(frontal, lateral)
        return (F.normalize(enc.global_embed(x[:, 0]), dim=-1), F.normalize(enc.local_embed(x[:, 1:]), dim=-1))

    def text(self, ids, mask, words_of):
        """-> report [B, EMBED], words [B, T-1, EMBED]; every position id 0 (token_type_ids fill that slot)."""
        enc = self.text_encoder_q
        hidden = enc.model(ids, mask, position_ids=torch.zeros_like(ids))
        words = torch.stack([merge_like_release(h, row, words_of) for h, row in zip(hidden, ids.tolist())])
        return (F.normalize(enc.global_embed(hidden[:, 0]), dim=-1), F.normalize(enc.local_embed(words[:, 1:]), dim=-1))


def merge_like_release(hidden: torch.Tensor, ids: list[int], words_of: dict[int, str]) -> torch.Tensor:
    """The release's word merge: [CLS] alone, then each word's pieces summed, then [SEP]; zeros after. [T, D]."""
    out, bank = [], []
    for vec, i in zip(hidden, ids):
        token = words_of[i]
        if token == "[SEP]":
            out += [torch.stack(bank).sum(0), vec]
            break
        if token.startswith("##"):
            bank.append(vec)
        else:
            if bank:
                out.append(torch.stack(bank).sum(0))
            bank = [vec]
    return torch.cat([torch.stack(out), hidden.new_zeros(len(ids) - len(out), hidden.shape[-1])])


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter and BatchNorm statistic away from its initial value, then eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * (0.2 if p.dim() > 1 else 0.1)
                + (1.0 if "norm" in name.lower() and "weight" in name else 0)
            )
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def lightning_checkpoint(state: dict, path: pathlib.Path, **hyper) -> pathlib.Path:
    """What Lightning writes: weights plus hyper-parameters, loop and callback states."""
    hparams = {
        "img_encoder": "vit_base",
        "emb_dim": EMBED,
        "softmax_temperature": 0.07,
        "local_temperature": 0.1,
        "lambda_1": 1.0,
        "lambda_2": 1.0,
        "lambda_3": 1.0,
        "huber_delta": 2.0,
        "gpus": 2,
        "ckpt_path": pathlib.PosixPath("/data/ckpts/vit_base.ckpt"),
        "args": argparse.Namespace(seed=42),
        "data_pct": np.float64(1.0),
        **hyper,
    }
    ckpt = {
        "epoch": 7,
        "global_step": 1234,
        "pytorch-lightning_version": "1.5.10",
        "state_dict": OrderedDict(state),
        "hyper_parameters": hparams,
        "hparams_name": "kwargs",
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(1.5), "dirpath": "/data/ckpts"}
        },
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4e-5, "betas": (0.9, 0.999), "params": [0]}]}],
        "lr_schedulers": [{"last_epoch": 3, "base_lrs": [4e-5]}],
    }
    torch.save(ckpt, path)
    return path


# -- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory) -> pathlib.Path:
    """A cased WordPiece vocabulary (as Bio_ClinicalBERT's is), as a bare vocab.txt folder."""
    folder = tmp_path_factory.mktemp("vocab")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return folder


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    model = randomise(Published(len(VOCAB), official=True), seed=0)
    path = lightning_checkpoint(model.state_dict(), tmp_path_factory.mktemp("ckpt") / "medst.ckpt")
    return model, path


@pytest.fixture(scope="module")
def mgca(tmp_path_factory):
    model = randomise(Published(len(VOCAB), official=False), seed=1)
    path = lightning_checkpoint(model.state_dict(), tmp_path_factory.mktemp("ckpt") / "mgca.ckpt", num_prototypes=20)
    return model, path


def images(seed: int, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=2e-5, rtol=1e-4)


# -- convert: Med-ST -----------------------------------------------------------------------------------------


def test_convert_official_matches_the_published_forward(official, vocab_dir, tmp_path, capsys):
    pub, ckpt = official
    main(
        [
            "convert",
            "--from",
            "medst-official",
            str(ckpt),
            "--out",
            str(tmp_path / "run"),
            "--tokenizer",
            str(vocab_dir),
            *sum((["--set", s] for s in HEAD_OPTS), []),
        ]
    )
    printed = capsys.readouterr().out
    assert "dropped" in printed and "crossattention" in printed and "global_embed_la" in printed
    assert "pooler" in printed and "local_atten_layer" in printed and "position_ids=zeros" in printed
    model, tok, cfg = load_run(tmp_path / "run")
    assert cfg.model.text.position_ids == "zeros" and model.text.position_ids == "zeros" and cfg.model.text.lowercase
    assert cfg.model.vision.experts == "move" and cfg.loss.local_weighting == "learned"
    assert model.text.model.embeddings.token_type_embeddings.weight.abs().sum() == 0

    enc = tok(REPORTS, padding="max_length", truncation=True, max_length=24, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert tok.convert_ids_to_tokens(ids[0].tolist())[1:3] == ["the", "heart"]  # cased vocabulary, lower-cased text
    frontal, lateral = images(0), images(1)
    with torch.no_grad():
        mine = model.encode_image(frontal)
        ref_global, ref_patches = pub.image(frontal)
        assert close(mine.global_, ref_global) and close(mine.patches, ref_patches)
        both = model.encode_image(frontal, lateral)  # two views: attention over both, lateral experts
        ref_global, ref_patches = pub.image(frontal, lateral)
        assert close(both.global_, ref_global) and close(both.patches, ref_patches)
        assert not close(both.global_, mine.global_)

        txt = model.encode_text(ids, mask)
        words_of = {i: w for w, i in tok.get_vocab().items()}
        ref_report, ref_words = pub.text(ids, mask, words_of)
        assert close(txt.global_, ref_report)
        for b in range(len(REPORTS)):
            n = int(txt.word_mask[b].sum())
            assert n >= 3 and close(txt.words[b, :n], ref_words[b, :n])
        model.text.position_ids = "real"  # the released tower is not position-free: real ids change the output
        assert not close(model.encode_text(ids, mask).global_, ref_report)
    for name in ("word", "patch"):
        mine_w = getattr(model.local_alignment, f"{name}_weighting").in_proj_weight
        assert torch.equal(mine_w, getattr(pub, f"{name}_element_wise_multi_head").in_proj_weight)


def test_convert_without_tokenizer_names_the_hub_tokenizer(official, vocab_dir, tmp_path, monkeypatch):
    _, ckpt = official
    report = convert(ckpt, "medst-official", tmp_path / "run", overrides=HEAD_OPTS)
    assert not (tmp_path / "run" / "tokenizer").exists()
    cfg = Config.from_dict(json.loads((tmp_path / "run" / "config.json").read_text()))
    assert cfg.model.text.name == "emilyalsentzer/Bio_ClinicalBERT" and cfg.model.text.lowercase is True
    assert any("emilyalsentzer/Bio_ClinicalBERT" in n for n in report.notes)

    def offline(name, lowercase=None):
        raise OSError(f"{name} is not cached")

    monkeypatch.setattr("medst.models.medst.load_tokenizer", offline)
    with pytest.raises(FileNotFoundError, match=r"no tokenizer/ folder.*Bio_ClinicalBERT.*--tokenizer"):
        load_run(tmp_path / "run")
    monkeypatch.undo()
    # with model.text.name pointing at a local copy, load_run reads the tokenizer from there, lower-casing
    convert(ckpt, "medst-official", tmp_path / "local", overrides=[*HEAD_OPTS, f"model.text.name={vocab_dir}"])
    _, tok, _ = load_run(tmp_path / "local")
    assert tok.tokenize("The Heart") == ["the", "heart"]


def test_heads_default_to_64_wide():
    state = {k: v for k, v in Published(len(VOCAB)).state_dict().items()}
    cfg = published_config(map_state_dict(state, "medst-official").tensors, "medst-official", {}, "x")
    assert cfg.model.vision.kwargs["num_heads"] == 1 and cfg.model.text.num_heads == 1
    assert cfg.model.vision.kwargs["embed_dim"] == WIDTH and cfg.model.text.num_layers == LAYERS
    assert (cfg.model.embed_dim, cfg.model.head_hidden, cfg.data.image_size) == (EMBED, HEAD_HIDDEN, IMAGE)


def test_extra_or_missing_keys_are_refused_with_their_names(official, tmp_path):
    pub, _ = official
    state = pub.state_dict()
    extra = dict(state, **{"img_encoder_q.model.blocks.0.attn.extra_scale": torch.ones(1)})
    with pytest.raises(ConversionError, match=r"img_encoder_q\.model\.blocks\.0\.attn\.extra_scale"):
        convert(
            lightning_checkpoint(extra, tmp_path / "extra.ckpt"), "medst-official", tmp_path / "a", overrides=HEAD_OPTS
        )
    missing = {k: v for k, v in state.items() if not k.startswith("text_encoder_q.global_embed.head.0.")}
    with pytest.raises(ConversionError, match=r"missing .*text_global\.mlp\.0\.weight") as err:
        convert(
            lightning_checkpoint(missing, tmp_path / "missing.ckpt"),
            "medst-official",
            tmp_path / "b",
            overrides=HEAD_OPTS,
        )
    assert "text_global.mlp.0.bias" in str(err.value)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "model.safetensors").exists()


class Evil:
    """Unpickling this would run code: it would create the marker file."""

    def __init__(self, marker: str) -> None:
        pathlib.Path(marker).write_text("ran")

    def __reduce__(self):
        return (Evil, (str(MARKER[0]),))


MARKER: list[pathlib.Path] = []


def test_a_pickled_object_is_refused_without_running_it(official, tmp_path):
    pub, _ = official
    MARKER[:] = [tmp_path / "marker"]
    hook = object.__new__(Evil)  # pickled as a call to Evil(marker)
    ckpt = lightning_checkpoint(pub.state_dict(), tmp_path / "evil.ckpt", hook=hook)
    assert not MARKER[0].exists()
    with pytest.raises(ConversionError, match=r"Evil") as err:
        convert(ckpt, "medst-official", tmp_path / "run", overrides=HEAD_OPTS)
    assert "not loaded" in str(err.value) and str(ckpt) in str(err.value)
    assert not MARKER[0].exists()
    with pytest.raises(ConversionError, match=r"Evil"):
        read_init_state(ckpt, ("vision.",))
    assert not MARKER[0].exists()


# -- starting from MGCA (model.*.init_from) ----------------------------------------------------------------------


def mgca_config(init_from: str, lateral_init: str) -> Config:
    cfg = Config(name="from-mgca")
    cfg.data.image_size, cfg.data.max_length = IMAGE, 24
    v = cfg.model.vision
    v.name, v.init_from, v.lateral_init = "vit_base_patch16_224", init_from, lateral_init
    v.kwargs = dict(img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS)
    t = cfg.model.text
    t.kind, t.init_from, t.num_heads, t.position_ids = "tiny", init_from, HEADS, "zeros"
    cfg.model.embed_dim, cfg.model.head_hidden = EMBED, HEAD_HIDDEN
    return cfg


@pytest.mark.parametrize("lateral_init", ["random", "frontal"])
def test_pretraining_starts_from_mgca(mgca, vocab_dir, tmp_path, lateral_init, capsys):
    pub, ckpt = mgca
    tok = load_tokenizer(str(vocab_dir), lowercase=True)
    cfg = mgca_config(str(ckpt), lateral_init)
    torch.manual_seed(0)
    model = build_medst(cfg, tok).eval()
    assert "ViT loaded" in capsys.readouterr().out
    published = pub.state_dict()
    vit = model.vision.vit.state_dict()
    for key, value in published.items():
        if key.startswith("img_encoder_q.model."):
            assert torch.equal(vit[key[len("img_encoder_q.model.") :]], value), key
    assert torch.equal(model.image_local.mlp[0].weight, published["img_encoder_q.local_embed.head.0.weight"][..., 0])
    assert torch.equal(model.text_global.mlp[3].weight, published["text_encoder_q.global_embed.head.3.weight"])
    bert = model.text.model.state_dict()
    assert torch.equal(
        bert["encoder.layer.1.output.dense.weight"],
        published["text_encoder_q.model.encoder.layer.1.output.dense.weight"],
    )
    assert bert["embeddings.token_type_embeddings.weight"].abs().sum() == 0
    assert (cfg.model.text.num_layers, cfg.model.text.max_positions) == (LAYERS, POSITIONS)  # read from MGCA
    for expert, block in zip(model.vision.lateral_experts, model.vision.vit.blocks):
        same = torch.equal(expert.mlp.fc1.weight, block.mlp.fc1.weight)
        assert same == (lateral_init == "frontal")
        if lateral_init == "random":  # a fresh ViT-style init
            assert expert.mlp.fc1.weight.std() < 0.05 and expert.mlp.fc1.bias.abs().sum() == 0
            assert torch.equal(expert.norm.weight, torch.ones(WIDTH))
    with torch.no_grad():  # MGCA's single-view forward is reproduced
        frontal = images(2)
        ref_global, ref_patches = pub.image(frontal)
        mine = model.encode_image(frontal)
        assert close(mine.global_, ref_global) and close(mine.patches, ref_patches)

    # the run folder of such a run loads without the MGCA file (its config records the tower's sizes)
    run = tmp_path / "run"
    run.mkdir()
    save_weights(model, run / "model.safetensors")
    (run / "config.json").write_text(cfg.to_json())
    tok.save_pretrained(str(run / "tokenizer"))
    moved = ckpt.with_suffix(".moved")
    ckpt.rename(moved)
    try:
        again, _, _ = load_run(run)
    finally:
        moved.rename(ckpt)
    assert torch.equal(again.vision.lateral_experts[0].mlp.fc1.weight, model.vision.lateral_experts[0].mlp.fc1.weight)


def test_init_from_a_converted_mgca_run(mgca, vocab_dir, tmp_path):
    pub, ckpt = mgca
    report = convert(ckpt, "mgca", tmp_path / "mgca", tokenizer=vocab_dir, overrides=HEAD_OPTS)
    assert any("prototype" in why for why in report.dropped.values())
    converted, tok, cfg = load_run(tmp_path / "mgca")
    assert cfg.model.vision.experts == "shared" and cfg.loss.temporal_weight == 0
    model = build_medst(mgca_config(str(tmp_path / "mgca"), "frontal"), load_tokenizer(str(vocab_dir), True)).eval()
    assert torch.equal(
        model.vision.vit.blocks[1].attn.qkv.weight, pub.state_dict()["img_encoder_q.model.blocks.1.attn.qkv.weight"]
    )
    assert torch.equal(model.vision.lateral_experts[1].mlp.fc2.weight, model.vision.vit.blocks[1].mlp.fc2.weight)
    with torch.no_grad():
        frontal = images(3)
        assert close(converted.encode_image(frontal).global_, pub.image(frontal)[0])


def test_init_from_refuses_an_unknown_or_missing_key(mgca, vocab_dir, tmp_path):
    pub, _ = mgca
    tok = load_tokenizer(str(vocab_dir), True)
    state = dict(pub.state_dict(), **{"img_encoder_q.model.blocks.0.gamma": torch.ones(WIDTH)})
    ckpt = lightning_checkpoint(state, tmp_path / "odd.ckpt")
    with pytest.raises(ConversionError, match=r"unexpected .*img_encoder_q\.model\.blocks\.0\.gamma"):
        build_medst(mgca_config(str(ckpt), "random"), tok)
    state = {k: v for k, v in pub.state_dict().items() if k != "img_encoder_q.local_embed.head.3.weight"}
    ckpt = lightning_checkpoint(state, tmp_path / "short.ckpt")
    with pytest.raises(ConversionError, match=r"missing .*: image_local\.mlp\.3\.weight"):
        build_medst(mgca_config(str(ckpt), "random"), tok)
    state = dict(pub.state_dict(), **{"text_encoder_q.model.embeddings.token_type_embeddings.weight": torch.ones(1)})
    ckpt = lightning_checkpoint(state, tmp_path / "odd2.ckpt")
    with pytest.raises(ConversionError, match=r"token_type_embeddings\.weight\): checkpoint \[1\], medst \[2, 64\]"):
        build_medst(mgca_config(str(ckpt), "random"), tok)


def test_init_from_shape_mismatch_names_the_keys(mgca, vocab_dir):
    _, ckpt = mgca
    cfg = mgca_config(str(ckpt), "random")
    cfg.model.vision.kwargs["embed_dim"] = 32
    with pytest.raises(
        ConversionError,
        match=r"img_encoder_q\.model\.cls_token \(as vision\.vit\.cls_token\): checkpoint \[1, 1, 64\], "
        r"medst \[1, 1, 32\]",
    ):
        build_medst(cfg, load_tokenizer(str(vocab_dir), True))


def test_convert_help():
    out = subprocess.run([sys.executable, "-m", "medst.cli", "convert", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage: medst convert" in out.stdout and "--tokenizer" in out.stdout and "mgca" in out.stdout


def test_what_a_lightning_checkpoint_holds_is_read(tmp_path, monkeypatch):
    """Namespace, paths, NumPy scalars and Lightning's AttributeDict (faked here: Lightning is not installed)."""

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = "pytorch_lightning.utilities.parsing", "AttributeDict"
    module = types.ModuleType("pytorch_lightning.utilities.parsing")
    module.AttributeDict = AttributeDict
    for name in ("pytorch_lightning", "pytorch_lightning.utilities"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "pytorch_lightning.utilities.parsing", module)
    path = lightning_checkpoint(
        {"w": torch.ones(2)}, tmp_path / "x.ckpt", extra=AttributeDict(lr=4e-5), when=np.int64(3), frozen=np.bool_(True)
    )
    hp = load_lightning_checkpoint(path)["hyper_parameters"]
    assert hp["extra"] == {"lr": 4e-5} and hp["args"].seed == 42 and hp["when"] == 3
    assert str(hp["ckpt_path"]) == "/data/ckpts/vit_base.ckpt" and float(hp["data_pct"]) == 1.0
