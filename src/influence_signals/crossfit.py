"""Cross-fitted runs on a user's data: one job per seed and fold trains a model on the other folds
(``stages.crossfit``), and the report job reads them back as the evidence the detector judges the whole data
set by.

Every row is held out once per seed (its predicted probabilities come from a model that never saw it) and
is in training in the other ``folds - 1`` runs. A run's folder (``paths.CROSSFIT``, ``.../s<seed>/f<k>``)
holds ``split.npz`` (the ids and labels of its training and held-out rows), ``factors/`` (the TracIn factors
of every checkpoint), ``scores.csv`` (every signal per training row) and ``history.csv``.
No clean reference exists here: every fold holds the same glitches, so the detector is fed held-out
probabilities and a contamination-robust novelty (``detector.robust_novelty``), never a "clean" split.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import datasets
from .artifacts import load_npz, save_npz

META_COLUMNS = ("id", "seed", "fold", "row", "observed_label")
log = logging.getLogger("influence_signals")


class Progress:
    """Log lines inside a long job: each step as it starts and ends, with its seconds, the job's so far and the
    process's peak memory, so that the job's log shows where it is (a 200,000-row crossfit job runs for tens
    of minutes)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        import resource

        began = time.monotonic()
        log.info("%s ...", what)
        yield
        now = time.monotonic()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        log.info("%s: done in %.1f s (%.0f s into the job; peak RSS %.0f MiB)", what, now - began, now - self.started, peak)


def fold_folders(runs: Sequence[str | Path], folds: int) -> list[tuple[int, int, Path]]:
    """(seed, fold, folder) of every run; ``runs`` holds the runs' folders seed by seed, fold by fold."""
    if not runs or len(runs) % folds:
        raise ValueError(f"{len(runs)} runs are not a whole number of seeds of {folds} folds")
    return [(index // folds, index % folds, Path(run)) for index, run in enumerate(runs)]


def save_split(path: str | Path, train: datasets.DataSet, held_out: datasets.DataSet) -> None:
    """The ids and labels of a fold's training and held-out rows (the features stay in the user's file)."""
    save_npz(path, train_ids=train.ids.astype(str), train_y=train.y, val_ids=held_out.ids.astype(str), val_y=held_out.y)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(-1, keepdims=True))


@dataclass(frozen=True)
class Evidence:
    """What the runs say about every row of the user's data, in the data's row order.

    ``per_row``: one line per (run, training row) with its id, seed, fold, row and observed label and every
    signal's score (last checkpoint); ``epoch``: the checkpoint whose held-out rows' mean loss is lowest over
    all runs (``held_out_loss`` per checkpoint); ``pred_probs``: each row's held-out class probabilities, the
    mean of the network's at that checkpoint and each companion learner's (``learners``: the network first,
    then the companions fitted), each from the run that held the row out and averaged over seeds;
    ``training_loss``: its loss at that checkpoint in the runs that trained on it, averaged.
    """

    per_row: pd.DataFrame
    pred_probs: np.ndarray
    training_loss: np.ndarray
    epoch: int
    held_out_loss: np.ndarray
    learners: tuple[str, ...] = ("network",)


def _cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row: -log p(observed label)."""
    return np.asarray(-np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)))


def collect(runs: Sequence[str | Path], folds: int, data: datasets.DataSet) -> Evidence:
    """Read every run: its training rows' scores and losses, its held-out rows' predicted probabilities.

    The checkpoint used is chosen by cross-validation: the one whose held-out rows have the lowest mean loss
    over all runs. A network trained for a fixed number of epochs first learns and then memorises the wrong
    labels; held out, that shows as a rising loss (MNIST as a table: lowest at epoch 5 of 30, top-k precision
    0.88 there against 0.79 at the end), while one still learning (Image Segmentation) picks its last epochs.
    Two passes over the runs' factors (the losses, then the chosen checkpoint), so memory stays O(rows x
    classes). Checks that every row is scored exactly ``seeds x (folds - 1)`` times in training and held out
    exactly once per seed, and that each companion learner held out every row.

    The held-out probabilities are the plain mean of the network's and the companions' (``companions``; the
    debug workflow fits them on the first seed's partition only, as cleanlab's cross-validation does): on the
    detection benchmark's label noise, weights chosen by each learner's held-out loss did no better than equal
    ones, and the mean of the three beat each pair.
    """
    from .factors import FactorStore

    seeds = len(runs) // folds
    ids = data.ids.astype(str)
    index = pd.Series(np.arange(len(ids)), index=ids)
    stores = []  # (store, training rows, training labels, held-out rows) of each run
    companion_sums: dict[str, np.ndarray] = {}  # each companion's held-out probabilities, summed over its runs
    companion_runs: dict[str, np.ndarray] = {}  # how many of its runs held each row out
    loss_sums = None
    times_held_out = np.zeros((seeds, len(ids)), dtype=int)
    frames = []
    for seed, fold, folder in fold_folders(runs, folds):
        split = load_npz(folder / "split.npz")
        scores = pd.read_csv(folder / "scores.csv").drop(columns=["id"])  # ids from the saved split: exact strings
        store = FactorStore(folder / "factors")
        train_rows, rows = (index.reindex(split[key].astype(str)).to_numpy() for key in ("train_ids", "val_ids"))
        if np.isnan(train_rows).any() or np.isnan(rows).any():
            raise RuntimeError(f"{folder}: ids that are not in {data.name}; rerun the crossfit job")
        if len(scores) != len(train_rows) or not np.array_equal(scores["observed_label"].to_numpy(), split["train_y"]):
            raise RuntimeError(f"{folder / 'scores.csv'} does not match its split; rerun the crossfit job")
        head = pd.DataFrame({"id": split["train_ids"].astype(str), "seed": seed, "fold": fold, "row": scores.pop("row"),
                             "observed_label": scores.pop("observed_label")})
        frames.append(pd.concat([head, scores], axis=1))
        rows, train_rows = rows.astype(int), train_rows.astype(int)
        losses = np.array([_cross_entropy(_softmax(store.read("val_logits", t)), data.y[rows]).sum()
                           for t in range(store.n_checkpoints)])
        loss_sums = losses if loss_sums is None else loss_sums + losses
        times_held_out[seed, rows] += 1
        for name, probabilities in load_npz(folder / "companions.npz").items():
            companion_sums.setdefault(name, np.zeros((len(ids), data.n_classes)))[rows] += probabilities
            companion_runs.setdefault(name, np.zeros(len(ids)))[rows] += 1
        stores.append((store, train_rows, split["train_y"], rows))
    per_row = pd.concat(frames, ignore_index=True)
    counts = per_row["id"].value_counts().reindex(ids, fill_value=0)
    expected = seeds * (folds - 1)
    wrong = counts[counts != expected]
    if loss_sums is None or len(wrong) or (times_held_out != 1).any():
        raise RuntimeError(f"not every row was scored {expected} times in training and held out once per seed: "
                           f"{len(wrong)} rows scored otherwise (e.g. {dict(wrong.head(3))})")
    unseen = [name for name, runs_of_row in companion_runs.items() if (runs_of_row == 0).any()]
    if unseen:
        raise RuntimeError(f"companion learners {', '.join(unseen)} did not hold out every row; rerun the crossfit jobs")
    held_out_loss = loss_sums / (seeds * len(ids))
    epoch = int(np.argmin(held_out_loss))
    pred_probs = np.zeros((len(ids), data.n_classes))
    training_loss = np.zeros(len(ids))
    for store, train_rows, train_labels, rows in stores:
        pred_probs[rows] += _softmax(store.read("val_logits", epoch)) / seeds
        training_loss[train_rows] += _cross_entropy(_softmax(store.read("train_logits", epoch)), train_labels) / expected
    learners = ("network", *sorted(companion_sums))
    for name in learners[1:]:
        pred_probs += companion_sums[name] / companion_runs[name][:, None]
    pred_probs /= len(learners)
    return Evidence(per_row, pred_probs, training_loss, epoch, held_out_loss, learners)


def score_columns(per_row: pd.DataFrame) -> list[str]:
    return [c for c in per_row.columns if c not in META_COLUMNS]


def novelty_spaces(data: datasets.DataSet) -> list[np.ndarray]:
    """Where rows are compared with each other: the features (a table) or the pixels (images)."""
    return [data.x.reshape(len(data.x), -1)]


def suspicion_table(evidence: Evidence, data: datasets.DataSet, progress: Progress | None = None) -> pd.DataFrame:
    """The detector's verdict on every row of the user's data, the most suspicious first.

    No clean reference exists here (every fold holds the same glitches), so the detector gets the cross-fitted
    models' held-out probabilities and the row's mean loss while in training, both at the checkpoint
    ``collect`` chose, as label evidence, and a contamination-robust novelty of each row against the rest of
    the data (``detector.robust_novelty``). The per-signal columns are each score's mean over the runs
    where the row was in training; a signal that needs the pairwise pass is computed in the first seed's runs
    only (the debug workflow's ``pairwise``), so its mean is over those. None of them is in the verdict (the
    detection benchmark's ablation: none helps it reliably), and the pass costs about a third of each run.
    """
    from . import detector

    labels = data.y
    ids = data.ids.astype(str)
    scores = score_columns(evidence.per_row)
    progress = progress or Progress()
    with progress.step("each signal's mean over the runs"):
        means = evidence.per_row.groupby("id", sort=False)[scores].mean().reindex(ids)
    with progress.step("novelty (kNN distance over all rows)"):
        novelty = detector.robust_novelty(novelty_spaces(data))
    with progress.step("the verdict (label evidence, confident learning's count, repairs)"):
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
    """Every row's held-out class probabilities (``Evidence.pred_probs``), in the data's order: what cleanlab's
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
# Explanations: the held-out rows each top row harms most


def harmed_rows(runs: Sequence[str | Path], folds: int, per_row: pd.DataFrame, ids: Sequence[str], flagged: set[str],
                n_harmed: int = 3) -> dict[str, pd.DataFrame]:
    """For each id, the held-out rows with the most negative TracIn influence, averaged over the runs.

    A held-out row and a training row meet in every run where the first is held out and the second in
    training (at most one fold per seed); negative influence raises the held-out row's loss. The held-out
    rows are the user's own data, not a clean reference: rows the detector flags (``flagged``) are left out,
    or a mislabel would mostly "harm" other mislabels of its kind.
    """
    from .factors import FactorStore
    from .influence import TracInEngine

    wanted = per_row[per_row["id"].isin(set(ids))]
    folders = {(seed, fold): folder for seed, fold, folder in fold_folders(runs, folds)}
    parts = []
    for (seed, fold), rows in wanted.groupby(["seed", "fold"]):
        folder = folders[int(seed), int(fold)]
        engine = TracInEngine(FactorStore(folder / "factors"))
        split = load_npz(folder / "split.npz")
        influences = engine.rows_influence([int(row) for row in rows["row"]]).cpu().numpy()
        for row_id, influence in zip(rows["id"], influences):
            parts.append(pd.DataFrame({"id": row_id, "val_id": split["val_ids"].astype(str), "val_label": split["val_y"],
                                       "influence": influence}))
    if not parts:
        return {}
    table = pd.concat(parts).groupby(["id", "val_id", "val_label"], as_index=False)["influence"].mean()
    harmful = table[(table["influence"] < 0) & ~table["val_id"].astype(str).isin(flagged)]
    harmful = harmful.sort_values("influence", kind="mergesort")
    return {row_id: group.head(n_harmed).reset_index(drop=True) for row_id, group in harmful.groupby("id")}
