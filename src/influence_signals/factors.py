"""A training run's factor record: per-checkpoint logits and penultimate features of every row.

A folder of float32 ``.npy`` arrays shaped (T, rows, ...) plus ``meta.json`` (each checkpoint's learning
rate and the training batch size, from which the TracIn engine derives its checkpoint weights). The train
job writes it from the run's checkpoints while its frozen-trunk cache is in memory; everything downstream
(TracIn blocks, signals, baselines, accuracy) is computed from it, reading rows on demand so that memory
stays O(block) however large n x m is. Pure numpy, so readers need not import torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifacts import ArtifactError

ARRAYS = ("train_logits", "train_features", "val_logits", "val_features")


@dataclass(frozen=True)
class FactorMeta:
    n_train: int
    n_val: int
    n_classes: int
    dim: int
    learning_rates: list[float]
    train_batch_size: int
    epochs: list[int]
    checkpoints: list[str]


def _npy_offset(path: Path) -> tuple[int, tuple[int, ...]]:
    """Where the data of an .npy file starts and its shape; a file shorter than its header says is refused
    here, naming it, not later as a failed reshape."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(handle)
        if fortran or dtype != np.float32:
            raise ArtifactError(f"{path}: expected a C-ordered float32 array")
        offset = handle.tell()
    expected = offset + 4 * int(np.prod(shape))
    if path.stat().st_size != expected:
        raise ArtifactError(f"{path} holds {path.stat().st_size} bytes but its header needs {expected} "
                            "(truncated or overwritten); rerun the train job")
    return offset, shape


class FactorStore:
    """Read access to a factor folder; rows are read from disk on demand so memory stays O(block)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        try:
            self.meta = FactorMeta(**json.loads((self.folder / "meta.json").read_text()))
            self.y_train = np.load(self.folder / "y_train.npy")
            self.y_val = np.load(self.folder / "y_val.npy")
            self._layout = {name: _npy_offset(self.folder / f"{name}.npy") for name in ARRAYS}
        except (FileNotFoundError, json.JSONDecodeError, TypeError, ValueError) as err:
            raise ArtifactError(f"{self.folder} is not a complete factor folder (the train job writes it): {err}") from err

    @property
    def n_checkpoints(self) -> int:
        return len(self.meta.learning_rates)

    def read(self, name: str, t: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of array ``name`` at checkpoint ``t``, read with one seek (no memory map)."""
        offset, shape = self._layout[name]
        stop = shape[1] if stop is None else min(stop, shape[1])
        row_floats = int(np.prod(shape[2:]))
        with open(self.folder / f"{name}.npy", "rb") as handle:
            handle.seek(offset + 4 * row_floats * (t * shape[1] + start))
            data = np.fromfile(handle, dtype=np.float32, count=row_floats * (stop - start))
        return data.reshape(stop - start, *shape[2:])

    def all(self, name: str) -> np.ndarray:
        return np.stack([self.read(name, t) for t in range(self.n_checkpoints)])
