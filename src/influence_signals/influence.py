"""TracIn (Pruthi et al. 2020) on the last linear layer, computed from per-checkpoint factors.

For cross-entropy and a last layer ``z = W h + b``, a row's loss gradient with respect to (W, b) is the
outer product of its error vector ``e = softmax(z) - onehot(y)`` (k classes) with ``[h, 1]``. Hence

    g_i . g_j = (e_i . e_j) (h_i . h_j + 1)   and   TracIn(i -> j) = sum_t w_t (e_i,t . e_j,t)(h_i,t . h_j,t + 1)

with ``w_t`` the checkpoint weight: its learning rate eta_t (Pruthi et al.), or eta_t / |B_t| (``lr_over_batch``,
|B_t| the *training* batch size) for the study's option of a batch-mean loss. The train job records logits and features per checkpoint
(O((n + m)(k + d)) floats each, ``factors``), never an n x m matrix; blocks, self-influence and
per-checkpoint influence are computed from them on demand, with the weighting chosen here, at read time.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import kernel as tile_kernel
from .artifacts import load_npz, save_npz
from .datasets import DataSet
from .factors import FactorStore
from .networks import AdaptedModel
from .training import load_checkpoint, resolve_device

WEIGHTINGS = ("lr", "lr_over_batch")
PAIR_BUDGET = 10_000 * 10_000
"""The most (training row, validation row) pairs the pairwise pass visits. Every split of a table of up to 20,000
rows holds at most (20,000 / 2)^2 pairs, so its pass stays exact; a larger one visits a stratified sample of the
validation rows (``TracInEngine.column_sample``): the exact pass grows as n^2 and took 284 of the debug command's
428 s at 50,000 rows (1 seed, 3 folds, 2 cores; n^2 makes that about 16 times as long at 200,000). The sample's
agreement with the exact pass is measured in ``benchmarks/scale_benchmark.py``."""
MIN_CLASS_COLUMNS = 64  # a sampled pass visits at least this many validation rows of every class (or all of them)
VAL_BLOCK = 4096  # validation rows per block where their factors are streamed from the store instead of held


def checkpoint_weight(learning_rate: float, weighting: str, train_batch_size: int) -> float:
    """w_t: the learning rate, or the learning rate over the training batch size |B_t| (batch-mean loss)."""
    if weighting == "lr":
        return learning_rate
    if weighting == "lr_over_batch":
        return learning_rate / train_batch_size
    raise ValueError(f"unknown checkpoint weighting {weighting!r}; known: {WEIGHTINGS}")


def pairwise(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per-checkpoint influence (T, b, c) between train and validation factors, each (errors, features):
    (e_i . e_j)(h_i . h_j + 1), the + 1 in the features' bias column."""
    out = torch.bmm(train[1], val[1].transpose(1, 2))
    return out.mul_(torch.bmm(train[0], val[0].transpose(1, 2)))


class TracInEngine:
    """Blockwise TracIn from a ``FactorStore``: validation factors stay resident, training rows stream.

    Above ``max_pairs`` training x validation pairs (``sampled``) the validation factors are not held either
    (200,000 rows, 3 folds: 30 checkpoints x 67,000 rows x 193 floats, 1.5 GB): the closed forms stream them
    in blocks, the pairwise pass reads only its sampled columns, and they are loaded whole only if a caller
    asks for every tile (``blocks``, ``matrix``).
    """

    def __init__(self, store: FactorStore, device: str = "cpu", weighting: str = "lr",
                 max_pairs: int | None = PAIR_BUDGET) -> None:
        """``max_pairs``: the pass is exact up to this many pairs (None: always exact)."""
        self.store, self.device = store, resolve_device(device)
        self.checkpoints, self.train_labels = list(range(store.n_checkpoints)), store.y_train  # the store's, in order
        weights = [checkpoint_weight(rate, weighting, store.meta.train_batch_size) for rate in store.meta.learning_rates]
        self.weights = torch.tensor(weights, dtype=torch.float32, device=self.device)
        self.max_pairs = max_pairs
        self._val: tuple[torch.Tensor, torch.Tensor] | None = None
        if not self.sampled:
            self._val = self._factors("val", store.y_val, 0, store.meta.n_val)

    @property
    def sampled(self) -> bool:
        """Whether the pairwise pass visits a sample of the validation rows (more pairs than ``max_pairs``)."""
        return self.max_pairs is not None and self.n_train * self.n_val > self.max_pairs

    @property
    def val_errors(self) -> torch.Tensor:
        return self._val_factors()[0]

    @property
    def val_features(self) -> torch.Tensor:
        return self._val_factors()[1]

    def _val_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._val is None:
            self._val = self._factors("val", self.store.y_val, 0, self.n_val)
        return self._val

    @property
    def n_checkpoints(self) -> int:
        return len(self.checkpoints)

    @property
    def n_train(self) -> int:
        return self.store.meta.n_train

    @property
    def n_val(self) -> int:
        return self.store.meta.n_val

    def _tensor(self, name: str, t: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return torch.from_numpy(self.store.read(name, t, start, stop)).to(self.device)

    def _factors(self, split: str, labels: np.ndarray, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Error vectors (T, b, k) and bias-augmented features (T, b, d + 1) of rows [start, stop) of a split."""
        return self._fill(split, labels[start:stop], lambda name, t: self._tensor(name, t, start, stop))

    def _rows_factors(self, split: str, labels: np.ndarray, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``_factors`` of the rows ``rows`` (any order) of a split: each checkpoint read whole and indexed, or row
        by row where they are few."""
        rows = np.asarray(rows, dtype=np.int64)
        few = len(rows) * 64 < (self.store.meta.n_train if split == "train" else self.store.meta.n_val)

        def read(name: str, t: int) -> torch.Tensor:
            if few:
                return torch.from_numpy(np.concatenate([self.store.read(name, t, r, r + 1) for r in rows])).to(self.device)
            return torch.from_numpy(self.store.read(name, t)[rows]).to(self.device)

        return self._fill(split, labels[rows], read)

    def _fill(self, split: str, labels: np.ndarray, read: Callable[[str, int], torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors of the rows ``read(array name, checkpoint)`` returns, labelled ``labels``: filled checkpoint
        by checkpoint into preallocated tensors, no per-checkpoint copies to stack."""
        meta = self.store.meta
        target = torch.from_numpy(labels).to(self.device)
        errors = torch.empty((self.n_checkpoints, len(labels), meta.n_classes), device=self.device)
        features = torch.empty((self.n_checkpoints, len(labels), meta.dim + 1), device=self.device)
        features[..., -1] = 1.0
        for t, checkpoint in enumerate(self.checkpoints):
            logits = read(f"{split}_logits", checkpoint)
            # an explicit softmax: torch's is ~4x slower over a last dimension as short as k on the CPU
            torch.sub(logits, logits.amax(-1, keepdim=True), out=errors[t]).exp_()
            errors[t].div_(errors[t].sum(-1, keepdim=True))
            errors[t, torch.arange(len(labels), device=self.device), target] -= 1.0
            features[t, :, :-1] = read(f"{split}_features", checkpoint)
        return errors, features

    def train_factors(self, start: int, stop: int, weighted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Error vectors (T, b, k), times w_t if ``weighted``, and bias-augmented features (T, b, d + 1)."""
        errors, features = self._factors("train", self.train_labels, start, stop)
        return (errors.mul_(self.weights[:, None, None]) if weighted else errors), features

    def block(self, train_factors: tuple[torch.Tensor, torch.Tensor], start: int, stop: int) -> torch.Tensor:
        """Per-checkpoint influence (T, b, c) of the given train rows on validation rows [start, stop)."""
        return pairwise(train_factors, (self.val_errors[:, start:stop], self.val_features[:, start:stop]))

    def _val_blocks(self) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """(start, stop, errors, features) of the validation rows: the held factors as one block, else
        ``VAL_BLOCK`` rows at a time from the store (a ``sampled`` engine never holds them all)."""
        if self._val is not None:
            yield 0, self.n_val, *self._val
            return
        for start in range(0, self.n_val, VAL_BLOCK):
            stop = min(start + VAL_BLOCK, self.n_val)
            yield start, stop, *self._factors("val", self.store.y_val, start, stop)

    def blocks(self, row_block: int = 1024, col_block: int = 1024
               ) -> Iterator[tuple[slice, slice, torch.Tensor]]:
        """Every (train rows, validation rows, per-checkpoint influence block) tile of the matrix."""
        for start in range(0, self.n_train, row_block):
            stop = min(start + row_block, self.n_train)
            factors = self.train_factors(start, stop)
            for col in range(0, self.n_val, col_block):
                col_stop = min(col + col_block, self.n_val)
                yield slice(start, stop), slice(col, col_stop), self.block(factors, col, col_stop)

    def rows_influence(self, rows: Sequence[int]) -> torch.Tensor:
        """TracIn of the training rows ``rows`` on every validation row, summed over checkpoints: (len(rows), m).

        All rows at once, against the resident validation factors or, on a ``sampled`` engine, against them
        streamed in blocks from the store (never all in memory)."""
        errors, features = self._rows_factors("train", self.train_labels, np.asarray(rows))
        errors.mul_(self.weights[:, None, None])
        out = torch.empty((len(rows), self.n_val), device=self.device)
        for start, stop, val_errors, val_features in self._val_blocks():
            out[:, start:stop] = pairwise((errors, features), (val_errors, val_features)).sum(0)
        return out

    def self_influence(self) -> torch.Tensor:
        """Per-checkpoint self-influence (T, n): w_t |e_i,t|^2 (|h_i,t|^2 + 1)."""
        return self._closed_forms(self.store.y_val, self.store.meta.n_classes)[0]

    def _class_moments(self, y_val: np.ndarray, n_classes: int) -> torch.Tensor:
        """A_tc = sum_{j in class c} e_j [h_j, 1]^T over validation rows, as (T, d + 1, C k); summed block by
        block from the store where the validation factors are not held."""
        onehot = torch.nn.functional.one_hot(torch.from_numpy(y_val).to(self.device), n_classes).float()
        total: torch.Tensor | None = None
        for start, stop, errors, features in self._val_blocks():
            part = torch.einsum("jc,tjk,tjd->tdck", onehot[start:stop], errors, features).flatten(2)
            total = part if total is None else total.add_(part)
        assert total is not None
        return total

    @staticmethod
    def _project(moments: torch.Tensor, errors: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """w_t e_i^T A_tc [h_i, 1] for train rows given by their (weighted) factors: (T, b, C)."""
        projected = torch.empty((*features.shape[:2], moments.shape[-1]), device=features.device)  # (T, b, C k)
        for h, a, out in zip(features, moments, projected):  # T GEMMs: one bmm of these shapes is slower on the CPU
            torch.mm(h, a, out=out)
        return torch.einsum("tick,tik->tic", projected.view(*errors.shape[:2], -1, errors.shape[-1]), errors)

    def class_sums(self, y_val: np.ndarray, n_classes: int) -> torch.Tensor:
        """Per-checkpoint sums of influence over each validation class (T, n, C), in closed form.

        sum_{j in c} I_t(i, j) = w_t e_i^T A_tc [h_i, 1] with A_tc = sum_{j in c} e_j [h_j, 1]^T (k x (d + 1)):
        O(T n k (d + 1) C) and no pairwise pass.
        """
        return self._closed_forms(y_val, n_classes)[1]

    _closed: tuple[bytes, torch.Tensor, torch.Tensor] | None = None  # the last closed forms, keyed by the labels

    def _closed_forms(self, y_val: np.ndarray, n_classes: int, row_block: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-influence (T, n) and class sums (T, n, C) from one read of the train factors (the costly part)."""
        key = np.asarray(y_val, dtype=np.int64).tobytes() + n_classes.to_bytes(4, "little")
        if self._closed is None or self._closed[0] != key:
            moments = self._class_moments(y_val, n_classes)
            si = torch.empty((self.n_checkpoints, self.n_train), device=self.device)
            sums = torch.empty((self.n_checkpoints, self.n_train, n_classes), device=self.device)
            for start in range(0, self.n_train, row_block):
                stop = min(start + row_block, self.n_train)
                errors, features = self.train_factors(start, stop, weighted=False)
                si[:, start:stop] = self.weights[:, None] * errors.square().sum(-1) * features.square().sum(-1)
                sums[:, start:stop] = self._project(moments, errors.mul_(self.weights[:, None, None]), features)
            self._closed = key, si, sums
        return self._closed[1], self._closed[2]

    def class_masses(self, y_val: np.ndarray, n_classes: int, row_block: int = 4096, col_block: int = 512,
                     class_sums: torch.Tensor | None = None, kernel: str = "auto"
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """P, N (n, C) of the summed influence and P_t, N_t (T, n, C) per checkpoint: the one pairwise pass.

        Only the positive parts need the pass: N = S - P with S the closed-form class sums (``class_sums``,
        (T, n, C), when the caller has them; else the engine's own, ``class_sums``). Validation rows
        are visited sorted by class, each class a run of columns (padded with zero columns, which add nothing,
        to the kernel's block width). On the CPU (``kernel="auto"``) the fused C kernel (``kernel.py``) does
        the whole pass from the factors, in registers, per row block and column tile (as wide as keeps its
        validation factors in cache); with torch ops (``kernel="torch"``, and on a GPU) each tile of
        ``row_block`` x ``col_block`` and checkpoint is two GEMMs and elementwise passes over their outputs.
        """
        if kernel not in ("auto", "torch"):
            raise ValueError(f"unknown kernel {kernel!r}; known: auto, torch")
        lib = tile_kernel.library() if kernel == "auto" and self.device.type == "cpu" else None
        if self.sampled:
            columns, scale = self.column_sample(y_val, n_classes)
            val = (self._rows_factors("val", self.store.y_val, columns) if self._val is None
                   else (self._val[0][:, columns], self._val[1][:, columns]))
            tiles, width = self._column_tiles(y_val[columns], n_classes, lib, col_block, val)
        else:
            tiles, width = self._column_tiles(y_val, n_classes, lib, col_block)
        shape = (self.n_train, n_classes)
        pos, pos_t = torch.zeros(shape, device=self.device), torch.zeros((self.n_checkpoints, *shape), device=self.device)
        sums_t = (self.class_sums(y_val, n_classes) if class_sums is None else class_sums).to(self.device, torch.float32)
        tile_floats = 0 if lib is not None else min(row_block, self.n_train) * width  # the torch ops' three tiles
        buffers = torch.empty((3, tile_floats), device=self.device)
        for start in range(0, self.n_train, row_block):
            stop = min(start + row_block, self.n_train)
            errors, features = self.train_factors(start, stop)
            for tile_features, tile_errors, runs, c_runs in tiles:
                if lib is not None:
                    tile_kernel.fused_pass(lib, features, errors, tile_features, tile_errors, c_runs,
                                           pos_t[:, start:stop], pos[start:stop])
                else:
                    self._torch_tile(features, errors, tile_features, tile_errors, runs,
                                     pos_t[:, start:stop], pos[start:stop], buffers)
        if self.sampled:  # each class's sample scaled to its size, then P >= max(S, 0) (as N <= 0 <= P)
            weights = torch.from_numpy(scale).to(self.device, torch.float32)
            sums = sums_t.sum(0)
            pos = torch.maximum(pos.mul_(weights), sums.clamp(min=0))
            pos_t = torch.maximum(pos_t.mul_(weights), sums_t.clamp(min=0))
            return pos, sums.sub_(pos), pos_t, sums_t.sub(pos_t)
        return pos, sums_t.sum(0).sub_(pos), pos_t, sums_t.sub(pos_t)

    def column_sample(self, y_val: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """The validation rows a ``sampled`` pass visits and each class's weight (its rows over those visited).

        Each class is sampled in proportion (``max_pairs`` / (n_train n_val) of its rows, at least
        ``MIN_CLASS_COLUMNS``), without replacement and with a fixed seed, so P_ic = sum_{j in c} max(I_ij, 0)
        is estimated without bias by the weighted sum over the sample; the pass then costs about ``max_pairs``
        pairs whatever n is."""
        share = (self.max_pairs or 0) / (self.n_train * self.n_val)
        rng = np.random.default_rng(0)
        columns, weights = [], np.ones(n_classes)
        for c in range(n_classes):
            rows = np.flatnonzero(y_val == c)
            if len(rows):
                take = min(len(rows), max(MIN_CLASS_COLUMNS, round(len(rows) * share)))
                columns.append(np.sort(rng.choice(rows, take, replace=False)))
                weights[c] = len(rows) / take
        return np.concatenate(columns), weights

    def _column_tiles(self, y_val: np.ndarray, n_classes: int, lib: Any, col_block: int,
                      val: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[list[tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]], tile_kernel.Runs]], int]:
        """The validation factors (T, d + 1, c) and (T, k, c) of each column tile, and the class runs it holds.

        Columns are sorted by class, each class padded with zero columns to the kernel's block width; tiles
        are ``col_block`` wide for torch ops, or as wide as keeps a tile in cache for the kernel. ``val``: the
        (errors, features) of the columns to visit (default: every validation row), labelled ``y_val``.
        """
        val_errors, val_features = val if val is not None else (self.val_errors, self.val_features)
        align = tile_kernel.block_columns(lib)
        counts = np.bincount(y_val, minlength=n_classes)
        bounds = np.concatenate([[0], np.cumsum(-(-counts // align) * align)])  # each class's padded column run
        slots = np.concatenate([bounds[c] + np.arange(counts[c]) for c in range(n_classes)])  # sorted rows' columns
        order = torch.from_numpy(np.argsort(y_val, kind="stable")).to(self.device)
        padded = []
        for factors in (val_features, val_errors):
            layout = torch.zeros((self.n_checkpoints, factors.shape[-1], int(bounds[-1])), device=self.device)
            layout[:, :, torch.from_numpy(slots).to(self.device)] = factors[:, order].transpose(1, 2)
            padded.append(layout)
        width = col_block if lib is None else tile_kernel.column_tile(lib, self.n_checkpoints, sum(
            factors.shape[1] for factors in padded))
        tiles = []
        for col in range(0, int(bounds[-1]), width):
            col_stop = min(col + width, int(bounds[-1]))
            runs = [(c, max(lo, col) - col, min(hi, col_stop) - col)
                    for c, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])) if max(lo, col) < min(hi, col_stop)]
            features, errors = (layout[..., col:col_stop].contiguous() for layout in padded)
            tiles.append((features, errors, runs, tile_kernel.Runs(runs)))
        return tiles, width

    @staticmethod
    def _torch_tile(features: torch.Tensor, errors: torch.Tensor, val_features: torch.Tensor, val_errors: torch.Tensor,
                    runs: list[tuple[int, int, int]], pos_t: torch.Tensor, pos: torch.Tensor, buffers: torch.Tensor) -> None:
        """The fused kernel's tile with torch ops: per checkpoint two GEMMs, the product, its running total.

        ``buffers``: room for three b x c tiles, reused (a fresh 8 MB tile per step costs page faults)."""
        rows, width = features.shape[1], val_features.shape[-1]
        influence, gram, total = buffers[:, : rows * width].view(3, rows, width)
        for t in range(features.shape[0]):
            torch.mm(features[t], val_features[t], out=influence)
            influence.mul_(torch.mm(errors[t], val_errors[t], out=gram))
            if t == 0:
                total.copy_(influence)
            else:
                total.add_(influence)
            influence.clamp_(min=0)
            for c, lo, hi in runs:
                pos_t[t, :, c] += influence[:, lo:hi].sum(1)
        total.clamp_(min=0)
        for c, lo, hi in runs:
            pos[:, c] += total[:, lo:hi].sum(1)

    def matrix(self, per_checkpoint: bool = False) -> torch.Tensor:
        """The full train -> validation matrix (n, m), or (T, n, m); only for sizes that fit in memory."""
        out = torch.zeros((self.n_checkpoints, self.n_train, self.n_val) if per_checkpoint else (self.n_train, self.n_val),
                          device=self.device)
        for rows, cols, block in self.blocks():
            if per_checkpoint:
                out[:, rows, cols] = block
            else:
                out[rows, cols] = block.sum(0)
        return out


class DenseInfluence:
    """Per-checkpoint influence held as dense arrays (Captum's output), behind the engine's interface."""

    def __init__(self, per_checkpoint: np.ndarray, self_influence: np.ndarray, weights: np.ndarray,
                 device: str = "cpu") -> None:
        self.device = resolve_device(device)
        self.per_checkpoint = torch.from_numpy(per_checkpoint).float().to(self.device)
        self._self = torch.from_numpy(self_influence).float().to(self.device)
        self.weights = torch.from_numpy(weights).float().to(self.device)  # the w_t the matrices were computed with
        self.n_checkpoints, self.n_train, self.n_val = self.per_checkpoint.shape

    def blocks(self, row_block: int = 1024, col_block: int = 1024) -> Iterator[tuple[slice, slice, torch.Tensor]]:
        for start in range(0, self.n_train, row_block):
            for col in range(0, self.n_val, col_block):
                rows, cols = slice(start, start + row_block), slice(col, col + col_block)
                yield rows, cols, self.per_checkpoint[:, rows, cols]

    def class_sums(self, y_val: np.ndarray, n_classes: int) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(torch.from_numpy(y_val).to(self.device), n_classes).float()
        return self.per_checkpoint @ onehot

    def self_influence(self) -> torch.Tensor:
        return self._self


def class_masses(source: Any, y_val: np.ndarray, n_classes: int, row_block: int = 1024, col_block: int = 1024,
                 class_sums: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over all tiles: positive / negative influence mass per (row, validation class).

    Returns P, N of the summed influence (n, C) and P_t, N_t per checkpoint (T, n, C). The engine (the
    relabelled one included) runs its factorised pass (``TracInEngine.class_masses``, which derives N from
    the closed-form ``class_sums`` when given); other sources (Captum's dense matrices) reduce the tiles
    they yield.
    """
    if isinstance(source, TracInEngine):
        return source.class_masses(y_val, n_classes, row_block, col_block, class_sums)
    device = source.device
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


def captum_influence(model: AdaptedModel, checkpoints: Sequence[Path], train: DataSet, val: DataSet,
                     weighting: str = "lr", train_batch_size: int = 128, batch_size: int = 128
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Captum's TracInCP on the final linear layer (bias included), one checkpoint at a time.

    Returns per-checkpoint train -> validation influence (T, n, m) and self-influence (T, n). Captum
    multiplies by each checkpoint's learning rate (from ``load_checkpoint``); ``lr_over_batch`` scales by 1/|B_t|.
    """
    from captum.influence import TracInCP
    from torch.utils.data import TensorDataset

    scale = checkpoint_weight(1.0, weighting, train_batch_size)
    dataset = TensorDataset(torch.from_numpy(train.x), torch.from_numpy(train.y))
    model.eval()
    per_checkpoint, self_influence = [], []
    for path in checkpoints:
        tracin = TracInCP(model, dataset, checkpoints=[str(path)], checkpoints_load_func=load_checkpoint,
                          layers=[f"net.{model.head_name}"], loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"),
                          batch_size=batch_size, sample_wise_grads_per_batch=True)
        influence = tracin.influence((torch.from_numpy(val.x), torch.from_numpy(val.y)))
        per_checkpoint.append(influence.T.detach().numpy() * scale)
        self_influence.append(tracin.self_influence().detach().numpy() * scale)
    return np.stack(per_checkpoint).astype(np.float32), np.stack(self_influence).astype(np.float32)


BACKENDS = ("factors", "captum")


def write_dense(path: str | Path, backend: str, factors: str | Path, weighting: str = "lr", device: str = "cpu",
                model: AdaptedModel | None = None, checkpoints: Sequence[Path] = (), train: DataSet | None = None,
                val: DataSet | None = None) -> None:
    """The dense per-checkpoint matrices (T, n, m) and self-influence (T, n): Captum's, or the engine's.

    Captum's are the reference the signals can be computed from (``influence.backend: captum``); the
    engine's are for users who want the matrix itself (``influence.write_matrix``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown influence backend {backend!r}; known: {BACKENDS}")
    store = FactorStore(factors)
    engine = TracInEngine(store, device, weighting)
    if backend == "captum":
        if model is None or train is None or val is None:
            raise ValueError("the captum backend needs the model, its checkpoints and both splits")
        per_checkpoint, self_influence = captum_influence(model, checkpoints, train, val, weighting,
                                                          store.meta.train_batch_size)
    else:
        per_checkpoint, self_influence = engine.matrix(per_checkpoint=True).cpu().numpy(), engine.self_influence().cpu().numpy()
    save_npz(path, per_checkpoint=per_checkpoint, self_influence=self_influence, weights=engine.weights.cpu().numpy())


def open_influence(factors: str | Path, device: str = "cpu", weighting: str = "lr",
                   dense: str | Path | None = None) -> TracInEngine | DenseInfluence:
    """The engine on a run's factors, or the dense matrices of ``write_dense`` where given."""
    if dense is not None:
        arrays = load_npz(dense)
        return DenseInfluence(arrays["per_checkpoint"], arrays["self_influence"], arrays["weights"], device)
    return TracInEngine(FactorStore(factors), device, weighting)


class Relabelled(TracInEngine):
    """The last checkpoint's influence with every train row's label replaced (the follow-up's counterfactual).

    Only the train rows' error vectors change (softmax - onehot(y')), so it is the engine restricted to its
    last checkpoint with other train labels: one checkpoint's pass, through the engine's own tiles.
    """

    def __init__(self, engine: TracInEngine, labels: np.ndarray, weights: torch.Tensor | None = None) -> None:
        """``weights``: the checkpoint weights of the influence relabelled (Captum's matrices'), else the engine's."""
        self.store, self.device = engine.store, engine.device  # the engine's factors, not re-read from the store
        self.checkpoints, self.train_labels = engine.checkpoints[-1:], labels
        self.weights = (engine.weights if weights is None else weights.to(engine.device))[-1:]
        self.max_pairs = engine.max_pairs
        self._val = None if engine._val is None else (engine._val[0][-1:], engine._val[1][-1:])  # else read when needed
