"""The Python API: ``find_issues`` for a table, a DataFrame or an image folder; ``TracIn`` for your own model.

``find_issues`` checks the data and every setting before any work, writes a config with a ``debug:``
section into its output folder and runs the package's own Snakefile there (one ``crossfit`` job per seed and fold,
then ``debug_report``; ``crossfit``, ``detector``): the same workflow the ``influence-signals debug`` command
(a thin layer over this function) and the study run. ``detector.detect`` takes arrays instead.
"""
from __future__ import annotations

import copy
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from . import config as cfg
from . import datasets, paths, warm
from .companions import COMPANIONS, fitted
from .artifacts import write_text
from .config import ConfigError
from .datasets import DataError
from .signals import cross_fitted_names

if TYPE_CHECKING:
    import numpy as np
    import torch

SNAKEFILE = Path(__file__).resolve().parent / "workflow" / "Snakefile"  # shipped in the wheel
CLIP_SD = 5.0
"""The networks' standardised inputs are limited to +/- 5 sd: a near-constant column (a border pixel of MNIST
as a table) or a row pushed far out cannot swamp training. Top-k precision on MNIST-as-a-table label noise
0.89 unclipped, 0.91 clipped at 8, 0.91 at 5; Image Segmentation 0.957 at 8, 0.961 at 5."""
LARGE_ROWS = 50_000  # above this many rows the command says up front that the default run is long

# Training settings per model: sane defaults for a user's data (the rest come from the schema's defaults).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"epochs": 30, "lr": 0.1, "batch_size": 64},  # 15 left it underfit: top-k 0.84 -> 0.90 on the detection benchmark
    "resnet": {"epochs": 15, "lr": 0.05, "batch_size": 64},
    "ft_transformer": {"epochs": 20, "lr": 0.05, "batch_size": 32, "options": {"n_blocks": 1}},
    "resnet20": {"epochs": 15, "lr": 0.1, "batch_size": 64, "pretrained": "none"},  # trained from scratch
}
FINE_TUNE = {"resnet20": {"epochs": 7, "lr": 0.1, "batch_size": 128, "trainable": ["layer3"]}}  # with pretrained=
MARKER = ".influence-signals-debug"
"""Marks a folder this package writes into: it writes only into an empty folder or one that holds this file."""
STEP = re.compile(r"(\d+) of (\d+) steps")
PROGRESS_LINES = 10  # at most this many progress lines, one as each tenth of the jobs is done


class WorkflowFailed(RuntimeError):
    """A job of the workflow failed; the message names its log."""


@dataclass(frozen=True)
class Issues:
    """What ``find_issues`` found: one line per row of the data, the most suspicious first (``table``, as in
    ``suspects.csv``), every row's held-out class probabilities (``pred_probs``), the output folder, and what
    to know before acting on the flags (``warnings``: the label evidence is weak, ``detector.predictability``)."""

    table: pd.DataFrame
    pred_probs: pd.DataFrame
    folder: Path
    warnings: tuple[str, ...] = ()

    def summary(self) -> pd.DataFrame:
        """Rows per glitch type (mislabel, anomaly, none) and their share, as Datalab's report opens."""
        counts = self.table["glitch_type"].value_counts().reindex(["mislabel", "anomaly", "none"], fill_value=0)
        return pd.DataFrame({"rows": counts, "share": counts / max(len(self.table), 1)})

    def report(self, path: str | Path | None = None) -> Path:
        """The HTML page (one self-contained file); copied to ``path`` where given."""
        page = self.folder / paths.DEBUG_OUTPUTS["report"]
        if path is None:
            return page
        target = Path(path)
        write_text(target, page.read_text())
        return target


# ----------------------------------------------------------------------------------------------
# The output folder and the config


def output_folder(out: Path, data: Path) -> Path:
    """``out`` made ready for the command's files, or a ``ConfigError`` naming the problem: never a file, a
    folder it cannot write, a folder with files it did not write (``--out .`` in a clone holds the study's
    own config.yaml), or a folder inside the data (an image folder would read the outputs as images)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (a new one, or one this command wrote before)")
    if out == data or data in out.parents:
        raise ConfigError(f"--out {out} is inside the data {data}; give a folder of its own")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(f"--out {out} holds files this command did not write; give a new or empty folder "
                          "(or one it wrote before)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / MARKER, f"written by influence-signals debug {data}\n")
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot write there ({err.strerror or err})") from None
    return out


def dataset_name(path: Path) -> str:
    """A config name from a file or folder name (names become paths: letters, digits, ``_.-``)."""
    stem = path.stem if path.is_file() else path.name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-")
    return name or "data"


def data_spec(data: Path, label: str | None, id: str | None, drop: Sequence[str], size: int | None,
              channels: int) -> dict[str, Any]:
    """The loader entry for the user's data: ``table`` for a file, ``image_folder`` for a folder."""
    if not data.exists():
        raise DataError(f"{data}: no such file or folder; give a CSV / ARFF table or an image folder")
    if data.is_dir():
        if label or id or drop:
            raise ConfigError("--label, --id and --drop are for tables; an image folder's classes are its "
                              "sub-folder names and its ids are the file paths")
        spec: dict[str, Any] = {"loader": "image_folder", "path": str(data), "channels": channels}
        if size:
            spec["size"] = size
        return spec
    if not label:
        raise ConfigError(f"{data}: give the label column with --label")
    spec = {"loader": "table", "path": str(data), "label": label}
    if id:
        spec["id"] = id
    if drop:
        spec["drop"] = list(drop)
    return spec


def train_settings(model: str, epochs: int | None, lr: float | None, batch_size: int | None,
                   pretrained: str | None) -> dict[str, Any]:
    settings = copy.deepcopy(MODEL_DEFAULTS.get(model, {}))
    if pretrained:
        settings.update(copy.deepcopy(FINE_TUNE.get(model, {})))
        settings["pretrained"] = pretrained
    for key, value in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size)):
        if value is not None:
            settings[key] = value
    return settings


def build_config(name: str, spec: Mapping[str, Any], model: str, seeds: int, folds: int,
                 settings: Mapping[str, Any], device: str = "cpu", top: float = 0.1, keep_runs: bool = False,
                 companions: Sequence[str] | None = None) -> dict[str, Any]:
    """A config that declares only this data set and its ``debug:`` section (every other key takes its schema
    default; ``companions`` None: every registered one): no study grid, figures or tables."""
    return {
        "device": device,
        "prepare": {"clip": CLIP_SD},
        "datasets": {name: dict(spec)},
        "train": {"models": {model: dict(settings)}},
        "signals": {"names": cross_fitted_names()},  # the held-out folds hold the user's glitches too
        "debug": {"dataset": name, "model": model, "folds": folds, "seeds": seeds, "top": top, "keep_runs": keep_runs,
                  "companions": COMPANIONS.names() if companions is None else list(companions)},
        "figures": {},
        "tables": {},
    }


def check_device(device: str) -> None:
    """A device that is not there is named before any work (not a traceback after the first job)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: this machine has no CUDA GPU (torch sees none); use cpu or auto")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: there are only {torch.cuda.device_count()} GPUs")


# ----------------------------------------------------------------------------------------------
# Running the workflow


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds // 60:.0f} min {seconds % 60:.0f} s"


def run_snakemake(out: Path, config_file: Path, cores: int, dry_run: bool = False, verbose: bool = False,
                  say: Callable[[str], None] = print, extra: Sequence[str] = ()) -> int:
    """Snakemake on the package's Snakefile in ``out``; its output goes to ``out/snakemake.log`` (and to the
    terminal with ``verbose`` or ``dry_run``), and each tenth of the jobs done sends a progress line with the
    time left to ``say``."""
    if not SNAKEFILE.exists():
        raise ConfigError(f"the workflow {SNAKEFILE} is missing from the installed package; reinstall it")
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(out), "--configfile",
               str(config_file), "--cores", str(cores), "--scheduler", "greedy",  # as profiles/default: no ILP solver
               *(["-n"] if dry_run else []), *extra]
    started = time.monotonic()
    with open(out / "snakemake.log", "w") as log, subprocess.Popen(command, cwd=out, stdout=subprocess.PIPE,
                                                                   stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if verbose or dry_run:
                print(line, end="", flush=True)
            elif (step := STEP.search(line)) and int(step[1]):
                done, total = int(step[1]), int(step[2])
                if done < total and PROGRESS_LINES * done // total == PROGRESS_LINES * (done - 1) // total:
                    continue  # no new tenth of the jobs done: a line per job would be 3 seeds x 5 folds of lines
                elapsed = time.monotonic() - started
                left = f", about {duration(elapsed / done * (total - done))} left" if done < total else ""
                say(f"{done} of {total} jobs done ({duration(elapsed)}{left})")
        return process.wait()


def _quiet(_message: str) -> None:
    """Progress goes nowhere unless asked for."""


def find_issues(data: str | Path | pd.DataFrame, label: str | None = None, id: str | None = None,
                drop: Sequence[str] = (), model: str | None = None, seeds: int = 3, folds: int = 5,
                epochs: int | None = None, lr: float | None = None, batch_size: int | None = None,
                pretrained: str | None = None, size: int | None = None, channels: int = 3, top: float = 0.1,
                name: str | None = None, device: str = "cpu", cores: int | None = None, out: str | Path | None = None,
                dry_run: bool = False, verbose: bool = False, progress: Callable[[str], None] = _quiet,
                profile: str | Path | None = None, keep_runs: bool = False, companions: Sequence[str] | None = None
                ) -> Issues | None:
    """Every row of ``data`` judged: mislabel, anomaly or none, a suggested label, a suspicion and confidence.

    ``data`` is a CSV / ARFF path, an image folder (``root/<class>/*.png|jpg``) or a DataFrame (written to
    ``out/data.csv`` first); ``label``, ``id`` and ``drop`` name a table's columns. ``seeds`` x ``folds``
    cross-fitted ``model`` runs (default: ``mlp`` for tables, ``resnet20`` for images); ``out`` is the output
    folder (default: a new temporary one); ``profile`` a Snakemake profile folder whose executor runs the jobs
    (``profiles/slurm``: each fold's run a cluster job). The runs' folders under ``out/results/crossfit`` (their
    TracIn factors: 3.4 GB for 10,000 rows) are removed once the report is written, unless ``keep_runs``.
    ``companions``: for a table, the learners fitted beside the network on each fold, whose held-out probabilities
    are averaged with its (``companions.COMPANIONS``; None: all of them, ``[]``: the network alone).
    Bad input raises ``DataError`` / ``ConfigError`` before any work; a failed job raises ``WorkflowFailed``.
    Returns None for a ``dry_run`` (the jobs are printed).
    """
    if seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    if profile is not None and not (Path(profile).expanduser() / "config.yaml").is_file():
        raise ConfigError(f"--profile {profile}: not a Snakemake profile (a folder holding config.yaml)")
    if folds < 2:
        raise ConfigError("--folds must be at least 2 (each row is scored in the folds where it is in training)")
    if not 0 < top < 1:
        raise ConfigError("--top must be a share in (0, 1), e.g. 0.1 for the top 10 %")
    check_device(device)
    folder = Path(out).expanduser().resolve() if out is not None else Path(tempfile.mkdtemp(prefix="influence-signals-"))
    if isinstance(data, pd.DataFrame):
        missing = [f"{role} column {c!r}" for role, c in (("label", label), ("id", id)) if c is not None and c not in data]
        if label is None or missing:
            raise ConfigError("give the label column with label=" if label is None else
                              f"{', '.join(missing)} not in the DataFrame; its columns are {list(data.columns)[:10]}")
        output_folder(folder, folder / "data.csv")
        data.to_csv(folder / "data.csv", index=False)
        path = folder / "data.csv"
    else:
        path = Path(data).expanduser().resolve()
    spec = data_spec(path, label, id, drop, size, channels)
    name = name or dataset_name(path)
    progress(f"loading {path} ...")
    loaded = datasets.load(name, spec)
    for note in loaded.notes:
        progress(f"  {note}")
    datasets.check_classes(loaded, minimum=max(folds, 4))
    model = model or ("resnet20" if loaded.modality == "image" else "mlp")
    from .models import MODELS

    fitting = [m.name for m in MODELS if m.modality == loaded.modality]
    if model not in fitting:
        raise ConfigError(f"--model {model}: {'not a model' if model not in MODELS else 'a model for ' + MODELS[model].modality + ' data'};"
                          f" for {'a table' if loaded.modality == 'tabular' else 'images'} use one of {', '.join(fitting)}")
    settings = train_settings(model, epochs, lr, batch_size, pretrained)
    config = build_config(name, spec, model, seeds, folds, settings, device, top, keep_runs, companions)
    cfg.validate(copy.deepcopy(config))  # a bad setting stops here, before any work
    folder = output_folder(folder, path)
    config_file = folder / "config.yaml"
    write_text(config_file, yaml.safe_dump(config, sort_keys=False))
    beside = fitted(config["debug"]["companions"], loaded.modality, loaded.x.shape, loaded.n_classes)
    learners = f"{model} with {', '.join(beside)}" if beside else model
    progress(f"{name}: {len(loaded.y)} rows, {loaded.n_classes} classes; {learners}, {folds} folds x {seeds} seed{'' if seeds == 1 else 's'} in "
             f"{seeds * folds} jobs, then the report; config {config_file}")
    if len(loaded.y) > LARGE_ROWS and seeds * folds > 3:
        progress(f"note: {len(loaded.y):,} rows x {seeds} seeds x {folds} folds trains {seeds * folds} models on most of "
                 f"them; on a few cores that takes long (`seeds=1, folds=3` trains 3); each job's log under "
                 f"{folder / 'results' / 'logs'} says where it is")
    executor = ["--profile", str(Path(profile).expanduser().resolve())] if profile is not None else []
    local = profile is None and not dry_run
    if local:
        warm.start(wait=0)  # its imports run beside Snakemake's start; the Snakefile's onstart waits for it
    try:
        code = run_snakemake(folder, config_file, cores or 1, dry_run, verbose, progress, executor)
    finally:
        if local:
            warm.stop()
    if code != 0:
        raise WorkflowFailed(f"snakemake failed (exit {code}); see {folder / 'snakemake.log'} and the failed job's log "
                             f"under {folder / 'results' / 'logs'}")
    if dry_run:
        return None
    read = lambda key: pd.read_csv(folder / paths.DEBUG_OUTPUTS[key], dtype={"id": str}, keep_default_na=False)  # noqa: E731
    from .detector import predictability  # scipy.stats: not before the first progress line

    probabilities = read("pred_probs")  # the data's row order, a column per class in class order after id and label
    agreement, majority, weak = predictability(loaded.y, probabilities.iloc[:, 2:].to_numpy(float))
    warnings = (f"warning: the label evidence is weak: held-out predictions agree with the labels on "
                f"{agreement:.1%} of the rows, hardly more than always guessing the largest class ({majority:.1%}); "
                f"many flagged mislabels are guesses (the report says more)",) if weak else ()
    for line in warnings:
        progress(line)
    return Issues(read("suspects"), probabilities, folder, warnings)


# ----------------------------------------------------------------------------------------------
# TracIn for your own model


class TracIn:
    """TracIn on the last layer of your own model, from your own checkpoints, in Captum's shape.

    ``model`` is any ``torch.nn.Module`` whose output is the logits of ``final_layer`` (an ``nn.Linear`` with a
    bias: the last layer, as TracInCP's ``final_fc_layer``); ``checkpoints`` are files (``torch.load``-able
    state dicts, or dicts holding one under ``model_state_dict``) or state dicts, with their learning rates
    (one per checkpoint, or one for all). Each checkpoint is loaded into ``model`` once, nothing is re-saved:
    a forward pass records the last layer's inputs and outputs (its TracIn factors), from which the engine
    computes self-influence in closed form and every train -> validation signal.
    """

    def __init__(self, model: torch.nn.Module, final_layer: torch.nn.Module, checkpoints: Sequence[Any],
                 learning_rates: float | Sequence[float], batch_size: int = 512, device: str = "cpu") -> None:
        import torch

        if not isinstance(final_layer, torch.nn.Linear) or final_layer.bias is None:
            raise ValueError("final_layer must be the model's last torch.nn.Linear, with a bias")
        if not any(module is final_layer for module in model.modules()):
            raise ValueError("final_layer is not a module of model")
        rates = [float(learning_rates)] * len(checkpoints) if isinstance(learning_rates, (int, float)) \
            else [float(r) for r in learning_rates]
        if len(rates) != len(checkpoints) or not checkpoints:
            raise ValueError(f"{len(checkpoints)} checkpoints but {len(rates)} learning rates")
        self.model, self.final_layer, self.checkpoints, self.rates = model, final_layer, list(checkpoints), rates
        self.batch_size, self.device = batch_size, torch.device(device)

    def _state(self, checkpoint: Any) -> Mapping[str, Any]:
        import torch

        state = torch.load(checkpoint, map_location="cpu", weights_only=True) if isinstance(checkpoint, (str, Path)) \
            else checkpoint
        return state.get("model_state_dict", state) if isinstance(state, Mapping) else state

    def factors(self, x_train: torch.Tensor, y_train: Any, x_val: torch.Tensor, y_val: Any, folder: str | Path) -> Path:
        """Write the factors of every checkpoint for these rows into ``folder`` (the engine's format)."""
        import json

        import numpy as np

        from .factors import ARRAYS, FactorMeta
        from .training import logits_and_features

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.memmap[Any, Any]] = {}
        self.model.to(self.device)
        for t, checkpoint in enumerate(self.checkpoints):
            self.model.load_state_dict(self._state(checkpoint))
            parts = (*logits_and_features(self.model, x_train, self.model, self.device, self.batch_size, self.final_layer),
                     *logits_and_features(self.model, x_val, self.model, self.device, self.batch_size, self.final_layer))
            for array_name, part in zip(ARRAYS, parts):
                if array_name not in arrays:
                    arrays[array_name] = np.lib.format.open_memmap(folder / f"{array_name}.npy", mode="w+",
                                                                   dtype=np.float32, shape=(len(self.checkpoints), *part.shape))
                arrays[array_name][t] = part
        labels = {"y_train": np.asarray(y_train, dtype=np.int64), "y_val": np.asarray(y_val, dtype=np.int64)}
        for key, value in labels.items():
            np.save(folder / f"{key}.npy", value)
        for array in arrays.values():
            array.flush()
        meta = FactorMeta(len(labels["y_train"]), len(labels["y_val"]), int(arrays["train_logits"].shape[-1]),
                          int(arrays["train_features"].shape[-1]), self.rates, 1, list(range(1, len(self.rates) + 1)),
                          [str(c) if isinstance(c, (str, Path)) else f"state_dict[{i}]" for i, c in enumerate(self.checkpoints)])
        (folder / "meta.json").write_text(json.dumps(meta.__dict__))
        return folder

    def signals(self, x_train: torch.Tensor, y_train: Any, x_val: torch.Tensor, y_val: Any,
                names: Sequence[str] = ("si", "mi", "aai", "gd_class", "sign_aware", "cnci", "pcid", "cfrank")
                ) -> pd.DataFrame:
        """Every named signal per training row (``signals.SIGNALS``: SI, MI, AAI, GD-class, the follow-up's ...)."""
        from . import signals
        from .factors import FactorStore
        from .influence import TracInEngine

        with tempfile.TemporaryDirectory(prefix="tracin-") as folder:
            store = FactorStore(self.factors(x_train, y_train, x_val, y_val, folder))
            table, _, _ = signals.compute(signals.SignalInputs(TracInEngine(store, str(self.device)), store), list(names))
        return table

    def self_influence(self, x: torch.Tensor, y: Any) -> np.ndarray:
        """TracIn(i, i) of every row, summed over the checkpoints (lr-weighted), as Captum's ``self_influence``."""
        return self.signals(x, y, x[:1], y[:1], names=("si",))["si"].to_numpy()
