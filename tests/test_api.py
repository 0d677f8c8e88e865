"""The README's Python API example runs as written; the API's pieces against independent computations."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import influence_signals as ins

ROOT = Path(__file__).resolve().parents[1]


def test_the_readmes_api_example_runs_and_finds_the_wrong_labels(tmp_path, capsys, monkeypatch):
    block = (ROOT / "README.md").read_text().split("<!-- api:start -->", 1)[1].split("<!-- api:end -->", 1)[0]
    code = re.search(r"```python\n(.*?)```", block, flags=re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
    printed = capsys.readouterr().out
    flagged = int(re.search(r"(\d+) of 12 wrong labels flagged", printed).group(1))
    assert flagged >= 9, printed
    assert (tmp_path / "wine_report.html").read_text().startswith("<!DOCTYPE html>")
    issues = namespace["issues"]
    assert len(issues.table) == 178 and issues.table["id"].is_unique
    assert list(issues.summary().index) == ["mislabel", "anomaly", "none"] and issues.summary()["rows"].sum() == 178
    assert len(namespace["self_influence"]) == 178 and len(namespace["signals"]) == 100


def test_tracin_self_influence_equals_per_row_gradients_by_brute_force():
    """sum_t lr_t |grad_w of the last layer's loss|^2 for each row, with autograd, checkpoint by checkpoint."""
    torch.manual_seed(0)
    x, y = torch.randn(30, 5), torch.randint(0, 3, (30,))
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    states, rates = [], [0.1, 0.05]
    for rate in rates:
        for p in model.parameters():
            p.data -= rate * torch.randn_like(p) * 0.1
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    ours = ins.TracIn(model, model[2], states, rates).self_influence(x, y)
    expected = np.zeros(30)
    for state, rate in zip(states, rates):
        model.load_state_dict(state)
        for i in range(30):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
            expected[i] += rate * sum(float((p.grad ** 2).sum()) for p in model[2].parameters())
    np.testing.assert_allclose(ours, expected, rtol=1e-4)


def test_tracin_refuses_a_final_layer_that_is_not_the_models_linear_head():
    model = torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False))
    with pytest.raises(ValueError, match="with a bias"):
        ins.TracIn(model, model[0], [model.state_dict()], 0.1)
    with pytest.raises(ValueError, match="not a module of model"):
        ins.TracIn(model, torch.nn.Linear(4, 2), [model.state_dict()], 0.1)


def test_detect_checks_its_arrays_and_flags_the_disagreements_it_counts():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4) * 0.3, 300)
    labels = probs.argmax(1)
    labels[:30] = (labels[:30] + 2) % 4
    verdict = ins.detect(labels, probs)
    assert (verdict["glitch_type"].iloc[:30] == "mislabel").mean() >= 0.9 and (verdict["glitch_type"] != "anomaly").all()
    with pytest.raises(ValueError, match="labels must be integers"):
        ins.detect(labels + 4, probs)
    with pytest.raises(ValueError, match="summing to 1"):
        ins.detect(labels, probs * 2)


def test_find_issues_refuses_bad_input_before_any_work(tmp_path):
    import pandas as pd

    from influence_signals.config import ConfigError

    frame = pd.DataFrame({"a": range(20), "y": ["p", "q"] * 10})
    with pytest.raises(ConfigError, match="give the label column"):
        ins.find_issues(frame, out=tmp_path / "out")
    with pytest.raises(ConfigError, match="label column 'z' not in the DataFrame"):
        ins.find_issues(frame, label="z", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            ins.find_issues(frame, label="y", device="cuda", out=tmp_path / "gpu")
        assert not (tmp_path / "gpu").exists()  # refused before the output folder is made


def test_a_large_table_is_announced_as_a_long_run_before_any_work(tmp_path, monkeypatch):
    import pandas as pd

    from influence_signals import api

    frame = pd.DataFrame({"a": np.arange(60.0), "b": np.arange(60.0) % 7, "y": ["p", "q", "r"] * 20})
    said: list[str] = []
    monkeypatch.setattr(api, "LARGE_ROWS", 50)
    ins.find_issues(frame, label="y", out=tmp_path / "big", dry_run=True, progress=said.append)
    assert any(line.startswith("note: 60 rows x 3 seeds x 5 folds") for line in said), said
    said.clear()
    ins.find_issues(frame, label="y", out=tmp_path / "small", dry_run=True, progress=said.append, seeds=1, folds=3)
    assert not any(line.startswith("note:") for line in said), said
