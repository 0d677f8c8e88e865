"""Where the workflow's files live: one definition, read by the rules (``workflow/rules``) and the package.

Each template is a ``str.format`` pattern over the wildcards of the rule that writes it; Snakemake reads the
same strings as its output patterns.
"""
from __future__ import annotations

RUN = "results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}"
"""One study run: its checkpoints, factors, scores and metrics."""

SPLIT = "results/data/{dataset}/split{split}"
"""A prepared data set's train / validation / pool splits."""

GLITCHED = "results/data/{dataset}/{glitch}/r{ratio}/s{seed}"
"""A glitched training split and its error table."""

CROSSFIT = "results/crossfit/{dataset}/{model}/s{seed}/f{fold}"
"""One fold's cross-fitted run on a user's data, of one seed's partition (see ``crossfit``)."""

DEBUG_OUTPUTS = {"suspects": "suspects.csv", "pred_probs": "pred_probs.csv", "report": "report.html"}
"""What the debug command leaves in its output folder (the workflow's working directory)."""


def crossfit(dataset: str, model: str, seed: int, fold: int) -> str:
    return CROSSFIT.format(dataset=dataset, model=model, seed=seed, fold=fold)
