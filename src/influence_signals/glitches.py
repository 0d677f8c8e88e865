"""Glitch injection: the study's glitch types, each seeded and recorded in an exact error table.

``ratio`` is the share of glitched rows in the *final* training set (exactly ``glitch_count(ratio, n_final)``
rows), except for the study's ``class_dependent`` noise, which flips ``floor(ratio x |c_i|)`` rows of one
class c_i, as its text and reference code define it. Every type is one entry of ``GLITCHES``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from .datasets import DataSet
from .registry import Entry, Registry, UnknownName

IMAGE_CORRUPTIONS = ("brightness", "stripe")
ERROR_COLUMNS = ("row", "id", "glitched", "glitch", "true_label", "observed_label", "origin", "origin_index")
GlitchResult = tuple[DataSet, pd.DataFrame]


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


def _table(ids: np.ndarray, true: np.ndarray, observed: np.ndarray, glitched: np.ndarray, kind: np.ndarray | str,
           origin: np.ndarray | str, origin_index: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({
        "row": np.arange(len(ids)), "id": ids, "glitched": glitched, "glitch": kind, "true_label": true,
        "observed_label": observed, "origin": origin, "origin_index": origin_index,
    })


def _relabel(train: DataSet, rows: np.ndarray, new_labels: np.ndarray, kind: str) -> GlitchResult:
    y = train.y.copy()
    y[rows] = new_labels
    glitched = np.zeros(len(y), dtype=bool)
    glitched[rows] = True
    kinds = np.where(glitched, kind, "none")
    table = _table(train.ids, train.y, y, glitched, kinds, "train", np.arange(len(y)))
    return replace(train, y=y), table


def derangement(n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of 0..C-1 with no fixed point (rejection sampling)."""
    if n_classes < 2:
        raise GlitchError("class-dependent noise needs at least two classes")
    while True:
        perm = rng.permutation(n_classes)
        if not np.any(perm == np.arange(n_classes)):
            return perm


def uniform_noise(train: DataSet, ratio: float, rng: np.random.Generator) -> GlitchResult:
    """Chosen rows get a different class, uniformly at random among the other C-1."""
    if train.n_classes < 2:
        raise GlitchError("label noise needs at least two classes")
    rows = np.sort(rng.choice(len(train.y), glitch_count(ratio, len(train.y)), replace=False))
    shift = rng.integers(1, train.n_classes, size=len(rows))
    return _relabel(train, rows, (train.y[rows] + shift) % train.n_classes, "uniform")


def class_pairs_noise(train: DataSet, ratio: float, rng: np.random.Generator) -> GlitchResult:
    """Every class i has one target pi(i) (a seeded derangement); chosen rows of any class get pi(true label)."""
    perm = derangement(train.n_classes, rng)
    rows = np.sort(rng.choice(len(train.y), glitch_count(ratio, len(train.y)), replace=False))
    return _relabel(train, rows, perm[train.y[rows]], "class_pairs")


def class_dependent_noise(train: DataSet, ratio: float, rng: np.random.Generator) -> GlitchResult:
    """The study's class-dependent noise: ONE random class c_i, floor(ratio x |c_i|) of its rows flipped to ONE c_j.

    As the study's reference code does: the share is of the class, not of the training set (10 % of one
    class of ten is about 1 % of the rows).
    """
    if train.n_classes < 2:
        raise GlitchError("class-dependent noise needs at least two classes")
    present = np.flatnonzero(np.bincount(train.y, minlength=train.n_classes))
    source = int(rng.choice(present))
    target = int(rng.choice([c for c in range(train.n_classes) if c != source]))
    members = np.flatnonzero(train.y == source)
    count = int(np.floor(ratio * len(members)))
    if count < 1:
        raise GlitchError(f"class_dependent at ratio {ratio}: class {train.class_names[source]!r} has only "
                          f"{len(members)} rows, so floor(ratio x rows) is 0")
    rows = np.sort(rng.choice(members, count, replace=False))
    return _relabel(train, rows, np.full(count, target), "class_dependent")


def single_class_noise(train: DataSet, ratio: float, rng: np.random.Generator) -> GlitchResult:
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


def near_clustered_anomalies(train: DataSet, ratio: float, rng: np.random.Generator) -> GlitchResult:
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
    table = _table(train.ids[rows], train.y[rows], train.y[rows], glitched, np.where(glitched, "near_ca", "none"), "train", rows)
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
) -> GlitchResult:
    """Append rows of one class of another data set, given random labels of the target's classes.

    ``source`` is the other data set's held-out pool (rows outside its training subsample, or its test
    split), never rows a model of the pipeline trained on. ``labels="single"`` gives them all one random
    label (the reference's choice); ``"per_row"`` draws one per row. Rows are then shuffled into the set
    so that position carries no information.
    """
    if source is None:
        raise GlitchError("far_ca needs a source data set (config: glitch_options.far_ca.sources)")
    if source.name == train.name:
        raise GlitchError(f"far_ca source {source.name!r} is the data set itself: its rows would be duplicates, not anomalies")
    if source.modality != train.modality:
        raise GlitchError(f"far_ca source {source.name} is {source.modality} but {train.name} is {train.modality}")
    if train.modality == "tabular" and source.x.shape[1] != train.x.shape[1]:
        raise GlitchError(f"far_ca source {source.name} has {source.x.shape[1]} features but {train.name} has {train.x.shape[1]}")
    klass = int(rng.integers(source.n_classes)) if source_class is None else int(source_class)
    if not 0 <= klass < source.n_classes:
        raise GlitchError(f"far_ca source class {klass} outside 0..{source.n_classes - 1}")
    pool = np.flatnonzero(source.y == klass)
    m = _added_count(len(train.y), ratio)
    if m > len(pool):
        raise GlitchError(f"far_ca at ratio {ratio} needs {m} rows of {source.name} class {klass}; it has {len(pool)}")
    picked = np.sort(rng.choice(pool, m, replace=False))
    source_x = source.x[picked]
    if train.modality == "image":
        source_x = convert_images(source_x, *train.x.shape[1:])
    if labels == "single":
        new_labels = np.full(m, rng.integers(train.n_classes))
    elif labels == "per_row":
        new_labels = rng.integers(train.n_classes, size=m)
    else:
        raise GlitchError(f"far_ca labels must be 'single' or 'per_row', got {labels!r}")
    order = rng.permutation(len(train.y) + m)
    x = np.concatenate([train.x, source_x.astype(np.float32)])[order]
    y = np.concatenate([train.y, new_labels])[order]
    glitched = (np.arange(len(train.y) + m) >= len(train.y))[order]
    true = np.concatenate([train.y, np.full(m, -1)])[order]
    origin = np.where(glitched, source.name, "train")
    origin_index = np.concatenate([np.arange(len(train.y)), picked])[order]
    ids = np.concatenate([train.ids, np.char.add(f"far_ca:{source.name}:", source.ids[picked].astype(str))])[order]
    table = _table(ids, true, y, glitched, np.where(glitched, "far_ca", "none"), origin, origin_index)
    return replace(train, x=x, y=y, ids=ids), table


# Severities of the published corruption benchmarks: CIFAR-10-C (Hendrycks & Dietterich 2019,
# make_cifar_c.py) for colour images and MNIST-C (Mu & Gilmer 2019, corruptions.py) for grey ones.
BRIGHTNESS_SEVERITIES = {3: (0.05, 0.1, 0.15, 0.2, 0.3), 1: (0.1, 0.2, 0.3, 0.4, 0.5)}


def brightness_amount(channels: int, severity: int) -> float:
    """The value added to HSV brightness at ``severity`` 1-5: CIFAR-10-C's table for RGB, MNIST-C's for grey."""
    if not 1 <= severity <= 5:
        raise GlitchError(f"brightness severity must be 1..5, got {severity}")
    return BRIGHTNESS_SEVERITIES[3 if channels == 3 else 1][severity - 1]


def brightness(images: np.ndarray, amount: float) -> np.ndarray:
    """CIFAR-10-C / MNIST-C brightness: rgb2hsv, V + ``amount`` clipped to [0, 1], hsv2rgb.

    Hue and saturation are kept, so RGB pixels scale by V'/V; a black pixel (V = 0, hence S = 0)
    becomes grey V'. For grey images (MNIST-C converts grey -> RGB -> grey) this is clip(x + amount).
    """
    value = images.max(axis=1, keepdims=True)
    new_value = np.clip(value + amount, 0.0, 1.0)
    scale = np.divide(new_value, value, out=np.zeros_like(value), where=value > 0)
    return np.where(value > 0, images * scale, new_value).astype(np.float32)


def stripe(images: np.ndarray) -> np.ndarray:
    """MNIST-C's stripe: invert (1 - x) the outer quarters of the columns.

    MNIST-C (corruptions.py) sets ``x[:, :7] = 255 - x[:, :7]`` and ``x[:, 21:] = 255 - x[:, 21:]`` on
    28 x 28 images: columns 0-6 and 21-27. For width W the bands are the first and last W // 4 columns.
    """
    out = images.copy()
    band = max(1, images.shape[-1] // 4)
    out[..., :band] = 1.0 - out[..., :band]
    out[..., -band:] = 1.0 - out[..., -band:]
    return out


def outliers(train: DataSet, ratio: float, rng: np.random.Generator, corruptions: Sequence[str] = IMAGE_CORRUPTIONS,
             severity: int = 5, tabular_shift: float = 6.0, feature_share: float = 0.5) -> GlitchResult:
    """Corrupt chosen rows in feature space; labels stay as they are.

    Images get one of ``corruptions`` each (drawn at random): brightness at the benchmark's ``severity``
    (1-5; see ``brightness_amount``) or MNIST-C's stripe. Tabular rows get a random ``feature_share`` of
    their (standardised) features (at least one) shifted by +/- ``tabular_shift`` standard deviations: far
    from the data but of the same kind, like a sensor fault or a unit error.
    """
    rows = np.sort(rng.choice(len(train.y), glitch_count(ratio, len(train.y)), replace=False))
    x = train.x.copy()
    kinds = np.full(len(train.y), "none", dtype=object)
    if train.modality == "image":
        unknown = set(corruptions) - set(IMAGE_CORRUPTIONS)
        if unknown or not corruptions:
            raise GlitchError(f"unknown image corruptions {sorted(unknown)}; known: {IMAGE_CORRUPTIONS}")
        amount = brightness_amount(x.shape[1], severity)
        chosen = rng.choice(list(corruptions), size=len(rows))
        for name in sorted(set(chosen)):
            subset = rows[chosen == name]
            x[subset] = brightness(x[subset], amount) if name == "brightness" else stripe(x[subset])
            kinds[subset] = f"outlier:{name}"
    else:
        n_features = x.shape[1]
        for row in rows:
            cols = rng.choice(n_features, max(1, int(n_features * feature_share)), replace=False)
            x[row, cols] += rng.choice([-tabular_shift, tabular_shift], size=len(cols)).astype(np.float32)
        kinds[rows] = "outlier:shift"
    glitched = kinds != "none"
    table = _table(train.ids, train.y, train.y, glitched, kinds.astype(str), "train", np.arange(len(train.y)))
    return replace(train, x=x), table


def no_glitch(train: DataSet, ratio: float, rng: np.random.Generator) -> GlitchResult:
    """Nothing injected: for debugging a user's own data, where the glitches are unknown."""
    n = len(train.y)
    return train, _table(train.ids, train.y, train.y, np.zeros(n, bool), "none", "train", np.arange(n))


@dataclass(frozen=True, kw_only=True)
class GlitchType(Entry):
    """A glitch type: how to inject it, what kind of error it is, and what it needs."""

    inject: Callable[..., GlitchResult]  # (train, ratio, rng, [source], **options)
    kind: Literal["mislabel", "anomaly", "mixture", "none"]
    modalities: tuple[str, ...] = ("image", "tabular")
    needs_source: bool | Callable[[Mapping[str, Any]], bool] = False  # a second data set (far-CA rows), per data set
    uses_ratio: bool = True
    mixable: bool = True  # can be a component of a mixture (near-CA cannot: it removes rows of a class)

    @property
    def in_mixtures(self) -> bool:
        return self.mixable and self.kind in ("mislabel", "anomaly")

    def requires_source(self, options: Mapping[str, Any]) -> bool:
        """Whether, with these options, it needs a source data set (named under its options' `sources`)."""
        return self.needs_source(options) if callable(self.needs_source) else self.needs_source


GLITCHES: Registry[GlitchType] = Registry("glitch")
GLITCHES.add(GlitchType(name="uniform", label="Mislabeled (uniform)", inject=uniform_noise, kind="mislabel"))
GLITCHES.add(GlitchType(name="class_dependent", label="Mislabeled (class-dependent)", inject=class_dependent_noise,
                        kind="mislabel"))
GLITCHES.add(GlitchType(name="class_pairs", label="Mislabeled (class pairs)", inject=class_pairs_noise, kind="mislabel"))
GLITCHES.add(GlitchType(name="single_class", label="Mislabeled (single class)", inject=single_class_noise,
                        kind="mislabel"))
GLITCHES.add(GlitchType(name="near_ca", label="Near-CA", inject=near_clustered_anomalies, kind="anomaly",
                        modalities=("tabular",), mixable=False))
GLITCHES.add(GlitchType(
    name="far_ca", label="Far-CA", inject=far_clustered_anomalies, kind="anomaly", needs_source=True,
    options={"labels": {"enum": ["single", "per_row"], "default": "single"},
             "source_class": {"type": "integer", "minimum": 0},
             "sources": {"type": "object", "additionalProperties": {"type": "string"},
                         "description": "data set -> the data set whose held-out rows become its far-CA rows"}}))
GLITCHES.add(GlitchType(
    name="outlier", label="Outliers", inject=outliers, kind="anomaly",
    options={"corruptions": {"type": "array", "minItems": 1, "items": {"enum": list(IMAGE_CORRUPTIONS)}},
             "severity": {"type": "integer", "minimum": 1, "maximum": 5, "default": 5},
             "tabular_shift": {"type": "number", "exclusiveMinimum": 0, "default": 6.0},
             "feature_share": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.5}}))
GLITCHES.add(GlitchType(name="none", label="No glitch", inject=no_glitch, kind="none", uses_ratio=False))


def mixture(train: DataSet, ratio: float, rng: np.random.Generator, source: DataSet | None = None,
            components: Mapping[str, float] | None = None, **options: Any) -> GlitchResult:
    """Several glitch types in one training set, each on rows no other type touched; ``components`` maps a
    type to its share of ``ratio``. Row-preserving types go first, each on the still-clean rows; far-CA
    (which appends rows) goes last. The error table names each row's own type.
    """
    components = dict(components or {"uniform": 0.5, "far_ca": 0.5})
    unknown = [g for g in components if g not in GLITCHES or not GLITCHES[g].in_mixtures]
    if unknown:
        raise GlitchError(f"mixture components {unknown} cannot be mixed; use "
                          f"{', '.join(g.name for g in GLITCHES if g.in_mixtures)}")
    current, table = train, no_glitch(train, ratio, rng)[1]
    for name in sorted(components, key=lambda g: (g == "far_ca", g)):
        spec, share = GLITCHES[name], float(components[name])
        own = dict(options.get(name, {}))
        if spec.requires_source(own):
            current, added = spec.inject(current, share * ratio, rng, source, **own)
            carried = ~added["glitched"].to_numpy()
            previous = table.iloc[added.loc[carried, "origin_index"].to_numpy()]
            for column in ("glitched", "glitch", "true_label", "origin", "origin_index"):
                added.loc[carried, column] = previous[column].to_numpy()
            table = added
            continue
        clean = np.flatnonzero(~table["glitched"].to_numpy())
        count = glitch_count(share * ratio, len(current.y))
        part, part_table = spec.inject(current.subset(clean), count / len(clean) if len(clean) else 0.0, rng, **own)
        x, y = current.x.copy(), current.y.copy()
        x[clean], y[clean] = part.x, part.y
        current = replace(current, x=x, y=y)
        hit = clean[part_table["glitched"].to_numpy()]
        table.loc[hit, "glitched"] = True
        table.loc[hit, "glitch"] = part_table.loc[part_table["glitched"], "glitch"].to_numpy()
        table["observed_label"] = current.y
    table["row"] = np.arange(len(table))
    return current, table.reset_index(drop=True)


GLITCHES.add(GlitchType(
    name="mixture", label="Mixture", inject=mixture, kind="mixture",
    needs_source=lambda options: "far_ca" in options.get("components", {"far_ca": 1}),
    options={"components": {"type": "object", "additionalProperties": {"type": "number", "exclusiveMinimum": 0},
                            "description": "glitch type -> its share of the ratio, e.g. {uniform: 0.5, far_ca: 0.5}"},
             "sources": {"type": "object", "additionalProperties": {"type": "string"}}}))
# each component's own options, under its name, are added to the mixture's schema from the registry (config.schema)


def read_error_table(path: str) -> pd.DataFrame:
    """An error table written by ``inject``, checked: its columns, rows 0..n-1, and a ``glitched`` column of
    booleans only (read loosely, one stray cell would make every row "glitched")."""
    from .artifacts import ArtifactError

    table = pd.read_csv(path, dtype={"id": str, "glitched": str}, keep_default_na=False)
    missing = [c for c in ERROR_COLUMNS if c not in table.columns]
    if missing:
        raise ArtifactError(f"{path}: not an error table (no column {', '.join(missing)})")
    flags = table["glitched"].str.strip().str.lower()
    bad = ~flags.isin(["true", "false"])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ArtifactError(f"{path}: `glitched` must be True or False; row {row} holds {table['glitched'].iloc[row]!r}")
    if not np.array_equal(np.sort(table["row"].to_numpy()), np.arange(len(table))):
        raise ArtifactError(f"{path}: the `row` column must number the rows 0..{len(table) - 1}")
    return table.assign(glitched=flags.eq("true").to_numpy())


def kind_of(glitch_column: str) -> str:
    """What kind of error a row's ``glitch`` entry is (``outlier:stripe`` -> anomaly): the detector's type."""
    return GLITCHES[glitch_column.split(":")[0]].kind


def inject(train: DataSet, glitch: str, ratio: float, seed: int, source: DataSet | None = None,
           options: Mapping[str, Any] | None = None) -> GlitchResult:
    """Apply ``glitch`` at ``ratio`` with a generator seeded by ``seed``; return the set and its error table."""
    try:
        spec = GLITCHES[glitch]
    except UnknownName as err:
        raise GlitchError(str(err)) from None
    options = {k: v for k, v in (options or {}).items() if k != "sources"}
    if train.modality not in spec.modalities:
        hint = "; use far_ca for images" if glitch == "near_ca" else ""
        raise GlitchError(f"{glitch} is defined for {' and '.join(spec.modalities)} data, not {train.modality}{hint}")
    if spec.uses_ratio:
        check_ratio(ratio)
    rng = np.random.default_rng(seed)
    if spec.requires_source(options):
        return spec.inject(train, ratio, rng, source, **options)
    return spec.inject(train, ratio, rng, **options)
