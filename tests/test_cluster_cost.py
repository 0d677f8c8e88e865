"""The cluster cost model against a hand-worked case: two measured jobs, one target grid."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import cluster_cost  # noqa: E402

from influence_signals import config as cfg  # noqa: E402


def measured_run(tmp_path: Path) -> tuple[Path, dict]:
    config = cfg.validate({"datasets": {"segment": {}}, "threads": {"train": 2, "signals": 1},
                           "train": {"models": {"mlp": {"epochs": 10}}},
                           "grid": [{"datasets": ["segment"], "models": ["mlp"], "glitches": ["uniform"], "ratios": [10],
                                     "seeds": [0, 1]}]})
    results = tmp_path / "results"
    for seed, (seconds, n_train) in enumerate([(4.0, 100), (6.0, 100)]):
        job = results / "data" / "segment" / "uniform" / "r10" / f"s{seed}"
        job.mkdir(parents=True)
        np.savez(job / "train.npz", y=np.zeros(n_train))
        split = results / "data" / "segment" / f"split{cfg.split_seed(config, seed)}"
        split.mkdir(parents=True, exist_ok=True)
        np.savez(split / "val.npz", y=np.zeros(25))
        for stage, s in (("train", seconds), ("signals", seconds / 2)):
            bench = results / "benchmarks" / stage / "segment" / "mlp" / "uniform" / "r10" / f"s{seed}.tsv"
            bench.parent.mkdir(parents=True, exist_ok=True)
            bench.write_text(f"s\th:m:s\n{s}\t0:00:0{int(s)}\n")
    return results, config


def test_training_is_priced_per_row_and_epoch_from_the_measured_jobs(tmp_path):
    results, config = measured_run(tmp_path)
    measured = cluster_cost.measured_jobs(results, config)
    # 4 s and 6 s on 2 threads for 100 rows x 10 epochs: 8e-3 and 12e-3 core-s per row-epoch, median 1e-2
    assert cluster_cost.train_rates(measured) == {"mlp": pytest.approx(1e-2)}
    target = dict(config, grid=[{**config["grid"][0], "seeds": [0, 1, 2]}])
    jobs = cluster_cost.estimate(measured, config, target)
    train = jobs[jobs["stage"] == "train"]
    assert len(train) == 3 and train["core_s"].tolist() == pytest.approx([1e-2 * 100 * 10] * 3)
    # signals: 2 s and 3 s for 100 x 25; the least-squares fit's prediction at the same size is their mean
    assert jobs.loc[jobs["stage"] == "signals", "core_s"].tolist() == pytest.approx([2.5] * 3)
    table = cluster_cost.report(jobs, cores=4, nodes=[1])
    assert "| train | 3 | 0.0 |" in table and "| total |" in table
