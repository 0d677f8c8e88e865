"""``influence-signals debug``: one command that points the workflow at a user's own table or image folder.

It checks the data and every setting, writes a config with a ``debug:`` section (the data set, the model,
folds and seeds) into its output folder and runs the package's own Snakefile there: one ``crossfit`` job
per seed (a model per fold, each trained on the other folds; ``crossfit``), then one ``debug_report`` job
that judges every row from all runs (``detector``) and writes ``suspects.csv``, ``pred_probs.csv`` and
``report.html``. Any Snakemake executor runs it (``--profile``); Snakemake's output goes to
``snakemake.log`` and only the progress is printed.
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from . import config as cfg
from . import datasets, paths
from .artifacts import write_text
from .config import ConfigError
from .datasets import DataError
from .signals import cross_fitted_names

SNAKEFILE = Path(__file__).resolve().parents[2] / "Snakefile"
CLIP_SD = 5.0
"""The networks' standardised inputs are limited to +/- 5 sd: a near-constant column (a border pixel of MNIST
as a table) or a row pushed far out cannot swamp training. Top-k precision on MNIST-as-a-table label noise
0.89 unclipped, 0.91 clipped at 8, 0.91 at 5; Image Segmentation 0.957 at 8, 0.961 at 5."""

# Training settings per model: sane defaults for a user's data (the rest come from the schema's defaults).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"epochs": 30, "lr": 0.1, "batch_size": 64},  # 15 left it underfit: top-k 0.84 -> 0.90 on the detection benchmark
    "resnet": {"epochs": 15, "lr": 0.05, "batch_size": 64},
    "ft_transformer": {"epochs": 20, "lr": 0.05, "batch_size": 32, "options": {"n_blocks": 1}},
    "resnet20": {"epochs": 15, "lr": 0.1, "batch_size": 64, "pretrained": "none"},  # trained from scratch
}
FINE_TUNE = {"resnet20": {"epochs": 7, "lr": 0.1, "batch_size": 128, "trainable": ["layer3"]}}  # with --pretrained


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
    p.add_argument("--verbose", action="store_true", help="print Snakemake's own output (default: it goes to "
                                                          "OUT/snakemake.log; only progress is printed)")
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
                 settings: Mapping[str, Any], device: str = "cpu", top: float = 0.1) -> dict[str, Any]:
    """A config that declares only this data set and its ``debug:`` section (every other key takes its schema
    default): no study grid, figures or tables."""
    return {
        "device": device,
        "prepare": {"clip": CLIP_SD},
        "datasets": {name: dict(spec)},
        "train": {"models": {model: dict(settings)}},
        "signals": {"names": cross_fitted_names()},  # the held-out folds hold the user's glitches too
        "debug": {"dataset": name, "model": model, "folds": folds, "seeds": seeds, "top": top},
        "figures": {},
        "tables": {},
    }


# ----------------------------------------------------------------------------------------------
# Running the workflow

STEP = re.compile(r"(\d+) of (\d+) steps")


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds // 60:.0f} min {seconds % 60:.0f} s"


def run_snakemake(out: Path, config_file: Path, cores: int, dry_run: bool = False, verbose: bool = False,
                  extra: Sequence[str] = ()) -> int:
    """Snakemake on the package's Snakefile in ``out``; its output goes to ``out/snakemake.log`` (and to the
    terminal with ``verbose`` or ``dry_run``), and each finished job prints a progress line with the time left."""
    if not SNAKEFILE.exists():
        raise ConfigError(f"the workflow {SNAKEFILE} is not next to the package (installed without the repository?)")
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(out), "--configfile",
               str(config_file), "--cores", str(cores), *(["-n"] if dry_run else []), *extra]
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
                elapsed = time.monotonic() - started
                left = f", about {duration(elapsed / done * (total - done))} left" if done < total else ""
                progress(f"{done} of {total} jobs done ({duration(elapsed)}{left})")
        return process.wait()


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
    for note in data.notes:
        progress(f"  {note}")
    datasets.check_classes(data, minimum=max(args.folds, 4))
    model = args.model or ("resnet20" if data.modality == "image" else "mlp")
    settings = train_settings(model, args)
    config = build_config(name, spec, model, args.seeds, args.folds, settings, args.device, args.top)
    cfg.validate(copy.deepcopy(config))  # a bad setting stops here, before any work
    out = output_folder(Path(args.out).expanduser().resolve(), path)
    config_file = out / "config.yaml"
    write_text(config_file, yaml.safe_dump(config, sort_keys=False))
    progress(f"{name}: {len(data.y)} rows, {data.n_classes} classes; {model}, {args.folds} folds x {args.seeds} seeds "
             f"in {args.seeds} jobs, then the report; config {config_file}")
    code = run_snakemake(out, config_file, args.cores, args.dry_run, args.verbose)
    if code != 0:
        print(f"error: snakemake failed (exit {code}); see {out / 'snakemake.log'} and the failed job's log under "
              f"{out / 'results' / 'logs'}", file=sys.stderr)
        return 1
    if args.dry_run:
        return 0
    suspects = pd.read_csv(out / paths.DEBUG_OUTPUTS["suspects"], usecols=["glitch_type"])
    kinds = Counter(suspects["glitch_type"])
    progress(f"wrote {out / paths.DEBUG_OUTPUTS['suspects']} and {out / paths.DEBUG_OUTPUTS['report']}: "
             f"{kinds.get('mislabel', 0)} suspected mislabels, {kinds.get('anomaly', 0)} suspected anomalies "
             f"among {len(suspects)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
