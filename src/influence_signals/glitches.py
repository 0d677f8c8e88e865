"""Glitch injection: the study's five glitch types, each seeded and recorded in an exact error table.

``ratio`` is always the share of glitched rows in the *final* training set, and exactly
``glitch_count(ratio, n_final)`` rows are glitched, so F1 at the known ratio means what it says.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from .datasets import DataSet

GLITCHES = ("uniform", "class_dependent", "single_class", "near_ca", "far_ca", "outlier", "none")
IMAGE_CORRUPTIONS = ("brightness", "stripe")
ERROR_COLUMNS = ("row", "glitched", "glitch", "true_label", "observed_label", "origin", "origin_index")


class GlitchError(ValueError):
    """A glitch request that cannot be met on the given data."""


def glitch_count(ratio: float, n_final: int) -> int:
    """round(ratio x n) with halves rounded up (Python's ``round`` rounds halves to even)."""
    return int(np.floor(ratio * n_final + 0.5))


def check_ratio(ratio: float) -> None:
    if not 0 < ratio <= 0.5:
        raise GlitchError(f"glitch ratio must be in (0, 0.5], got {ratio}")


def _added_count(n_kept: int, ratio: float) -> int:
    """Rows r to add to ``n_kept`` others so that r = glitch_count(ratio, n_kept + r)."""
    guess = int(np.floor(ratio * n_kept / (1 - ratio) + 0.5))
    for r in sorted(range(max(1, guess - 2), guess + 3), key=lambda c: abs(c - guess)):
        if glitch_count(ratio, n_kept + r) == r:
            return r
    return max(1, guess)


def _table(n: int, true: np.ndarray, observed: np.ndarray, glitched: np.ndarray, kind: np.ndarray | str,
           origin: np.ndarray | str, origin_index: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({
        "row": np.arange(n), "glitched": glitched, "glitch": kind, "true_label": true,
        "observed_label": observed, "origin": origin, "origin_index": origin_index,
    })


def _relabel(train: DataSet, rows: np.ndarray, new_labels: np.ndarray, kind: str) -> tuple[DataSet, pd.DataFrame]:
    y = train.y.copy()
    y[rows] = new_labels
    glitched = np.zeros(len(y), dtype=bool)
    glitched[rows] = True
    kinds = np.where(glitched, kind, "none")
    table = _table(len(y), train.y, y, glitched, kinds, "train", np.arange(len(y)))
    return replace(train, y=y), table


def derangement(n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of 0..C-1 with no fixed point (rejection sampling)."""
    if n_classes < 2:
        raise GlitchError("class-dependent noise needs at least two classes")
    while True:
        perm = rng.permutation(n_classes)
        if not np.any(perm == np.arange(n_classes)):
            return perm


def uniform_noise(train: DataSet, ratio: float, rng: np.random.Generator) -> tuple[DataSet, pd.DataFrame]:
    """Chosen rows get a different class, uniformly at random among the other C-1."""
    if train.n_classes < 2:
        raise GlitchError("label noise needs at least two classes")
    rows = np.sort(rng.choice(len(train.y), glitch_count(ratio, len(train.y)), replace=False))
    shift = rng.integers(1, train.n_classes, size=len(rows))
    return _relabel(train, rows, (train.y[rows] + shift) % train.n_classes, "uniform")


def class_dependent_noise(train: DataSet, ratio: float, rng: np.random.Generator) -> tuple[DataSet, pd.DataFrame]:
    """Every class i has one target pi(i) (a seeded derangement); chosen rows get pi(true label)."""
    perm = derangement(train.n_classes, rng)
    rows = np.sort(rng.choice(len(train.y), glitch_count(ratio, len(train.y)), replace=False))
    return _relabel(train, rows, perm[train.y[rows]], "class_dependent")


def single_class_noise(train: DataSet, ratio: float, rng: np.random.Generator) -> tuple[DataSet, pd.DataFrame]:
    """The study's "singular mislabeled": rows of one random class are all flipped to one target class."""
    k = glitch_count(ratio, len(train.y))
    counts = np.bincount(train.y, minlength=train.n_classes)
    eligible = np.flatnonzero(counts >= k)
    if len(eligible) == 0 or train.n_classes < 2:
        raise GlitchError(f"single_class noise needs a class with at least {k} rows; the largest has {counts.max()}")
    source = int(rng.choice(eligible))
    target = int(rng.choice([c for c in range(train.n_classes) if c != source]))
    rows = np.sort(rng.choice(np.flatnonzero(train.y == source), k, replace=False))
    return _relabel(train, rows, np.full(k, target), "single_class")


def near_clustered_anomalies(train: DataSet, ratio: float, rng: np.random.Generator) -> tuple[DataSet, pd.DataFrame]:
    """Downsample one random class until it forms ``ratio`` of the training set; its rows are the glitches.

    The labels stay correct: these are the study's rare-event anomalies, near the data's own distribution.
    """
    counts = np.bincount(train.y, minlength=train.n_classes)
    needed = {c: _added_count(len(train.y) - counts[c], ratio) for c in range(train.n_classes)}
    eligible = [c for c in range(train.n_classes) if 1 <= needed[c] <= counts[c]]
    if train.n_classes < 2 or not eligible:
        raise GlitchError(f"near_ca at ratio {ratio}: no class has enough rows to form that share; counts {counts.tolist()}")
    anomaly_class = int(rng.choice(eligible))
    kept_anomalies = rng.choice(np.flatnonzero(train.y == anomaly_class), needed[anomaly_class], replace=False)
    rows = np.sort(np.concatenate([np.flatnonzero(train.y != anomaly_class), kept_anomalies]))
    glitched = train.y[rows] == anomaly_class
    table = _table(len(rows), train.y[rows], train.y[rows], glitched, np.where(glitched, "near_ca", "none"), "train", rows)
    return train.subset(rows), table


def convert_images(images: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """Resize (bilinear, antialiased) and convert grey <-> RGB so a source set matches the target's shape."""
    import torch  # imported here: only far-CA needs it, and every other data job starts faster without it
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if tensor.shape[1] != channels:
        if tensor.shape[1] == 1:
            tensor = tensor.repeat(1, channels, 1, 1)
        elif channels == 1:
            tensor = tensor.mean(dim=1, keepdim=True)
        else:
            raise GlitchError(f"cannot convert {tensor.shape[1]}-channel images to {channels} channels")
    if tuple(tensor.shape[2:]) != (height, width):
        tensor = F.interpolate(tensor, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return tensor.clamp_(0.0, 1.0).numpy()


def far_clustered_anomalies(
    train: DataSet, ratio: float, rng: np.random.Generator, source: DataSet | None,
    source_class: int | None = None, labels: str = "single",
) -> tuple[DataSet, pd.DataFrame]:
    """Append rows of one class of another data set, given random labels of the target's classes.

    ``labels="single"`` gives them all one random label (the reference's choice); ``"per_row"`` draws
    one per row. Rows are then shuffled into the set so that position carries no information.
    """
    if source is None:
        raise GlitchError("far_ca needs a source data set (config: glitches.far_ca.sources)")
    if source.modality != train.modality:
        raise GlitchError(f"far_ca source {source.name} is {source.modality} but {train.name} is {train.modality}")
    if train.modality == "image":
        _, channels, height, width = train.x.shape
        source_x = convert_images(source.x, channels, height, width)
    elif source.x.shape[1] != train.x.shape[1]:
        raise GlitchError(f"far_ca source {source.name} has {source.x.shape[1]} features but {train.name} has {train.x.shape[1]}")
    else:
        source_x = source.x
    klass = int(rng.integers(source.n_classes)) if source_class is None else int(source_class)
    if not 0 <= klass < source.n_classes:
        raise GlitchError(f"far_ca source class {klass} outside 0..{source.n_classes - 1}")
    pool = np.flatnonzero(source.y == klass)
    m = _added_count(len(train.y), ratio)
    if m > len(pool):
        raise GlitchError(f"far_ca at ratio {ratio} needs {m} rows of {source.name} class {klass}; it has {len(pool)}")
    picked = np.sort(rng.choice(pool, m, replace=False))
    if labels == "single":
        new_labels = np.full(m, rng.integers(train.n_classes))
    elif labels == "per_row":
        new_labels = rng.integers(train.n_classes, size=m)
    else:
        raise GlitchError(f"far_ca labels must be 'single' or 'per_row', got {labels!r}")
    order = rng.permutation(len(train.y) + m)
    x = np.concatenate([train.x, source_x[picked].astype(np.float32)])[order]
    y = np.concatenate([train.y, new_labels])[order]
    glitched = (np.arange(len(train.y) + m) >= len(train.y))[order]
    true = np.concatenate([train.y, np.full(m, -1)])[order]
    origin = np.where(glitched, source.name, "train")
    origin_index = np.concatenate([np.arange(len(train.y)), picked])[order]
    table = _table(len(y), true, y, glitched, np.where(glitched, "far_ca", "none"), origin, origin_index)
    return replace(train, x=x, y=y), table


def brightness(images: np.ndarray, amount: float) -> np.ndarray:
    """CIFAR-10-C brightness: add ``amount`` to the HSV value channel, clipped to [0, 1].

    Hue and saturation are kept, so RGB pixels scale by V'/V; a black pixel (V = 0) becomes grey V'.
    For grey images this is plain clip(x + amount).
    """
    value = images.max(axis=1, keepdims=True)
    new_value = np.clip(value + amount, 0.0, 1.0)
    scale = np.divide(new_value, value, out=np.zeros_like(value), where=value > 0)
    return np.where(value > 0, images * scale, new_value).astype(np.float32)


def stripe(images: np.ndarray) -> np.ndarray:
    """MNIST-C style stripe: invert the pixels (1 - x) of a vertical band through the image centre.

    The band is max(1, width // 7) pixels wide (4 of 28 on MNIST); values stay in [0, 1].
    """
    out = images.copy()
    width = images.shape[-1]
    band = max(1, width // 7)
    start = (width - band) // 2
    out[..., start : start + band] = 1.0 - out[..., start : start + band]
    return out


def outliers(train: DataSet, ratio: float, rng: np.random.Generator, corruptions: Sequence[str] = IMAGE_CORRUPTIONS,
             brightness_amount: float = 0.3, tabular_shift: float = 6.0) -> tuple[DataSet, pd.DataFrame]:
    """Corrupt chosen rows in feature space; labels stay as they are.

    Images get one of ``corruptions`` each (drawn at random). Tabular rows get a random half of their
    (standardised) features shifted by +/- ``tabular_shift`` standard deviations: far from the data but
    of the same kind, like a sensor fault or a unit error.
    """
    rows = np.sort(rng.choice(len(train.y), glitch_count(ratio, len(train.y)), replace=False))
    x = train.x.copy()
    kinds = np.full(len(train.y), "none", dtype=object)
    if train.modality == "image":
        unknown = set(corruptions) - set(IMAGE_CORRUPTIONS)
        if unknown or not corruptions:
            raise GlitchError(f"unknown image corruptions {sorted(unknown)}; known: {IMAGE_CORRUPTIONS}")
        chosen = rng.choice(list(corruptions), size=len(rows))
        for name in set(chosen):
            subset = rows[chosen == name]
            x[subset] = brightness(x[subset], brightness_amount) if name == "brightness" else stripe(x[subset])
            kinds[subset] = f"outlier:{name}"
    else:
        n_features = x.shape[1]
        for row in rows:
            cols = rng.choice(n_features, max(1, n_features // 2), replace=False)
            x[row, cols] += rng.choice([-tabular_shift, tabular_shift], size=len(cols)).astype(np.float32)
        kinds[rows] = "outlier:shift"
    glitched = kinds != "none"
    table = _table(len(train.y), train.y, train.y, glitched, kinds.astype(str), "train", np.arange(len(train.y)))
    return replace(train, x=x), table


def inject(train: DataSet, glitch: str, ratio: float, seed: int, source: DataSet | None = None,
           options: Mapping[str, Any] | None = None) -> tuple[DataSet, pd.DataFrame]:
    """Apply ``glitch`` at ``ratio`` with a generator seeded by ``seed``; return the set and its error table."""
    options = dict(options or {})
    if glitch not in GLITCHES:
        raise GlitchError(f"unknown glitch {glitch!r}; known: {GLITCHES}")
    rng = np.random.default_rng(seed)
    if glitch == "none":
        n = len(train.y)
        return train, _table(n, train.y, train.y, np.zeros(n, bool), "none", "train", np.arange(n))
    check_ratio(ratio)
    if glitch == "near_ca" and train.modality != "tabular":
        raise GlitchError("near_ca is defined for tabular data (a downsampled class); use far_ca for images")
    if glitch == "far_ca":
        return far_clustered_anomalies(train, ratio, rng, source, options.get("source_class"), options.get("labels", "single"))
    if glitch == "outlier":
        return outliers(train, ratio, rng, options.get("corruptions", IMAGE_CORRUPTIONS),
                        options.get("brightness", 0.3), options.get("tabular_shift", 6.0))
    functions = {"uniform": uniform_noise, "class_dependent": class_dependent_noise,
                 "single_class": single_class_noise, "near_ca": near_clustered_anomalies}
    return functions[glitch](train, ratio, rng)
