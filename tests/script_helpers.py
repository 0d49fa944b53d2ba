"""Loading a script of benchmarks/ as a module, for the tests of those scripts."""

import importlib.util
from pathlib import Path
from types import ModuleType


def benchmark_script(name: str) -> ModuleType:
    """benchmarks/NAME.py, imported under a private module name (the scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
