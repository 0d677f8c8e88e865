"""Influence signals: the study's four, the sign- and class-aware ones it calls for, and their dynamics.

All scores are "higher = more suspicious" and computed in one blockwise pass over the train -> validation
influence, accumulating per row and per validation class the helpful (positive) and harmful (negative)
mass, in total and per checkpoint. Memory is O(T n C + block^2), whatever n x m.

Notation: I(i, j) = sum_t I_t(i, j) the TracIn influence of train row i on validation row j (positive =
helpful, it lowers j's loss), P_ic / N_ic the sums of its positive / negative parts over validation rows of
class c, y_i the row's observed label, m the number of validation rows.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from sklearn.neighbors import NearestNeighbors

from .factors import FactorStore

# The signals that exist per checkpoint as well as in total, in this order in per-epoch arrays.
BASE_SIGNALS = ("si", "mi", "aai", "gd_class", "sign_aware", "class_sign_aware", "harm_other_classes")


class InfluenceSource(Protocol):
    """What the signals need: per-checkpoint influence tiles and self-influence (engine or Captum's)."""

    @property
    def n_checkpoints(self) -> int: ...

    @property
    def n_train(self) -> int: ...

    @property
    def n_val(self) -> int: ...

    def blocks(self, row_block: int, col_block: int) -> Iterator[tuple[slice, slice, torch.Tensor]]: ...

    def self_influence(self) -> torch.Tensor: ...


def accumulate_class_masses(source: InfluenceSource, y_val: np.ndarray, n_classes: int, row_block: int = 1024,
                            col_block: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over all tiles: positive / negative influence mass per (row, validation class).

    Returns P, N of the summed influence (n, C) and P_t, N_t per checkpoint (T, n, C).
    """
    device = source.self_influence().device
    onehot = torch.nn.functional.one_hot(torch.from_numpy(y_val).to(device), n_classes).float()
    shape = (source.n_train, n_classes)
    pos, neg = torch.zeros(shape, device=device), torch.zeros(shape, device=device)
    pos_t = torch.zeros((source.n_checkpoints, *shape), device=device)
    neg_t = torch.zeros_like(pos_t)
    for rows, cols, block in source.blocks(row_block, col_block):
        classes = onehot[cols]
        total = block.sum(0)
        linear = total @ classes
        positive = total.clamp_(min=0) @ classes
        pos[rows] += positive
        neg[rows] += linear - positive
        linear_t = block @ classes
        positive_t = block.clamp(min=0) @ classes
        pos_t[:, rows] += positive_t
        neg_t[:, rows] += linear_t - positive_t
    return pos, neg, pos_t, neg_t


def signals_from_masses(pos: np.ndarray, neg: np.ndarray, self_influence: np.ndarray, y_train: np.ndarray,
                        n_val: int) -> dict[str, np.ndarray]:
    """The per-row signals from the class masses P, N (..., n, C) and self-influence (..., n).

    - si: Self-Influence, I(i, i) (Pruthi et al. 2020; the study's SI).
    - mi: Marginal Influence, sum_j I(i, j) = sum_c P_ic + N_ic; helpful and harmful mass cancel.
    - aai: Average Absolute Influence, mean_j |I(i, j)| = sum_c (P_ic - N_ic) / m.
    - gd_class: minus the minimum over classes of the per-class sums, -min_c (P_ic + N_ic) (the study's
      GD-class, after the class-wise gradient alignment of GradTail / Hammoudeh & Lowd).
    - sign_aware: the harmful mass, -sum_c N_ic, free of MI's cancellation.
    - class_sign_aware: harm on the row's own observed class plus help to the others,
      -N_iy + sum_{c != y} P_ic, as the study's conclusion proposes.
    - harm_other_classes: harm on validation rows of the other classes, -sum_{c != y} N_ic: a mislabelled
      row pushes its features towards the wrong class and hurts the rows of its true class.
    """
    own = np.zeros(pos.shape[-2:], dtype=bool)
    own[np.arange(len(y_train)), y_train] = True
    per_class = pos + neg
    return {
        "si": self_influence,
        "mi": per_class.sum(-1),
        "aai": (pos - neg).sum(-1) / n_val,
        "gd_class": -per_class.min(-1),
        "sign_aware": -neg.sum(-1),
        "class_sign_aware": -(neg * own).sum(-1) + (pos * ~own).sum(-1),
        "harm_other_classes": -(neg * ~own).sum(-1),
    }


def slope(values: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row's trajectory over checkpoints; ``values`` is (T, n)."""
    t = np.arange(values.shape[0], dtype=np.float64)
    t -= t.mean()
    return (t[:, None] * values).sum(0) / max(float((t**2).sum()), 1e-12)


def representation_signals(store: FactorStore, k_neighbours: int = 5) -> dict[str, np.ndarray]:
    """Novelty from the final checkpoint, for anomalies that no influence signal catches.

    - knn_distance: mean distance of a row's penultimate features to its k nearest validation rows.
    - grad_norm: the norm of its last-layer gradient, |e| sqrt(|h|^2 + 1).
    """
    last = store.n_checkpoints - 1
    train_features, val_features = store.read("train_features", last), store.read("val_features", last)
    neighbours = NearestNeighbors(n_neighbors=min(k_neighbours, len(val_features))).fit(val_features)
    distances, _ = neighbours.kneighbors(train_features)
    logits = torch.from_numpy(store.read("train_logits", last))
    errors = torch.softmax(logits, -1) - torch.nn.functional.one_hot(torch.from_numpy(store.y_train), logits.shape[-1])
    grad_norm = errors.norm(dim=-1).numpy() * np.sqrt((train_features.astype(np.float64) ** 2).sum(-1) + 1)
    return {"knn_distance": distances.mean(1), "grad_norm": grad_norm}


def compute(source: InfluenceSource, store: FactorStore, row_block: int = 1024, col_block: int = 1024,
            k_neighbours: int = 5) -> tuple[pd.DataFrame, np.ndarray]:
    """All influence signals per training row, and the per-checkpoint ones as an array (T, n, S).

    Training-dynamics signals: ``<signal>_first`` (the first checkpoint alone: the study finds early
    epochs reveal near-CA that the cumulative score hides) and, for SI on the learning-rate-free scale,
    ``si_max``, ``si_area`` (trapezoid area under the per-checkpoint curve) and ``si_slope``.
    """
    y_train, y_val = store.y_train, store.y_val
    n_classes = store.meta.n_classes
    pos, neg, pos_t, neg_t = (a.cpu().numpy().astype(np.float64)
                              for a in accumulate_class_masses(source, y_val, n_classes, row_block, col_block))
    si_t = source.self_influence().cpu().numpy().astype(np.float64)
    total = signals_from_masses(pos, neg, si_t.sum(0), y_train, len(y_val))
    per_checkpoint = signals_from_masses(pos_t, neg_t, si_t, y_train, len(y_val))
    per_epoch = np.stack([per_checkpoint[name] for name in BASE_SIGNALS], axis=-1)
    scores: dict[str, np.ndarray] = dict(total)
    scores.update({f"{name}_first": per_checkpoint[name][0] for name in BASE_SIGNALS})
    unweighted_si = si_t / np.asarray(store.meta.weights, dtype=np.float64)[:, None]
    scores["si_max"] = unweighted_si.max(0)
    scores["si_area"] = np.asarray(np.trapezoid(unweighted_si, axis=0)) if len(unweighted_si) > 1 else unweighted_si[0]
    scores["si_slope"] = slope(unweighted_si)
    scores.update(representation_signals(store, k_neighbours))
    frame = pd.DataFrame({"row": np.arange(len(y_train)), **scores})
    return frame, per_epoch.astype(np.float32)
