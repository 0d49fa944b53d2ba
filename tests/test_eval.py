"""Downstream evaluation: metric helpers against hand-computed cases, and every task end to end on the phantom."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from medst.config import load_profile
from medst.eval.finetune import read_covidx_split, subsample
from medst.eval.retrieval import recall_at_k, retrieval_ranks
from medst.eval.sentence import best_threshold_accuracy, cross_validated_threshold_accuracy
from medst.eval.temporal import majority_accuracy, pair_features, svm_cv_accuracy
from medst.eval.zeroshot import zero_shot_scores


# ---------------------------------------------------------------------------------------------------------
# Metric helpers
# ---------------------------------------------------------------------------------------------------------
def test_recall_at_k_hand_computed():
    sim = np.array(
        [
            [0.9, 0.1, 0.0],
            [0.8, 0.5, 0.2],  # the right answer (0.5) is beaten by 0.8: rank 2
            [0.1, 0.2, 0.3],
        ]
    )
    assert retrieval_ranks(sim).tolist() == [1, 2, 1]
    assert recall_at_k(sim, ks=(1, 2, 3)) == {1: pytest.approx(2 / 3), 2: 1.0, 3: 1.0}
    # report -> image ranks the columns: every diagonal entry is its column's largest
    assert retrieval_ranks(sim.T).tolist() == [1, 1, 1]


def test_recall_ties_count_against_and_positives_mask():
    flat = np.ones((4, 4))
    assert retrieval_ranks(flat).tolist() == [4, 4, 4, 4]  # a collapsed model retrieves nothing
    assert recall_at_k(flat, ks=(1,))[1] == 0.0
    # Items 0 and 1 are interchangeable (identical reports): either counts as a hit.
    sim = np.array([[0.2, 0.9, 0.1], [0.3, 0.1, 0.0], [0.5, 0.4, 0.6]])
    pos = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
    assert retrieval_ranks(sim).tolist() == [2, 2, 1]
    assert retrieval_ranks(sim, pos).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="positives"):
        retrieval_ranks(np.zeros((2, 3)))


def test_recall_matches_a_slow_reference():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(30, 30)).round(1)  # rounding makes ties
    ranks = [1 + sum(sim[i, j] >= sim[i, i] for j in range(30) if j != i) for i in range(30)]
    assert retrieval_ranks(torch.tensor(sim)).tolist() == ranks
    for k in (1, 5, 10):
        assert recall_at_k(sim, (k,))[k] == pytest.approx(np.mean(np.array(ranks) <= k))


def test_best_threshold_accuracy_hand_computed():
    acc, t = best_threshold_accuracy([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert (acc, t) == (0.75, 0.35)  # t = 0.35 and t = 0.8 tie; the smaller wins
    acc, t = best_threshold_accuracy([0.2, 0.3, 0.7, 0.9], [0, 0, 1, 1])
    assert (acc, t) == (1.0, 0.7)
    acc, t = best_threshold_accuracy([0.9, 0.8, 0.7], [0, 0, 0])  # best: call everything negative
    assert acc == 1.0 and math.isfinite(t) and t > 0.9


def test_best_threshold_matches_brute_force():
    rng = np.random.default_rng(1)
    s, y = rng.normal(size=50).round(1), rng.integers(0, 2, size=50)
    acc, t = best_threshold_accuracy(s, y)
    brute = max(((s >= c).astype(int) == y).mean() for c in np.append(s, s.max() + 1))
    assert acc == pytest.approx(brute)
    assert ((s >= t).astype(int) == y).mean() == pytest.approx(acc)
    # Held-out thresholds can only do worse on average than thresholds fitted on the same data.
    assert cross_validated_threshold_accuracy(s, y) <= acc + 1e-12


def test_subsample_stratified_at_least_one_per_class():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    for fraction, expected in ((0.01, [1, 1, 1]), (0.1, [5, 3, 2]), (1.0, [50, 30, 20])):
        idx = subsample(y, fraction, seed=0)
        assert np.bincount(y[idx]).tolist() == expected
        assert len(set(idx.tolist())) == len(idx)
    assert subsample(y, 0.1, seed=3).tolist() == subsample(y, 0.1, seed=3).tolist()
    assert subsample(y, 0.1, seed=3).tolist() != subsample(y, 0.1, seed=4).tolist()
    with pytest.raises(ValueError):
        subsample(y, 0.0)


def test_svm_cross_validation_separable_and_random():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5
    y = np.repeat(np.array(["improving", "stable", "worsening"]), 20)
    x = centres[np.repeat(np.arange(3), 20)] + rng.normal(size=(60, 8)) * 0.1
    acc, k = svm_cv_accuracy(x, y, folds=10)
    assert acc == 1.0 and k == 10
    noise = rng.normal(size=(60, 8))
    acc_noise, _ = svm_cv_accuracy(noise, y, folds=5)
    assert acc_noise < 0.7
    # The rarest class (3 examples) caps the folds.
    _, k = svm_cv_accuracy(x[:43], y[:43], folds=10)
    assert k == 3
    assert majority_accuracy(["a", "a", "b"]) == pytest.approx(2 / 3)
    assert pair_features(np.ones((2, 3)), np.zeros((2, 3))).tolist() == [[1, 1, 1, 0, 0, 0]] * 2


def test_zero_shot_scores():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    scores = zero_shot_scores(images, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert torch.allclose(scores, torch.tensor([1.0, -1.0, -0.2]))


def test_missing_files_are_named(tmp_path):
    from medst.eval.sentence import read_sentence_table
    from medst.eval.temporal import read_image_table

    with pytest.raises(FileNotFoundError, match=r"covidx[/\\]train\.txt"):
        read_covidx_split(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="MS_CXR_T_temporal_image"):
        read_image_table(tmp_path / "ms-cxr-t" / "MS_CXR_T_temporal_image_classification_v1.0.0.csv")
    bad = tmp_path / "pairs.csv"
    bad.write_text("sentence_1,sentence_2,category\na,b,maybe\n")
    with pytest.raises(ValueError, match="pairs.csv.*maybe"):
        read_sentence_table(bad)


# ---------------------------------------------------------------------------------------------------------
# End to end on the phantom
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(prepared_dir, tmp_path_factory):
    """A ci-profile run pre-trained for 3 steps on the phantom."""
    from medst.config import load_profile
    from medst.train.loop import pretrain

    run = tmp_path_factory.mktemp("eval-run")
    pretrain(load_profile("ci", ["train.steps=3"]), prepared_dir, run, device="cpu", progress=False)
    return run


@pytest.fixture(scope="module")
def results(run_dir, phantom_dir):
    from medst.eval.run import evaluate

    return evaluate(run_dir, phantom_dir, "all", device="cpu", finetune_epochs=1, progress=False)


def _finite_numbers(tree) -> bool:
    if isinstance(tree, dict):
        return all(_finite_numbers(v) for v in tree.values())
    if isinstance(tree, list):
        return all(_finite_numbers(v) for v in tree)
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return math.isfinite(tree)
    return True


def test_every_task_gives_finite_metrics_in_range(results, run_dir, phantom_dir):
    meta = results["meta"]
    assert meta["profile"] == "ci" and meta["model"] == "checkpoint" and meta["seconds"] > 0
    assert set(results) - {"meta"} | set(meta["skipped"]) == {
        "temporal-image",
        "temporal-text",
        "rsna-zeroshot",
        "covidx",
        "retrieval",
        "grounding",
    }
    assert _finite_numbers(results)
    json.dumps(results, allow_nan=False)
    unit = lambda v: 0.0 <= v <= 1.0  # noqa: E731

    text = results["temporal-text"]
    assert unit(text["auc"]) and unit(text["accuracy"]) and unit(text["accuracy_cv"]) and text["n"] > 0
    assert text["accuracy"] >= max(text["n_paraphrase"], text["n"] - text["n_paraphrase"]) / text["n"] - 1e-9
    assert -1.0 <= text["threshold"] <= 1.0 + 1e-6

    rsna = results["rsna-zeroshot"]
    assert unit(rsna["auc"]) and unit(rsna["f1"]) and unit(rsna["accuracy"]) and rsna["n"] >= 40
    labels = pd.read_csv(phantom_dir / "rsna" / "stage_2_train_labels.csv")
    assert rsna["n"] == labels["patientId"].nunique()
    assert rsna["prevalence"] == pytest.approx(labels.groupby("patientId")["Target"].max().mean())

    cov = results["covidx"]
    for p in ("1%", "10%", "100%"):
        assert unit(cov[f"probe_acc@{p}"]) and unit(cov[f"finetune_acc@{p}"]) and cov[f"n_train@{p}"] >= 3
    assert cov["n_train@1%"] <= cov["n_train@10%"] <= cov["n_train@100%"]
    assert cov["n_train@100%"] == len(read_covidx_split(phantom_dir, "train"))

    ret = results["retrieval"]
    for k in (1, 5, 10):
        assert unit(ret[f"i2t_r@{k}"]) and unit(ret[f"t2i_r@{k}"])
    assert ret["i2t_r@1"] <= ret["i2t_r@5"] <= ret["i2t_r@10"] and ret["n"] >= 2
    assert 1 <= ret["i2t_median_rank"] <= ret["n"]

    if "temporal-image" in results:
        tim = results["temporal-image"]
        assert tim["findings_scored"] >= 1
        assert unit(tim["mean_acc5"]) and unit(tim["mean_acc10"]) and unit(tim["mean_majority"])
    if "grounding" in results:
        g = results["grounding"]
        assert 0 <= g["hits"] <= g["total"] and unit(g["accuracy"]) and unit(g["chance_accuracy"])


def test_retrieval_studies_match_prepare(phantom_dir, prepared_dir):
    """The test studies, views and report texts are those ``medst prepare`` chose."""
    from medst.eval.retrieval import read_mimic_studies

    mine = read_mimic_studies(phantom_dir / "mimic-cxr-jpg", "test").table
    prepared = pd.read_csv(prepared_dir / "studies.csv", keep_default_na=False)
    prepared = prepared[prepared["split"] == "test"].sort_values(["subject_id", "study_id"])
    assert mine["study_id"].tolist() == prepared["study_id"].tolist()
    assert mine["text"].tolist() == prepared["text"].tolist()
    root = phantom_dir / "mimic-cxr-jpg"
    assert mine["frontal"].tolist() == [str(root / p) for p in prepared["frontal"]]
    assert mine["lateral"].tolist() == [str(root / p) if p else "" for p in prepared["lateral"]]


def test_images_preprocessed_like_pretraining(phantom_dir, prepared_dir):
    """Evaluation inputs equal the pre-training data set's centre crops of the prepared cache."""
    from medst.data.dataset import StudyDataset
    from medst.data.transforms import normalise
    from medst.eval.embed import StudyImages

    def model_input(x):  # the data set yields uint8 crops that its collator normalises per batch
        return normalise(x) if x.dtype == torch.uint8 else x

    ds = StudyDataset(prepared_dir, split="test", image_size=64, train=False)
    root = phantom_dir / "mimic-cxr-jpg"
    lateral = [str(root / p) if p else "" for p in ds.lateral_paths]
    mine = StudyImages([str(root / p) for p in ds.frontal_paths], 64, lateral)
    for i in range(min(len(ds), 4)):
        front, lat, has_lat = mine[i]
        ref = ds[i]
        assert torch.equal(front, model_input(ref["frontal"]))
        assert has_lat == (ref["lateral"] is not None)
        if has_lat:
            assert torch.equal(lat, model_input(ref["lateral"]))


def test_cli_writes_results_and_random_baseline(run_dir, phantom_dir, tmp_path):
    from medst.cli import main

    out = tmp_path / "results.json"
    main(
        [
            "evaluate",
            "--checkpoint",
            str(run_dir),
            "--data",
            str(phantom_dir),
            "--task",
            "temporal-text,retrieval",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    saved = json.loads(out.read_text())
    assert set(saved) == {"temporal-text", "retrieval", "meta"}
    assert saved["meta"]["checkpoint"] == str(run_dir) and saved["meta"]["profile"] == "ci"

    from medst.eval.embed import embed_texts, load_model
    from medst.eval.run import evaluate

    trained = load_model(run_dir, "cpu")
    random_a = load_model(run_dir, "cpu", random_init=True, seed=0)
    random_b = load_model(run_dir, "cpu", random_init=True, seed=0)
    assert random_a.source == "random"
    texts = ["no acute cardiopulmonary process", "small left pleural effusion"]
    e_trained, e_random = embed_texts(trained, texts, progress=False), embed_texts(random_a, texts, progress=False)
    assert torch.allclose(e_random, embed_texts(random_b, texts, progress=False))  # seeded
    assert not torch.allclose(e_trained, e_random, atol=1e-3)  # no weights loaded
    assert torch.allclose(e_trained.norm(dim=1), torch.ones(2), atol=1e-5)
    res = evaluate(run_dir, phantom_dir, "temporal-text", device="cpu", random_baseline=True, progress=False)
    assert res["meta"]["model"] == "random" and 0 <= res["temporal-text"]["auc"] <= 1


def test_missing_task_files_are_skipped_with_the_file_named(run_dir, phantom_dir, tmp_path, capsys):
    from medst.cli import main
    from medst.eval.run import evaluate

    data = tmp_path / "data"
    shutil.copytree(phantom_dir / "ms-cxr-t", data / "ms-cxr-t")
    res = evaluate(run_dir, data, "temporal-text,covidx", device="cpu", progress=False)
    assert "temporal-text" in res and "covidx" not in res
    assert "covidx/train.txt" in res["meta"]["skipped"]["covidx"].replace("\\", "/")
    assert "covidx" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no task could run.*rsna"):
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run_dir),
                "--data",
                str(data),
                "--task",
                "rsna-zeroshot",
                "--out",
                str(tmp_path / "r.json"),
                "--device",
                "cpu",
            ]
        )
    with pytest.raises(SystemExit, match="unknown task"):
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run_dir),
                "--data",
                str(data),
                "--task",
                "bogus",
                "--out",
                str(tmp_path / "r.json"),
                "--device",
                "cpu",
            ]
        )


def test_grounding_skipped_without_local_branch(run_dir, phantom_dir, tmp_path):
    from medst.eval.embed import load_model
    from medst.eval.run import evaluate

    run = tmp_path / "global-only"
    shutil.copytree(run_dir / "tokenizer", run / "tokenizer")
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["loss"]["local_weight"] = 0.0
    (run / "config.json").write_text(json.dumps(cfg))
    em = load_model(run, "cpu", random_init=True)
    assert not em.model.uses_local
    res = evaluate(run, phantom_dir, "grounding", model=em, progress=False)
    assert "grounding" not in res and "local alignment" in res["meta"]["skipped"]["grounding"]


def test_phantom_probes_count_the_ground_truth(run_dir, phantom_dir):
    from medst.eval.run import evaluate

    res = evaluate(run_dir, phantom_dir, "progression-probe,lateral-probe", device="cpu", progress=False)
    truth = pd.read_csv(phantom_dir / "ground_truth" / "studies.csv", keep_default_na=False)
    truth = truth[truth["lateral_dicom_id"] != ""]
    positive = truth[[c for c in truth.columns if c.endswith("_lateral_only")]].astype(int).sum(axis=1) > 0
    negative = (truth["pleural_effusion_severity"].astype(float) <= 0) & ~positive
    lat = res["lateral-probe"]
    assert lat["n_positive"] == positive.sum() > 0 and lat["n"] == positive.sum() + negative.sum()
    assert 0 <= lat["auc"] <= 1 and 0 <= lat["auc_frontal_only"] <= 1
    prog = res["progression-probe"]
    table = pd.read_csv(phantom_dir / "ground_truth" / "progression.csv", keep_default_na=False)
    assert prog["pairs"] == len(table) and prog["findings_scored"] >= 1
    assert prog["pleural_effusion_n"] == int((table["pleural_effusion_progression"] != "").sum())
    assert 0 <= prog["mean_acc"] <= 1 and 0 < prog["mean_majority"] <= 1


def test_task_table_drives_parsing_and_files(tmp_path):
    """One table (medst.eval.tasks.TASKS) gives the names ``all`` runs, the files a task needs and the help."""
    from medst.eval.tasks import TASKS, missing_file, parse_tasks, task_help

    assert parse_tasks("all") == [
        "temporal-image",
        "temporal-text",
        "rsna-zeroshot",
        "covidx",
        "retrieval",
        "grounding",
    ]
    assert parse_tasks(" retrieval, lateral-probe ") == ["retrieval", "lateral-probe"]
    with pytest.raises(ValueError, match="unknown task.*bogus.*progression-probe"):
        parse_tasks("retrieval,bogus")
    assert missing_file(tmp_path, "covidx") == tmp_path / "covidx" / "train.txt"
    for rel in TASKS["covidx"].files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{rel}.gz").write_text("")  # a .gz twin counts
    assert missing_file(tmp_path, "covidx") is None
    assert all(name in task_help() for name in TASKS)


def test_grouped_folds_are_capped_by_groups():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)), np.array(["a", "b"] * 15)
    _, k = svm_cv_accuracy(x, y, folds=10, groups=np.repeat([1, 2, 3], 10))
    assert k == 3


def test_pointing_game_chance_hand_computed_and_by_sampling():
    """The chance level the grounding task reports is pointing_game's: a uniformly random patch, per trial."""
    from medst.eval.grounding import GroundingItem, PixelAffine, pointing_game

    boxes = pd.DataFrame(
        {
            "dicom_id": ["f1", "f1", "l1"],
            "view": ["frontal", "frontal", "lateral"],
            "finding": ["pleural_effusion", "edema", "pleural_effusion"],
            "x_min": [0, 0, 0],
            "y_min": [0, 0, 0],
            "x_max": [2, 4, 4],
            "y_max": [2, 4, 2],
        }
    )
    identity = PixelAffine(1.0, 1.0, 0.0, 0.0)
    item = GroundingItem(
        np.zeros((2, 8)), ["small", "effusion"], {"frontal": ("f1", identity), "lateral": ("l1", identity)}
    )
    # grid 2x2 on a 4-pixel input: centres (1,1) (3,1) (1,3) (3,3); the frontal box holds 1 of 4, the lateral 2 of 4;
    # "edema" is not in the report, so its box makes no trial.
    game = pointing_game([item], boxes, grid=(2, 2), input_size=4)
    chance = game["chance"]
    assert game["total"] == 2 and chance == pytest.approx((0.25 + 0.5) / 2)
    assert game["per_view"]["frontal"]["chance"] == pytest.approx(0.25)
    assert game["per_view"]["lateral"]["chance"] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    draws = [
        pointing_game([GroundingItem(rng.random((2, 8)), item.words, item.views)], boxes, grid=(2, 2), input_size=4)[
            "accuracy"
        ]
        for _ in range(400)
    ]
    assert np.mean(draws) == pytest.approx(chance, abs=0.05)


def test_ablation_helpers(prepared_dir, tmp_path):
    from medst.ablation import ablation_markdown, ablation_verdicts, frontal_only, summarise_ablation

    rows = [
        {
            "variant": v,
            "seed": s,
            "lateral_auc": a + noise,
            "progression_acc": p + noise,
            "grounding_acc": g,
            "grounding_chance": 0.1,
        }
        for v, a, p, g in [
            ("global", 0.50, 0.40, np.nan),
            ("+local", 0.52, 0.41, 0.30),
            ("+MoVE", 0.80, 0.40, 0.31),
            ("+FMC", 0.80, 0.40, 0.3),
            ("+RMR", 0.80, 0.39, 0.3),
            ("Med-ST", 0.79, 0.60, 0.3),
        ]
        for s, noise in ((0, -0.01), (1, 0.01))
    ]
    table = pd.DataFrame(rows)
    verdicts = ablation_verdicts(table).set_index("component")["verdict"]
    assert verdicts["MoVE"] == "helped" and verdicts["FMC + RMR"] == "helped"
    assert verdicts["RMR"] == "no clear difference" and verdicts["local alignment"] == "helped"
    summary = summarise_ablation(table)
    assert summary.loc["+MoVE", "lateral_auc_mean"] == pytest.approx(0.80)
    assert summary.loc["+MoVE", "lateral_auc_std"] == pytest.approx(np.std([0.79, 0.81], ddof=1))
    assert "| global | 2 | 0.500 ± 0.014 |" in ablation_markdown(summary)
    # "Without MoVE" training data: the same studies with no lateral view.
    frontal = frontal_only(prepared_dir, tmp_path / "frontal")
    before = pd.read_csv(prepared_dir / "studies.csv", keep_default_na=False)
    after = pd.read_csv(frontal / "studies.csv", keep_default_na=False)
    assert (before["lateral"] != "").any() and (after["lateral"] == "").all()
    assert after["study_id"].tolist() == before["study_id"].tolist()
    from medst.data.dataset import StudyDataset

    ds = StudyDataset(frontal, split="train", image_size=64, train=False)
    assert not any(ds.has_lateral) and ds[0]["lateral"] is None


def test_new_ablation_variants_and_run_dirs():
    """ "+local (published)" and "two views, shared FFN" sit after "+local" / "+MoVE" with the right overrides;
    every variant has its own file-system-safe run folder, and --variants finds names that hold commas."""
    from medst.ablation import VARIANTS, ablation_run_dir, parse_variants
    from medst.config import load_profile

    by_name = {v.name: v for v in VARIANTS}
    names = [v.name for v in VARIANTS]
    assert names.index("+local (published)") == names.index("+local") + 1
    assert names.index("two views, shared FFN") == names.index("+MoVE") + 1
    published, shared = by_name["+local (published)"], by_name["two views, shared FFN"]
    assert set(published.overrides) == set(by_name["+local"].overrides) | {"loss.local_weighting=learned"}
    assert not published.lateral and "loss.local_weighting=learned" not in by_name["+local"].overrides
    assert set(shared.overrides) == set(by_name["+MoVE"].overrides) | {"model.vision.experts=shared"}
    assert shared.lateral and by_name["+MoVE"].lateral
    cfg = load_profile("ci", list(shared.overrides))
    assert cfg.model.vision.experts == "shared" and cfg.loss.temporal_weight == 0
    assert load_profile("ci", list(by_name["+MoVE"].overrides)).model.vision.experts == "move"
    assert load_profile("ci", list(published.overrides)).loss.local_weighting == "learned"
    for v in VARIANTS:  # every variant's overrides are real config keys
        load_profile("ci", list(v.overrides))
    folders = [ablation_run_dir("out", v.name, 0).name for v in VARIANTS]
    assert len(set(folders)) == len(folders)
    assert all(not set(f) & set(" (),+") for f in folders), folders
    assert ablation_run_dir("out", "+MoVE", 1).name == "plus-MoVE-s1"  # the existing runs keep their folders
    assert ablation_run_dir("out", "two views, shared FFN", 0).name == "two_views_shared_FFN-s0"
    assert ablation_run_dir("out", "+local (published)", 2).name == "plus-local_published-s2"
    assert parse_variants(None) is None and parse_variants("") is None
    assert parse_variants("+MoVE,two views, shared FFN,Med-ST") == ["+MoVE", "two views, shared FFN", "Med-ST"]
    assert parse_variants(["two views,shared FFN", " +local (published) "]) == [
        "two views, shared FFN",
        "+local (published)",
    ]
    assert parse_variants("plus-local_published,two_views_shared_FFN") == [
        "+local (published)",
        "two views, shared FFN",
    ]
    with pytest.raises(ValueError, match="unknown variant 'two views'"):
        parse_variants("two views,+MoVE")


def test_ablation_verdicts_local_remedy_and_move_experts():
    """The remedy is judged against the published local weights and MoVE's experts against one shared FFN;
    only "local alignment" is judged against the pointing game's chance."""
    from medst.ablation import ablation_verdicts

    rows = [
        {"variant": v, "seed": s, "lateral_auc": a + noise, "grounding_acc": g + noise, "grounding_chance": 0.1}
        for v, a, g in [
            ("+local", 0.52, 0.30),
            ("+local (published)", 0.52, 0.20),
            ("+MoVE", 0.80, 0.31),
            ("two views, shared FFN", 0.795, 0.31),
        ]
        for s, noise in ((0, -0.01), (1, 0.01))
    ]
    verdicts = ablation_verdicts(pd.DataFrame(rows)).set_index("component")
    remedy, alignment = verdicts.loc["local remedy"], verdicts.loc["local alignment"]
    assert remedy["against"] == "+local (published)" and remedy["metric"] == "grounding_acc"
    assert remedy["mean_against"] == pytest.approx(0.20) and remedy["difference"] == pytest.approx(0.10)
    assert remedy["verdict"] == "helped"
    assert alignment["against"] == "chance" and alignment["difference"] == pytest.approx(0.20)
    experts, move = verdicts.loc["MoVE experts"], verdicts.loc["MoVE"]
    assert experts["against"] == "two views, shared FFN" and experts["metric"] == "lateral_auc"
    assert experts["difference"] == pytest.approx(0.005) and experts["verdict"] == "no clear difference"
    assert move["against"] == "+local" and move["verdict"] == "helped"


def test_run_ablation_caches_metrics(tmp_path, monkeypatch):
    """A second run_ablation reuses the trained run and its metrics (metrics.json, random_metrics.json); a
    change of the evaluation options evaluates again. No training: pretrain and the metrics are fakes."""
    from types import SimpleNamespace

    import medst.ablation.runs as run_mod

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    pd.DataFrame({"study_id": [1], "lateral": ["a.png"], "lateral_view": ["LL"], "lateral_cache": [0]}).to_csv(
        prepared / "studies.csv", index=False
    )
    (prepared / "prepare.json").write_text("{}")
    ctx = SimpleNamespace(
        phantom_dir=tmp_path / "phantom", prepared_dir=prepared, data_dir=tmp_path / "data", device="cpu"
    )
    trained, calls = [], []

    def fake_pretrain(cfg, prepared_dir, run, device="cpu", progress=False):
        trained.append(cfg)
        run.mkdir(parents=True, exist_ok=True)
        (run / "model.safetensors").write_text("weights")
        (run / "config.json").write_text(cfg.to_json())  # as pretrain writes it

    def fake_load_model(run, device, random_init=False, seed=0):
        return SimpleNamespace(run=run, random_init=random_init)

    def fake_metrics(em, root, *, lateral=True, seed=0, max_pairs=2000, max_studies=300, progress=False):
        calls.append((em.random_init, max_studies))
        return {"lateral_auc": 0.5 if em.random_init else 0.75, "max_studies": max_studies}

    monkeypatch.setattr(run_mod, "pretrain", fake_pretrain)
    monkeypatch.setattr(run_mod, "load_model", fake_load_model)
    monkeypatch.setattr(run_mod, "ablation_metrics", fake_metrics)
    out = tmp_path / "ablation"

    def ablate(**kw):
        return run_mod.run_ablation(
            "ci", [0], out, variants=["two views, shared FFN"], ctx=ctx, progress=False, max_pairs=50, **kw
        )

    first = ablate(max_studies=10)
    assert len(trained) == 1 and trained[0].model.vision.experts == "shared"
    assert calls == [(False, 10), (True, 10)]
    run = out / "runs" / "two_views_shared_FFN-s0"
    assert json.loads((run / "metrics.json").read_text())["metrics"]["lateral_auc"] == 0.75
    assert json.loads((run / "random_metrics.json").read_text())["key"]["max_studies"] == 10
    second = ablate(max_studies=10)
    assert len(trained) == 1 and len(calls) == 2  # nothing trained or evaluated again
    pd.testing.assert_frame_equal(first, second)
    assert second.set_index("variant").loc["random init", "lateral_auc"] == 0.5
    third = ablate(max_studies=20)  # other evaluation options: evaluated again, not trained again
    assert len(trained) == 1 and calls[2:] == [(False, 20), (True, 20)]
    assert set(third["max_studies"]) == {20}
    ablate(max_studies=20, random_baseline=False)
    assert len(calls) == 4
    (run / "metrics.json").write_text('{"key": ')  # cut short: evaluated again
    ablate(max_studies=20, random_baseline=False)
    assert calls[4:] == [(False, 20)]
    # the temporal term is off in this variant, so when it would join changes nothing: reused
    ablate(max_studies=20, random_baseline=False, overrides=["loss.temporal_start=0.3"])
    assert len(trained) == 1 and len(calls) == 5
    # a run of another configuration (here: the profile changed since) is trained and evaluated again
    ablate(max_studies=20, random_baseline=False, overrides=["loss.global_temperature=0.2"])
    assert len(trained) == 2 and trained[1].loss.global_temperature == 0.2 and calls[5:] == [(False, 20)]
    assert json.loads((run / "config.json").read_text())["loss"]["global_temperature"] == 0.2


def test_run_differences_name_what_a_finished_run_learned_differently(tmp_path):
    from medst.train.checkpoint import run_differences

    cfg = load_profile("ci")
    assert run_differences(tmp_path, cfg.to_dict()) == [f"{tmp_path / 'config.json'} is missing"]
    (tmp_path / "config.json").write_text(cfg.to_json())
    assert run_differences(tmp_path, cfg.to_dict()) == []
    same = load_profile("ci", ["train.log_every=3", "train.checkpoint_every=7", "name=other"])
    assert run_differences(tmp_path, same.to_dict()) == []  # bookkeeping only
    longer = load_profile("ci", ["train.steps=999"])
    assert run_differences(tmp_path, longer.to_dict()) == [f"train.steps: the run has {cfg.train.steps}, now 999"]
    later = load_profile("ci", ["loss.temporal_start=0.3"])
    assert run_differences(tmp_path, later.to_dict()) == ["loss.temporal_start: the run has 0.0, now 0.3"]
    off = load_profile("ci", ["loss.temporal_weight=0"])
    (tmp_path / "config.json").write_text(off.to_json())
    off_later = load_profile("ci", ["loss.temporal_weight=0", "loss.temporal_start=0.3", "loss.temporal_ramp=0.1"])
    assert run_differences(tmp_path, off_later.to_dict()) == []  # the term is off: its schedule changes nothing
    mpma = load_profile("ci", ["model.method=mpma"])
    (tmp_path / "config.json").write_text(mpma.to_json())
    assert run_differences(tmp_path, mpma.override("loss.temporal_start=0.3").to_dict()) == []  # MPMA has none


def test_ablation_table_round_trip(tmp_path):
    """write_ablation's per-run CSV reads back as the same table, variants in order; other CSVs are refused."""
    from medst.ablation import read_ablation, summarise_ablation, write_ablation

    rows = [
        {
            "variant": v,
            "seed": s,
            "lateral_auc": 0.5 + 0.1 * s + 0.01 * i,
            "grounding_acc": np.nan if v == "global" else 0.2,
        }
        for i, v in enumerate(["Med-ST", "global", "random init", "+MoVE"])
        for s in (1, 0)
    ]
    table = pd.DataFrame(rows)
    paths = write_ablation(table, tmp_path)
    back = read_ablation(paths["runs"])
    assert back["variant"].tolist() == ["random init"] * 2 + ["global"] * 2 + ["+MoVE"] * 2 + ["Med-ST"] * 2
    assert back["seed"].tolist() == [0, 1] * 4
    read_back, written = summarise_ablation(back), summarise_ablation(table)
    np.testing.assert_allclose(
        read_back.to_numpy(float), written.loc[[str(v) for v in read_back.index]].to_numpy(float)
    )
    assert summarise_ablation(back).loc["Med-ST", "lateral_auc_mean"] == pytest.approx(0.55)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an ablation table"):
        read_ablation(tmp_path / "other.csv")
    (tmp_path / "odd.csv").write_text("variant,seed\n+XYZ,0\n")
    with pytest.raises(ValueError, match="unknown variant"):
        read_ablation(tmp_path / "odd.csv")


def test_committed_cpu_ablation_has_three_seeds_per_variant():
    """The committed cpu-profile ablation (chapter 9) covers every variant and the random-init row, with
    at least 3 seeds each and a finite value of every variant's target metric."""
    from pathlib import Path

    from medst.ablation import VARIANTS, read_ablation

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ablations" / "cpu" / "ablation_runs.csv"
    table = read_ablation(path)
    seeds = table.groupby("variant", observed=True)["seed"].nunique()
    assert set(seeds.index) == {"random init", *(v.name for v in VARIANTS)}
    assert (seeds >= 3).all(), seeds.to_dict()
    for metric in ("lateral_auc", "progression_acc", "retrieval_r@5"):
        assert np.isfinite(table[metric]).all(), metric
    local = table[table["variant"] != "global"]
    assert (
        np.isfinite(local["grounding_acc"]).all()
        and table.loc[table["variant"] == "global", "grounding_acc"].isna().all()
    )


def test_book_targets_thresholds():
    """Each target's threshold follows its rule, and "met" flips exactly at the threshold."""
    from medst.eval.targets import targets, targets_markdown

    rand = {"retrieval_i2t_r@5": 0.02, "progression_acc_test": 0.40, "progression_acc_all": 0.45, "sentence_auc": 0.5}
    model = {
        "retrieval_i2t_r@5": 0.099,
        "progression_acc_test": 0.51,
        "progression_acc_all": 0.549,
        "sentence_auc": 0.75,
    }
    rows = {r["metric"]: r for r in targets(model, rand)}
    assert rows["retrieval_i2t_r@5"]["threshold"] == pytest.approx(0.10) and not rows["retrieval_i2t_r@5"]["met"]
    assert rows["progression_acc_test"]["threshold"] == pytest.approx(0.50) and rows["progression_acc_test"]["met"]
    assert not rows["progression_acc_all"]["met"]
    assert rows["sentence_auc"]["met"]
    table = targets_markdown(list(rows.values()))
    assert table.count("| yes |") == 2 and table.count("| no |") == 2


def test_progression_probe_splits_restrict_patients(phantom_dir, monkeypatch):
    """``probe_splits`` reaches the progression probe: only those splits' patients are probed."""
    import medst.eval.temporal as temporal
    from medst.eval import run as run_module

    seen = {}

    def fake_probe(em, root, **kw):
        seen.update(kw)
        return {"mean_acc": 0.5}

    monkeypatch.setattr(temporal, "progression_probe", fake_probe)
    out = run_module.evaluate(
        "unused", phantom_dir, "progression-probe", model=object.__new__(_FakeEM), progress=False, probe_splits=["test"]
    )
    assert seen["splits"] == ["test"] and out["meta"]["probe_splits"] == ["test"]


class _FakeEM:
    profile, source, device = "ci", "fake", "cpu"
