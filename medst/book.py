"""Build the book: execute every chapter with papermill, then render the executed copies.

``python -m medst.book execute --profile ci --out _build/executed`` runs each notebook listed in ``_toc.yml``
top to bottom with its ``parameters`` cell overridden (``profile``, ``data_dir``, ``seed``, ``device``);
``python -m medst.book html --executed _build/executed --out _build`` renders what papermill ran with
Jupyter Book 1.x (notebook execution is off in ``_config.yml``), into ``_build/html``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def toc_entries(root: Path = ROOT) -> list[str]:
    """The files of ``_toc.yml`` in reading order (root first), as written there (without suffix)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                entries.append(node["file"])
            for key in ("chapters", "sections", "parts"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk({k: v for k, v in toc.items() if k != "root"})
    return entries


def chapters(root: Path = ROOT) -> list[Path]:
    """The notebooks the table of contents lists, in order."""
    out = []
    for entry in toc_entries(root):
        path = root / f"{entry}.ipynb"
        if path.exists():
            out.append(path)
    return out


@dataclass
class ChapterError(RuntimeError):
    """A chapter failed: which notebook, which cell, and what was raised."""

    chapter: str
    cell: str
    error: str

    def __str__(self) -> str:
        return f"{self.chapter}: cell {self.cell} failed: {self.error}"


def run_chapter(notebook: Path, output: Path, *, profile: str = "cpu", data_dir: str | Path = "_data",
                seed: int = 0, device: str = "auto", cwd: Path | None = None, timeout: int | None = None) -> float:
    """Execute one chapter with papermill; returns seconds taken, raises :class:`ChapterError` on a cell error."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    params = dict(profile=profile, data_dir=str(Path(data_dir).resolve()), seed=seed, device=device)
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(notebook), str(output), parameters=params, kernel_name="python3",
                            cwd=str(cwd or notebook.parent), progress_bar=False, execution_timeout=timeout)
    except PapermillExecutionError as err:
        raise ChapterError(notebook.name, f"{err.cell_index} (In [{err.exec_count}])",
                           f"{err.ename}: {err.evalue}") from None
    return time.perf_counter() - start


def execute(profile: str, out: Path, data_dir: Path | None = None, only: list[str] | None = None) -> None:
    """Execute every chapter into ``out`` (same relative paths as in the repository)."""
    data_dir = data_dir or out.parent / f"data-{profile}"
    for notebook in chapters():
        if only and notebook.stem not in only:
            continue
        rel = notebook.relative_to(ROOT)
        print(f"executing {rel} (profile={profile}) ...", flush=True)
        seconds = run_chapter(notebook, out / rel, profile=profile, data_dir=data_dir)
        print(f"  done in {seconds:.1f} s", flush=True)


def html(executed: Path, out: Path) -> Path:
    """Stage the book's sources with the executed notebooks and render them with Jupyter Book 1.x."""
    stage = out / "src"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml", "references.bib"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, stage / name)
    shutil.copytree(ROOT / "book", stage / "book", ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    for notebook in chapters():
        rel = notebook.relative_to(ROOT)
        executed_nb = executed / rel
        if not executed_nb.exists():
            raise FileNotFoundError(f"{executed_nb} is missing: run `make execute` (python -m medst.book execute) first")
        shutil.copy(executed_nb, stage / rel)
    cmd = [sys.executable, "-m", "jupyter_book", "build", str(stage), "--path-output", str(out), "-W", "-n",
           "--keep-going"]
    env = dict(os.environ, PYDEVD_DISABLE_FILE_VALIDATION="1")
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)
    target = out / "html"
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(out / "_build" / "html"), str(target))
    shutil.rmtree(out / "_build", ignore_errors=True)
    print(f"book written to {target}/index.html")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medst.book", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("execute", help="execute every chapter with papermill")
    p.add_argument("--profile", default="cpu", choices=["ci", "cpu", "gpu"])
    p.add_argument("--out", type=Path, default=Path("_build/executed"))
    p.add_argument("--data-dir", type=Path, default=None, help="shared data folder (default: next to --out)")
    p.add_argument("--only", nargs="*", help="notebook stems to run (default: all)")
    p = sub.add_parser("html", help="render executed notebooks with Jupyter Book")
    p.add_argument("--executed", type=Path, default=Path("_build/executed"))
    p.add_argument("--out", type=Path, default=Path("_build"))
    args = parser.parse_args(argv)
    if args.command == "execute":
        try:
            execute(args.profile, args.out, args.data_dir, args.only)
        except ChapterError as err:
            sys.exit(f"error: {err}")
    else:
        html(args.executed, args.out)


if __name__ == "__main__":
    main()
