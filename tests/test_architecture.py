"""Registries drive the schema and plots; planning imports no torch; code fingerprints follow the import graph."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from influence_signals import config as cfg
from influence_signals import fingerprint
from influence_signals.companions import COMPANIONS
from influence_signals.datasets import DATASETS
from influence_signals.glitches import GLITCHES
from influence_signals.models import MODELS
from influence_signals.plots import FIGURE_KINDS
from influence_signals.signals import SIGNALS, labels

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "influence_signals"
STAGES = ["prepare", "inject", "train", "dense_influence", "compute_signals", "evaluate", "signals", "aggregate", "figure",
          "table"]


def test_planning_imports_neither_torch_nor_sklearn():
    """What the Snakefile imports (config checks, registries, fingerprints) leaves torch and scikit-learn unimported."""
    code = ("import sys, yaml; from influence_signals import config, fingerprint, datasets, glitches, models, plots;"
            f"config.validate(yaml.safe_load(open({str(ROOT / 'config.yaml')!r})));"
            "[fingerprint.stage_fingerprint(s) for s in " + repr(STAGES) + "];"
            "print(sorted(m for m in ('torch', 'sklearn', 'seaborn', 'captum') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_schema_enums_come_from_the_registries():
    schema = cfg.schema()
    grid = schema["$defs"]["grid"]["items"]["properties"]
    assert grid["glitches"]["items"]["enum"] == GLITCHES.names()
    assert grid["models"]["items"]["enum"] == MODELS.names()
    assert schema["properties"]["datasets"]["additionalProperties"]["properties"]["loader"]["enum"] == DATASETS.names()
    assert schema["properties"]["figures"]["additionalProperties"]["properties"]["kind"]["enum"] == FIGURE_KINDS.names()
    assert set(SIGNALS.names()) <= set(schema["properties"]["plot_signals"]["items"]["enum"])
    assert set(labels()) == set(schema["properties"]["plot_signals"]["items"]["enum"])  # every score has a plot label
    assert schema["properties"]["debug"]["properties"]["companions"]["items"]["enum"] == COMPANIONS.names()


def test_every_stage_fingerprint_is_derived_and_distinct_where_the_code_differs():
    prints = {stage: fingerprint.stage_fingerprint(stage) for stage in STAGES}
    assert len(set(prints.values())) == len(STAGES)
    used, modules = fingerprint.stage_dependencies("compute_signals")
    assert {"signals", "influence", "baselines", "factors"} <= modules and "glitches" not in modules
    assert fingerprint.stage_dependencies("prepare")[1] == {"artifacts", "datasets", "registry"}


def _edited_copy(tmp_path: Path, module: str, old: str, new: str) -> Path:
    copy = tmp_path / "influence_signals"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / f"{module}.py"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return copy


def test_editing_a_helper_used_by_signals_reruns_signals_and_what_follows_only(tmp_path):
    """``slope`` is a helper of the signals module that no stage names: editing it changes exactly these fingerprints."""
    before = {stage: fingerprint.stage_fingerprint(stage) for stage in STAGES}
    edited = _edited_copy(tmp_path, "signals", "    t -= t.mean()\n", "    t = t - t.mean()  # edited\n")
    after = {stage: fingerprint.stage_fingerprint(stage, edited) for stage in STAGES}
    changed = {stage for stage in STAGES if before[stage] != after[stage]}
    assert changed == {"compute_signals", "signals", "aggregate", "figure", "table"}  # figures and tables read signal labels


@pytest.mark.parametrize("module,old,new,expected", [
    ("stages", 'JOB_KEYS = ("dataset", "model", "glitch", "ratio")', 'JOB_KEYS = ("dataset", "model", "glitch", "ratio", "seed")',
     {"aggregate"}),  # a module constant of stages reaches the stage that uses it, and no other
    ("training", "    return seed * 100_003 + epoch", "    return seed * 100_019 + epoch",
     {"train", "dense_influence", "compute_signals", "signals", "aggregate", "figure", "table"}),
    ("influence", "        return len(self.checkpoints)\n", "        return len(self.checkpoints)  # edited\n",
     {"dense_influence", "compute_signals", "signals", "aggregate", "figure", "table"}),  # the engine: training stays cached
])
def test_a_changed_constant_or_helper_reaches_its_stages(tmp_path, module, old, new, expected):
    before = {stage: fingerprint.stage_fingerprint(stage) for stage in STAGES}
    edited = _edited_copy(tmp_path, module, old, new)
    changed = {stage for stage in STAGES if fingerprint.stage_fingerprint(stage, edited) != before[stage]}
    assert changed == expected


def test_a_toy_signal_and_a_toy_glitch_added_in_one_place_each_appear_everywhere(monkeypatch):
    """One registry entry each: the schema's enums, a mixture's components, the plot labels, the README's
    tables, the debug command's signals and the computed scores follow without another edit."""
    from influence_signals import datasets, glitches, report, signals

    monkeypatch.setattr(signals.SIGNALS, "_entries", dict(signals.SIGNALS._entries))
    monkeypatch.setattr(glitches.GLITCHES, "_entries", dict(glitches.GLITCHES._entries))
    signals.SIGNALS.add(signals.Signal(name="toy_signal", label="Toy", needs=("self_influence",), kind="influence",
                                       of_view=lambda v: -v.si))
    def toy(train, ratio, rng):
        flipped, table = glitches.uniform_noise(train, ratio, rng)
        table.loc[table["glitched"], "glitch"] = "toy_glitch"
        return flipped, table

    glitches.GLITCHES.add(glitches.GlitchType(name="toy_glitch", label="Toy glitch", inject=toy, kind="mislabel"))
    schema = cfg.schema()
    assert "toy_signal" in schema["properties"]["signals"]["properties"]["names"]["items"]["enum"]
    assert {"toy_signal", "toy_signal_first"} <= set(schema["properties"]["plot_signals"]["items"]["enum"])
    assert "toy_glitch" in schema["$defs"]["grid"]["items"]["properties"]["glitches"]["items"]["enum"]
    mixture = schema["properties"]["glitch_options"]["properties"]["mixture"]["properties"]
    assert "toy_glitch" in mixture["components"]["propertyNames"]["enum"] and "toy_glitch" in mixture
    assert "toy_signal" in signals.table_names() and "toy_signal" in signals.cross_fitted_names()
    assert signals.labels()["toy_signal_first"] == "Toy, first epoch"
    data = datasets.make_tabular(n_rows=100, n_features=3, n_classes=2, seed=0)
    mixed, table = glitches.inject(data, "mixture", 0.2, 0, options={"components": {"toy_glitch": 0.5, "uniform": 0.5}})
    assert set(table["glitch"]) == {"none", "toy_glitch", "uniform"} and len(mixed.y) == 100
    assert "toy_signal" in report.table_names()
