"""What a cluster run of a config will cost, estimated from a finished run's ``benchmark:`` files.

    python benchmarks/cluster_cost.py                                   # the default run's results/ -> config/paper.yaml
    python benchmarks/cluster_cost.py --results results --measured config.yaml --target config/paper.yaml \\
        --cores 16 --nodes 1 4 16

Each job of the measured run has its wall seconds (Snakemake's ``benchmark:`` files), its threads and its size
(training rows and validation rows, read from the run's data files; epochs from its config). Per stage the
script fits the cost that stage's work grows with, then prices every job that ``--target`` plans:

- ``train`` / ``pretrain``: core-seconds proportional to training rows x epochs, one rate per model; a model the
  measured run did not train is priced from the measured rate of the same modality scaled by its forward
  FLOPs per row (``FORWARD_MFLOPS``). Frozen trunks run once, not per epoch, so this is an upper bound there.
- ``signals``: a n_train x n_val term (the pairwise pass, nearest neighbours) plus a n_train term, fitted by
  non-negative least squares over all measured signals jobs.
- ``prepare``, ``inject``: proportional to the data set's rows; ``aggregate``, ``figure``, ``table``: the
  measured mean per job.

Target data sets the measured run did not load are sized from ``TRAIN_ROWS`` (their published training
splits) and the target's ``prepare.fraction`` / ``val_fraction``. The wall time on N nodes of C cores assumes
jobs pack perfectly (total core-seconds / (N x C)) but never beats the longest job of a stage. It is an
estimate for planning, from one 2-core machine: a cluster's cores are not this host's.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.optimize import nnls

from influence_signals import config as cfg
from influence_signals.models import MODELS

ROOT = Path(__file__).resolve().parents[1]
# Training-split rows of the study's data sets (torchvision's MNIST / Fashion-MNIST / CIFAR-10 train splits;
# OpenML's jannis 83,733, covertype 581,012 and epsilon 400,000 train rows), for data the measured run lacks.
TRAIN_ROWS = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000, "jannis": 83_733, "covertype": 581_012,
              "epsilon": 400_000}
# Forward MFLOPs per row at the resolution each model runs at (published figures; tabular models: measured
# rate used directly): used only to price a model the measured run did not train, relative to one it did.
FORWARD_MFLOPS = {"resnet20": 41.0, "resnet20_hub": 41.0, "convnext_tiny": 4_500.0, "vit_b_16": 17_600.0,
                  "efficientnet_lite0": 390.0}
STAGES = ("prepare", "inject", "pretrain", "train", "signals", "aggregate", "figures", "tables")


def _rows(path: Path) -> int:
    with np.load(path, allow_pickle=False) as data:
        return int(len(data["y"]))


def measured_jobs(results: Path, config: Mapping[str, Any]) -> pd.DataFrame:
    """One line per measured job: stage, its wildcards, wall seconds, threads, training and validation rows."""
    threads = {**{"train": 1, "influence": 1, "signals": 1}, **config.get("threads", {})}
    lines = []
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        stage = path.relative_to(results / "benchmarks").parts[0]
        seconds = float(pd.read_csv(path, sep="\t")["s"].iloc[0])
        line: dict[str, Any] = {"stage": stage, "s": seconds, "threads": 1}
        if stage in ("train", "signals"):
            dataset, model, glitch, ratio, seed = path.relative_to(results / "benchmarks" / stage).with_suffix("").parts
            job = results / "data" / dataset / glitch / ratio / seed
            split = cfg.split_seed(config, int(seed[1:]))
            line.update(dataset=dataset, model=model, threads=threads["train" if stage == "train" else "signals"],
                        n_train=_rows(job / "train.npz"), n_val=_rows(results / "data" / dataset / f"split{split}" / "val.npz"),
                        epochs=cfg.train_settings(config, dataset, model)["epochs"])
        elif stage == "prepare":
            line.update(dataset=path.stem.split("_split")[0])
        lines.append(line)
    frame = pd.DataFrame(lines)
    frame["core_s"] = frame["s"] * frame["threads"]
    return frame


def train_rates(measured: pd.DataFrame) -> dict[str, float]:
    """Core-seconds per training row and epoch, per measured model."""
    train = measured[measured["stage"] == "train"]
    return {str(m): float((g["core_s"] / (g["n_train"] * g["epochs"])).median()) for m, g in train.groupby("model")}


def train_rate(model: str, rates: Mapping[str, float]) -> float:
    if model in rates:
        return rates[model]
    modality = MODELS[model].modality
    known = [m for m in rates if MODELS[m].modality == modality and m in FORWARD_MFLOPS]
    if not known or model not in FORWARD_MFLOPS:
        return max(rates.values())
    reference = known[0]
    return rates[reference] * FORWARD_MFLOPS[model] / FORWARD_MFLOPS[reference]


def signals_fit(measured: pd.DataFrame) -> np.ndarray:
    """Coefficients (pairwise, linear) of core-seconds = a n_train n_val + b n_train over the signals jobs."""
    jobs = measured[measured["stage"] == "signals"]
    design = np.column_stack([jobs["n_train"] * jobs["n_val"], jobs["n_train"]]).astype(float)
    coefficients, _ = nnls(design, jobs["core_s"].to_numpy(dtype=float))
    return coefficients


def target_sizes(target: Mapping[str, Any], measured: pd.DataFrame, measured_config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(training rows, validation rows) per target data set."""
    fraction, val_fraction = target["prepare"]["fraction"], target["prepare"]["val_fraction"]
    sizes = {}
    for name in target["datasets"]:
        if name in TRAIN_ROWS:
            subsample = TRAIN_ROWS[name] * fraction
        else:
            seen = measured[(measured["stage"] == "train") & (measured["dataset"] == name)]
            if seen.empty:
                continue
            measured_fraction = measured_config["prepare"]["fraction"]
            subsample = (seen["n_train"].median() + seen["n_val"].median()) / measured_fraction * fraction
        sizes[name] = (round(subsample * (1 - val_fraction)), round(subsample * val_fraction))
    return sizes


def estimate(measured: pd.DataFrame, measured_config: Mapping[str, Any], target: Mapping[str, Any]) -> pd.DataFrame:
    """Core-seconds of every job ``target`` plans, one line per job and stage."""
    rates, (pairwise, linear) = train_rates(measured), signals_fit(measured)
    sizes = target_sizes(target, measured, measured_config)
    per_job = measured.groupby("stage")["core_s"].mean().to_dict()  # a measured job's mean core-seconds per stage
    rows_measured = float(measured.loc[measured["stage"] == "train", "n_train"].median())
    lines = []
    jobs = cfg.all_jobs(target)
    for job in jobs:
        n_train, n_val = sizes[job.dataset]
        epochs = cfg.train_settings(target, job.dataset, job.model)["epochs"]
        lines.append({"stage": "train", "core_s": train_rate(job.model, rates) * n_train * epochs, "job": job})
        lines.append({"stage": "signals", "core_s": pairwise * n_train * n_val + linear * n_train, "job": job})
        lines.append({"stage": "inject", "core_s": per_job.get("inject", 0.0) * n_train / rows_measured, "job": job})
    splits = {(job.dataset, cfg.split_seed(target, job.seed)) for job in jobs}
    for dataset, _ in splits:
        lines.append({"stage": "prepare", "core_s": per_job.get("prepare", 0.0) * sum(sizes[dataset]) / rows_measured})
    lines.append({"stage": "aggregate", "core_s": per_job.get("aggregate", 0.0)})
    lines += [{"stage": "figures", "core_s": per_job.get("figures", 0.0)} for _ in target.get("figures", {})]
    lines += [{"stage": "tables", "core_s": per_job.get("tables", 0.0)} for _ in target.get("tables", {})]
    return pd.DataFrame(lines)


def report(jobs: pd.DataFrame, cores: int, nodes: Sequence[int]) -> str:
    per_stage = jobs.groupby("stage")["core_s"].agg(["count", "sum", "max"]).reindex([s for s in STAGES if s in set(jobs["stage"])])
    header = "| stage | jobs | core-hours | longest job (h) | " + " | ".join(f"wall on {n} x {cores} cores (h)" for n in nodes) + " |"
    lines = [header, "|" + " --- |" * (4 + len(nodes))]
    for stage, row in per_stage.iterrows():
        walls = [max(row["sum"] / (n * cores), row["max"]) / 3600 for n in nodes]
        lines.append(f"| {stage} | {int(row['count'])} | {row['sum'] / 3600:,.1f} | {row['max'] / 3600:.2f} | "
                     + " | ".join(f"{w:,.1f}" for w in walls) + " |")
    total = per_stage["sum"].sum()
    walls = [max(total / (n * cores), per_stage["max"].max()) / 3600 for n in nodes]
    lines.append(f"| total | {int(per_stage['count'].sum())} | {total / 3600:,.1f} | | " + " | ".join(f"{w:,.1f}" for w in walls) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="a finished run's results folder")
    parser.add_argument("--measured", type=Path, default=ROOT / "config.yaml", help="the config that run used")
    parser.add_argument("--target", type=Path, default=ROOT / "config/paper.yaml", help="the config to price")
    parser.add_argument("--cores", type=int, default=16, help="cores per node")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args(argv)
    measured_config, target = (cfg.validate(yaml.safe_load(path.read_text())) for path in (args.measured, args.target))
    measured = measured_jobs(args.results, measured_config)
    jobs = estimate(measured, measured_config, target)
    rates = train_rates(measured)
    print(f"measured: {len(measured)} jobs in {args.results} ({args.measured.name}); "
          f"training core-s per row and epoch: " + ", ".join(f"{m} {r:.2e}" for m, r in sorted(rates.items())))
    print(f"target: {args.target} plans {len(cfg.all_jobs(target))} runs\n")
    print(report(jobs, args.cores, args.nodes))


if __name__ == "__main__":
    main()
