"""``influence-signals debug``: one command that points the pipeline at a user's own table or image folder.

It writes a config with one data set entry per cross-fitting fold (``<name>_f0 .. <name>_f{K-1}``, the
same loader options, ``fold: k``, ``folds: K``), runs the stages for every fold and seed (through
Snakemake, or directly with ``--no-snakemake``), so that every row is scored while in training against
reference rows that exclude it, and combines the runs into ``suspects.csv`` and ``report.html``.

The combiner is one function, ``suspicion_table``: the rank average of AUM, confident learning and
self-influence until the project's detector replaces it.
"""
from __future__ import annotations

import argparse
import base64
import copy
import io
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from . import config as cfg
from . import datasets
from .artifacts import write_csv, write_text
from .config import ConfigError
from .datasets import DataError
from .signals import cross_fitted_names

SNAKEFILE = Path(__file__).resolve().parents[2] / "Snakefile"
TEMPLATES = Path(__file__).resolve().parent / "templates"
CLIP_SD = 5.0
"""The networks' standardised inputs are limited to +/- 5 sd: a near-constant column (a border pixel of MNIST
as a table) or a row pushed far out cannot swamp training. Top-k precision on MNIST-as-a-table label noise
0.89 unclipped, 0.91 clipped at 8, 0.91 at 5; Image Segmentation 0.957 at 8, 0.961 at 5."""
GLITCH, RATIO = "none", 10  # nothing injected: the glitches are the user's own; the ratio wildcard is unused
META_COLUMNS = ("id", "seed", "fold", "row", "observed_label")

# Training settings per model: sane defaults for a user's data (the rest come from the schema's defaults).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"epochs": 30, "lr": 0.1, "batch_size": 64},  # 15 left it underfit: top-k 0.84 -> 0.90 on the detection benchmark
    "resnet": {"epochs": 15, "lr": 0.05, "batch_size": 64},
    "ft_transformer": {"epochs": 20, "lr": 0.05, "batch_size": 32, "options": {"n_blocks": 1}},
    "resnet20": {"epochs": 15, "lr": 0.1, "batch_size": 64, "pretrained": "none"},  # trained from scratch
}
FINE_TUNE = {"resnet20": {"epochs": 7, "lr": 0.1, "batch_size": 128, "trainable": ["layer3"]}}  # with --pretrained


@dataclass(frozen=True)
class Plan:
    """Where a debug run's files live: the output folder and the names of its folds and seeds."""

    out: Path
    name: str
    model: str
    seeds: int
    folds: int

    def fold_name(self, fold: int) -> str:
        return f"{self.name}_f{fold}"

    def runs(self) -> list[tuple[int, int]]:
        """(fold, seed) of every run, seed by seed."""
        return [(fold, seed) for seed in range(self.seeds) for fold in range(self.folds)]

    def run_dir(self, fold: int, seed: int) -> Path:
        return self.out / "results" / "runs" / self.fold_name(fold) / self.model / GLITCH / f"r{RATIO}" / f"s{seed}"

    def train_path(self, fold: int, seed: int) -> Path:
        return self.out / "results" / "data" / self.fold_name(fold) / GLITCH / f"r{RATIO}" / f"s{seed}" / "train.npz"

    def split_path(self, fold: int, split_seed: int, split: str) -> Path:
        return self.out / "results" / "data" / self.fold_name(fold) / f"split{split_seed}" / f"{split}.npz"

    def targets(self) -> list[str]:
        """The Snakemake targets (relative to the output folder): every run's scores."""
        return [str(self.run_dir(fold, seed).relative_to(self.out) / "scores.csv") for fold, seed in self.runs()]


# ----------------------------------------------------------------------------------------------
# The command line


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="influence-signals", description="Find suspicious rows in your own data.")
    commands = top.add_subparsers(dest="command", required=True)
    p = commands.add_parser("debug", help="rank the rows of a table or an image folder by how suspicious they are",
                            description="Cross-fitted training runs over folds and seeds; writes suspects.csv and report.html.")
    p.add_argument("data", metavar="DATA", help="a CSV / ARFF table, or an image folder root/<class>/*.png|jpg")
    p.add_argument("--label", help="the label column (tables)")
    p.add_argument("--id", help="an id column: kept in the outputs, never a feature (default: the row number)")
    p.add_argument("--drop", nargs="+", action="extend", default=[], metavar="COL", help="columns that are not features")
    p.add_argument("--model", help="mlp (tables, the default), resnet, ft_transformer; resnet20 (images, the default)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds (default 3)")
    p.add_argument("--folds", type=int, default=5, help="cross-fitting folds (default 5)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the model's)")
    p.add_argument("--lr", type=float, help="learning rate (default: the model's)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the model's)")
    p.add_argument("--pretrained", help="image models: a weights file to fine-tune from (default: train from scratch)")
    p.add_argument("--size", type=int, help="images: resize to SIZE x SIZE")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="images: 1 (grey) or 3 (RGB, the default)")
    p.add_argument("--top", type=float, default=0.1, help="the share of rows at the top of the ranking the report's "
                                                          "summary counts as the cut (default 0.1)")
    p.add_argument("--name", help="the data set's name in the config (default: from the file name)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                   help="cores for Snakemake, which runs that many jobs side by side (default: all)")
    p.add_argument("--out", default="report", help="output folder (default: report/)")
    p.add_argument("--no-snakemake", action="store_true",
                   help="run the stages in this process, one run after another, without Snakemake")
    p.add_argument("--dry-run", action="store_true", help="write the config and show the jobs; run nothing")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return debug(args)
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def progress(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------------------------
# The output folder and the config

MARKER = ".influence-signals-debug"
"""Marks a folder this command writes into: it writes only into an empty folder or one that holds this file."""


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


def data_spec(data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The loader entry for the user's data: ``table`` for a file, ``image_folder`` for a folder."""
    if not data.exists():
        raise DataError(f"{data}: no such file or folder; give a CSV / ARFF table or an image folder")
    if data.is_dir():
        if args.label or args.id or args.drop:
            raise ConfigError("--label, --id and --drop are for tables; an image folder's classes are its "
                              "sub-folder names and its ids are the file paths")
        spec: dict[str, Any] = {"loader": "image_folder", "path": str(data), "channels": args.channels}
        if args.size:
            spec["size"] = args.size
        return spec
    if not args.label:
        raise ConfigError(f"{data}: give the label column with --label")
    spec = {"loader": "table", "path": str(data), "label": args.label}
    if args.id:
        spec["id"] = args.id
    if args.drop:
        spec["drop"] = list(args.drop)
    return spec


def train_settings(model: str, args: argparse.Namespace) -> dict[str, Any]:
    settings = copy.deepcopy(MODEL_DEFAULTS.get(model, {}))
    if args.pretrained:
        settings.update(copy.deepcopy(FINE_TUNE.get(model, {})))
        settings["pretrained"] = args.pretrained
    for key, value in (("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size)):
        if value is not None:
            settings[key] = value
    return settings


def build_config(name: str, spec: Mapping[str, Any], model: str, seeds: int, folds: int,
                 settings: Mapping[str, Any], device: str = "cpu") -> dict[str, Any]:
    """A config that declares only this data's K folds and S seeds (every other key takes its schema default)."""
    entries = {f"{name}_f{k}": {**spec, "fold": k, "folds": folds} for k in range(folds)}
    return {
        "device": device,
        "prepare": {"fraction": 1.0, "clip": CLIP_SD},
        "datasets": entries,
        "grid": [{"datasets": list(entries), "models": [model], "glitches": [GLITCH], "ratios": [RATIO],
                  "seeds": list(range(seeds))}],
        "train": {"models": {model: dict(settings)}},
        "signals": {"names": cross_fitted_names()},  # the validation folds hold the user's glitches too
        "figures": {},
        "tables": {},
    }


# ----------------------------------------------------------------------------------------------
# Running the stages


def run_snakemake(plan: Plan, config_file: Path, cores: int, dry_run: bool = False) -> int:
    if not SNAKEFILE.exists():
        raise ConfigError(f"the workflow {SNAKEFILE} is not next to the package (installed without the repository?); "
                          "use --no-snakemake")
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(plan.out), "--configfile",
               str(config_file), "--cores", str(cores), *(["-n"] if dry_run else []), *plan.targets()]
    progress(f"snakemake: {plan.folds} folds x {plan.seeds} seeds = {len(plan.runs())} runs of {plan.model}")
    return subprocess.run(command, cwd=plan.out).returncode


def run_direct(plan: Plan, config: Mapping[str, Any]) -> None:
    """Every stage of every run in this process, one run after another, with the settings Snakemake would pass.

    Each stage runs on the config's thread count (``threads``, default 1), as its Snakemake job does: small
    networks gain nothing from more threads, and spinning BLAS / OpenMP threads slow down badly when other
    work shares the cores.
    """
    import torch
    from threadpoolctl import threadpool_limits

    threads = max(int(config["threads"].get(stage, 1)) for stage in ("train", "influence", "signals"))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            _run_direct(plan, config)
    finally:
        torch.set_num_threads(previous)


def _run_direct(plan: Plan, config: Mapping[str, Any]) -> None:
    from . import stages

    for fold in range(plan.folds):  # fresh runs: training would resume from an older run's checkpoints
        for folder in ("runs", "data"):
            shutil.rmtree(plan.out / "results" / folder / plan.fold_name(fold), ignore_errors=True)
    signal_settings = config["signals"]
    for fold, seed in plan.runs():
        dataset = plan.fold_name(fold)
        step = f"fold {fold + 1}/{plan.folds}, seed {seed + 1}/{plan.seeds}"
        split = cfg.split_seed(config, seed)
        train_split, val_split = plan.split_path(fold, split, "train"), plan.split_path(fold, split, "val")
        run, train_set = plan.run_dir(fold, seed), plan.train_path(fold, seed)
        settings = cfg.train_settings(config, dataset, plan.model)
        paths = {"train": train_split, "val": val_split, "pool": plan.split_path(fold, split, "pool"),
                 "clean_train": train_split, "glitched_train": train_set, "errors": train_set.with_name("errors.csv"),
                 "train_set": train_set, "val_set": val_split, "checkpoints": run / "checkpoints",
                 "history": run / "history.csv", "factors": run / "factors", "dense": run / "dense_influence.npz", "scores": run / "scores.csv",
                 "per_epoch": run / "per_epoch.npz", "detections": run / "detections.csv"}
        common = {**{key: str(value) for key, value in paths.items()}, "seed": seed, "model": plan.model,
                  "settings": settings, "download": config["download"], "device": config["device"]}
        progress(f"{step}: preparing ...")
        _call(stages.prepare, common, dataset=dataset, spec=config["datasets"][dataset], data_dir=config["data_dir"],
              fraction=config["prepare"]["fraction"], val_fraction=config["prepare"]["val_fraction"], seed=split,
              clip=config["prepare"]["clip"])
        _call(stages.inject, common, glitch=GLITCH, ratio=RATIO, options=cfg.glitch_options(config, GLITCH))
        progress(f"{step}: training ...")
        _call(stages.train, common, pretrained=None)
        captum = config["influence"]["backend"] == "captum"  # the signals then read Captum's dense matrices
        tracin = {"backend": config["influence"]["backend"], "weighting": config["influence"]["weighting"]}
        if captum or config["influence"]["write_matrix"]:
            progress(f"{step}: dense influence matrices ...")
            _call(stages.dense_influence, common, **tracin)
        progress(f"{step}: signals ...")
        _call(stages.compute_signals, {**common, "dense": common["dense"] if captum else None}, **tracin,
              row_block=signal_settings["row_block"],
              k_neighbours=signal_settings["k_neighbours"],
              use_baselines=signal_settings["baselines"], names=signal_settings["names"])


def _call(stage: Callable[..., None], common: Mapping[str, Any], **own: Any) -> None:
    """Call a stage as a pipeline job does: with the keywords it accepts, named as in its rule."""
    from . import stages

    stages.call(stage, {**common, **own})


# ----------------------------------------------------------------------------------------------
# Combining the runs


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(-1, keepdims=True))


@dataclass(frozen=True)
class Evidence:
    """What the runs say about every row of the user's data, in the data's row order.

    ``per_row``: one line per (run, training row) with its id, seed, fold, row and observed label and every
    signal's score (last checkpoint); ``epoch``: the checkpoint whose held-out rows' mean loss is lowest over
    all runs (``held_out_loss`` per checkpoint); ``pred_probs``: each row's held-out class probabilities at
    that checkpoint (from the run that held it out), averaged over seeds; ``training_loss``: its loss at
    that checkpoint in the runs that trained on it, averaged.
    """

    per_row: pd.DataFrame
    pred_probs: np.ndarray
    training_loss: np.ndarray
    epoch: int
    held_out_loss: np.ndarray


def _cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row: -log p(observed label)."""
    return np.asarray(-np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)))


def collect(plan: Plan, data: datasets.DataSet, config: Mapping[str, Any]) -> Evidence:
    """Read every run: its training rows' scores and losses, its held-out rows' predicted probabilities.

    The checkpoint used is chosen by cross-validation: the one whose held-out rows have the lowest mean loss
    over all runs. A network trained for a fixed number of epochs first learns and then memorises the wrong
    labels; held out, that shows as a rising loss (MNIST as a table: lowest at epoch 5 of 30, top-k precision
    0.88 there against 0.79 at the end), while one still learning (Image Segmentation) picks its last epochs.
    Two passes over the runs' factors (the losses, then the chosen checkpoint), so memory stays O(rows x
    classes). Checks that every row is scored exactly ``seeds x (folds - 1)`` times in training and held out
    exactly once per seed.
    """
    from .factors import FactorStore

    ids = data.ids.astype(str)
    index = pd.Series(np.arange(len(ids)), index=ids)
    runs = []  # (seed, store, training rows, training labels, held-out rows) of each run
    loss_sums = None
    times_held_out = np.zeros((plan.seeds, len(ids)), dtype=int)
    frames = []
    for fold, seed in plan.runs():
        run = plan.run_dir(fold, seed)
        scores = pd.read_csv(run / "scores.csv").drop(columns=["id"])  # ids from the saved split: exact strings
        train = datasets.load_saved(plan.train_path(fold, seed))
        store = FactorStore(run / "factors")
        if len(scores) != len(train.y) or not np.array_equal(scores["row"].to_numpy(), np.arange(len(train.y))) \
                or not np.array_equal(scores["observed_label"].to_numpy(), train.y):
            raise RuntimeError(f"{run / 'scores.csv'} does not match its training split {plan.train_path(fold, seed)}")
        head = pd.DataFrame({"id": train.ids.astype(str), "seed": seed, "fold": fold, "row": scores.pop("row"),
                             "observed_label": scores.pop("observed_label")})
        frames.append(pd.concat([head, scores], axis=1))
        val_ids = datasets.load_saved(plan.split_path(fold, cfg.split_seed(config, seed), "val")).ids.astype(str)
        rows = index.reindex(val_ids).to_numpy()
        if np.isnan(rows).any():
            raise RuntimeError(f"{run}: held-out ids that are not in {plan.name}")
        rows = rows.astype(int)
        losses = np.array([_cross_entropy(_softmax(store.read("val_logits", t)), data.y[rows]).sum()
                           for t in range(store.n_checkpoints)])
        loss_sums = losses if loss_sums is None else loss_sums + losses
        times_held_out[seed, rows] += 1
        runs.append((seed, store, index.reindex(train.ids.astype(str)).to_numpy(dtype=int), train.y, rows))
    per_row = pd.concat(frames, ignore_index=True)
    counts = per_row["id"].value_counts().reindex(ids, fill_value=0)
    expected = plan.seeds * (plan.folds - 1)
    wrong = counts[counts != expected]
    if loss_sums is None or len(wrong) or len(counts) != len(ids) or (times_held_out != 1).any():
        raise RuntimeError(f"not every row was scored {expected} times in training and held out once per seed: "
                           f"{len(wrong)} rows scored otherwise (e.g. {dict(wrong.head(3))})")
    held_out_loss = loss_sums / (plan.seeds * len(ids))
    epoch = int(np.argmin(held_out_loss))
    pred_probs = np.zeros((len(ids), data.n_classes))
    training_loss = np.zeros(len(ids))
    for _, store, train_rows, train_labels, rows in runs:
        pred_probs[rows] += _softmax(store.read("val_logits", epoch)) / plan.seeds
        training_loss[train_rows] += _cross_entropy(_softmax(store.read("train_logits", epoch)), train_labels) / expected
    return Evidence(per_row, pred_probs, training_loss, epoch, held_out_loss)


def score_columns(per_row: pd.DataFrame) -> list[str]:
    return [c for c in per_row.columns if c not in META_COLUMNS]


def novelty_spaces(data: datasets.DataSet) -> list[np.ndarray]:
    """Where rows are compared with each other: the features (a table) or the pixels (images)."""
    return [data.x.reshape(len(data.x), -1)]


def suspicion_table(evidence: Evidence, data: datasets.DataSet) -> pd.DataFrame:
    """The detector's verdict on every row of the user's data, the most suspicious first.

    No clean reference exists here (every fold holds the same glitches), so the detector gets the cross-fitted
    models' held-out probabilities and the row's mean loss while in training, both at the checkpoint
    ``collect`` chose, as label evidence, and a contamination-robust novelty of each row against the rest of
    the data (``detector.robust_novelty``). The per-signal columns are each score's mean over the runs
    where the row was in training.
    """
    from . import detector

    labels = data.y
    ids = data.ids.astype(str)
    scores = score_columns(evidence.per_row)
    means = evidence.per_row.groupby("id", sort=False)[scores].mean().reindex(ids)
    novelty = detector.robust_novelty(novelty_spaces(data))
    verdict = detector.verdict(labels, evidence.pred_probs, novelty, training_loss=evidence.training_loss)
    out = pd.DataFrame({
        "id": ids, "observed_label": labels, "glitch_type": verdict["glitch_type"].to_numpy(),
        "suggested_label": verdict["suggested_label"].to_numpy(), "suspicion": verdict["suspicion"].to_numpy(),
        "confidence": verdict["confidence"].to_numpy(), "label_score": verdict["label_score"].to_numpy(),
        "novelty": verdict["novelty"].to_numpy(),
        "n_scores": evidence.per_row["id"].value_counts().reindex(ids).to_numpy(),
    })
    out = pd.concat([out, means.reset_index(drop=True)], axis=1)
    return out.sort_values("suspicion", ascending=False, kind="mergesort").reset_index(drop=True)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula (``=HYPERLINK(...)``, ``+``, ``-``, ``@``)
    prefixed with ``'``, as OWASP advises against CSV injection; numbers (a label "-1") and other text are
    as they were."""
    out = table.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            text = out[column].astype(str)
            numeric = pd.to_numeric(text, errors="coerce").notna()  # "-1" is a number to a spreadsheet, not a formula
            risky = text.str.startswith(FORMULA_STARTS) & out[column].map(lambda v: isinstance(v, str)) & ~numeric
            out[column] = out[column].where(~risky, "'" + text)
    return out


def held_out_table(evidence: Evidence, data: datasets.DataSet) -> pd.DataFrame:
    """Every row's held-out class probabilities (mean over seeds), in the data's order: what cleanlab's
    ``find_label_issues(labels, pred_probs)`` or any other tool takes."""
    table = pd.DataFrame(evidence.pred_probs, columns=list(data.class_names))
    table.insert(0, "id", data.ids.astype(str))
    table.insert(1, "observed_label", np.asarray(data.class_names, dtype=object)[data.y])
    return table


def named(table: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """The suspicion table with class names for labels (what suspects.csv holds): a mislabel's suggested label
    is the repair, a row not flagged keeps its own, an anomaly has none (inspect or remove it)."""
    names = np.asarray(class_names, dtype=object)
    observed = table["observed_label"].to_numpy()
    kind = table["glitch_type"].to_numpy()
    suggested = np.where(kind == "mislabel", table["suggested_label"].to_numpy(), observed)
    return table.assign(observed_label=names[observed],
                        suggested_label=np.where(kind == "anomaly", "", names[suggested.clip(0)]))


# ----------------------------------------------------------------------------------------------
# Explanations: the validation rows each top row harms most


def harmed_rows(plan: Plan, config: Mapping[str, Any], per_row: pd.DataFrame, ids: Sequence[str],
                flagged: set[str], n_harmed: int = 3) -> dict[str, pd.DataFrame]:
    """For each id, the held-out rows with the most negative TracIn influence, averaged over the runs.

    A held-out row and a training row meet in every run where the first is held out and the second in
    training (at most one fold per seed); negative influence raises the held-out row's loss. The held-out
    rows are the user's own data, not a clean reference: rows the detector flags (``flagged``) are left out,
    or a mislabel would mostly "harm" other mislabels of its kind.
    """
    from .factors import FactorStore
    from .influence import TracInEngine

    wanted = per_row[per_row["id"].isin(set(ids))]
    parts = []
    for (seed, fold), rows in wanted.groupby(["seed", "fold"]):
        run = plan.run_dir(int(fold), int(seed))
        engine = TracInEngine(FactorStore(run / "factors"))
        val = datasets.load_saved(plan.split_path(int(fold), cfg.split_seed(config, int(seed)), "val"))
        for row_id, row in zip(rows["id"], rows["row"]):
            factors = engine.train_factors(int(row), int(row) + 1)
            influence = engine.block(factors, 0, engine.n_val).sum(0)[0].cpu().numpy()
            parts.append(pd.DataFrame({"id": row_id, "val_id": val.ids, "val_label": val.y, "influence": influence}))
    if not parts:
        return {}
    table = pd.concat(parts).groupby(["id", "val_id", "val_label"], as_index=False)["influence"].mean()
    harmful = table[(table["influence"] < 0) & ~table["val_id"].astype(str).isin(flagged)]
    harmful = harmful.sort_values("influence", kind="mergesort")
    return {row_id: group.head(n_harmed).reset_index(drop=True) for row_id, group in harmful.groupby("id")}


# ----------------------------------------------------------------------------------------------
# The report


def thumbnail(path: Path, size: int = 72) -> str:
    """A PNG data URI of an image, upscaled (nearest) when small, downscaled when large."""
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def feature_names(spec: Mapping[str, Any], n_features: int) -> list[str]:
    """The feature columns of a table in file order (what the table loader keeps), for display."""
    path = Path(spec["path"])
    try:
        if path.suffix.lower() == ".arff":
            from scipy.io import arff

            columns = list(arff.loadarff(path)[1].names())
        else:
            columns = list(pd.read_csv(path, nrows=0).columns)
    except (OSError, ValueError):
        columns = []
    skipped = {spec["label"], spec.get("id"), *spec.get("drop", ())}
    names = [str(c) for c in columns if c not in skipped]
    return names if len(names) == n_features else [f"x{i}" for i in range(n_features)]


def histogram(values: np.ndarray, cut: float, bins: int = 20, width: int = 520, height: int = 160) -> dict[str, Any]:
    """Bars of an inline SVG histogram of suspicion over [0, 1], and the cut's x position."""
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    tallest = max(int(counts.max()), 1)
    bar = width / bins
    bars = [{"x": round(i * bar, 1), "w": round(bar - 1, 1), "h": round(height * c / tallest, 1),
             "y": round(height - height * c / tallest, 1), "count": int(c), "lo": float(edges[i]), "hi": float(edges[i + 1])}
            for i, c in enumerate(counts)]
    return {"bars": bars, "width": width, "height": height, "cut_x": round(cut * width, 1), "cut": cut, "tallest": tallest}


def report_context(plan: Plan, data: datasets.DataSet, spec: Mapping[str, Any], suspects: pd.DataFrame,
                   harms: Mapping[str, pd.DataFrame], top: float, settings: Mapping[str, Any],
                   n_top_rows: int = 20, n_explained: int = 10) -> dict[str, Any]:
    names = data.class_names
    index = {row_id: i for i, row_id in enumerate(data.ids.astype(str))}
    n_cut = max(1, int(round(top * len(suspects))))
    kinds = Counter(suspects["glitch_type"])
    accuracy = [pd.read_csv(plan.run_dir(f, s) / "history.csv")["val_accuracy"].iloc[-1] for f, s in plan.runs()]
    columns = feature_names(spec, data.x.shape[1]) if data.modality == "tabular" else []
    rows = []
    for rank, line in enumerate(suspects.head(n_top_rows).itertuples(index=False), start=1):
        entry = {"rank": rank, "id": line.id, "observed": line.observed_label, "suggested": line.suggested_label,
                 "glitch_type": line.glitch_type, "suspicion": line.suspicion, "confidence": line.confidence,
                 "n_scores": line.n_scores, "features": [], "more_features": 0, "thumbnail": None}
        if data.modality == "image":
            entry["thumbnail"] = thumbnail(Path(spec["path"]) / str(line.id))
        else:
            values = data.x[index[str(line.id)]]
            entry["features"] = [(c, f"{v:.4g}") for c, v in zip(columns[:40], values[:40])]
            entry["more_features"] = max(0, len(columns) - 40)
        rows.append(entry)
    flagged = suspects[suspects["glitch_type"] == "mislabel"]
    pairs = Counter(zip(flagged["observed_label"], flagged["suggested_label"])).most_common()
    explained = []
    for line in suspects.head(n_explained).itertuples(index=False):
        harmed = harms.get(str(line.id))
        explained.append({"id": line.id, "observed": line.observed_label, "suggested": line.suggested_label,
                          "harmed": [] if harmed is None else
                          [{"id": h.val_id, "label": names[int(h.val_label)], "influence": h.influence}
                           for h in harmed.itertuples(index=False)]})
    class_counts = np.bincount(data.y, minlength=len(names))
    return {
        "name": plan.name, "path": spec["path"], "modality": data.modality, "model": plan.model,
        "folds": plan.folds, "seeds": plan.seeds, "runs": len(plan.runs()), "epochs": settings.get("epochs"),
        "n_rows": len(suspects), "n_classes": len(names),
        "classes": [{"name": n, "count": int(c)} for n, c in zip(names, class_counts)],
        "n_features": int(np.prod(data.x.shape[1:])), "shape": "x".join(str(s) for s in data.x.shape[1:]),
        "accuracy_mean": float(np.mean(accuracy)), "accuracy_sd": float(np.std(accuracy, ddof=1)) if len(accuracy) > 1 else 0.0,
        "top": top, "n_cut": n_cut, "n_mislabel": kinds.get("mislabel", 0), "n_anomaly": kinds.get("anomaly", 0),
        "n_none": kinds.get("none", 0), "top_rows": rows,
        "pairs": [{"observed": o, "suggested": s, "count": n} for (o, s), n in pairs],
        "histogram": histogram(suspects["suspicion"].to_numpy(), float(suspects["suspicion"].iloc[n_cut - 1])),
        "explained": explained,
    }


def render_report(context: Mapping[str, Any]) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)
    return environment.get_template("report.html.j2").render(**context)


# ----------------------------------------------------------------------------------------------
# The command


def debug(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    if args.folds < 2:
        raise ConfigError("--folds must be at least 2 (each row is scored in the folds where it is in training)")
    if not 0 < args.top < 1:
        raise ConfigError("--top must be a share in (0, 1), e.g. 0.1 for the top 10 %")
    path = Path(args.data).expanduser().resolve()
    spec = data_spec(path, args)
    name = args.name or dataset_name(path)
    progress(f"loading {path} ...")
    data = datasets.load(name, spec)
    datasets.check_classes(data, minimum=max(args.folds, 4))
    model = args.model or ("resnet20" if data.modality == "image" else "mlp")
    settings = train_settings(model, args)
    config = build_config(name, spec, model, args.seeds, args.folds, settings, args.device)
    full = cfg.validate(copy.deepcopy(config))  # a bad setting stops here, before any work
    out = output_folder(Path(args.out).expanduser().resolve(), path)
    config_file = out / "config.yaml"
    write_text(config_file, yaml.safe_dump(config, sort_keys=False))
    plan = Plan(out, name, model, args.seeds, args.folds)
    progress(f"{name}: {len(data.y)} rows, {data.n_classes} classes; {model}, {args.folds} folds x {args.seeds} seeds; "
             f"config {config_file}")
    if args.no_snakemake:
        if args.dry_run:
            for fold, seed in plan.runs():
                progress(f"would run fold {fold + 1}/{plan.folds}, seed {seed + 1}/{plan.seeds}: {plan.run_dir(fold, seed)}")
            return 0
        run_direct(plan, full)
    else:
        code = run_snakemake(plan, config_file, args.cores, args.dry_run)
        if code != 0:
            print(f"error: snakemake failed (exit {code}); the failed job's log is under {out / 'results' / 'logs'}",
                  file=sys.stderr)
            return 1
        if args.dry_run:
            return 0
    progress("combining the runs ...")
    evidence = collect(plan, data, full)
    table = suspicion_table(evidence, data)
    suspects = named(table, data.class_names)
    write_csv(out / "suspects.csv", spreadsheet_safe(suspects))
    write_csv(out / "pred_probs.csv", spreadsheet_safe(held_out_table(evidence, data)))
    progress("explaining the top rows ...")
    flagged = set(suspects.loc[suspects["glitch_type"] != "none", "id"])
    harms = harmed_rows(plan, full, evidence.per_row, list(suspects["id"].head(10)), flagged)
    write_text(out / "report.html", render_report(report_context(plan, data, spec, suspects, harms, args.top, settings)))
    kinds = Counter(suspects["glitch_type"])
    progress(f"wrote {out / 'suspects.csv'} and {out / 'report.html'}: {kinds.get('mislabel', 0)} suspected mislabels, "
             f"{kinds.get('anomaly', 0)} suspected anomalies among {len(suspects)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
