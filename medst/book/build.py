"""Build the book: execute every chapter with papermill, then render the executed copies.

The command line is ``python -m medst.book`` (:mod:`medst.book.__main__` calls :func:`main`).

``python -m medst.book execute --profile ci --out _build/executed`` runs each notebook listed in ``_toc.yml``
top to bottom with its ``parameters`` cell overridden (``profile``, ``data_dir``, ``seed``, ``device``);
``python -m medst.book html --executed _build/executed --out _build`` renders what papermill ran with
Jupyter Book 1.x (notebook execution is off in ``_config.yml``), into ``_build/html``.

MathJax: with ``MEDST_MATHJAX=auto`` (default) the book serves MathJax 3 from its own ``_static`` folder when the
PyPI package ``django-static-mathjax`` (a plain copy of MathJax 3, Apache-2.0) is installed, so the rendered book
shows its equations offline; ``MEDST_MATHJAX=local`` requires that copy, ``MEDST_MATHJAX=cdn`` keeps the CDN
address of ``_config.yml``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository: medst/book/build.py -> ../../..


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


def run_chapter(
    notebook: Path,
    output: Path,
    *,
    profile: str = "cpu",
    data_dir: str | Path = "_data",
    seed: int = 0,
    device: str = "auto",
    cwd: Path | None = None,
    timeout: int | None = None,
) -> float:
    """Execute one chapter with papermill; returns seconds taken, raises :class:`ChapterError` on a cell error."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    params = dict(profile=profile, data_dir=str(Path(data_dir).resolve()), seed=seed, device=device)
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(notebook),
            str(output),
            parameters=params,
            kernel_name="python3",
            cwd=str(cwd or notebook.parent),
            progress_bar=False,
            execution_timeout=timeout,
        )
    except PapermillExecutionError as err:
        raise ChapterError(
            notebook.name, f"{err.cell_index} (In [{err.exec_count}])", f"{err.ename}: {err.evalue}"
        ) from None
    return time.perf_counter() - start


# Chapter 7 trains the book model that chapters 4, 5, 6, 8 and 9 load, so it is executed before them (chapters
# share nothing but files, so the order of execution is free; the book keeps its reading order).
TRAINS_BOOK_MODEL, LOADS_BOOK_MODEL = "07_pretraining", "04_move"


def execution_order(notebooks: list[Path]) -> list[Path]:
    """The chapters in the order they are executed: reading order, with chapter 7 moved before chapter 4."""
    stems = [n.stem for n in notebooks]
    if TRAINS_BOOK_MODEL not in stems or LOADS_BOOK_MODEL not in stems:
        return list(notebooks)
    ordered = [n for n in notebooks if n.stem != TRAINS_BOOK_MODEL]
    ordered.insert(stems.index(LOADS_BOOK_MODEL), notebooks[stems.index(TRAINS_BOOK_MODEL)])
    return ordered


def execute(profile: str, out: Path, data_dir: Path | None = None, only: list[str] | None = None) -> dict:
    """Execute every chapter into ``out`` (same relative paths as in the repository).

    Writes ``out/times-{profile}.json``, the seconds each chapter took, and returns it."""
    data_dir = data_dir or out.parent / f"data-{profile}"
    times: dict[str, float] = {}
    for notebook in execution_order(chapters()):
        if only and notebook.stem not in only:
            continue
        rel = notebook.relative_to(ROOT)
        print(f"executing {rel} (profile={profile}) ...", flush=True)
        seconds = run_chapter(notebook, out / rel, profile=profile, data_dir=data_dir)
        times[notebook.stem] = round(seconds, 1)
        print(f"  done in {seconds:.1f} s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"times-{profile}.json").write_text(
        json.dumps({"profile": profile, "seconds": times, "total": round(sum(times.values()), 1)}, indent=2)
    )
    return times


def stage_notebook(executed: Path, target: Path) -> None:
    """Copy an executed chapter for rendering, hiding papermill's injected-parameters cell (it repeats the
    parameters cell with this machine's absolute data path)."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nbformat.write(nb, target)


MATHJAX_ENV = "MEDST_MATHJAX"
# What the book needs of MathJax 3's ES5 build: the combined TeX/MathML -> CommonHTML component, the TeX
# extensions it autoloads, its fonts, the menu and the accessibility parts it loads on demand.
MATHJAX_PARTS = ("tex-mml-chtml.js", "input", "output/chtml", "output/chtml.js", "ui", "a11y", "sre")


def mathjax_source() -> Path | None:
    """MathJax 3's ``es5`` folder from the package ``django-static-mathjax`` (import name ``mathjax``), or None."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax" / "es5"
    return folder if (folder / "tex-mml-chtml.js").is_file() else None


def stage_mathjax(stage: Path, mode: str | None = None) -> bool:
    """Copy MathJax next to the staged book and point the staged ``_config.yml`` at it.

    The copy goes to ``stage/_mathjax/mathjax`` and ``_mathjax`` is added to Sphinx's ``html_static_path``, so
    it is served as ``_static/mathjax``. (Not ``stage/_static``: Jupyter Book adds a script tag for every
    ``.js`` file it finds under a ``_static`` folder of the book.)
    ``mode``: "auto" (local when available), "local" (required) or "cdn"; default from ``$MEDST_MATHJAX``.
    Returns True when the staged book uses the local copy.
    """
    mode = (mode or os.environ.get(MATHJAX_ENV) or "auto").lower()
    if mode not in ("auto", "local", "cdn"):
        raise ValueError(f"{MATHJAX_ENV}={mode!r}: expected auto, local or cdn")
    source = None if mode == "cdn" else mathjax_source()
    if source is None:
        if mode == "local":
            raise FileNotFoundError(
                f"{MATHJAX_ENV}=local but no local MathJax 3 was found: "
                "pip install django-static-mathjax (it ships MathJax 3 under mathjax/static)"
            )
        return False
    target = stage / "_mathjax" / "mathjax"
    for part in MATHJAX_PARTS:
        src, dst = source / part, target / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy(src, dst)
    config_path = stage / "_config.yml"
    config = yaml.safe_load(config_path.read_text()) or {}
    sphinx_config = config.setdefault("sphinx", {}).setdefault("config", {})
    sphinx_config["html_static_path"] = [*sphinx_config.get("html_static_path", []), "_mathjax"]
    sphinx_config["mathjax_path"] = "mathjax/tex-mml-chtml.js"  # relative to the built _static folder
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return True


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
            raise FileNotFoundError(
                f"{executed_nb} is missing: run `make execute` (python -m medst.book execute) first"
            )
        stage_notebook(executed_nb, stage / rel)
    if stage_mathjax(stage):
        print("MathJax 3 served from _static/mathjax (local copy)", flush=True)
    # jupyter_book 1.x has no __main__ module: call its command-line entry point.
    cli = "import sys; from jupyter_book.cli.main import main; sys.exit(main())"
    cmd = [sys.executable, "-c", cli, "build", str(stage), "--path-output", str(out), "-W", "-n", "--keep-going"]
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
    parser = argparse.ArgumentParser(
        prog="python -m medst.book", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
