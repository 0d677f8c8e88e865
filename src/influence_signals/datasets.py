"""Data sets of the study behind one in-memory record, plus embedded stand-ins that need no network.

Images are stored as float32 in [0, 1] with shape (n, channels, height, width); the mean-0.5 / sd-0.5
normalisation of the study happens at the model's input (see ``models.InputAdapter``) so that glitches
such as brightness act on real pixel values. Tabular features are float32 (n, d), standardised on the
training split only by ``prepare``.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from .artifacts import ArtifactError, load_npz, save_npz

Modality = Literal["image", "tabular"]


class DataError(ValueError):
    """Input data that cannot be used: unknown name, missing file, bad labels or values."""


@dataclass(frozen=True)
class DataSet:
    """Features (or images), integer labels 0..C-1 and what they mean."""

    name: str
    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    modality: Modality

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"{self.name}: {len(self.x)} rows of features but {len(self.y)} labels")
        if self.modality == "image" and self.x.ndim != 4:
            raise DataError(f"{self.name}: images must be (n, channels, height, width), got {self.x.shape}")
        if self.modality == "tabular" and self.x.ndim != 2:
            raise DataError(f"{self.name}: tabular features must be (n, d), got {self.x.shape}")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= len(self.class_names)):
            raise DataError(f"{self.name}: labels outside 0..{len(self.class_names) - 1}")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def subset(self, rows: np.ndarray) -> DataSet:
        return replace(self, x=self.x[rows], y=self.y[rows])


def _checked(name: str, x: np.ndarray, y: np.ndarray, class_names: tuple[str, ...], modality: Modality) -> DataSet:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
        raise DataError(f"{name}: {bad} rows hold NaN or infinite feature values; clean or impute them first")
    return DataSet(name, x, np.asarray(y, dtype=np.int64), class_names, modality)


# ----------------------------------------------------------------------------------------------
# Embedded data sets (ship with scikit-learn or are generated reproducibly here)


def load_digits_images(**_: Any) -> DataSet:
    """scikit-learn's 8x8 hand-written digits (1,797 images), as 1-channel images in [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0)[:, None, :, :]
    return _checked("digits", x, bunch.target, tuple(str(c) for c in range(10)), "image")


SHAPE_NAMES = ("disc", "ring", "square", "frame", "cross", "x", "hbar", "vbar", "triangle", "dots")


def make_shapes(n_per_class: int = 200, size: int = 16, seed: int = 0, **_: Any) -> DataSet:
    """Generated 16x16 grey images of ten geometric shapes with random position, size and noise.

    No package ships a second small image set, so this one is generated deterministically from ``seed``.
    It plays the roles Fashion-MNIST plays in the study: the far-clustered-anomaly source for ``digits``
    and the source data set on which the image backbones are pre-trained before fine-tuning.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, shape in enumerate(SHAPE_NAMES):
        for _copy in range(n_per_class):
            r = rng.uniform(0.22, 0.38) * size
            cy, cx = rng.uniform(r, size - r, size=2)
            dy, dx = yy - cy, xx - cx
            width = max(1.0, 0.12 * size)
            masks = {
                "disc": dy**2 + dx**2 <= r**2,
                "ring": np.abs(np.sqrt(dy**2 + dx**2) - r) <= width / 2,
                "square": (np.abs(dy) <= r) & (np.abs(dx) <= r),
                "frame": (np.maximum(np.abs(dy), np.abs(dx)) <= r)
                & (np.maximum(np.abs(dy), np.abs(dx)) >= r - width),
                "cross": ((np.abs(dy) <= width / 2) | (np.abs(dx) <= width / 2)) & (np.abs(dy) <= r) & (np.abs(dx) <= r),
                "x": ((np.abs(dy - dx) <= width / 1.4) | (np.abs(dy + dx) <= width / 1.4)) & (np.abs(dy) <= r) & (np.abs(dx) <= r),
                "hbar": (np.abs(dy) <= width) & (np.abs(dx) <= r),
                "vbar": (np.abs(dx) <= width) & (np.abs(dy) <= r),
                "triangle": (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2),
                "dots": ((dy - r / 2) ** 2 + (dx - r / 2) ** 2 <= (r / 3) ** 2)
                | ((dy + r / 2) ** 2 + (dx + r / 2) ** 2 <= (r / 3) ** 2),
            }
            image = masks[shape].astype(np.float32) * rng.uniform(0.6, 1.0)
            image += rng.normal(0.0, 0.05, size=image.shape).astype(np.float32)
            images.append(np.clip(image, 0.0, 1.0))
            labels.append(label)
    x = np.stack(images)[:, None, :, :]
    return _checked("shapes", x, np.array(labels), SHAPE_NAMES, "image")


def make_tabular(
    name: str = "synth_tabular", n_rows: int = 3000, n_features: int = 16, n_classes: int = 5, seed: int = 0, **_: Any
) -> DataSet:
    """A generated multi-class tabular set (scikit-learn's ``make_classification``, fixed seed).

    scikit-learn ships only tiny multi-class tables (iris, wine), too small for a 5-10 % glitch study;
    this stands in for Jannis / Forest Cover with enough rows per class to downsample one (near-CA).
    """
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n_rows, n_features=n_features, n_informative=max(2, n_features * 3 // 4),
        n_redundant=n_features // 8, n_classes=n_classes, n_clusters_per_class=2, class_sep=1.5, random_state=seed,
    )
    return _checked(name, x, y, tuple(f"class_{c}" for c in range(n_classes)), "tabular")


def load_breast_cancer_table(**_: Any) -> DataSet:
    """scikit-learn's Wisconsin breast-cancer table (569 rows, 30 features): the embedded binary set."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return _checked("breast_cancer", bunch.data, bunch.target, tuple(bunch.target_names), "tabular")


# ----------------------------------------------------------------------------------------------
# Real data sets of the study, read from the user's data folder


def _missing(path: Path, name: str, how: str) -> DataError:
    return DataError(f"{name}: missing file {path}. {how}")


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but holds {data.size} bytes of data")
    return data.reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


MNIST_LIKE = {
    "mnist": ("MNIST", "MNIST", tuple(str(c) for c in range(10))),
    "fashion_mnist": (
        "FashionMNIST", "FashionMNIST",
        ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"),
    ),
}


def load_mnist_like(name: str, data_dir: Path, download: bool = False, **_: Any) -> DataSet:
    """MNIST / Fashion-MNIST training images from torchvision's layout: ``<data_dir>/<Folder>/raw``."""
    folder_name, tv_class, class_names = MNIST_LIKE[name]
    raw = data_dir / folder_name / "raw"
    images, labels = _find(raw, "train-images-idx3-ubyte"), _find(raw, "train-labels-idx1-ubyte")
    if (images is None or labels is None) and download:
        import torchvision.datasets as tvd

        getattr(tvd, tv_class)(root=str(data_dir), train=True, download=True)
        images, labels = _find(raw, "train-images-idx3-ubyte"), _find(raw, "train-labels-idx1-ubyte")
    if images is None or labels is None:
        missing = raw / ("train-images-idx3-ubyte" if images is None else "train-labels-idx1-ubyte")
        raise _missing(missing, name, "Set `download: true` in the config, or place torchvision's raw IDX files there.")
    x = _read_idx(images).astype(np.float32)[:, None, :, :] / 255.0
    return _checked(name, x, _read_idx(labels), class_names, "image")


def load_cifar10(data_dir: Path, download: bool = False, **_: Any) -> DataSet:
    """CIFAR-10 training batches from the python version's folder ``<data_dir>/cifar-10-batches-py``."""
    folder = data_dir / "cifar-10-batches-py"
    if not (folder / "data_batch_1").exists() and download:
        import torchvision.datasets as tvd

        tvd.CIFAR10(root=str(data_dir), train=True, download=True)
    xs, ys = [], []
    for index in range(1, 6):
        path = folder / f"data_batch_{index}"
        if not path.exists():
            raise _missing(path, "cifar10", "Set `download: true` in the config, or unpack cifar-10-python.tar.gz there.")
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"]))
    names: tuple[str, ...] = tuple(f"class_{c}" for c in range(10))
    meta = folder / "batches.meta"
    if meta.exists():
        with open(meta, "rb") as handle:
            names = tuple(n.decode() for n in pickle.load(handle, encoding="bytes")[b"label_names"])
    return _checked("cifar10", np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys), names, "image")


OPENML = {"jannis": (41168, "class"), "covertype": (1596, "class"), "epsilon": ("epsilon", "class")}


def read_table(path: Path, label: str, name: str) -> DataSet:
    """A user's CSV or ARFF table: numeric feature columns plus one label column (any values)."""
    if not path.exists():
        raise _missing(path, name, "Point the data set's `path` at a CSV or ARFF file.")
    if path.suffix.lower() == ".arff":
        from scipy.io import arff

        records, _meta = arff.loadarff(path)
        frame = pd.DataFrame(records)
        for column in frame.columns:
            if frame[column].dtype == object:
                frame[column] = frame[column].str.decode("utf-8")
    else:
        frame = pd.read_csv(path)
    if label not in frame.columns:
        raise DataError(f"{name}: label column {label!r} missing from {path}; columns are {list(frame.columns)[:10]}")
    features = frame.drop(columns=[label])
    non_numeric = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise DataError(f"{name}: non-numeric feature columns {non_numeric[:5]} in {path}; encode them first")
    if frame[label].isna().any():
        raise DataError(f"{name}: {int(frame[label].isna().sum())} rows of {path} have no label")
    classes, y = np.unique(frame[label].astype(str).to_numpy(), return_inverse=True)
    return _checked(name, features.to_numpy(), y, tuple(classes), "tabular")


def load_openml(name: str, data_dir: Path, download: bool = False, **_: Any) -> DataSet:
    """Jannis, Forest Cover and Epsilon as ``<data_dir>/openml/<name>.arff`` or ``.csv`` (label ``class``)."""
    ident, label = OPENML[name]
    folder = data_dir / "openml"
    for suffix in (".csv", ".arff"):
        if (folder / f"{name}{suffix}").exists():
            return read_table(folder / f"{name}{suffix}", label, name)
    if download:
        from sklearn.datasets import fetch_openml

        kwargs = {"data_id": ident} if isinstance(ident, int) else {"name": ident, "version": 1}
        frame = fetch_openml(as_frame=True, data_home=str(data_dir / "openml_cache"), **kwargs).frame
        folder.mkdir(parents=True, exist_ok=True)
        frame.rename(columns={frame.columns[-1]: label}).to_csv(folder / f"{name}.csv", index=False)
        return read_table(folder / f"{name}.csv", label, name)
    raise _missing(folder / f"{name}.csv", name, f"Set `download: true` (OpenML {ident}) or save the table there with a `{label}` column.")


Loader = Callable[..., DataSet]
LOADERS: Mapping[str, Loader] = {
    "digits": load_digits_images,
    "shapes": make_shapes,
    "synth_tabular": make_tabular,
    "breast_cancer": load_breast_cancer_table,
    "mnist": lambda **kw: load_mnist_like("mnist", **kw),
    "fashion_mnist": lambda **kw: load_mnist_like("fashion_mnist", **kw),
    "cifar10": load_cifar10,
    "jannis": lambda **kw: load_openml("jannis", **kw),
    "covertype": lambda **kw: load_openml("covertype", **kw),
    "epsilon": lambda **kw: load_openml("epsilon", **kw),
}
EMBEDDED = ("digits", "shapes", "synth_tabular", "breast_cancer")


def load(name: str, spec: Mapping[str, Any] | None = None, data_dir: str | Path = "data", download: bool = False) -> DataSet:
    """Load data set ``name``; ``spec`` may name another ``loader`` (or ``table`` with ``path``/``label``)."""
    spec = dict(spec or {})
    loader = spec.pop("loader", name)
    if loader == "table":
        if "path" not in spec or "label" not in spec:
            raise DataError(f"{name}: a `table` data set needs `path` and `label`")
        return read_table(Path(spec["path"]), spec["label"], name)
    if loader not in LOADERS:
        raise DataError(f"unknown data set {loader!r}; known: {sorted(LOADERS)} or loader `table`")
    dataset = LOADERS[loader](data_dir=Path(data_dir), download=download, **spec)
    return replace(dataset, name=name)


# ----------------------------------------------------------------------------------------------
# Preparation: the study's stratified subsample and 80/20 split


def prepare(dataset: DataSet, fraction: float, val_fraction: float, seed: int) -> tuple[DataSet, DataSet]:
    """Stratified subsample of ``fraction`` of the rows, then a stratified train/validation split.

    Tabular features are standardised with the training split's mean and sd only (no leakage).
    """
    if not 0 < fraction <= 1:
        raise DataError(f"subsample fraction must be in (0, 1], got {fraction}")
    if not 0 < val_fraction < 1:
        raise DataError(f"validation fraction must be in (0, 1), got {val_fraction}")
    rows = np.arange(len(dataset.y))
    if fraction < 1:
        rows, _ = train_test_split(rows, train_size=fraction, stratify=dataset.y, random_state=seed)
    train_rows, val_rows = train_test_split(rows, test_size=val_fraction, stratify=dataset.y[rows], random_state=seed)
    train, val = dataset.subset(np.sort(train_rows)), dataset.subset(np.sort(val_rows))
    if dataset.modality == "tabular":
        mean = train.x.mean(axis=0)
        sd = train.x.std(axis=0)
        sd[sd == 0] = 1.0
        train = replace(train, x=((train.x - mean) / sd).astype(np.float32))
        val = replace(val, x=((val.x - mean) / sd).astype(np.float32))
    return train, val


def save(path: str | Path, dataset: DataSet) -> None:
    save_npz(path, x=dataset.x, y=dataset.y, class_names=np.array(dataset.class_names),
             modality=np.array(dataset.modality), name=np.array(dataset.name))


def load_saved(path: str | Path) -> DataSet:
    data = load_npz(path)
    try:
        return DataSet(str(data["name"]), data["x"], data["y"], tuple(str(c) for c in data["class_names"]),
                       str(data["modality"]))  # type: ignore[arg-type]
    except KeyError as err:
        raise ArtifactError(f"{path} is not a saved data set (missing {err})") from err
