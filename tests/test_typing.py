"""The package's and the benchmark's type annotations are checked, so they stay true (and a misnamed call in a
script that runs by hand for twenty minutes is found here, not at its end)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_type_checks():
    result = subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports", str(ROOT / "src/influence_signals"),
                             str(ROOT / "benchmarks")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
