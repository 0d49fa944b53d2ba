"""benchmarks/gpu_check.sh --dry-run: every stage of the GPU check runs on tiny shapes on a CPU, leaving sane files."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_sane_results(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--work", str(tmp_path / "w")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log[-3000:]
    files = {"gpu_check.json", "gpu_check.md", "bench.json", "metrics.csv", "loss.png", "tests.log", "log.txt"}
    assert {p.name for p in out.iterdir()} == files  # flat, and at most eight files come back from a GPU machine

    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["dry_run"] and summary["env"]["device"] == "cpu"
    status = {name: r["status"] for name, r in summary["stages"].items()}
    assert status == {"env": "ok", "tests": "ok", "phantom": "ok", "bench": "ok", "run": "ok", "compile": "skipped"}
    tests = summary["stages"]["tests"]
    assert tests["counts"].get("failed", 0) == 0 and tests["counts"].get("skipped", 0) >= 5  # the GPU tests skip here

    bench = json.loads((out / "bench.json").read_text())["eager"]
    assert [r["sequences_per_batch"] for r in bench["tried"]] == [2, 4] and bench["group_bucket"] == 4
    for r in bench["tried"]:
        assert r["pairs_per_s"] > 0 and r["ms_per_step"] > 0 and r["flops_per_step"] > 0 and r["peak_memory_gb"] > 0
        assert r["mfu"] is None  # no peak FLOP/s for a CPU
    assert bench["loader_images_per_s"] > 0 and bench["loader_to_model_ratio"] > 0

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert all(math.isfinite(float(r["loss"])) and float(r["pairs_per_s"]) > 0 for r in rows)
    run = summary["run"]
    assert run["last_step"] == 6 and run["all_finite"] and run["loss_first"] > 0

    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "gpu_check.md").read_text()
    assert "| 4 | 20 |" in md and "loader-to-model ratio" in md and "Short training run" in md
