"""The optimised pairwise pass and the closed-form class sums against dense numpy from the engine's full matrix."""
from __future__ import annotations

import json

import numpy as np
import pytest

from influence_signals import influence
from influence_signals.factors import ARRAYS, FactorMeta, FactorStore

N, M, D, K, T = 203, 97, 6, 4, 3


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FactorStore:
    """Random factors in the real layout; validation labels unsorted, imbalanced, class 3 absent."""
    folder = tmp_path_factory.mktemp("factors")
    rng = np.random.default_rng(0)
    shapes = {"train_logits": (N, K), "train_features": (N, D), "val_logits": (M, K), "val_features": (M, D)}
    for name in ARRAYS:
        np.save(folder / f"{name}.npy", rng.normal(size=(T, *shapes[name])).astype(np.float32))
    np.save(folder / "y_train.npy", rng.integers(0, K, N))
    np.save(folder / "y_val.npy", rng.choice(3, M, p=[0.6, 0.3, 0.1]))
    meta = FactorMeta(N, M, K, D, [0.3, 0.1, 0.05], 32, [1, 2, 3], ["a.pt", "b.pt", "c.pt"])
    (folder / "meta.json").write_text(json.dumps(meta.__dict__))
    return FactorStore(folder)


def dense_masses(per_checkpoint: np.ndarray, y_val: np.ndarray) -> list[np.ndarray]:
    """P, N (n, C) of the summed influence and P_t, N_t (T, n, C), by definition from the dense (T, n, m) matrix."""
    onehot = np.eye(K)[y_val]
    total = per_checkpoint.sum(0)
    return [np.maximum(total, 0) @ onehot, np.minimum(total, 0) @ onehot,
            np.maximum(per_checkpoint, 0) @ onehot, np.minimum(per_checkpoint, 0) @ onehot]


def assert_close(ours: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("row_block, col_block", [(1024, 1024), (N, M), (64, 32), (37, 23), (7, 5), (1, 97)])
def test_pass_equals_dense_numpy(store, row_block, col_block):
    engine = influence.TracInEngine(store)
    expected = dense_masses(engine.matrix(per_checkpoint=True).double().numpy(), store.y_val)
    for ours, wanted in zip(influence.class_masses(engine, store.y_val, K, row_block, col_block), expected):
        assert_close(ours.double().numpy(), wanted)


def test_relabelled_pass_equals_dense_numpy(store):
    """The relabelled engine (last checkpoint, other train labels) runs the same pass."""
    relabelled = influence.Relabelled(influence.TracInEngine(store), (store.y_train + 1) % K)
    assert relabelled.n_checkpoints == 1
    expected = dense_masses(relabelled.matrix(per_checkpoint=True).double().numpy(), store.y_val)
    for ours, wanted in zip(influence.class_masses(relabelled, store.y_val, K, 50, 40), expected):
        assert_close(ours.double().numpy(), wanted)


def test_closed_form_class_sums_equal_dense_sums(store):
    engine = influence.TracInEngine(store)
    dense = engine.matrix(per_checkpoint=True).double().numpy()
    assert_close(engine.class_sums(store.y_val, K).double().numpy(), dense @ np.eye(K)[store.y_val])
