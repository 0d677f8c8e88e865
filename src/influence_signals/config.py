"""The pipeline's configuration: grid expansion and each stage's settings for one job.

Snakemake rules pass these settings to jobs as ``params``, so a changed setting reruns exactly the jobs
it reaches; nothing reads the config inside a job.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .datasets import LOADERS, DataError
from .glitches import GLITCHES, GlitchError
from .models import MODELS


@dataclass(frozen=True, order=True)
class Job:
    dataset: str
    model: str
    glitch: str
    ratio: int  # percent
    seed: int

    @property
    def wildcards(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "model": self.model, "glitch": self.glitch, "ratio": self.ratio, "seed": self.seed}


def expand_grid(blocks: list[Mapping[str, Any]]) -> list[Job]:
    """The union of the cross products of each grid block, sorted and without duplicates."""
    jobs = set()
    for block in blocks:
        for combo in itertools.product(block["datasets"], block["models"], block["glitches"], block["ratios"], block["seeds"]):
            jobs.add(Job(*combo))
    return sorted(jobs)


def grid_blocks(config: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every grid block of the config with its location: the main grid, then each figure's and table's."""
    for index, block in enumerate(config.get("grid", [])):
        yield f"grid[{index}]", block
    for section in ("figures", "tables"):
        for name, target in (config.get(section) or {}).items():
            for index, block in enumerate(target["grid"]):
                yield f"{section}.{name}.grid[{index}]", block


def all_jobs(config: Mapping[str, Any]) -> list[Job]:
    """Every job the config names: the main grid and the grids of all figures and tables."""
    return expand_grid([block for _, block in grid_blocks(config)])


def target_jobs(config: Mapping[str, Any], section: str, name: str) -> list[Job]:
    """The jobs one figure or table needs, and no others."""
    return expand_grid(config[section][name]["grid"])


def check(config: Mapping[str, Any]) -> None:
    """Semantic checks the JSON schema cannot express; errors name the offending key."""
    datasets = config.get("datasets", {})
    for name, options in datasets.items():
        loader = (options or {}).get("loader", name)
        if loader not in LOADERS and loader != "table":
            raise DataError(f"config datasets.{name}: unknown data set {loader!r}; known: {sorted(LOADERS)} or loader `table`")
    for location, block in grid_blocks(config):
        where = f"config {location}"
        for name in block["datasets"]:
            if name not in datasets:
                raise DataError(f"{where}.datasets: {name!r} is not declared under `datasets`")
        for name in block["models"]:
            if name not in MODELS:
                raise ValueError(f"{where}.models: unknown model {name!r}; known: {sorted(MODELS)}")
        for glitch in block["glitches"]:
            if glitch not in GLITCHES:
                raise GlitchError(f"{where}.glitches: unknown glitch {glitch!r}; known: {GLITCHES}")
        for ratio in block["ratios"]:
            if not 0 < ratio <= 50:
                raise GlitchError(f"{where}.ratios: {ratio} % is outside (0, 50]")
    if not all_jobs(config):
        raise ValueError("config: no jobs; give a `grid` or a figure with a grid")


def merged(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        out.update(layer or {})
    return out


def train_settings(config: Mapping[str, Any], dataset: str, model: str) -> dict[str, Any]:
    """Training settings: defaults <- per model <- per data set and model (``overrides: {dataset/model: ...}``)."""
    train = config.get("train", {})
    settings = merged(train.get("defaults"), train.get("models", {}).get(model),
                      train.get("overrides", {}).get(f"{dataset}/{model}"))
    settings.setdefault("options", {})
    settings.setdefault("pretrained", None)
    settings.setdefault("trainable", None)
    settings.setdefault("device", config.get("device", "cpu"))
    return settings


def pretrain_settings(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    settings = merged(config.get("train", {}).get("defaults"), config.get("pretrain", {}).get(model))
    settings.pop("source", None)
    settings.setdefault("options", train_settings(config, "", model)["options"])
    settings.setdefault("device", config.get("device", "cpu"))
    settings["trainable"] = None
    settings["pretrained"] = None
    return settings


def pretrain_source(config: Mapping[str, Any], model: str) -> str:
    try:
        return str(config["pretrain"][model]["source"])
    except KeyError as err:
        raise ValueError(f"config pretrain.{model}.source: a model with `pretrained: pipeline` needs a source data set") from err


def glitch_options(config: Mapping[str, Any], glitch: str) -> dict[str, Any]:
    options = dict(config.get("glitch_options", {}).get(glitch, {}))
    options.pop("sources", None)
    return options


def far_ca_source(config: Mapping[str, Any], dataset: str) -> str:
    sources = config.get("glitch_options", {}).get("far_ca", {}).get("sources", {})
    if dataset not in sources:
        raise ValueError(f"config glitch_options.far_ca.sources: no far-CA source data set for {dataset!r}")
    return str(sources[dataset])
