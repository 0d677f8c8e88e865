"""Classic detectors that use no influence, side by side with the signals (higher = more suspicious).

All of them read the same per-checkpoint logits and penultimate features that the influence stage stored,
so they cost no extra training; ``signals.SIGNALS`` registers them beside the influence signals.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from scipy.special import log_softmax
from threadpoolctl import threadpool_limits



def final_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each row under its observed label at the last checkpoint."""
    return -log_softmax(logits.astype(np.float64), axis=-1)[np.arange(len(labels)), labels]


def area_under_margin(logits_per_checkpoint: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Minus the Area Under the Margin (Pleiss et al. 2020): mean over checkpoints of z_y - max_{c != y} z_c."""
    logits = logits_per_checkpoint.astype(np.float64)
    rows = np.arange(len(labels))
    assigned = logits[:, rows, labels]
    others = logits.copy()
    others[:, rows, labels] = -np.inf
    return -(assigned - others.max(-1)).mean(0)


def out_of_sample_probabilities(features: np.ndarray, labels: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """Cross-validated class probabilities from a logistic regression on penultimate features."""
    folds = int(min(5, np.bincount(labels, minlength=n_classes)[np.unique(labels)].min()))
    if folds < 2:
        raise ValueError("confident learning needs at least two rows of every observed class")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    with threadpool_limits(1, user_api="blas"):  # threaded BLAS made these small products 14x slower on 2 threads
        probabilities = cross_val_predict(model, features, labels, method="predict_proba",
                                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    full = np.zeros((len(labels), n_classes))
    full[:, np.unique(labels)] = probabilities
    return full


def confident_learning(features: np.ndarray, labels: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """cleanlab's label-quality ranking (Northcutt et al. 2021) on out-of-sample probabilities: 1 - quality."""
    from cleanlab.rank import get_label_quality_scores

    probabilities = out_of_sample_probabilities(features, labels, n_classes, seed)
    return 1.0 - get_label_quality_scores(labels, probabilities)


def isolation_forest(features: np.ndarray, seed: int) -> np.ndarray:
    """Isolation Forest (Liu et al. 2008) anomaly score on penultimate features."""
    return -IsolationForest(random_state=seed).fit(features).score_samples(features)
