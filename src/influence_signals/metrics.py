"""Detection metrics: how well a ranking of training rows finds the glitched ones.

The study's F1 flags exactly k rows, k the number of glitched rows, so precision = recall = F1 at k.
(The reference code's threshold flags k + 1 rows, an off-by-one not copied here.) Ties are broken
deterministically towards the lower row index; NaN scores rank last.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

INSPECTED_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


def ranking(scores: np.ndarray) -> np.ndarray:
    """Row indices from most to least suspicious (descending score, ties by row index, NaN last)."""
    clean = np.where(np.isnan(scores), -np.inf, scores)
    return np.lexsort((np.arange(len(scores)), -clean))


def f1_at_k(scores: np.ndarray, glitched: np.ndarray) -> float:
    """F1 when the top k = number of glitches rows are flagged (= precision = recall at k); NaN without k."""
    glitched = np.asarray(glitched, dtype=bool)
    k = int(glitched.sum())
    if k == 0 or k == len(glitched):
        return np.nan
    return float(glitched[ranking(scores)[:k]].sum()) / k


def _descending_runs(scores: np.ndarray, glitched: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct score, from the highest down (NaN lowest)."""
    finite = np.finfo(np.float64)
    clean = np.nan_to_num(np.where(np.isnan(scores), -np.inf, scores), neginf=finite.min, posinf=finite.max)
    order = np.argsort(-clean, kind="stable")
    values, hits = clean[order], glitched[order]
    ends = np.r_[np.flatnonzero(np.diff(values)), len(values) - 1]  # the last row of each run of equal scores
    true_positives = np.cumsum(hits)[ends]
    return true_positives, ends + 1 - true_positives


def average_precision(scores: np.ndarray, glitched: np.ndarray) -> float:
    """sum_n (R_n - R_{n-1}) P_n over distinct thresholds, tied scores forming one step (scikit-learn's AP)."""
    true_positives, false_positives = _descending_runs(scores, glitched)
    recall = true_positives / true_positives[-1]
    precision = true_positives / (true_positives + false_positives)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def auroc(scores: np.ndarray, glitched: np.ndarray) -> float:
    """Area under the ROC curve with ties as half (trapezoids between distinct thresholds; scikit-learn's)."""
    true_positives, false_positives = _descending_runs(scores, glitched)
    tpr = np.r_[0.0, true_positives / true_positives[-1]]
    fpr = np.r_[0.0, false_positives / false_positives[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def detection(scores: np.ndarray, glitched: np.ndarray) -> dict[str, float]:
    """F1 / precision / recall at k = number of glitches, average precision and AUROC."""
    glitched = np.asarray(glitched, dtype=bool)
    k = int(glitched.sum())
    if k == 0 or k == len(glitched):
        return {"k": k, "f1": np.nan, "precision_at_k": np.nan, "recall_at_k": np.nan, "ap": np.nan, "auroc": np.nan}
    f1 = f1_at_k(scores, glitched)
    return {"k": k, "f1": f1, "precision_at_k": f1, "recall_at_k": f1,
            "ap": average_precision(scores, glitched), "auroc": auroc(scores, glitched)}


def found_vs_inspected(scores: np.ndarray, glitched: np.ndarray,
                       fractions: Sequence[float] = INSPECTED_FRACTIONS) -> pd.DataFrame:
    """The TracIn paper's curve: share of glitches found after inspecting the top fraction of rows."""
    glitched = np.asarray(glitched, dtype=bool)
    found = np.cumsum(glitched[ranking(scores)]) / max(1, glitched.sum())
    counts = [max(1, int(round(f * len(scores)))) for f in fractions]
    return pd.DataFrame({"inspected": fractions, "found": [found[c - 1] for c in counts]})


def glitch_mask(errors: pd.DataFrame) -> np.ndarray:
    """Which training rows are glitched, in row order, from an error table."""
    return errors.sort_values("row")["glitched"].to_numpy(dtype=bool)


def _per_signal(scores: pd.DataFrame, errors: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The glitch mask and each signal's scores (every column but ``row``), aligned by row."""
    if len(scores) != len(errors):
        raise ValueError(f"{len(scores)} scored rows but {len(errors)} rows in the error table")
    scores = scores.sort_values("row")
    return glitch_mask(errors), {name: scores[name].to_numpy(dtype=np.float64) for name in scores.columns if name != "row"}


def targets(errors: pd.DataFrame) -> dict[str, np.ndarray]:
    """What a ranking is scored against: all glitched rows, and in a mixture each glitch type on its own."""
    errors = errors.sort_values("row")
    family = errors["glitch"].astype(str).str.split(":").str[0].to_numpy()
    masks = {"all": errors["glitched"].to_numpy(dtype=bool)}
    present = sorted(set(family[masks["all"]]))
    if len(present) > 1:
        masks.update({name: family == name for name in present})
    return masks


def evaluate(scores: pd.DataFrame, errors: pd.DataFrame) -> pd.DataFrame:
    """One row of metrics per signal (every column of ``scores`` but ``row``) and target (see ``targets``)."""
    _, by_signal = _per_signal(scores, errors)
    return pd.DataFrame([{"target": target, "signal": name, **detection(values, mask)}
                         for target, mask in targets(errors).items() for name, values in by_signal.items()])


def typed_detection(detections: pd.DataFrame, errors: pd.DataFrame) -> pd.DataFrame:
    """The detector scored on each glitch type of a mixture by its own verdict: the rows it typed as that
    kind first, then the rows it left untyped, last the rows it typed as the other kind (a row it calls an
    anomaly is not its next mislabel candidate); within each group by its evidence for that kind (label
    score for mislabels, novelty for anomalies). One metrics row per target but ``all``."""
    from scipy.stats import rankdata

    from .glitches import kind_of

    detections = detections.sort_values("row")
    kinds = detections["glitch_type"].to_numpy()
    evidence = {"mislabel": "label_score", "anomaly": "novelty"}
    rows = []
    for target, mask in targets(errors).items():
        if target != "all":
            kind = kind_of(target)
            own = rankdata(np.nan_to_num(detections[evidence[kind]].to_numpy(dtype=np.float64), nan=-np.inf)) / len(kinds)
            typed, other = kinds == kind, (kinds != kind) & (kinds != "none")
            rows.append({"target": target, "signal": "detector", **detection(own + 10.0 * typed - 10.0 * other, mask)})
    return pd.DataFrame(rows)


def detector_quality(detections: pd.DataFrame, errors: pd.DataFrame) -> dict[str, float]:
    """Of the k rows the detector flags (k = number of glitches): how often its type is right on true glitches,
    and how often its suggested label is the true one on true mislabels."""
    from .glitches import kind_of

    detections, errors = detections.sort_values("row"), errors.sort_values("row")
    glitched = errors["glitched"].to_numpy(dtype=bool)
    flagged = np.zeros(len(glitched), dtype=bool)
    flagged[ranking(detections["suspicion"].to_numpy(dtype=np.float64))[: int(glitched.sum())]] = True
    true_kind = np.array([kind_of(g) for g in errors["glitch"].astype(str)])
    predicted = np.where(detections["glitch_type"].to_numpy() == "anomaly", "anomaly", "mislabel")
    hits = flagged & glitched
    mislabels = hits & (true_kind == "mislabel")
    repaired = detections["suggested_label"].to_numpy() == errors["true_label"].to_numpy()
    return {"type_accuracy": float((predicted[hits] == true_kind[hits]).mean()) if hits.any() else np.nan,
            "repair_accuracy": float(repaired[mislabels].mean()) if mislabels.any() else np.nan,
            "flagged_glitches": int(hits.sum())}


def curves(scores: pd.DataFrame, errors: pd.DataFrame) -> pd.DataFrame:
    """The found-versus-inspected curve of every signal, in long form (signal, inspected, found)."""
    glitched, by_signal = _per_signal(scores, errors)
    frames = [found_vs_inspected(values, glitched).assign(signal=name) for name, values in by_signal.items()]
    return pd.concat(frames, ignore_index=True)[["signal", "inspected", "found"]]


def per_epoch_f1(per_epoch: np.ndarray, names: Sequence[str], glitched: np.ndarray, epochs: Sequence[int]) -> pd.DataFrame:
    """F1 at k of each signal computed from a single checkpoint's influence; ``per_epoch`` is (T, n, S)."""
    rows = [{"epoch": epochs[t], "signal": name, "f1": f1_at_k(per_epoch[t, :, s].astype(np.float64), glitched)}
            for t in range(per_epoch.shape[0]) for s, name in enumerate(names)]
    return pd.DataFrame(rows)


def accuracy_table(logits: np.ndarray, errors: pd.DataFrame) -> dict[str, float]:
    """The study's Table 1 numbers: accuracy (w.r.t. observed labels) on glitched and on clean training rows."""
    errors = errors.sort_values("row")
    correct = logits.argmax(-1) == errors["observed_label"].to_numpy()
    glitched = errors["glitched"].to_numpy(dtype=bool)
    return {"accuracy_glitched": float(correct[glitched].mean()) if glitched.any() else np.nan,
            "accuracy_clean_train": float(correct[~glitched].mean())}


def summarise(metrics: pd.DataFrame, keys: Sequence[str], values: Sequence[str] = ("f1", "ap", "auroc")) -> pd.DataFrame:
    """Mean and sd over seeds of each metric, per ``keys`` (e.g. data set, model, glitch, ratio, signal)."""
    grouped = metrics.groupby(list(keys), sort=True)[list(values)]
    summary = grouped.agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary["n_seeds"] = grouped.size()
    return summary.reset_index()
