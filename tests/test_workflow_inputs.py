"""A user's config runs only its own jobs; the user's files are inputs; errors reach the job's log; lint is clean."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from test_pipeline import planned, snakemake

ROOT = Path(__file__).resolve().parents[1]


def write_table(path: Path, n: int = 120, classes: int = 3, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.normal(size=(n, 3)) + labels[:, None]
    rows = [f"id{i},{a:.4f},{b:.4f},{c:.4f},c{y}" for i, ((a, b, c), y) in enumerate(zip(x, labels))]
    path.write_text("key,a,b,c,target\n" + "\n".join(rows) + "\n")


def user_config(folder: Path, table: Path) -> Path:
    mine = {"datasets": {"mine": {"loader": "table", "path": str(table), "label": "target", "id": "key"}},
            "train": {"models": {"mlp": {"epochs": 2, "lr": 0.1, "batch_size": 32}}},
            "grid": [{"datasets": ["mine"], "models": ["mlp"], "glitches": ["uniform"], "ratios": [10], "seeds": [0]}]}
    path = folder / "mine.yaml"
    path.write_text(yaml.safe_dump(mine))
    return path


def test_a_configfile_runs_only_what_it_declares(tmp_path):
    shutil.copyfile(ROOT / "config.yaml", tmp_path / "config.yaml")  # the default study must not leak in
    write_table(tmp_path / "mine.csv")
    mine = user_config(tmp_path, tmp_path / "mine.csv")
    counts = planned(tmp_path, "--configfile", str(mine))
    assert counts == {"prepare": 1, "inject": 1, "train": 1, "signals": 1,
                      "aggregate": 1, "all": 1}


def test_editing_the_users_table_reruns_prepare(tmp_path):
    write_table(tmp_path / "mine.csv")
    mine = user_config(tmp_path, tmp_path / "mine.csv")
    snakemake(tmp_path, "--configfile", str(mine), "--cores", "1", "results/data/mine/split0/train.npz")
    assert "prepare" not in planned(tmp_path, "--configfile", str(mine))
    time.sleep(0.01)
    write_table(tmp_path / "mine.csv", seed=1)
    assert planned(tmp_path, "--configfile", str(mine))["prepare"] == 1


def test_a_failing_job_writes_its_error_into_its_log(tmp_path):
    (tmp_path / "mine.csv").write_text("key,a,target\n" + "".join(f"id{i},{i},same\n" for i in range(10)))
    mine = user_config(tmp_path, tmp_path / "mine.csv")
    result = snakemake(tmp_path, "--configfile", str(mine), "--cores", "1", "results/data/mine/split0/train.npz",
                       check=False)
    assert result.returncode != 0
    log = (tmp_path / "results/logs/prepare/mine_split0.log").read_text()
    assert "every row has label 'same'" in log and "Traceback" in log
    assert not (tmp_path / "results/data/mine/split0/train.npz").exists()  # no half-written output


def test_snakemake_lint_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "-s", str(ROOT / "Snakefile")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "good condition" in result.stdout + result.stderr, result.stdout[-3000:]


def test_image_names_with_braces_or_angle_brackets_plan_and_editing_one_reruns_prepare(tmp_path):
    from PIL import Image

    for name in ("a{x}", "b<word>"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "images" / name / f"{name}_{i}.png")
    mine = {"datasets": {"pics": {"loader": "image_folder", "path": str(tmp_path / "images"), "size": 8}},
            "train": {"models": {"resnet20": {"pretrained": "none", "epochs": 1}}},
            "grid": [{"datasets": ["pics"], "models": ["resnet20"], "glitches": ["none"], "ratios": [10], "seeds": [0]}]}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(mine))
    target = "results/data/pics/split0/train.npz"
    assert planned(tmp_path, target, "--configfile", str(path))["prepare"] == 1  # targets before --configfile
    snakemake(tmp_path, target, "--cores", "1", "--configfile", str(path))
    assert "prepare" not in planned(tmp_path, target, "--configfile", str(path))
    time.sleep(0.01)
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / "images" / "a{x}" / "a{x}_0.png")
    assert planned(tmp_path, target, "--configfile", str(path))["prepare"] == 1


def test_a_config_key_given_twice_is_refused(tmp_path):
    write_table(tmp_path / "mine.csv")
    text = user_config(tmp_path, tmp_path / "mine.csv").read_text()
    (tmp_path / "twice.yaml").write_text(text + "train:\n  models: {}\n")  # a second `train`: YAML keeps the last
    result = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "twice.yaml"), check=False)
    assert result.returncode != 0 and "the key 'train' is given twice" in result.stdout + result.stderr


def test_every_rule_a_profile_names_exists():
    import re

    workflow = ROOT / "src/influence_signals/workflow"
    text = "".join(p.read_text() for p in [workflow / "Snakefile", *(workflow / "rules").glob("*.smk")])
    rules = set(re.findall(r"^rule (\w+):", text, flags=re.MULTILINE))
    for profile in (ROOT / "profiles").glob("*/config.yaml"):
        settings = yaml.safe_load(profile.read_text())
        named = {*settings.get("set-threads", {}), *settings.get("set-resources", {})}
        assert named <= rules, f"{profile} names rules that do not exist: {sorted(named - rules)}"
