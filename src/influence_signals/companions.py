"""Companion learners: classifiers fitted beside the network on each cross-fitting fold of a table, whose
held-out probabilities join the network's in the debug command's label evidence.

Why: the label evidence is only as good as the held-out probabilities, and no single model family is the
best on every table. Trees are strong where the network is not (heterogeneous columns, thresholds), a
k-nearest-neighbour vote where classes are local clusters; the three err on different rows.
Measured on the detection benchmark's label noise (``benchmarks/detection_benchmark.py``, no clean reference;
24 cases of Image Segmentation, MNIST as a table and wine, cleanlab's 5-fold gradient boosting standing in for
the per-fold one), mean top-k precision: the network alone 0.852, with the trees 0.860, with the neighbours
0.871, with both 0.873; weights fitted to each learner's held-out loss 0.869, no better than the plain mean.
Repair accuracy rose with them (0.962 -> 0.975): where the network is unsure, the others often are not.
The trees are gradient boosting on a narrow table and a random forest on a wide one (``TREE_WIDTH_BUDGET``):
on MNIST as a table (784 x 10) boosting costs 45 s a fold, the forest 2 s, and in the detection benchmark the
forest raised top-k precision there from 0.894 to 0.901 on the mixture, 0.693 to 0.716 on class-dependent and
0.919 to 0.926 on uniform noise; offline, on digits (64 x 10), a forest beside boosting gained on
class-dependent noise (0.850 -> 0.875) and lost on the mixture (0.969 -> 0.966), so narrow tables keep boosting.
Each companion is fitted on exactly the rows the network trains on in that fold and predicts exactly its
held-out rows, so its probabilities are as honest as the network's. Images get none: trees and neighbours
on raw pixels are weak and slow.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .registry import Entry, Registry

KNN_NEIGHBOURS = 10
FOREST_TREES = 200
TREE_WIDTH_BUDGET = 2_000
"""Gradient boosting is fitted where features x classes is at most this, a random forest where it is more:
boosting's cost grows with both (one tree per class and round, a histogram per feature), a forest's with the
square root of the features (one tree for all classes). Per fold, one thread: Image Segmentation (18 x 7)
0.5 s, digits (64 x 10) 2 s, a 10,000-row table (20 x 4) 0.7 s; MNIST as a table (784 x 10) 45 s, several
times its network's training, where the forest takes 2 s."""

FitPredict = Callable[[np.ndarray, np.ndarray, np.ndarray, int, int], np.ndarray]


@dataclass(frozen=True)
class Companion(Entry):
    """A learner: ``fit_predict(x_train, y_train, x_held_out, n_classes, seed)`` -> held-out probabilities
    (n_held_out, n_classes); ``fits(n_features, n_classes)`` says whether it is worth fitting on a table."""

    fit_predict: FitPredict = lambda *_: np.empty(0)
    fits: Callable[[int, int], bool] = lambda _features, _classes: True


def _narrow(features: int, classes: int) -> bool:
    """Whether a table is within the budget of gradient boosting (``TREE_WIDTH_BUDGET``)."""
    return features * classes <= TREE_WIDTH_BUDGET


def _in_all_classes(probabilities: np.ndarray, seen: np.ndarray, n_classes: int) -> np.ndarray:
    """A model's probabilities over the classes it saw, spread into all ``n_classes`` columns (0 elsewhere)."""
    out = np.zeros((len(probabilities), n_classes))
    out[:, seen] = probabilities
    return out


def gradient_boosting(x_train: np.ndarray, y_train: np.ndarray, x_held_out: np.ndarray, n_classes: int,
                      seed: int) -> np.ndarray:
    """scikit-learn's HistGradientBoostingClassifier with its defaults (early stopping above 10,000 rows)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(random_state=seed).fit(x_train, y_train)
    return _in_all_classes(model.predict_proba(x_held_out), model.classes_, n_classes)


def random_forest(x_train: np.ndarray, y_train: np.ndarray, x_held_out: np.ndarray, n_classes: int,
                  seed: int) -> np.ndarray:
    """scikit-learn's RandomForestClassifier with ``FOREST_TREES`` trees, otherwise its defaults: a probability
    is the mean of the trees' votes, so more trees rank finer (100 trees found one mislabel fewer in 900 on
    MNIST's mixtures, at half the time)."""
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(FOREST_TREES, random_state=seed).fit(x_train, y_train)
    return _in_all_classes(model.predict_proba(x_held_out), model.classes_, n_classes)


def nearest_neighbours(x_train: np.ndarray, y_train: np.ndarray, x_held_out: np.ndarray, n_classes: int,
                       seed: int) -> np.ndarray:
    """The labels of a held-out row's ``KNN_NEIGHBOURS`` nearest training rows (the standardised, clipped
    features the network sees), each class's count plus a half, normalised: never a probability of 0. The
    search is ``detector.nearest_neighbours`` rather than scikit-learn's KNeighborsClassifier: the same exact
    search up to ``detector.EXACT_PAIRS`` pairs and the approximate one beyond, where brute force grows as n^2."""
    from . import detector

    k = min(KNN_NEIGHBOURS, len(x_train))
    _, nearest = detector.nearest_neighbours(x_held_out, x_train, k)
    counts = np.zeros((len(x_held_out), n_classes))
    np.add.at(counts, (np.repeat(np.arange(len(x_held_out)), k), y_train[nearest].ravel()), 1.0)
    return (counts + 0.5) / (k + 0.5 * n_classes)


COMPANIONS: Registry[Companion] = Registry("companion learner")
COMPANIONS.add(Companion("gradient_boosting", "gradient-boosted trees", fit_predict=gradient_boosting, fits=_narrow))
COMPANIONS.add(Companion("random_forest", f"a random forest of {FOREST_TREES} trees", fit_predict=random_forest,
                         fits=lambda features, classes: not _narrow(features, classes)))
COMPANIONS.add(Companion("knn", f"{KNN_NEIGHBOURS} nearest neighbours", fit_predict=nearest_neighbours))


def fitted(names: Sequence[str], modality: str, x_shape: Sequence[int], n_classes: int) -> list[str]:
    """The named companions fitted on this data (features ``x_shape[1:]``): none for images; on a table, those
    worth fitting at its width. The crossfit jobs fit these, and the command's first line names them."""
    if modality != "tabular":
        return []
    features = int(np.prod(x_shape[1:]))
    return [name for name in names if COMPANIONS[name].fits(features, n_classes)]


def held_out_probabilities(names: Sequence[str], x_train: np.ndarray, y_train: np.ndarray, x_held_out: np.ndarray,
                           n_classes: int, seed: int) -> dict[str, np.ndarray]:
    """Each named companion's held-out probabilities (``fitted`` chooses the names)."""
    return {name: COMPANIONS[name].fit_predict(x_train, y_train, x_held_out, n_classes, seed) for name in names}
