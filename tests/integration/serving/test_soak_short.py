"""The short CI variant of ``make soak``: a minute of load, no errors, memory flat."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]


def test_a_minute_of_load_has_no_errors_and_flat_memory(tmp_path: Path) -> None:
    # Latency is the benchmark's business (bench/results/soak.json): CI machines are noisy.
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "1", "--rate", "100"]
        + ["--feedback-rate", "10", "--slice", "15", "--max-growth", "0.25"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "LLMOPT_BENCH_RESULTS": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(0 failed), feedback 5xx 0" in proc.stdout
