"""Figure targets plan only their own jobs; the paper preset plans its grid; figures render."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from influence_signals import config as cfg
from influence_signals import plots

ROOT = Path(__file__).resolve().parents[1]


def dry_run(*args: str) -> dict[str, int]:
    command = [sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.MULTILINE)}
    counts.pop("total", None)
    return counts


def test_a_figure_target_plans_only_its_own_jobs(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg.validate(config)
    jobs = cfg.target_jobs(config, "figures", "fig4b")
    counts = dry_run("results/fig4b.pdf", "-d", str(tmp_path), "--configfile", str(ROOT / "config.yaml"))
    splits = {cfg.split_seed(config, job.seed) for job in jobs}  # one prepared split per seed (resample_per_seed)
    assert counts == {"prepare": len(splits), "inject": len(jobs), "train": len(jobs),
                      "signals": len(jobs), "figure": 1}  # signals and evaluate share one job


def test_paper_preset_plans_the_study_grid(tmp_path):
    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    jobs = cfg.all_jobs(paper)
    # tabular: 3 data sets x 3 models x {uniform, class_dependent, near_ca at 10 %; uniform, near_ca at
    # 1, 5, 20, 30 %}; images: 3 x 3 x {uniform, far_ca, outlier at 10 %; uniform, far_ca at 4 more ratios}
    assert len(jobs) == 5 * (9 * (3 + 2 * 4) + 9 * (3 + 2 * 4))
    counts = dry_run("-d", str(tmp_path), "--configfile", str(ROOT / "config/paper.yaml"))
    assert counts["train"] == len(jobs) == counts["signals"]
    assert counts["figure"] == 7 and counts["table"] == 1
    assert counts["prepare"] == 6 * 5  # six data sets, each subsample redrawn per seed as the study does


def fake_metrics(kind: str) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1):
        for ratio in (2, 10):
            for signal in ("si", "mi", "aai", "detector"):
                row = {"dataset": "d", "model": "mlp", "glitch": "uniform", "ratio": ratio, "seed": seed,
                       "signal": signal, "f1": rng.random()}
                rows.extend([{**row, "epoch": e} for e in (1, 2)] if kind == "epochs" else [row])
    return pd.DataFrame(rows)


@pytest.mark.parametrize("kind", plots.FIGURE_KINDS.names())
def test_every_figure_kind_renders_a_pdf(tmp_path, kind):
    path = tmp_path / f"{kind}.pdf"
    plots.FIGURE_KINDS[kind].draw(fake_metrics(kind), str(path), ["si", "mi", "aai", "detector"], "title", "a caption")
    assert path.read_bytes().startswith(b"%PDF")


def test_table1_by_hand(tmp_path):
    accuracy = pd.DataFrame({"dataset": "d", "model": "mlp", "glitch": "near_ca", "ratio": 10, "seed": [0, 1],
                             "accuracy_glitched": [0.5, 0.7], "accuracy_clean_train": [0.9, 0.9],
                             "accuracy_validation": [0.8, 0.8]})
    table = plots.accuracy_table(accuracy, str(tmp_path / "t.csv"), str(tmp_path / "t.md"))
    assert table.loc[0, "accuracy_glitched_mean"] == pytest.approx(0.6)
    assert "0.600 ± 0.141" in (tmp_path / "t.md").read_text()


def test_the_studys_signals_are_plain_and_every_other_is_set_apart():
    look = plots.styles(["si", "mi", "aai", "gd_class", "sign_aware", "cnci", "detector"])
    assert all(look[s].study and not look[s].hatch for s in ("si", "mi", "aai", "gd_class"))
    assert all(not look[s].study and look[s].hatch and look[s].line == "--" for s in ("sign_aware", "cnci", "detector"))
    assert look["detector"].colour == plots.DETECTOR_COLOUR
    assert len({look[s].colour for s in look}) == len(look)  # one colour per series
    with pytest.raises(ValueError, match="at most 8"):
        plots.styles(["si", "mi", "aai", "gd_class", "sign_aware", "cnci", "pcid", "cfrank", "detector"])


def test_more_than_eight_series_in_a_figure_are_refused_by_the_config():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["plot_signals"] = ["si", "mi", "aai", "gd_class", "sign_aware", "cnci", "pcid", "cfrank", "detector"]
    with pytest.raises(cfg.ConfigError, match="plot_signals"):
        cfg.validate(config)


def test_the_overview_heatmap_draws_every_signal_grouped_by_family(tmp_path):
    from influence_signals.signals import family, table_names

    names = table_names()
    summary = pd.DataFrame([{"dataset": "d", "model": "mlp", "glitch": g, "ratio": 10, "target": "all", "signal": s,
                             "f1_mean": 0.5} for g in ("uniform", "outlier") for s in names])
    plots.overview(summary, str(tmp_path / "summary.pdf"), names)
    assert (tmp_path / "summary.pdf").read_bytes().startswith(b"%PDF")
    families = [family(s) for s in names]
    assert {"study", "follow-up", "influence", "dynamics", "novelty", "baseline", "detector"} <= set(families)
