"""Every benchmark runs to the end at a tiny size and prints its table.

The benchmarks are not timed tests (their figures go in closing notes), but they must keep
running as the library changes: a renamed function once broke one unnoticed. Each runs in a
fresh interpreter, as a user would run it, at the smallest size its options allow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

#: script -> (arguments for a tiny run, a line fragment its output must contain)
TINY = {
    "analysis.py": (["--quick", "--no-cli", "--threads", "1"], "trajectory distances"),
    "capture_cost.py": (["--steps", "24", "--window", "6", "--threads", "1"], "bytes per capture"),
    "geometry.py": (["--models", "12", "--samples", "40", "--repeats", "1"], "progress"),
    "online.py": (["--runs", "2", "--snapshots", "6", "--repeats", "1"], "ms"),
    "store.py": (["--captures", "12", "--format1-captures", "12", "--samples", "40"], "append"),
    "tokens.py": (
        ["--tokens", "256", "--vocab", "300", "--length", "16", "--repeats", "1"],
        "partition",
    ),
}


def test_every_benchmark_is_covered():
    on_disk = {p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}
    # the training benchmarks with their own tests or minutes-long runs by design
    elsewhere = {"forecast.py", "live_frame.py", "overhead.py", "scale.py"}
    assert on_disk - elsewhere == set(TINY), sorted(on_disk - elsewhere ^ set(TINY))


@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_runs_at_a_tiny_size(script, tmp_path):
    args, expected = TINY[script]
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", WANDB_MODE="offline")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected in done.stdout.lower(), done.stdout[-3000:]
