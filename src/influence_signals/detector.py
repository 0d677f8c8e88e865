"""Detect, characterise and repair: one ranking of every training row, its glitch type and a suggested label.

The study's validation split is clean, and that is what the detector leans on (no ground truth needed):

- Label evidence: a classifier fitted on the clean validation rows' penultimate features predicts each
  training row out of sample (``clean_reference``: 1 - p(observed label)); fused by rank with AUM, the
  training-dynamics margin. Its argmax is the suggested label.
- Novelty evidence, in the input space and in the penultimate space: the distance to the k nearest
  validation rows (outliers are far from everything), and its ratio to the distance to the k nearest
  other training rows (far-clustered anomalies sit in a dense cluster of their own that no validation
  row shares). The same statistics of validation rows (against the other validation rows and the
  training rows) are their null distribution, so each training row gets an empirical p-value
  (Bonferroni over spaces and statistics). How many rows are anomalies is estimated twice and the larger
  kept: Benjamini-Hochberg's discoveries at ``FDR``, and the excess of small p-values over what the null
  expects (at several levels, less two standard deviations); the most novel rows are declared. A few
  rows beyond the null (as under pure label noise) declare none, a cluster of them declares them all.
- Suspicion: declared anomalies first (by their statistic), then every other row by its label evidence.

Measured on the default grid (README, fig6) against every single signal and cleanlab.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import rankdata

if TYPE_CHECKING:
    from .signals import SignalInputs

FDR = 0.2
NEIGHBOURS = 5


def percentile(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to (0, 1], ties averaged: comparable across signals of any scale."""
    return np.asarray(rankdata(values) / len(values))


def clean_reference_probabilities(inputs: SignalInputs) -> np.ndarray:
    """P(class | penultimate features) for training rows, from a classifier fitted on the clean validation rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_features, val_features = inputs.features
    present = np.unique(inputs.y_val)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(val_features, inputs.y_val)
    probabilities = np.zeros((len(train_features), inputs.n_classes))
    probabilities[:, present] = model.predict_proba(train_features)
    return probabilities


def density_statistics(train: np.ndarray, val: np.ndarray, k: int = NEIGHBOURS
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(statistic of training rows, its null from validation rows) for: log kNN distance to the validation
    rows, and log of its ratio to the kNN distance to the other training rows."""
    from sklearn.neighbors import NearestNeighbors

    k = max(1, min(k, len(val) - 1, len(train) - 1))
    to_val, to_train = NearestNeighbors(n_neighbors=k + 1).fit(val), NearestNeighbors(n_neighbors=k + 1).fit(train)
    eps = 1e-12
    train_to_val = np.log(to_val.kneighbors(train, n_neighbors=k)[0].mean(1) + eps)
    val_to_val = np.log(to_val.kneighbors(val)[0][:, 1:].mean(1) + eps)  # itself excluded
    train_to_train = np.log(to_train.kneighbors(train)[0][:, 1:].mean(1) + eps)
    val_to_train = np.log(to_train.kneighbors(val, n_neighbors=k)[0].mean(1) + eps)
    return [(train_to_val, val_to_val), (train_to_val - train_to_train, val_to_val - val_to_train)]


def empirical_p_values(statistic: np.ndarray, null: np.ndarray) -> np.ndarray:
    """(1 + #{null >= s}) / (m + 1) for each s: the chance a clean row is at least this novel.

    Beyond the null's maximum the tail is extrapolated exponentially (scale: the null's robust sd), so
    that rows far beyond every clean row get p-values below 1 / (m + 1), as Benjamini-Hochberg needs
    when the anomalies are fewer than the validation rows.
    """
    ordered = np.sort(null)
    beyond = len(ordered) - np.searchsorted(ordered, statistic, side="left")
    scale = 1.4826 * np.median(np.abs(ordered - np.median(ordered))) + 1e-12
    tail = np.exp(-np.maximum(0.0, statistic - ordered[-1]) / scale)
    return (1.0 + beyond) / (len(ordered) + 1.0) * tail


def benjamini_hochberg(p_values: np.ndarray, fdr: float = FDR) -> np.ndarray:
    """Which p-values Benjamini-Hochberg declares significant at false-discovery rate ``fdr``."""
    ordered = np.sort(p_values)
    passing = np.flatnonzero(ordered <= fdr * np.arange(1, len(ordered) + 1) / len(ordered))
    return p_values <= ordered[passing.max()] if len(passing) else np.zeros(len(p_values), dtype=bool)


def excess_count(p_values: np.ndarray, levels: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1), z: float = 2.0) -> int:
    """Rows beyond what a clean set would give: max over levels t of #{p <= t} - n t - z sd(n t), at least 0."""
    n = len(p_values)
    return max(0, *(int((p_values <= t).sum() - n * t - z * np.sqrt(n * t * (1 - t))) for t in levels))


def declared_anomalies(score: np.ndarray, p_values: np.ndarray) -> np.ndarray:
    """The ``count`` most novel rows, ``count`` the larger of the BH discoveries and the excess estimate."""
    count = max(int(benjamini_hochberg(p_values).sum()), excess_count(p_values))
    declared = np.zeros(len(score), dtype=bool)
    declared[np.argsort(-score, kind="stable")[:count]] = True
    return declared


def novelty(inputs: SignalInputs) -> tuple[np.ndarray, np.ndarray]:
    """A novelty score (higher = more novel; -log of the combined p-value, ties broken by the raw p-values)
    and the Bonferroni-combined empirical p-value."""
    spaces = [inputs.features]
    if inputs.data is not None:
        spaces.append(tuple(a.reshape(len(a), -1) for a in inputs.data))  # type: ignore[arg-type]
    p_values = [empirical_p_values(statistic, null) for train, val in spaces
                for statistic, null in density_statistics(train, val)]
    combined = np.minimum(1.0, np.min(p_values, axis=0) * len(p_values))
    return -np.log(combined) + 1e-3 * percentile(-np.min(p_values, axis=0)), combined


def detect(inputs: SignalInputs) -> pd.DataFrame:
    """Every training row's suspicion, glitch type (mislabel / anomaly / none), suggested label and confidence."""
    from .baselines import area_under_margin

    probabilities = inputs.reference_probabilities
    rows = np.arange(len(inputs.y_train))
    p_observed = probabilities[rows, inputs.y_train]
    label_evidence = (percentile(1 - p_observed) + percentile(area_under_margin(inputs.logits, inputs.y_train))) / 2
    statistic, p_values = inputs.novelty
    anomalous = declared_anomalies(statistic, p_values)
    suspicion = np.where(anomalous, 2 + percentile(statistic), label_evidence) / 3
    suggested = probabilities.argmax(1)
    mislabel = ~anomalous & (suggested != inputs.y_train)
    glitch_type = np.where(anomalous, "anomaly", np.where(mislabel, "mislabel", "none"))
    confidence = np.where(anomalous, 1 - p_values, np.where(mislabel, probabilities[rows, suggested], p_observed))
    return pd.DataFrame({"row": rows, "suspicion": suspicion, "glitch_type": glitch_type,
                         "suggested_label": np.where(anomalous, -1, suggested), "confidence": confidence,
                         "novelty_p": p_values})
