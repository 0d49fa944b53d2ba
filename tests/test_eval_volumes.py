"""CT volumes in evaluation (medst.eval.volumes): the volume table against the phantom's ground truth, slice
selection and the finding probe with oracle models (whose embeddings are built from the ground truth), the 2-D
fallback of a Med-ST model, and the two phantom tasks.

A 30-patient phantom at 32 px with a CT volume for every patient (16 slices) is written once. The oracle models
read which volume they are given from the volume tensor itself (the loader is replaced by one that writes the
volume's row number into a tiny tensor); one test reads the files as the models do, through a random UniMedI and
a random Med-ST."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from script_helpers import benchmark_script

import medst.eval.volumes as ev
from medst.config import load_profile
from medst.data.reports import report_text
from medst.eval.embed import EvalModel
from medst.eval.tasks import TASKS, missing_file, parse_tasks
from medst.models.medst import build_model
from medst.phantom import synthesize
from medst.phantom.plan import FINDINGS
from medst.train.bench import synthetic_tokenizer

N_PATIENTS, SIZE = 30, 32


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("ct_eval")
    synthesize(out, n_patients=N_PATIENTS, image_size=SIZE, seed=0, ct_fraction=1.0, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def table(phantom):
    return ev.volume_table(phantom)


@pytest.fixture(scope="module")
def tokenizer():
    return synthetic_tokenizer(300)


@pytest.fixture(scope="module")
def cfg():
    return load_profile("ci")  # volume_slices 32, volume_patch [2, 16, 16], top_k 2


def truth_rows(phantom) -> pd.DataFrame:
    return pd.read_csv(phantom / "ground_truth" / "ct_slices.csv", dtype={"slices": str}, keep_default_na=False)


class OracleModel:
    """A model whose volume and slab embeddings are given per volume (row of the volume table) and whose report
    embedding is one fixed unit vector for every text."""

    def __init__(self, global_: torch.Tensor, slabs: torch.Tensor, report: torch.Tensor) -> None:
        self.global_, self.slabs, self.report = global_, slabs, report

    def encode_volume(self, volumes: torch.Tensor) -> SimpleNamespace:
        rows = volumes[:, 0, 0, 0, 0].round().long()
        return SimpleNamespace(global_=self.global_[rows], slabs=self.slabs[rows])

    def encode_text(self, input_ids, attention_mask, local=None) -> SimpleNamespace:
        return SimpleNamespace(global_=self.report.expand(len(input_ids), -1))


@pytest.fixture
def oracle(monkeypatch, table, tokenizer, cfg):
    """``oracle(global_, slabs, report) -> EvalModel``, with the loader writing each volume's row number."""
    row = {path: i for i, path in enumerate(table["path"])}
    monkeypatch.setattr(
        ev, "load_volumes", lambda em, paths: torch.stack([torch.full((1, 2, 2, 2), float(row[str(p)])) for p in paths])
    )

    def make(global_: torch.Tensor, slabs: torch.Tensor, report: torch.Tensor) -> EvalModel:
        return EvalModel(OracleModel(global_, slabs, report), tokenizer, cfg, torch.device("cpu"))

    return make


def true_slabs(table: pd.DataFrame, depth: int, slab: int, column: str = "finding_slices") -> np.ndarray:
    """[V, depth // slab]: a slab is true when one of its model slices maps (floor of the depth ratio) to a listed
    file slice; written without medst.eval.volumes' interval overlap (the two agree when depth is a multiple
    of the file's slices, as here)."""
    out = np.zeros((len(table), depth // slab), bool)
    for v, (listed, n) in enumerate(zip(table[column], table["slices"])):
        for m in range(depth // slab * slab):
            if m * n // depth in set(listed):
                out[v, m // slab] = True
    return out


# ---------------------------------------------------------------------------------------------------------
# The volume table
# ---------------------------------------------------------------------------------------------------------
def test_volume_table_labels_splits_and_reports_match_the_phantom(phantom, table):
    meta = pd.read_csv(phantom / "mimic-cxr-jpg" / "ct" / "ct-metadata.csv")
    assert len(table) == len(meta) == N_PATIENTS
    assert list(zip(table["subject_id"], table["study_id"])) == sorted(zip(meta["subject_id"], meta["study_id"]))
    truth = truth_rows(phantom)
    present = {(r.subject_id, r.study_id, r.finding) for r in truth.itertuples() if r.slices != ""}
    for f in FINDINGS:
        expected = [int((s, t, f) in present) for s, t in zip(table["subject_id"], table["study_id"])]
        assert table[f].tolist() == expected, f
    assert table[list(FINDINGS)].to_numpy().sum() == len(present) > 0
    studies = pd.read_csv(phantom / "ground_truth" / "studies.csv")
    split = dict(zip(studies["study_id"], studies["split"]))
    assert table["split"].tolist() == [split[s] for s in table["study_id"]]
    first = table.iloc[0]
    s = str(first["subject_id"])
    reports = phantom / "mimic-cxr-jpg" / "mimic-cxr-reports" / "files"
    raw = reports / f"p{s[:2]}" / f"p{s}" / f"s{first['study_id']}.txt"
    assert first["text"] == report_text(raw.read_text()) and len(first["text"]) > 0
    union = truth[(truth.subject_id == first["subject_id"]) & (truth.study_id == first["study_id"])]
    assert first["finding_slices"] == tuple(sorted({int(k) for v in union["slices"] for k in v.split(";") if k}))
    assert (table["slices"] == 16).all()


def test_volume_table_names_a_missing_file(phantom, tmp_path):
    with pytest.raises(FileNotFoundError, match="ct-metadata.csv"):
        ev.volume_table(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(phantom, copy)
    (copy / "ground_truth" / "ct_slices.csv").unlink()
    with pytest.raises(FileNotFoundError, match="ct_slices.csv"):
        ev.volume_table(copy)


def test_slab_overlap_hand_computed():
    # 3 file slices, 4 model slices in slabs of 2: slab 0 spans [0, 1/2) -> slices 0, 1; slab 1 [1/2, 1) -> 1, 2
    assert ev.slab_overlap(3, 4, 2).tolist() == [[True, True, False], [False, True, True]]
    assert ev.slab_overlap(4, 4, 2).tolist() == [[True, True, False, False], [False, False, True, True]]
    assert ev.slab_truth([2], 4, 8, 2).tolist() == [False, False, True, False]
    assert ev.slab_truth([], 4, 8, 2).tolist() == [False] * 4


# ---------------------------------------------------------------------------------------------------------
# Slice selection
# ---------------------------------------------------------------------------------------------------------
def test_slice_selection_oracle_scores_one_reversed_zero_chance_independent(phantom, table, cfg, oracle):
    depth, slab = cfg.model.unimedi.volume_slices, cfg.model.unimedi.volume_patch[0]
    with_finding = table[table["finding_slices"].map(len) > 0]
    truth_all = true_slabs(table, depth, slab)
    truth = truth_all[with_finding.index]
    report, other = torch.eye(4)[0], torch.eye(4)[1]
    slabs = torch.where(torch.from_numpy(truth_all)[..., None], report, other)  # true slabs along the report
    reverse = torch.where(torch.from_numpy(truth_all)[..., None], other, report)
    glob = torch.zeros(len(table), 4)

    best = ev.slice_selection(oracle(glob, slabs, report), phantom, k=1, progress=False)
    assert best["precision@k"] == 1.0 and best["n"] == len(with_finding) > 0 and best["k"] == 1
    assert best["chance"] == pytest.approx(truth.mean(axis=1).mean())
    assert 0 < best["chance"] < 1

    worst = ev.slice_selection(oracle(glob, reverse, report), phantom, k=1, progress=False)
    all_true = truth.all(axis=1)  # a volume whose every slab is true cannot be missed
    assert worst["precision@k"] == pytest.approx(all_true.mean())
    if not all_true.any():
        assert worst["precision@k"] == 0.0
    assert worst["chance"] == best["chance"]

    top2 = ev.slice_selection(oracle(glob, slabs, report), phantom, progress=False)  # k = top_k = 2
    assert top2["k"] == 2
    assert top2["precision@k"] == pytest.approx(np.mean(np.minimum(truth.sum(axis=1), 2) / 2))

    peaks = true_slabs(table, depth, slab, "peak_slices")
    on_peak = torch.where(torch.from_numpy(peaks)[..., None], report, other)
    peak = ev.slice_selection(oracle(glob, on_peak, report), phantom, k=1, progress=False)
    assert peak["top1_peak"] == 1.0
    assert peak["top1_peak_chance"] == pytest.approx(peaks[with_finding.index].mean(axis=1).mean())


def test_selection_metrics_hand_computed():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.0], [0.3, 0.2, 0.1, 0.8]])
    truth = torch.tensor([[0, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    peaks = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    m = ev.selection_metrics(torch.topk(scores, 2, dim=1).indices, truth, peaks)  # picks {1, 2} and {3, 0}
    assert m["precision@k"] == pytest.approx(2 / 4) and m["chance"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert m["top1_peak"] == pytest.approx(1 / 2) and m["top1_peak_chance"] == pytest.approx(1 / 4)
    assert m["k"] == 2 and m["n"] == 2


# ---------------------------------------------------------------------------------------------------------
# The finding probe
# ---------------------------------------------------------------------------------------------------------
def test_volume_probe_oracle_near_one_noise_near_half(phantom, table, oracle):
    rng = np.random.default_rng(0)
    labels = table[list(FINDINGS)].to_numpy().astype(np.float32)
    signal = torch.from_numpy(labels + 0.1 * rng.standard_normal(labels.shape).astype(np.float32))
    glob = torch.cat([signal, torch.from_numpy(rng.standard_normal((len(table), 2)).astype(np.float32))], dim=1)
    slabs = torch.zeros(len(table), 16, glob.shape[1])
    res = ev.volume_finding_probe(oracle(glob, slabs, glob[0]), phantom, progress=False)
    counts = labels.sum(axis=0)
    probed = [f for f, c in zip(FINDINGS, counts) if min(c, len(table) - c) >= ev.MIN_EXAMPLES]
    assert res["findings"] == len(probed) > 0 and res["n"] == len(table)
    assert res["auc"] > 0.9 and all(res[f"auc_{f}"] > 0.9 for f in probed)

    noise = torch.from_numpy(rng.standard_normal((len(table), 8)).astype(np.float32))
    res = ev.volume_finding_probe(oracle(noise, slabs, noise[0]), phantom, progress=False)
    assert abs(res["auc"] - 0.5) < 0.25
    with pytest.raises(ev.TaskSkipped, match="positive and negative"):
        ev.volume_finding_probe(oracle(noise, slabs, noise[0]), phantom, min_examples=len(table), progress=False)


def test_probe_auc_on_many_examples():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    groups = np.arange(400) // 2  # two examples per patient
    noise = rng.standard_normal((400, 6))
    assert abs(ev.probe_auc(noise, y, groups, seed=0) - 0.5) < 0.1
    signal = noise.copy()
    signal[:, 0] += 2 * y
    assert ev.probe_auc(signal, y, groups, seed=0) > 0.85


# ---------------------------------------------------------------------------------------------------------
# The 2-D fallback
# ---------------------------------------------------------------------------------------------------------
def test_a_2d_model_embeds_a_volume_as_the_mean_of_its_slab_images(cfg, tokenizer):
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer, load_init=False).eval()
    assert not hasattr(model, "encode_volume")
    em = EvalModel(model, tokenizer, cfg, torch.device("cpu"))
    depth, size, slab = cfg.model.unimedi.volume_slices, cfg.data.image_size, cfg.model.unimedi.volume_patch[0]
    volumes = torch.rand(3, 1, depth, size, size) * 2 - 1
    out = ev.embed_volumes(em, volumes, batch_size=2, progress=False)  # two batches
    d = cfg.model.embed_dim
    assert out.global_.shape == (3, d) and out.slabs.shape == (3, depth // slab, d)
    means = torch.stack([volumes[:, 0, s * slab : (s + 1) * slab].mean(dim=1) for s in range(depth // slab)], dim=1)
    images = means.reshape(-1, 1, size, size).repeat(1, 3, 1, 1)  # [V·S, 3, H, W] grey -> three channels
    with torch.no_grad():
        expected = model.encode_image(images, local=False).global_.reshape(3, depth // slab, d)
    torch.testing.assert_close(out.slabs, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.global_, F.normalize(expected.mean(dim=1), dim=-1), atol=1e-5, rtol=1e-4)
    assert torch.allclose(out.global_.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_real_volumes_through_unimedi_and_med_st_end_to_end(phantom, table, cfg, tokenizer):
    """The files read as the models read them: UniMedI's 3-D path gives what ``encode_volume`` gives on the loaded
    tensors, and both tasks run through ``medst evaluate``'s table on a random UniMedI and a random Med-ST."""
    from medst.eval.run import evaluate

    torch.manual_seed(0)
    unimedi = EvalModel(
        build_model(cfg.override("model.method=unimedi"), tokenizer, load_init=False).eval(),
        tokenizer,
        cfg,
        torch.device("cpu"),
    )
    paths = table["path"].tolist()[:3]
    volumes = ev.load_volumes(unimedi, paths)
    depth, size = cfg.model.unimedi.volume_slices, cfg.data.image_size
    assert volumes.shape == (3, 1, depth, size, size) and -1 <= volumes.min() < volumes.max() <= 1
    out = ev.embed_volume_files(unimedi, paths, batch_size=2, progress=False)
    with torch.no_grad():
        direct = unimedi.model.encode_volume(volumes)
    torch.testing.assert_close(out.global_, direct.global_, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.slabs, direct.slabs, atol=1e-5, rtol=1e-4)

    medst = EvalModel(build_model(cfg, tokenizer, load_init=False).eval(), tokenizer, cfg, torch.device("cpu"))
    for em in (unimedi, medst):
        res = evaluate("unused", phantom, "volume-probe,slice-selection", model=em, progress=False)
        assert 0 <= res["volume-probe"]["auc"] <= 1 and res["volume-probe"]["n"] == len(table)
        sel = res["slice-selection"]
        assert 0 <= sel["precision@k"] <= 1 and 0 < sel["chance"] < 1 and sel["k"] == cfg.model.unimedi.top_k


# ---------------------------------------------------------------------------------------------------------
# The tasks
# ---------------------------------------------------------------------------------------------------------
def test_the_volume_tasks_are_phantom_probes_not_in_all(phantom, tmp_path):
    for name in ("volume-probe", "slice-selection"):
        assert name in TASKS and not TASKS[name].in_all
        assert name not in parse_tasks("all")
        assert parse_tasks(name) == [name]
        assert missing_file(phantom, name) is None
        assert missing_file(tmp_path, name) == tmp_path / "mimic-cxr-jpg" / "ct" / "ct-metadata.csv"


# ---------------------------------------------------------------------------------------------------------
# The comparison script's UniMedI row and CT columns
# ---------------------------------------------------------------------------------------------------------
def _neighbours_script():
    return benchmark_script("neighbours")


def test_comparison_script_lists_unimedi_and_tabulates_the_ct_metrics(tmp_path, capsys):
    script = _neighbours_script()
    script.main(
        ["--dry-run", "--profile", "ci", "--seeds", "0", "--set", "data.ct_fraction=0.5", "--work", str(tmp_path)]
    )
    out = capsys.readouterr().out
    unimedi = [line for line in out.splitlines() if line.strip().startswith("UniMedI")]
    assert len(unimedi) == 1 and "model.method=unimedi" in unimedi[0] and "frontal only" in unimedi[0]
    assert "CT volume probe AUC" in out and "slice selection precision@k" in out
    assert not (tmp_path / "runs").exists()

    rows = [
        {
            "variant": variant,
            "seed": 0,
            "grounding_acc": float("nan") if variant == "UniMedI" else 0.1,
            "grounding_chance": 0.08,
            "volume_auc": auc,
            "slice_precision": precision,
            "slice_chance": 0.4,
        }
        for variant, auc, precision in (("UniMedI", 0.9, 0.7), ("Med-ST", 0.6, 0.5), ("random init", 0.5, 0.4))
    ]
    table = script.in_order(pd.DataFrame(rows))
    assert list(table["variant"]) == ["random init", "Med-ST", "UniMedI"]
    text = script.write_comparison(table, tmp_path / "tables", "cmd")["markdown"].read_text()
    assert "| UniMedI | 1 | — | 0.900 ± 0.000 | 0.700 ± 0.000 |" in text
    assert text.splitlines()[-1] == "| chance | | 0.080 | 0.500 | 0.400 |"


def test_the_comparison_cache_key_names_the_metrics(tmp_path):
    script = _neighbours_script()
    path, calls = tmp_path / "metrics.json", []

    def compute():
        calls.append(1)
        return {"volume_auc": 0.7}

    old = {"variant": "MPMA", "lateral": False}
    script.cached(path, old, compute)
    script.cached(path, old, compute)
    assert len(calls) == 1  # the same key: read back
    script.cached(path, {**old, "metrics": list(script.METRICS)}, compute)
    assert len(calls) == 2 and "volume_auc" in script.METRICS  # scored before the CT metrics: scored again
