"""The GPU check of the ``gpu`` profile: one command, every result in OUT.

Planned for about 6 minutes on one H100-class GPU (not measured yet); its budget stops it at 8 minutes.

    OUT=results benchmarks/gpu_check.sh             # on a GPU machine (or: make gpu-check)
    OUT=/tmp/dry benchmarks/gpu_check.sh --dry-run  # the same stages on tiny shapes on a CPU (tests/test_gpu_check.py)

It needs only torch, timm, transformers, tokenizers, safetensors, pandas, PyYAML, Pillow and matplotlib; pytest is
used where present (else a small runner takes its place), pydicom is not needed. Stages, each a subprocess with a
time limit (a failed stage is reported and the next one runs; the budget, ``--budget``, bounds them all):

1. ``tests``: the GPU-only tests (``tests/test_gpu.py`` and the CUDA branch of ``tests/test_dataset.py``);
2. ``phantom``: a phantom synthesised here (without its RSNA part, which needs pydicom) and ``medst prepare``d
   with the resized cache;
3. ``bench``: ``medst bench --profile gpu`` over a batch sweep: pairs/s, ms/step, MFU, peak memory, and the
   loader-to-model ratio on the phantom's cache;
4. ``run``: a short ``medst pretrain --profile gpu`` on the phantom: its metrics.csv and a loss curve;
5. ``compile``: ``medst bench`` with ``train.compile=true`` at one batch size, when the budget leaves room.

Files in OUT (flat, at most eight): ``gpu_check.json`` (everything), ``gpu_check.md`` (the tables),
``bench.json``, ``metrics.csv``, ``loss.png``, ``tests.log``, ``log.txt`` (every command and its output).
Large files (phantom, checkpoints) go to ``--work`` (default: a temporary folder), never to OUT.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import inspect
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Scale of each mode. "gpu": the gpu profile as it is, on a phantom large enough for a few epochs of 300 steps.
MODES = {
    "gpu": dict(
        profile="gpu",
        device="auto",
        patients=2000,
        image_size=256,
        cache=256,
        workers=None,
        sizes="8,16,24,32",
        bench_steps=10,
        run_steps=300,
        log_every=5,
        sets=[],
        compile_size="16",
        budget=480,
    ),
    "dry": dict(
        profile="ci",
        device="cpu",
        patients=40,
        image_size=64,
        cache=73,
        workers=1,
        sizes="2,4",
        bench_steps=2,
        run_steps=6,
        log_every=2,
        sets=["train.group_bucket=4"],
        compile_size=None,
        budget=150,
    ),
}
# Longest time each stage may take (seconds), within the budget; and the least worth starting it with.
LIMITS = {
    "env": (60, 5),
    "tests": (200, 20),
    "phantom": (150, 20),
    "bench": (200, 30),
    "run": (200, 30),
    "compile": (240, 90),
}
GPU_TESTS = ["tests/test_gpu.py", "tests/test_dataset.py::test_eval_loader_compact_lateral_values"]


class Check:
    """Runs the stages, keeps their results in ``self.summary`` and rewrites OUT's reports after each one."""

    def __init__(self, out: Path, work: Path, mode: str, budget: float) -> None:
        self.out, self.work, self.mode, self.cfg = out, work, mode, MODES[mode]
        self.start, self.budget = time.monotonic(), budget
        self.log = (out / "log.txt").open("w")
        self.summary: dict = {
            "dry_run": mode == "dry",
            "profile": self.cfg["profile"],
            "budget_s": budget,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "stages": {},
        }
        self.env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
            MPLBACKEND="Agg",
        )

    # -- running commands ---------------------------------------------------------------------------
    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def sh(self, stage: str, cmd: list[str], limit: float, env: dict | None = None) -> tuple[int | None, str]:
        """Run ``cmd`` in its own process group for at most ``limit`` s; (exit code or None on timeout, output)."""
        self.log.write(f"\n$ {' '.join(cmd)}   # stage {stage}, limit {limit:.0f} s\n")
        self.log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env or self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=limit)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the command and its loader workers
            output, _ = proc.communicate()
            code = None
        self.log.write(output + (f"\n[timed out after {limit:.0f} s]\n" if code is None else f"[exit {code}]\n"))
        self.log.flush()
        return code, output

    def stage(self, name: str, fn) -> None:
        """Run one stage if the budget allows, record its status, time and result, and rewrite the reports."""
        limit, least = LIMITS[name]
        record: dict = {"status": "no time"}
        if self.left() < least:
            record["detail"] = f"{self.left():.0f} s of the {self.budget:.0f} s budget left"
        else:
            record, t0 = {}, time.monotonic()
            try:
                record.update(fn(min(limit, self.left() - 5)))
                record.setdefault("status", "ok")
            except StageError as err:
                record.update(status=err.status, detail=str(err)[-2000:])
            except Exception:  # a bug here must not lose the other stages' results
                record.update(status="failed", detail=traceback.format_exc()[-2000:])
            record["seconds"] = round(time.monotonic() - t0, 1)
        self.summary["stages"][name] = record
        print(f"[gpu-check] {name}: {record['status']} ({record.get('seconds', 0)} s)", flush=True)
        self.write_reports()

    def run_or_fail(self, stage: str, cmd: list[str], limit: float) -> str:
        code, output = self.sh(stage, cmd, limit)
        if code is None:
            raise StageError("timeout", f"no result within {limit:.0f} s; last output:\n{output[-1500:]}")
        if code != 0:
            raise StageError("failed", f"exit {code}; last output:\n{output[-1500:]}")
        return output

    # -- stages ---------------------------------------------------------------------------------------
    def env_info(self, limit: float) -> dict:
        code = (
            "import json, platform, torch, importlib.util as u\n"
            "cuda = torch.cuda.is_available()\n"
            "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__,\n"
            "  'cuda': torch.version.cuda, 'device': torch.cuda.get_device_name(0) if cuda else 'cpu',\n"
            "  'gpus': torch.cuda.device_count(), 'cpus': __import__('os').cpu_count(),\n"
            "  'pytest': u.find_spec('pytest') is not None, 'pydicom': u.find_spec('pydicom') is not None}))"
        )
        info = json.loads(self.run_or_fail("env", [sys.executable, "-c", code], limit).strip().splitlines()[-1])
        self.summary["env"] = info
        if self.mode == "gpu" and info["device"] == "cpu":
            raise StageError("failed", "no CUDA GPU is visible; use --dry-run on a CPU")
        return {"device": info["device"]}

    def tests(self, limit: float) -> dict:
        if self.summary.get("env", {}).get("pytest", True):
            cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *GPU_TESTS]
        else:  # the plain runner below: tests/test_gpu.py only (the other test needs pytest's fixtures)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--plain-tests"]
        code, output = self.sh("tests", cmd, limit)
        (self.out / "tests.log").write_text(output)
        counts = {
            k: int(n)
            for n, k in re.findall(
                r"(\d+) (passed|failed|skipped|errors?)", output.splitlines()[-1] if output.strip() else ""
            )
        }
        failed = [line.split(" ", 1)[1] for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
        status = "timeout" if code is None else ("ok" if code == 0 else "failed")
        return {
            "status": status,
            "runner": cmd[2] if cmd[1] == "-m" else "plain",
            "counts": counts,
            "failed_tests": failed,
        }

    def phantom(self, limit: float) -> dict:
        c = self.cfg
        code = (
            "import json, sys\nfrom medst.phantom import synthesize\n"
            f"s = synthesize(sys.argv[1], n_patients={c['patients']}, image_size={c['image_size']}, seed=0, "
            f"workers={c['workers']}, progress=False, n_rsna=0, n_covidx=0)\nprint(json.dumps(s['counts']))"
        )
        t0 = time.monotonic()
        counts = json.loads(
            self.run_or_fail("phantom", [sys.executable, "-c", code, str(self.work / "phantom")], limit)
            .strip()
            .splitlines()[-1]
        )
        synth_s = time.monotonic() - t0
        cmd = [
            sys.executable,
            "-m",
            "medst.cli",
            "prepare",
            "--mimic-root",
            str(self.work / "phantom" / "mimic-cxr-jpg"),
            "--out",
            str(self.work / "prepared"),
            "--cache-size",
            str(c["cache"]),
            "--quiet",
        ]
        if c["workers"]:
            cmd += ["--workers", str(c["workers"])]
        self.run_or_fail("phantom", cmd, limit - synth_s)
        return {
            "patients": c["patients"],
            "image_size": c["image_size"],
            "cache_size": c["cache"],
            "studies": counts["studies"],
            "images": counts["images"],
            "synth_seconds": round(synth_s, 1),
        }

    def medst(self, command: str, *args: str) -> list[str]:
        c = self.cfg
        cmd = [sys.executable, "-m", "medst.cli", command, "--profile", c["profile"], "--device", c["device"], *args]
        for s in c["sets"]:
            cmd += ["--set", s]
        return cmd

    def bench(self, limit: float) -> dict:
        c = self.cfg
        output = self.run_or_fail(
            "bench",
            self.medst(
                "bench",
                "--batch-sizes",
                c["sizes"],
                "--steps",
                str(c["bench_steps"]),
                "--data",
                str(self.work / "prepared"),
                "--json",
            ),
            limit,
        )
        result = json.loads(output.strip().splitlines()[-1])
        self.summary["bench"] = result
        self.write_bench()
        return {"best_sequences_per_batch": result["sequences_per_batch"], "pairs_per_s": result["pairs_per_s"]}

    def compile_bench(self, limit: float) -> dict:
        if not self.cfg["compile_size"]:
            raise StageError("skipped", "not in a dry run (inductor on a CPU takes minutes)")
        output = self.run_or_fail(
            "compile",
            self.medst(
                "bench",
                "--batch-sizes",
                self.cfg["compile_size"],
                "--steps",
                str(self.cfg["bench_steps"]),
                "--json",
                "--set",
                "train.compile=true",
            ),
            limit,
        )
        result = json.loads(output.strip().splitlines()[-1])
        self.summary["compile"] = result
        self.write_bench()
        return {"pairs_per_s": result["pairs_per_s"]}

    def run(self, limit: float) -> dict:
        c = self.cfg
        run = self.work / "run"
        shutil.rmtree(run, ignore_errors=True)
        cmd = self.medst(
            "pretrain",
            "--data",
            str(self.work / "prepared"),
            "--out",
            str(run),
            "--set",
            f"train.steps={c['run_steps']}",
            "--set",
            f"train.log_every={c['log_every']}",
            "--set",
            "train.checkpoint_every=1000000",
        )
        code, output = self.sh("run", cmd, limit)
        metrics = run / "metrics.csv"
        if not metrics.exists():
            raise StageError("timeout" if code is None else "failed", f"no metrics.csv; last output:\n{output[-1500:]}")
        shutil.copy(metrics, self.out / "metrics.csv")
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(metrics.open())]
        result = summarise_run(rows, c["run_steps"])
        self.summary["run"] = result
        plot_losses(rows, self.out / "loss.png", f"{c['profile']} profile on the phantom")
        if code != 0:  # what was logged is kept; the stage still failed
            raise StageError(
                "timeout" if code is None else "failed",
                f"stopped at step {result['last_step']} of {c['run_steps']}; last output:\n{output[-1500:]}",
            )
        return {"steps": result["last_step"], "loss_first": result["loss_first"], "loss_last": result["loss_last"]}

    # -- reports --------------------------------------------------------------------------------------
    def write_bench(self) -> None:
        data = {"eager": self.summary.get("bench"), "compile": self.summary.get("compile")}
        (self.out / "bench.json").write_text(json.dumps(data, indent=2) + "\n")

    def write_reports(self) -> None:
        self.summary["elapsed_s"] = round(time.monotonic() - self.start, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.summary))


class StageError(RuntimeError):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def summarise_run(rows: list[dict], steps: int) -> dict:
    """First and last losses (medians over the first and last fifth of the logged steps) and the speed."""
    if not rows:
        return {"logged_rows": 0, "last_step": 0, "loss_first": None, "loss_last": None}
    k = max(1, len(rows) // 5)
    speed = [r["pairs_per_s"] for r in rows[1:]] or [rows[0]["pairs_per_s"]]  # the first interval holds start-up
    ms = [r["seconds"] * 1e3 for r in rows[1:]] or [rows[0]["seconds"] * 1e3]
    return {
        "logged_rows": len(rows),
        "last_step": int(rows[-1]["step"]),
        "steps_asked": steps,
        "loss_first": round(statistics.median(r["loss"] for r in rows[:k]), 4),
        "loss_last": round(statistics.median(r["loss"] for r in rows[-k:]), 4),
        "all_finite": all(math.isfinite(r["loss"]) for r in rows),
        "pairs_per_s_median": round(statistics.median(speed), 2),
        "ms_per_step_median": round(statistics.median(ms), 2),
        "terms_last": {
            t: round(rows[-1][t], 4) for t in ("global", "local", "temporal", "fmc", "rmr") if t in rows[-1]
        },
    }


def plot_losses(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, speed) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in rows]
    for key in ("loss", "global", "local", "temporal"):
        if rows and key in rows[0]:
            ax.plot(steps, [r[key] for r in rows], label=key, lw=2 if key == "loss" else 1)
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    speed.plot(steps, [r["pairs_per_s"] for r in rows], color="gray")
    speed.set(xlabel="step", ylabel="pairs / s", title="throughput between log steps")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(s: dict) -> str:
    env = s.get("env", {})
    lines = [
        f"# GPU check of the `{s['profile']}` profile{' (dry run, tiny shapes)' if s['dry_run'] else ''}",
        "",
        f"{env.get('device', '?')}, torch {env.get('torch', '?')} (CUDA {env.get('cuda')}), Python "
        f"{env.get('python', '?')}, {env.get('cpus', '?')} CPUs; started {s['started']}, "
        f"{s.get('elapsed_s', 0)} s of a {s['budget_s']:.0f} s budget.",
        "",
        "| stage | status | seconds | detail |",
        "|---|---|---|---|",
    ]
    for name, r in s["stages"].items():
        detail = {k: v for k, v in r.items() if k not in ("status", "seconds", "detail")}
        note = r.get("detail", "").strip().splitlines()[-1:] if r["status"] != "ok" else []
        lines.append(
            f"| {name} | {r['status']} | {r.get('seconds', '')} | "
            f"{json.dumps(detail) if detail else ''} {' '.join(note)[:200].replace('|', '/')} |"
        )
    bench = s.get("bench")
    if bench:
        lines += [
            "",
            f"## `medst bench --profile {s['profile']}` ({bench['precision']}, compile {bench['compile']}, "
            f"group bucket {bench.get('group_bucket')})",
            "",
            "| sequences/batch | pairs/step | ms/step | pairs/s | TFLOP/s | MFU | peak GB |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in bench["tried"] + ([s["compile"]] if s.get("compile") else []):
            if "error" in r:
                lines.append(f"| {r['sequences_per_batch']} | | | {r['error']} | | | |")
                continue
            tag = " (compiled)" if r is s.get("compile") else ""
            lines.append(
                f"| {r['sequences_per_batch']}{tag} | {r['pairs_per_step']} | {r['ms_per_step']} | "
                f"{r['pairs_per_s']} | {r['tflops_per_s']} | {r['mfu']} | {r['peak_memory_gb']} |"
            )
        if "loader_images_per_s" in bench:
            lines += [
                "",
                f"Loader on the phantom's resized cache ({bench['loader_batches']} batches at the profile's "
                f"workers): {bench['loader_images_per_s']} images/s, {bench['loader_pairs_per_s']} pairs/s; "
                f"loader-to-model ratio **{bench['loader_to_model_ratio']}** at the best batch size "
                f"(target >= 1.5).",
            ]
    run = s.get("run")
    if run:
        lines += [
            "",
            "## Short training run",
            "",
            f"{run['last_step']} of {run.get('steps_asked')} steps, {run['logged_rows']} logged rows; loss "
            f"{run['loss_first']} -> {run['loss_last']} (medians of the first and last fifth), all finite: "
            f"{run.get('all_finite')}; {run.get('pairs_per_s_median')} pairs/s, "
            f"{run.get('ms_per_step_median')} ms/step (medians between log steps). Curve: loss.png.",
        ]
    tests = s["stages"].get("tests", {})
    if tests.get("failed_tests"):
        lines += ["", "## Failed tests", ""] + [f"- {t}" for t in tests["failed_tests"]]
    return "\n".join(lines) + "\n"


def plain_tests() -> int:
    """Run tests/test_gpu.py without pytest: each ``test_*`` function, with a fresh ``tmp_path`` where asked."""
    import torch

    path = ROOT / "tests" / "test_gpu.py"
    spec = importlib.util.spec_from_file_location("test_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for name, fn in inspect.getmembers(module, inspect.isfunction):
        if not name.startswith("test_") or fn.__module__ != module.__name__:
            continue
        wants_tmp = "tmp_path" in inspect.signature(fn).parameters
        kwargs = {"tmp_path": Path(tempfile.mkdtemp(prefix=f"{name}-"))} if wants_tmp else {}
        try:
            if not torch.cuda.is_available():
                raise module.Skipped("needs a CUDA GPU")
            fn(**kwargs)
            counts["passed"] += 1
            print(f"PASSED tests/test_gpu.py::{name}")
        except module.Skipped as why:
            counts["skipped"] += 1
            print(f"SKIPPED tests/test_gpu.py::{name}: {why}")
        except Exception:
            counts["failed"] += 1
            print(f"FAILED tests/test_gpu.py::{name}\n{traceback.format_exc()}")
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    return 1 if counts["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on a CPU: checks the check itself")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or ROOT / "benchmarks/results/gpu-check"),
        help="folder for the results (default: $OUT, else benchmarks/results/gpu-check)",
    )
    p.add_argument("--work", type=Path, default=None, help="folder for the phantom and the run (default: temporary)")
    p.add_argument("--budget", type=float, default=None, help="seconds for all stages (default 480; dry run 150)")
    p.add_argument("--plain-tests", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.plain_tests:
        return plain_tests()
    mode = "dry" if a.dry_run else "gpu"
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.work or Path(tempfile.mkdtemp(prefix="medst-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    check = Check(a.out.resolve(), work.resolve(), mode, a.budget or MODES[mode]["budget"])
    try:
        check.stage("env", check.env_info)
        if check.summary["stages"]["env"]["status"] == "ok":
            check.stage("tests", check.tests)
            check.stage("phantom", check.phantom)
            if check.summary["stages"]["phantom"]["status"] == "ok":  # bench and run read the phantom
                check.stage("bench", check.bench)
                check.stage("run", check.run)
            check.stage("compile", check.compile_bench)  # synthetic batches only
    finally:
        check.log.close()
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"[gpu-check] results in {a.out}: " + ", ".join(sorted(f.name for f in a.out.iterdir())))
    # The compile bench is a bonus: running out of time there is reported but fails nothing.
    return (
        0
        if all(
            r["status"] in ("ok", "skipped") or (name == "compile" and r["status"] in ("timeout", "no time"))
            for name, r in check.summary["stages"].items()
        )
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
