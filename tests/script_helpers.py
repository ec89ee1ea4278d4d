"""Load a script that is not a package module (benchmarks/, tests/fixtures/) so a test can call
its functions."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def load_script(path, name: str | None = None):
    """Execute the file at ``path`` as a fresh module named ``name`` (default: its stem) and return it."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
