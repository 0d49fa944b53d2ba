"""StudyDataset, SequenceBatchSampler, Collator, make_loader and loader_from_config (Method §1 batches: S sequences,
then singles)."""

from __future__ import annotations

import itertools
import pickle
import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from test_data_prepare import build_fixture
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from medst.config import Config
from medst.data.dataset import Batch, Collator, StudyDataset, collator_from_config, loader_from_config, make_loader
from medst.data.images import load_resized, resize_pad
from medst.data.mimic import prepare, sliding_windows
from medst.data.sampler import SequenceBatchSampler, SequenceIndex
from medst.data.transforms import eval_transform, train_transform

IMAGE_SIZE, CACHE = 28, 32  # cache_side(28) = round(28 * 256 / 224) = 32: the cache is used as is


def tiny_tokenizer(texts):
    """A WordPiece tokenizer trained here on ``texts`` (no download), wrapped as a transformers fast tokenizer."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=150, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = build_fixture(tmp_path_factory.mktemp("fixture"))
    out = tmp_path_factory.mktemp("prepared")
    prepare(root, out, cache_size=CACHE, workers=1, progress=False)
    studies = pd.read_csv(out / "studies.csv", keep_default_na=False)
    return root, out, studies


@pytest.fixture(scope="module")
def tokenizer(data):
    return tiny_tokenizer(data[2]["text"].tolist())


def normalised(window: np.ndarray) -> torch.Tensor:
    """uint8 [S, S] -> [3, S, S] with (x / 255 - 0.5) / 0.5, written out by hand."""
    x = torch.from_numpy(window.astype(np.float32)) / 255.0
    return ((x - 0.5) / 0.5).expand(3, -1, -1)


# ---------------------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------------------
def test_eval_transform_is_resize_pad_centre_crop_normalise():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (50, 41), dtype=np.uint8)
    out = eval_transform(IMAGE_SIZE)(img)
    assert out.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and out.dtype == torch.float32
    padded = resize_pad(img, CACHE)  # 32 x 32; centre 28 x 28 starts at (32 - 28) / 2 = 2
    torch.testing.assert_close(out, normalised(padded[2:30, 2:30]))
    assert out.min() >= -1 and out.max() <= 1


def test_train_transform_random_crop_windows():
    torch.manual_seed(0)
    padded = np.random.default_rng(1).integers(0, 256, (CACHE, CACHE), dtype=np.uint8)
    offsets = set()
    for _ in range(12):
        out = train_transform(IMAGE_SIZE)(padded)
        assert out.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
        found = [
            (i, j)
            for i in range(CACHE - IMAGE_SIZE + 1)
            for j in range(CACHE - IMAGE_SIZE + 1)
            if torch.allclose(out, normalised(padded[i : i + IMAGE_SIZE, j : j + IMAGE_SIZE]), atol=1e-6)
        ]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 3


# ---------------------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------------------
def test_dataset_items_match_source_images(data):
    root, out, studies = data
    val = studies[studies["split"] == "validate"].reset_index(drop=True)
    cached = StudyDataset(out, split="validate", image_size=IMAGE_SIZE, train=False)
    direct = StudyDataset(out, split="validate", image_size=IMAGE_SIZE, train=False, use_cache=False)
    assert len(cached) == len(val) == 4
    for i, row in val.iterrows():
        item = cached[i]
        assert (item["study_id"], item["subject_id"], item["text"]) == (row.study_id, row.subject_id, row.text)
        assert item["sequence_position"] == -1
        # items hold the uint8 centre crop [1, 28, 28] of the resized-and-padded image (normalised per batch)
        expected = torch.from_numpy(load_resized(root / row.frontal, CACHE)[2:30, 2:30])[None]
        assert item["frontal"].dtype == torch.uint8 and torch.equal(item["frontal"], expected)
        assert torch.equal(direct[i]["frontal"], expected)  # no cache: same pixels
        if row.lateral:
            lateral = load_resized(root / row.lateral, CACHE)[2:30, 2:30]
            assert torch.equal(item["lateral"], torch.from_numpy(lateral)[None])
        else:
            assert item["lateral"] is None and direct[i]["lateral"] is None
    assert cached[SequenceIndex(2, 3)]["sequence_position"] == 3


def test_dataset_windows_match_sequences_csv(data):
    _, out, studies = data
    seqs = pd.read_csv(out / "sequences.csv")
    for split in ("train", "validate", "test"):
        ds = StudyDataset(out, split=split, image_size=IMAGE_SIZE, train=False)
        got = [[ds.study_ids[i] for i in w] for w in ds.windows(4)]
        expected = [[int(x) for x in s.split(";")] for s in seqs.loc[seqs["split"] == split, "study_ids"]]
        assert got == expected


def test_dataset_other_sizes_pickling_and_errors(data, tmp_path):
    _, out, _ = data
    ds = StudyDataset(out, split="train", image_size=24, train=True)  # side 27 from the 32 cache
    assert ds[0]["frontal"].shape == (1, 24, 24)
    blob = pickle.dumps(ds)  # the memory map is not pickled
    assert len(blob) < 200_000 and ds._cache is not None
    assert pickle.loads(blob)[0]["frontal"].shape == (1, 24, 24)
    with pytest.raises(ValueError, match="no studies in split 'nope'"):
        StudyDataset(out, split="nope")
    with pytest.raises(FileNotFoundError, match="medst prepare"):
        StudyDataset(tmp_path, split="train")


# ---------------------------------------------------------------------------------------------------------
# sampler on a synthetic population
# ---------------------------------------------------------------------------------------------------------
class Population:
    """Just what the sampler needs: subject_ids (contiguous per patient, time-ordered) and windows()."""

    def __init__(self, counts: list[int], split: str = "train"):
        self.subject_ids = [1000 + p for p, n in enumerate(counts) for _ in range(n)]
        self.split = split

    def __len__(self) -> int:
        return len(self.subject_ids)

    def windows(self, length: int):
        return sliding_windows(self.subject_ids, length)


def population(seed: int = 0, patients: int = 60) -> Population:
    rnd = random.Random(seed)
    return Population([rnd.choice([1, 2, 3, 4, 5, 6, 7, 9]) for _ in range(patients)] + [30])  # + one long patient


def check_layout(batch, pop: Population, S: int, singles: int, L: int = 4) -> list[tuple[int, ...]]:
    """Asserts the batch layout; returns its sequences."""
    assert len(batch) == len(set(map(int, batch)))  # no study twice
    n_seq = sum(1 for i in batch if isinstance(i, SequenceIndex)) // L
    assert n_seq <= S and len(batch) - n_seq * L <= singles
    seqs = [tuple(int(i) for i in batch[s * L : (s + 1) * L]) for s in range(n_seq)]
    valid = set(pop.windows(L))
    for s, seq in enumerate(seqs):
        assert seq in valid  # a whole window, in time order
        assert [batch[s * L + p].position for p in range(L)] == list(range(L))
    seq_patients = [pop.subject_ids[seq[0]] for seq in seqs]
    assert len(seq_patients) == len(set(seq_patients))  # no patient twice among sequences
    counts = Counter(pop.subject_ids)
    for i in batch[n_seq * L :]:
        assert not isinstance(i, SequenceIndex)
        assert counts[pop.subject_ids[i]] < L  # singles: patients without a sequence
    return seqs


def test_sampler_layout_and_epoch_coverage():
    pop = population()
    sampler = SequenceBatchSampler(
        pop, sequences_per_batch=5, singles_per_batch=3, shuffle=True, seed=1, drop_last=False
    )
    batches = list(sampler)
    assert len(sampler) == len(batches)
    used = [seq for b in batches for seq in check_layout(b, pop, 5, 3)]
    assert sorted(used) == sorted(pop.windows(4))  # every window once per epoch
    # the long patient's 27 windows are spread over the epoch: batches stay full until the very end
    assert all(len(b) == 5 * 4 + 3 for b in batches[:-2])
    assert len(batches) <= -(-len(used) // 5) + 1
    dropped = SequenceBatchSampler(pop, 5, 3, seed=1, drop_last=True)
    assert all(len(b) == 23 for b in dropped) and len(dropped) <= len(batches)


def test_sampler_unshuffled_long_patient():
    pop = Population([30, 4, 5, 1, 2])  # 27 windows of one patient, then 1 and 2
    sampler = SequenceBatchSampler(pop, 3, 1, shuffle=False, drop_last=False)
    batches = list(sampler)
    used = [seq for b in batches for seq in check_layout(b, pop, 3, 1)]
    assert sorted(used) == sorted(pop.windows(4))
    assert batches == list(SequenceBatchSampler(pop, 3, 1, shuffle=False, drop_last=False))


def test_sampler_determinism_and_epochs():
    pop = population(3)

    def run(seed, epoch):
        s = SequenceBatchSampler(pop, 4, 2, seed=seed)
        s.set_epoch(epoch)
        return [list(map(int, b)) for b in s]

    assert run(0, 0) == run(0, 0)
    assert run(0, 0) != run(0, 1)
    assert run(0, 0) != run(1, 0)


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_ddp_ranks_split_the_global_batch(drop_last):
    """world processes with S sequences each see exactly the batches of one process with world*S."""
    pop = population(5)
    world = 3
    ranks = [
        list(SequenceBatchSampler(pop, 4, 2, seed=7, rank=r, world_size=world, drop_last=drop_last))
        for r in range(world)
    ]
    glob = list(SequenceBatchSampler(pop, 4 * world, 2 * world, seed=7, drop_last=True))
    assert glob and all(len(r) == len(glob) for r in ranks)  # same number of steps everywhere
    for k, whole in enumerate(glob):
        parts = [ranks[r][k] for r in range(world)]
        for part in parts:
            assert len(check_layout(part, pop, 4, 2)) == 4 and len(part) == 4 * 4 + 2
        assert sorted(int(i) for p in parts for i in p) == sorted(int(i) for i in whole)
        patients = [pop.subject_ids[int(p[s * 4])] for p in parts for s in range(4)]
        assert len(patients) == len(set(patients))  # no patient twice across ranks
    flat = [seq for r in ranks for b in r for seq in check_layout(b, pop, 4, 2)]
    assert len(flat) == len(set(flat))  # ranks get disjoint sequences
    with pytest.raises(ValueError, match="rank 3"):
        SequenceBatchSampler(pop, 4, 2, rank=3, world_size=3)


def test_sampler_singles_only_and_errors():
    pop = population(2)
    batches = list(SequenceBatchSampler(pop, 0, 7, shuffle=True, drop_last=False))
    assert sorted(i for b in batches for i in b) == list(range(len(pop)))  # every study once
    assert all(not isinstance(i, SequenceIndex) for b in batches for i in b)
    with pytest.raises(ValueError, match="no single studies"):
        SequenceBatchSampler(Population([4, 5, 6]), 1, 1)
    with pytest.raises(ValueError, match="no sequences"):
        SequenceBatchSampler(Population([1, 2, 3]), 1, 1)


# ---------------------------------------------------------------------------------------------------------
# collate and loader on the prepared fixture
# ---------------------------------------------------------------------------------------------------------
def test_loader_batch_layout(data, tokenizer):
    _, out, studies = data
    train = studies[studies["split"] == "train"].set_index("study_id")
    loader = make_loader(
        out,
        tokenizer,
        split="train",
        image_size=IMAGE_SIZE,
        sequences_per_batch=2,
        singles_per_batch=3,
        train=True,
        seed=0,
        max_length=24,
    )
    batches = list(loader)
    assert len(batches) == len(loader) == 1  # train: windows A0, A1 (one patient) and D0 -> one full batch
    b = batches[0]
    assert isinstance(b, Batch) and b.size == 11 and b.num_sequences == 2 and b.sequence_length == 4
    assert b.frontal.shape == (11, 3, IMAGE_SIZE, IMAGE_SIZE) and b.frontal.dtype == torch.float32
    assert b.input_ids.shape == b.attention_mask.shape == (11, 24) and b.input_ids.dtype == torch.long
    windows = {
        (50000013, 50000012, 50000011, 50000014),
        (50000012, 50000011, 50000014, 50000015),
        (50000041, 50000046, 50000047, 50000048),
    }
    seqs = [tuple(b.study_ids[s * 4 : (s + 1) * 4]) for s in range(2)]
    assert all(s in windows for s in seqs) and seqs[0][0] // 10 != seqs[1][0] // 10  # two patients
    for s in seqs:
        times = train.loc[list(s), "study_datetime"].tolist()
        assert times == sorted(times)
    assert set(b.study_ids[8:]) <= {50000051, 50000052, 50000053, 50000061}  # patients E and F
    assert len(set(b.study_ids)) == 11
    assert b.texts == train.loc[b.study_ids, "text"].tolist()
    assert b.subject_ids == train.loc[b.study_ids, "subject_id"].tolist()
    # compact lateral views: one per study that has one, in batch order
    assert b.has_lateral.tolist() == [bool(train.loc[s, "lateral"]) for s in b.study_ids]
    assert b.lateral.shape == (int(b.has_lateral.sum()), 3, IMAGE_SIZE, IMAGE_SIZE)
    assert float(b.frontal.min()) >= -1.0 and float(b.frontal.max()) <= 1.0
    # text: [CLS] ... [SEP] then padding
    cls, pad = tokenizer.cls_token_id, tokenizer.pad_token_id
    assert (b.input_ids[:, 0] == cls).all()
    assert ((b.input_ids == pad) == (b.attention_mask == 0)).all()


def test_eval_loader_compact_lateral_values(data, tokenizer):
    root, out, studies = data
    loader = make_loader(
        out,
        tokenizer,
        split="validate",
        image_size=IMAGE_SIZE,
        sequences_per_batch=1,
        singles_per_batch=0,
        train=False,
        max_length=32,
    )
    (b,) = list(loader)
    val = studies[studies["split"] == "validate"].set_index("study_id")
    assert b.study_ids == [50000022, 50000021, 50000023, 50000024] and b.num_sequences == 1
    laterals = [val.loc[s, "lateral"] for s in b.study_ids if val.loc[s, "lateral"]]
    assert b.has_lateral.tolist() == [False, True, True, True] and len(laterals) == 3
    for k, path in enumerate(laterals):
        torch.testing.assert_close(b.lateral[k], normalised(load_resized(root / path, CACHE)[2:30, 2:30]))
    moved = b.to("cpu", non_blocking=True)
    assert isinstance(moved, Batch) and torch.equal(moved.lateral, b.lateral) and moved.texts == b.texts
    if torch.cuda.is_available():
        assert b.pin_memory().frontal.is_pinned()


def test_loader_workers_give_the_same_batches(data, tokenizer):
    _, out, _ = data
    kwargs = dict(
        split="train", image_size=IMAGE_SIZE, sequences_per_batch=1, singles_per_batch=2, train=False, max_length=16
    )
    a = list(make_loader(out, tokenizer, num_workers=0, **kwargs))
    b = list(make_loader(out, tokenizer, num_workers=2, **kwargs))
    assert [x.study_ids for x in a] == [y.study_ids for y in b] and len(a) == 3
    for x, y in zip(a, b):
        assert torch.equal(x.frontal, y.frontal) and torch.equal(x.lateral, y.lateral)
        assert torch.equal(x.input_ids, y.input_ids) and x.num_sequences == y.num_sequences == 1


def test_loader_from_config_is_make_loader_with_the_profile(data, tokenizer):
    _, out, _ = data
    cfg = Config().override(
        f"data.image_size={IMAGE_SIZE}",
        "data.max_length=24",
        "train.sequences_per_batch=2",
        "train.singles_per_batch=3",
        "train.seed=5",
    )
    loader = loader_from_config(cfg, out, tokenizer)
    torch.manual_seed(0)  # the random crops draw from torch's generator
    a = list(loader)
    torch.manual_seed(0)
    b = list(
        make_loader(
            out,
            tokenizer,
            split="train",
            image_size=IMAGE_SIZE,
            sequences_per_batch=2,
            singles_per_batch=3,
            train=True,
            seed=5,
            max_length=24,
        )
    )
    assert [x.study_ids for x in a] == [y.study_ids for y in b] and len(a) == 1
    assert torch.equal(a[0].frontal, b[0].frontal) and torch.equal(a[0].input_ids, b[0].input_ids)
    assert loader.dataset.train and loader.batch_sampler.shuffle and loader.batch_sampler.seed == 5
    # evaluation splits: centre crops in a fixed order; data.augment=false: centre crops, still shuffled
    held = loader_from_config(cfg, out, tokenizer, split="validate", sequences_per_batch=1, singles_per_batch=0)
    assert not held.dataset.train and not held.batch_sampler.shuffle and held.batch_sampler.S == 1
    fixed = loader_from_config(cfg.override("data.augment=false"), out, tokenizer)
    assert not fixed.dataset.train and fixed.batch_sampler.shuffle
    padded = loader_from_config(cfg, out, tokenizer, lateral_bucket=4)
    first = next(iter(padded))
    laterals = int(first.has_lateral.sum())
    assert padded.collate_fn.lateral_bucket == 4 and first.lateral.shape[0] in (-(-laterals // 4) * 4, first.size)
    with pytest.raises(TypeError):
        loader_from_config(cfg, out, tokenizer, batch_size=3)
    collate = collator_from_config(cfg, tokenizer)
    assert (collate.max_length, collate.L, collate.lateral_bucket) == (24, 4, 0)


def test_collator_rejects_broken_layouts(data, tokenizer):
    _, out, _ = data
    ds = StudyDataset(out, split="train", image_size=IMAGE_SIZE, train=False)
    collate = Collator(tokenizer, max_length=16, sequence_length=4)
    window = ds.windows(4)[0]
    ok = collate([ds[SequenceIndex(i, p)] for p, i in enumerate(window)] + [ds[len(ds) - 1]])
    assert ok.num_sequences == 1 and ok.size == 5
    assert collate([ds[0], ds[1]]).num_sequences == 0  # plain indices: singles
    with pytest.raises(ValueError, match="whole sequences"):
        collate([ds[SequenceIndex(i, p)] for p, i in enumerate(window[:3])])  # a cut sequence
    with pytest.raises(ValueError, match="whole sequences"):
        other = ds.windows(4)[-1]  # another patient's last study
        collate([ds[SequenceIndex(i, p)] for p, i in enumerate(window[:3] + other[3:])])


def test_loader_on_the_phantom(prepared_dir):
    """The ci profile's loader on the shared phantom index: every batch has the documented layout."""
    studies = pd.read_csv(prepared_dir / "studies.csv", keep_default_na=False)
    tok = tiny_tokenizer(studies["text"].tolist())
    loader = make_loader(
        prepared_dir,
        tok,
        split="train",
        image_size=64,
        sequences_per_batch=2,
        singles_per_batch=8,
        train=True,
        seed=0,
        max_length=64,
    )
    ds = loader.dataset
    counts = Counter(ds.subject_ids)
    times = dict(zip(studies["study_id"], studies["study_datetime"]))
    assert len(loader) >= 2
    for b in itertools.islice(loader, 4):
        assert b.num_sequences == 2 and b.size == 16 and b.frontal.shape == (16, 3, 64, 64)
        for s in range(2):
            seq = b.study_ids[s * 4 : (s + 1) * 4]
            assert len(set(b.subject_ids[s * 4 : (s + 1) * 4])) == 1
            assert [times[i] for i in seq] == sorted(times[i] for i in seq)
        assert b.subject_ids[0] != b.subject_ids[4]
        assert all(counts[p] < 4 for p in b.subject_ids[8:])
        assert b.lateral.shape[0] == int(b.has_lateral.sum())
