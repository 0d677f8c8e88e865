"""The pipeline's configuration: validation (schema + registries), grid expansion, each stage's settings.

Snakemake rules pass these settings to jobs as ``params``, so a changed setting reruns exactly the jobs
it reaches; nothing reads the config inside a job. Importing this module imports no torch or scikit-learn,
so planning a run (``snakemake -n``) is fast.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .companions import COMPANIONS
from .datasets import DATASETS, DataError, loader_name, loader_options
from .glitches import GLITCHES
from .models import MODELS
from .plots import FIGURE_KINDS
from .signals import SIGNALS, score_names

SCHEMA = Path(__file__).resolve().parent / "workflow" / "schemas" / "config.schema.yaml"
PRETRAINED_KEYWORDS = ("none", "pipeline", "torchvision", "hub", "package")


class ConfigError(ValueError):
    """A config that cannot run; the message names the key."""


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


@cache
def _base_schema() -> dict[str, Any]:
    return dict(yaml.safe_load(SCHEMA.read_text()))


def schema() -> dict[str, Any]:
    """The config schema with every enum filled in from the registries."""
    out = copy.deepcopy(_base_schema())
    props, defs = out["properties"], out["$defs"]
    props["datasets"]["additionalProperties"]["properties"]["loader"]["enum"] = DATASETS.names()
    props["glitch_options"]["properties"] = {g.name: g.options_schema() for g in GLITCHES if g.options}
    props["train"]["properties"]["models"]["propertyNames"]["enum"] = MODELS.names()
    props["pretrain"]["propertyNames"] = {"enum": MODELS.names()}
    props["debug"]["properties"]["model"]["enum"] = MODELS.names()
    companions = props["debug"]["properties"]["companions"]
    companions["items"]["enum"], companions["default"] = COMPANIONS.names(), COMPANIONS.names()
    mixture = props["glitch_options"]["properties"]["mixture"]["properties"]
    mixable = [g for g in GLITCHES if g.in_mixtures]
    mixture["components"]["propertyNames"] = {"enum": [g.name for g in mixable]}
    mixture.update({g.name: g.options_schema() for g in mixable})  # each component's own options, by its name
    every_score = score_names()
    props["signals"]["properties"]["names"]["items"]["enum"] = SIGNALS.names()
    props["plot_signals"]["items"]["enum"] = every_score
    figure = props["figures"]["additionalProperties"]["properties"]
    figure["kind"]["enum"] = FIGURE_KINDS.names()
    figure["signals"]["items"]["enum"] = every_score
    grid = defs["grid"]["items"]["properties"]
    grid["models"]["items"]["enum"] = MODELS.names()
    grid["glitches"]["items"]["enum"] = GLITCHES.names()
    return out


def data_digest(spec: Mapping[str, Any] | None) -> str:
    """A hash of the names, sizes and modification times of the user's files behind a data set entry (its
    ``path`` and ``test_path``, every file below a folder); empty for data that ships with a package."""
    import hashlib
    import os

    digest = hashlib.sha256()
    for key in ("path", "test_path"):
        if not spec or key not in spec:
            continue
        root = Path(spec[key])
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            try:
                info = os.stat(path)
                stamp = f"{info.st_size} {info.st_mtime_ns}"
            except OSError:
                stamp = "missing"  # prepare names the problem
            digest.update(f"{key}\0{path.relative_to(root) if root.is_dir() else path}\0{stamp}\n".encode())
    return digest.hexdigest() if spec and ("path" in spec or "test_path" in spec) else ""


def _validator() -> Any:
    """A Draft 2020-12 validator that also fills in ``default:`` values (the snakemake-workflows convention)."""
    from jsonschema import Draft202012Validator, validators

    def set_defaults(validator: Any, properties: Mapping[str, Any], instance: Any, schema_: Any) -> Iterator[Any]:
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema_)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})(schema())


def _where(error: Any) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _check_options(where: str, options: Mapping[str, Any], entry_schema: Mapping[str, Any]) -> None:
    from jsonschema import Draft202012Validator

    for error in Draft202012Validator(entry_schema).iter_errors(dict(options)):
        raise ConfigError(f"config {where}{'.' + _where(error) if error.absolute_path else ''}: {error.message}")


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (YAML itself keeps the last)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"{node.start_mark.name}, line {key_node.start_mark.line + 1}: the key {key!r} is given twice")
        seen.add(key)
    return dict(yaml.SafeLoader.construct_mapping(loader, node, deep=deep))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def check_files(paths: list[str]) -> None:
    """Refuse a config file that gives a key twice (Snakemake's loader would silently keep the last)."""
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            yaml.load(handle, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def _sort_keys(value: Any) -> None:
    """Every mapping in ``value`` re-ordered by key, in place (lists keep their order)."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: str(item[0]))
        value.clear()
        value.update(items)
        for child in value.values():
            _sort_keys(child)
    elif isinstance(value, list):
        for child in value:
            _sort_keys(child)


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults into ``config`` in place, validate it against the schema and the registries, return it.

    Its mappings are then sorted by key: every job's params are built from them, and Snakemake compares params
    in order, so the same config with its keys written in another order reruns nothing."""
    errors = sorted(_validator().iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        error = errors[0]
        raise ConfigError(f"config {_where(error)}: {error.message}")
    check(config)
    _sort_keys(config)
    return config


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


def dataset_modality(config: Mapping[str, Any], name: str) -> str | None:
    return DATASETS[loader_name(name, config["datasets"][name])].modality


def _check_datasets(config: Mapping[str, Any]) -> None:
    for name, spec in config["datasets"].items():
        loader = loader_name(name, spec)
        if loader not in DATASETS:
            raise ConfigError(f"config datasets.{name}: unknown data set {loader!r}; known: {DATASETS.names()}, "
                              "or give `loader:`")
        options = loader_options(spec)
        _check_options(f"datasets.{name}", options, DATASETS[loader].options_schema())
        if ("fold" in (spec or {})) != ("folds" in (spec or {})) or (spec or {}).get("fold", 0) >= (spec or {}).get("folds", 1):
            raise ConfigError(f"config datasets.{name}: give both `fold` and `folds`, with 0 <= fold < folds")
        for key in ("path", "test_path"):
            if key in options and not Path(options[key]).exists():
                raise ConfigError(f"config datasets.{name}.{key}: {options[key]} does not exist")


def _check_training(config: Mapping[str, Any], models_used: set[str]) -> None:
    train = config["train"]
    for model in models_used:
        settings = train_settings(config, "", model)
        for key in ("epochs", "lr", "batch_size"):
            if key not in settings:
                raise ConfigError(f"config train.models.{model}: no `{key}` (set it there or under train.defaults)")
        _check_options(f"train.models.{model}.options", settings["options"], MODELS[model].options_schema())
        pretrained = settings["pretrained"]
        if pretrained not in (None, *PRETRAINED_KEYWORDS) and not Path(pretrained).exists():
            raise ConfigError(f"config train.models.{model}.pretrained: {pretrained!r} is neither one of "
                              f"{PRETRAINED_KEYWORDS} nor an existing weights file")
        if pretrained == "pipeline":
            source = pretrain_source(config, model)
            if source not in config["datasets"]:
                raise ConfigError(f"config pretrain.{model}.source: {source!r} is not declared under `datasets`")
    for model, spec in config["pretrain"].items():
        _check_options(f"pretrain.{model}.options", spec.get("options") or {}, MODELS[model].options_schema())
    for key in train["overrides"]:
        dataset, model = key.split("/")
        if dataset not in config["datasets"] or model not in MODELS:
            raise ConfigError(f"config train.overrides.{key}: no data set {dataset!r} or model {model!r}")


def check(config: Mapping[str, Any]) -> None:
    """Semantic checks the JSON schema cannot express; errors name the offending key."""
    _check_datasets(config)
    datasets = config["datasets"]
    models_used: set[str] = set()
    for location, block in grid_blocks(config):
        where = f"config {location}"
        for name in block["datasets"]:
            if name not in datasets:
                raise DataError(f"{where}.datasets: {name!r} is not declared under `datasets`")
            modality = dataset_modality(config, name)
            for model in block["models"]:
                if modality and MODELS[model].modality != modality:
                    raise ConfigError(f"{where}: model {model} is for {MODELS[model].modality} data but {name} is {modality}")
            for glitch in block["glitches"]:
                spec = GLITCHES[glitch]
                if modality and modality not in spec.modalities:
                    raise ConfigError(f"{where}: glitch {glitch} is defined for {' and '.join(spec.modalities)} data, "
                                      f"but {name} is {modality}")
                if spec.requires_source(glitch_options(config, glitch)):
                    _check_source(config, glitch, name, block["models"])
        models_used.update(block["models"])
    debug = config.get("debug")
    if debug:
        if debug["dataset"] not in datasets:
            raise DataError(f"config debug.dataset: {debug['dataset']!r} is not declared under `datasets`")
        modality = dataset_modality(config, debug["dataset"])
        if modality and MODELS[debug["model"]].modality != modality:
            raise ConfigError(f"config debug.model: {debug['model']} is for {MODELS[debug['model']].modality} data but "
                              f"{debug['dataset']} is {modality}")
        models_used.add(debug["model"])
    elif not all_jobs(config):
        raise ConfigError("config: no jobs; give a `grid` or a figure with a grid")
    _check_training(config, models_used)


def _check_source(config: Mapping[str, Any], glitch: str, dataset: str, models: list[str]) -> None:
    source = glitch_source(config, glitch, dataset)
    if source not in config["datasets"]:
        raise ConfigError(f"config glitch_options.{glitch}.sources.{dataset}: {source!r} is not declared under `datasets`")
    if source == dataset:
        raise ConfigError(f"config glitch_options.{glitch}.sources.{dataset}: a data set cannot be its own {glitch} "
                          "source (its rows would be duplicates of clean rows, not anomalies)")
    modalities = dataset_modality(config, dataset), dataset_modality(config, source)
    if None not in modalities and modalities[0] != modalities[1]:
        raise ConfigError(f"config glitch_options.{glitch}.sources.{dataset}: {source!r} is {modalities[1]} data but "
                          f"{dataset!r} is {modalities[0]}; {glitch} rows must be of the same kind")
    for model in models:
        if train_settings(config, dataset, model)["pretrained"] == "pipeline" and pretrain_source(config, model) == source:
            raise ConfigError(f"config: {model} is pre-trained on {source!r}, which is also the {glitch} source of "
                              f"{dataset!r}; rows a network was pre-trained on are no anomalies to it")


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
    except KeyError:
        raise ConfigError(f"config pretrain.{model}.source: a model with `pretrained: pipeline` needs a source data set") from None


def glitch_options(config: Mapping[str, Any], glitch: str) -> dict[str, Any]:
    options = dict(config.get("glitch_options", {}).get(glitch, {}))
    options.pop("sources", None)
    return options


def glitch_source(config: Mapping[str, Any], glitch: str, dataset: str) -> str:
    """The data set whose held-out rows a glitch that needs a source (far-CA) takes for ``dataset``."""
    sources = config.get("glitch_options", {}).get(glitch, {}).get("sources", {})
    if dataset not in sources:
        raise ConfigError(f"config glitch_options.{glitch}.sources: no {glitch} source data set for {dataset!r}")
    return str(sources[dataset])


def split_seed(config: Mapping[str, Any], seed: int) -> int:
    """The seed of a job's subsample and split: its own seed when ``prepare.resample_per_seed``, else one fixed seed."""
    prepare = config["prepare"]
    return int(seed) if prepare["resample_per_seed"] else int(prepare["seed"])
