"""The default config's models learn the embedded data: clean validation accuracy above the README's floors."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from influence_signals import config as cfg
from influence_signals import stages

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
FLOORS = {("digits", "resnet20"): 0.9, ("synth_tabular", "mlp"): 0.8, ("synth_tabular", "resnet"): 0.8,
          ("synth_tabular", "ft_transformer"): 0.6}


def prepared(tmp_path: Path, name: str) -> tuple[str, str]:
    train, val = str(tmp_path / f"{name}_train.npz"), str(tmp_path / f"{name}_val.npz")
    stages.prepare(name, CONFIG["datasets"][name], "data", False, 1.0, 0.2, 0, train, val)
    return train, val


@pytest.mark.parametrize("dataset,model", sorted(FLOORS))
def test_clean_validation_accuracy_floor(tmp_path, dataset, model):
    train, val = prepared(tmp_path, dataset)
    settings = cfg.train_settings(CONFIG, dataset, model)
    pretrained = None
    if settings["pretrained"] == "pipeline":
        source_train, source_val = prepared(tmp_path, cfg.pretrain_source(CONFIG, model))
        pretrained = str(tmp_path / "pretrained")
        stages.train(source_train, source_val, model, cfg.pretrain_settings(CONFIG, model), 0, False, pretrained,
                     str(tmp_path / "pretrain.csv"))
    stages.train(train, val, model, settings, 0, False, str(tmp_path / "ckpt"), str(tmp_path / "history.csv"), pretrained)
    final = pd.read_csv(tmp_path / "history.csv")["val_accuracy"].iloc[-1]
    assert final >= FLOORS[(dataset, model)], f"{dataset}/{model}: {final:.3f}"
