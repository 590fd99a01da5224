"""benchmarks/gpu.py from outside: it measures nothing and writes nothing without CUDA, and its
``--device cpu --quick`` smoke run exercises every code path (a subprocess each, ~10 s together)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.py"
RESULTS = [ROOT / "benchmarks" / "results" / name for name in ("gpu.md", "gpu.json")]
NO_CUDA = "benchmarks/gpu.py: no CUDA device here; nothing measured (run it on a GPU machine)"


def _run(*args: str) -> subprocess.CompletedProcess:
    """The script in a fresh interpreter that sees no GPU, on one thread, importable from a clean clone."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _results_state() -> dict[str, int | None]:
    """Modification time (ns) of each results file of the benchmark, None where it does not exist."""
    return {p.name: p.stat().st_mtime_ns if p.exists() else None for p in RESULTS}


def test_without_cuda_it_says_so_and_writes_nothing():
    before = _results_state()
    proc = _run()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == NO_CUDA
    assert _results_state() == before


@pytest.mark.slow
def test_quick_cpu_run_measures_training_in_fp32_and_bf16(tmp_path):
    before = _results_state()
    proc = _run("--device", "cpu", "--quick", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "gpu.json").read_text())
    rates = {row["precision"]: row.get("images_per_sec") for row in result["training"]}
    assert set(rates) == {"fp32", "bf16"}
    assert all(rate is not None and rate > 0 for rate in rates.values()), rates
    assert (tmp_path / "gpu.md").read_text().startswith("# GPU throughput")
    assert _results_state() == before
