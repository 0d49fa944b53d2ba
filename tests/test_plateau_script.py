"""benchmarks/plateau.py: one run judged by its global-loss curve and by validation (never test) retrieval."""

import json
import math

import pytest
from script_helpers import benchmark_script


def _script():
    return benchmark_script("plateau")


def test_dry_run_names_the_configuration_and_trains_nothing(tmp_path, capsys):
    script = _script()
    script.main(["--name", "t", "--dry-run", "--work", str(tmp_path), "--set", "loss.global_temperature=0.2"])
    out = json.loads(capsys.readouterr().out)
    assert out["overrides"][:2] == ["loss.local_weight=0", "loss.temporal_weight=0"]
    assert out["overrides"][-1] == "loss.global_temperature=0.2" and out["train_seed"] == out["phantom_seed"] == 2
    assert out["two_ln_B"] == round(2 * math.log(4 * 4 + 12), 3)  # the cpu profile's 28 pairs
    assert not any(tmp_path.iterdir())
    script.main(["--name", "t", "--dry-run", "--variant", "full", "--set", "train.seed=1", "--work", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert "loss.local_weight=0" not in out["overrides"] and out["train_seed"] == 1
    with pytest.raises(SystemExit):
        script.main(["--name", "t", "--variant", "local"])


def test_a_tiny_run_reports_its_curve_and_validation_retrieval(tmp_path):
    summary = _script().plateau_run(
        "tiny", variant="global", steps=4, profile="ci", phantom_seed=3, work=tmp_path, window=2
    )
    assert list(summary["global_by_step"]) == [2, 4]
    assert all(math.isfinite(v) and v > 0 for v in summary["global_by_step"].values())
    for key in ("val_i2t_r@5", "val_t2i_r@5", "random_val_i2t_r@5", "random_val_t2i_r@5"):
        assert 0.0 <= summary[key] <= 1.0
    assert (tmp_path / "runs" / "tiny" / "model.safetensors").exists()
    again = _script().plateau_run(
        "tiny", variant="global", steps=4, profile="ci", phantom_seed=3, work=tmp_path, window=2
    )
    assert again["global_by_step"] == summary["global_by_step"]  # the finished run is reused
    assert "val_progression_acc" not in summary  # scored for the full model only
    full = _script().plateau_run(
        "tiny-full", variant="full", steps=4, profile="ci", phantom_seed=3, work=tmp_path, window=2
    )
    for key in ("val_progression_acc", "random_val_progression_acc", "sentence_auc", "random_sentence_auc"):
        assert 0.0 <= full[key] <= 1.0, key


def test_record_keeps_one_line_per_run_name(tmp_path):
    script, path = _script(), tmp_path / "plateau" / "runs.jsonl"
    script.record({"name": "a", "x": 1}, path)
    script.record({"name": "b", "x": 2}, path)
    script.record({"name": "a", "x": 3, "run": "/tmp/runs/a"}, path)  # scored again: replaces its line
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"name": "b", "x": 2}, {"name": "a", "x": 3}]
