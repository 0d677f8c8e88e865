"""The default config's models learn the real data: clean validation accuracy above floors, for every seed.

Each floor is the minimum over three seeds, set from measurements on this machine (2-core AMD EPYC, AVX2)
with a margin, so that a result that depends on the CPU's float path cannot pass by luck on one seed.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from influence_signals import config as cfg
from influence_signals import stages

ROOT = Path(__file__).resolve().parents[1]
CONFIG = cfg.validate(yaml.safe_load((ROOT / "config.yaml").read_text()))
SEEDS = (0, 1, 2)
# measured minimum over seeds 0-2 here, minus a margin (the note lists mean and sd over five seeds)
# measured (5 seeds, 1 thread, channels-last convolutions, BatchNorm re-estimated on 1,024 rows): ResNet-20 / mnist5k
# 0.946 +/- 0.007 (min 0.938); tabular ResNet 0.953 +/- 0.010 (min 0.939); earlier: MLP / segment 0.93 0.94 0.93;
# FT-Transformer (seeds 0-4) 0.76 0.80 0.80 0.83 0.81 (neither has a convolution or BatchNorm)
FLOORS = {("mnist5k", "resnet20"): 0.88, ("segment", "mlp"): 0.88, ("segment", "resnet"): 0.88,
          ("segment", "ft_transformer"): 0.70}


def prepared(folder: Path, name: str, seed: int) -> tuple[str, str]:
    train, val, pool = (str(folder / f"{name}_{seed}_{part}.npz") for part in ("train", "val", "pool"))
    prepare = CONFIG["prepare"]
    stages.prepare(name, CONFIG["datasets"][name], "data", False, prepare["fraction"], prepare["val_fraction"], seed,
                   train, val, pool)
    return train, val


def validation_accuracy(folder: Path, dataset: str, model: str, seed: int, pretrained: str | None) -> float:
    train, val = prepared(folder, dataset, seed)
    settings = cfg.train_settings(CONFIG, dataset, model)
    stages.train(train, val, model, settings, seed, False, str(folder / f"ckpt{seed}"), str(folder / f"h{seed}.csv"),
                 pretrained)
    return float(pd.read_csv(folder / f"h{seed}.csv")["val_accuracy"].iloc[-1])


@pytest.mark.parametrize("dataset,model", sorted(FLOORS))
def test_clean_validation_accuracy_floor_over_seeds(tmp_path, dataset, model):
    pretrained = None
    if cfg.train_settings(CONFIG, dataset, model)["pretrained"] == "pipeline":
        source = cfg.pretrain_source(CONFIG, model)
        source_train, source_val = prepared(tmp_path, source, CONFIG["prepare"]["seed"])
        pretrained = str(tmp_path / "pretrained")
        stages.train(source_train, source_val, model, cfg.pretrain_settings(CONFIG, model), CONFIG["prepare"]["seed"],
                     False, pretrained, str(tmp_path / "pretrain.csv"))
    accuracies = [validation_accuracy(tmp_path, dataset, model, seed, pretrained) for seed in SEEDS]
    assert min(accuracies) >= FLOORS[(dataset, model)], f"{dataset}/{model}: {accuracies}"
