"""The whole workflow through Snakemake on a tiny grid, in a temporary folder."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())  # the snakemake-workflows `.test/` config


def snakemake(folder: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(folder), *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-3000:])
    return result


def planned(folder: Path, *args: str) -> dict[str, int]:
    """Rule -> job count from a dry run's job-stats table (empty when there is nothing to do)."""
    output = snakemake(folder, "-n", *args).stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", output, flags=re.MULTILINE))
    counts.pop("total", None)
    return {rule: int(n) for rule, n in counts.items()}


def write_config(folder: Path, config: dict) -> None:
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline")
    write_config(folder, TINY)
    # prepare: digits, its far-CA source shapes, the pre-training set, synth_tabular once per seed
    assert planned(folder) == {"prepare": 5, "inject": 3, "pretrain": 1, "train": 3, "signals": 3, "aggregate": 1,
                               "all": 1}  # the train job records the TracIn factors: no influence job
    snakemake(folder, "--cores", "2")
    return folder


@pytest.mark.pipeline
def test_every_stage_writes_sane_outputs(finished):
    run = finished / "results/runs/synth_tabular/mlp/uniform/r10/s0"
    errors = pd.read_csv(finished / "results/data/synth_tabular/uniform/r10/s0/errors.csv")
    assert errors["glitched"].sum() == 40  # 10 % of 400 training rows
    assert len(list((run / "checkpoints").glob("*.pt"))) == 3
    assert pd.read_csv(run / "history.csv")["val_accuracy"].iloc[-1] > 0.5
    scores = pd.read_csv(run / "scores.csv")
    assert len(scores) == 400 and {"si", "mi", "aai", "gd_class", "aum"} <= set(scores.columns)
    assert np.isfinite(scores.drop(columns=["row", "id"]).to_numpy()).all()
    metrics = pd.read_csv(run / "metrics.csv").set_index("signal")
    assert metrics["f1"].between(0, 1).all() and metrics.loc["si", "f1"] > 0.25  # chance is 0.1
    summary = pd.read_csv(finished / "results/summary.csv")
    assert set(summary["dataset"]) == {"digits", "synth_tabular"}
    assert (summary.query("dataset == 'synth_tabular'")["n_seeds"] == 2).all()
    assert (finished / "results/summary.pdf").read_bytes().startswith(b"%PDF")
    assert (finished / "results/logs/train/synth_tabular/mlp/uniform/r10/s0.log").read_text().count("epoch") >= 3
    assert (finished / "results/benchmarks/signals/synth_tabular/mlp/uniform/r10/s0.tsv").exists()
    warm_jobs = [log for log in (finished / "results/logs").rglob("*.log") if "warm start: forked" in log.read_text()]
    assert warm_jobs, "no job ran in the warm server's children"  # the jobs after the first seconds do


@pytest.mark.pipeline
def test_nothing_to_do_after_a_full_run(finished):
    assert planned(finished) == {}


def reordered(value):
    """The same config with every mapping's keys in reverse order."""
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(list(value))}
    return [reordered(v) for v in value] if isinstance(value, list) else value


@pytest.mark.pipeline
def test_the_same_config_with_keys_reordered_reruns_nothing(finished):
    config = yaml.safe_load((finished / "config.yaml").read_text())
    (finished / "config.yaml").write_text(yaml.safe_dump(reordered(config), sort_keys=False))
    try:
        assert planned(finished) == {}
    finally:
        write_config(finished, TINY)


@pytest.mark.pipeline
def test_changed_stage_parameter_reruns_only_that_stage_and_what_follows(finished):
    changed = yaml.safe_load((finished / "config.yaml").read_text())
    changed["signals"]["k_neighbours"] = 3
    write_config(finished, changed)
    try:
        assert planned(finished) == {"signals": 3, "aggregate": 1, "all": 1}
        changed["influence"]["weighting"] = "lr_over_batch"  # applied when reading the factors: training stays
        write_config(finished, changed)
        assert planned(finished) == {"signals": 3, "aggregate": 1, "all": 1}
        changed["influence"]["write_matrix"] = True
        write_config(finished, changed)
        assert planned(finished) == {"dense_influence": 3, "signals": 3, "aggregate": 1, "all": 1}
        changed["train"]["models"]["mlp"]["lr"] = 0.05
        write_config(finished, changed)
        assert planned(finished) == {"train": 2, "dense_influence": 3, "signals": 3, "aggregate": 1, "all": 1}
    finally:
        write_config(finished, TINY)


@pytest.mark.pipeline
def test_the_captum_backend_gives_the_engines_scores(finished, tmp_path):
    """``influence.backend: captum`` runs Captum's TracInCP on the checkpoints and the signals from its matrices."""
    import shutil

    shutil.copytree(finished, tmp_path / "copy", symlinks=True)
    captum = {**TINY, "influence": {**TINY["influence"], "backend": "captum"}}
    write_config(tmp_path / "copy", captum)
    assert planned(tmp_path / "copy") == {"dense_influence": 3, "signals": 3, "aggregate": 1, "all": 1}
    snakemake(tmp_path / "copy", "--cores", "2")
    for run in ("synth_tabular/mlp/uniform/r10/s0", "digits/resnet20/far_ca/r10/s0"):
        ours = pd.read_csv(finished / "results/runs" / run / "scores.csv")
        theirs = pd.read_csv(tmp_path / "copy/results/runs" / run / "scores.csv")
        for signal in ("si", "mi", "aai", "gd_class", "cnci"):
            scale = np.abs(ours[signal]).max()
            np.testing.assert_allclose(theirs[signal], ours[signal], rtol=1e-3, atol=1e-4 * scale, err_msg=f"{run} {signal}")


@pytest.mark.pipeline
@pytest.mark.parametrize("key,value,message", [
    ("grid", [{**TINY["grid"][0], "ratios": [60]}], "ratios"),
    ("grid", [{**TINY["grid"][0], "seeds": ["one"]}], "seeds"),
    ("grid", [{**TINY["grid"][0], "datasets": ["imagenet"]}], "imagenet"),
    ("datasets", {"digits": {}, "mnistt": {}}, "mnistt"),
])
def test_bad_config_stops_before_any_job(tmp_path, key, value, message):
    write_config(tmp_path, {**TINY, key: value})
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.pipeline
def test_a_corrupted_checkpoint_is_noticed_by_a_plain_rerun(finished):
    """A checkpoint whose size differs from its run's manifest stops planning with a message naming it."""
    folder = finished / "results/runs/synth_tabular/mlp/uniform/r10/s1/checkpoints"
    victim = sorted(folder.glob("*.pt"))[1]
    original = victim.read_bytes()
    try:
        victim.write_bytes(original[: len(original) // 2])
        result = snakemake(finished, "-n", check=False)
        assert result.returncode != 0 and victim.name in result.stdout + result.stderr
    finally:
        victim.write_bytes(original)
