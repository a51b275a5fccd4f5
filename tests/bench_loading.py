"""Load a `bench/` script as a module, by path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str):
    """`bench/NAME.py` as a module. By path: putting bench/ on sys.path would let bench/federated.py
    shadow the `federated` package for every later test."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
