"""The README's results are generated from committed run summaries, never typed by hand."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from influence_signals import report

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("section", sorted(report.SECTIONS))
def test_readme_results_equal_what_the_script_renders_from_the_committed_summaries(section):
    readme = (ROOT / "README.md").read_text()
    shown = report.SECTIONS[section]
    if section != "results" and not (ROOT / shown / "summary.csv").exists():
        pytest.skip(f"{shown} holds no run yet")  # the default run's section must always be there
    assert report.section_text(readme, section) == report.render(shown, ROOT / shown, section)


def test_the_script_rewrites_only_its_section(tmp_path):
    results = tmp_path / "results"
    (results / "benchmarks" / "train").mkdir(parents=True)
    rows = [{"dataset": "d", "model": "mlp", "glitch": g, "ratio": 10, "target": "all", "signal": s,
             "f1_mean": f1, "f1_std": 0.0, "n_seeds": 2}
            for g in ("uniform", "far_ca") for s, f1 in (("si", 0.8), ("mi", 0.1), ("aai", 0.5), ("gd_class", 0.4),
                                                           ("knn_distance", 0.9))]
    pd.DataFrame(rows).to_csv(results / "summary.csv", index=False)
    pd.DataFrame([{"dataset": "d", "model": "mlp", "glitch": "uniform", "ratio": 10, "accuracy_validation_mean": 0.9,
                   "accuracy_validation_std": 0.01}]).to_csv(results / "accuracy_summary.csv", index=False)
    (results / "benchmarks" / "train" / "a.tsv").write_text("s\th:m:s\n1.5\t0:00:01\n")
    (tmp_path / ".snakemake" / "log").mkdir(parents=True)
    (tmp_path / ".snakemake" / "log" / "2026-01-01T000000.snakemake.log").write_text("Finished.\nElapsed time: 0:04:23.51\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{report.START}\nstale-section\n{report.END}\n\ntail\n")
    report.main(["readme", "--results", str(results), "--docs", str(tmp_path / "docs"), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("# Title\n\n") and text.endswith("\n\ntail\n") and "stale-section" not in text
    assert "| Self-Influence | 0.80 | 0.80 |" in text and "| kNN distance | **0.90** | **0.90** |" in text
    assert "SI best of the study's four signals: holds" in text and "train 2 s (1 jobs)" in text
    assert "Wall time of the run (Snakemake's log of its last invocation): 4 min 24 s." in text


@pytest.mark.parametrize("section", sorted(report.BENCHMARK_SECTIONS))
def test_readme_benchmark_sections_are_the_benchmark_scripts_output(section):
    readme = (ROOT / "README.md").read_text()
    results_md, run = report.BENCHMARK_SECTIONS[section]
    assert report.section_text(readme, section) == report.render_benchmark(ROOT / results_md, run, section)
