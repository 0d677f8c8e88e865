"""The debugger as a package people install: a wheel built from this tree runs ``influence-signals debug``
from a fresh virtual environment, with no file of the repository on its path."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.pipeline
def test_a_built_wheel_runs_the_debug_command_from_a_fresh_venv(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools in this environment")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", tmp_path / "dist", ROOT)
    wheel = next((tmp_path / "dist").glob("influence_signals-*.whl"))
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel)
    # the project's dependencies, already installed here, are visible to the new venv; the repository is not
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = run(python, "-c", "import influence_signals; print(influence_signals.__file__)", cwd=tmp_path).stdout
    assert where.startswith(str(site)), where  # the installed copy, not the tree's
    table = tmp_path / "small.csv"
    rows = [f"r{i},{i % 7 * 0.5},{(i * 3) % 5},{'ab'[i % 2]}" for i in range(60)]
    table.write_text("key,x,z,label\n" + "\n".join(rows) + "\n")
    result = run(venv / "bin" / "influence-signals", "debug", table, "--label", "label", "--id", "key", "--seeds", "1",
                 "--folds", "2", "--epochs", "2", "--cores", "2", "--out", tmp_path / "out", cwd=tmp_path)
    assert "4 of 4 jobs done" in result.stdout and "suspected mislabels" in result.stdout  # 2 folds, report, all
    suspects = (tmp_path / "out" / "suspects.csv").read_text().splitlines()
    assert len(suspects) == 61 and (tmp_path / "out" / "report.html").exists()
    log = (tmp_path / "out" / "snakemake.log").read_text()
    assert f"-s {site}/influence_signals/workflow/Snakefile" in log  # the workflow ran from the wheel
    assert str(ROOT / "src") not in log
