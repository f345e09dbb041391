"""Every benchmark script still starts: its imports resolve and it prints its usage.

Benchmarks are run by hand, not by the suite (timings in pytest are flaky), so a refactor can break one
silently; `demo_load.py` once imported helpers that had moved. This catches that, not their numbers.
"""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
HELPER_MODULES = {"serving.py", "timing.py"}  # imported by the scripts, no command line of their own
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py") if path.name not in HELPER_MODULES)


def test_every_benchmark_is_checked():
    assert "demo_load.py" in SCRIPTS and "ingest.py" in SCRIPTS and "train_throughput.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_imports_and_prints_its_usage(script):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                          timeout=300, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:")
