"""The optimised pairwise pass and the closed-form class sums against dense numpy from the engine's full matrix."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from influence_signals import influence
from influence_signals import kernel as tile_kernel
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


KERNELS = ["auto", "torch"]  # the fused C kernel (where it builds) and the torch ops


def test_the_fused_kernel_builds_here_on_torchs_openmp_runtime():
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine: the pass runs with torch ops")
    assert tile_kernel.library() is not None
    mapped = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libgomp" in line}
    plain = {path for path in mapped if Path(path).name.startswith("libgomp.so")}  # what the kernel links
    assert len(plain) == 1, f"the kernel loaded a second OpenMP runtime: {mapped}"  # its threads are torch's
    # (scikit-learn's own copy, libgomp-<hash>.so, is a runtime only scikit-learn calls)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("row_block, col_block", [(1024, 1024), (N, M), (64, 32), (37, 23), (7, 5), (1, 97)])
def test_pass_equals_dense_numpy(store, row_block, col_block, kernel):
    engine = influence.TracInEngine(store)
    expected = dense_masses(engine.matrix(per_checkpoint=True).double().numpy(), store.y_val)
    for ours, wanted in zip(engine.class_masses(store.y_val, K, row_block, col_block, kernel=kernel), expected):
        assert_close(ours.double().numpy(), wanted)


@pytest.mark.parametrize("kernel", KERNELS)
def test_the_pass_given_the_closed_form_sums_equals_the_pass_without(store, kernel):
    engine = influence.TracInEngine(store)
    sums = engine.class_sums(store.y_val, K)
    before = sums.clone()
    given = engine.class_masses(store.y_val, K, 64, 32, sums, kernel)
    for ours, wanted in zip(given, influence.TracInEngine(store).class_masses(store.y_val, K, 64, 32, kernel=kernel)):
        torch.testing.assert_close(ours, wanted, rtol=1e-5, atol=1e-6)
    assert torch.equal(sums, before)  # the caller's sums are left as they were


@pytest.mark.parametrize("kernel", KERNELS)
def test_relabelled_pass_equals_dense_numpy(store, kernel):
    """The relabelled engine (last checkpoint, other train labels) runs the same pass."""
    relabelled = influence.Relabelled(influence.TracInEngine(store), (store.y_train + 1) % K)
    assert relabelled.n_checkpoints == 1
    expected = dense_masses(relabelled.matrix(per_checkpoint=True).double().numpy(), store.y_val)
    for ours, wanted in zip(relabelled.class_masses(store.y_val, K, 50, 40, kernel=kernel), expected):
        assert_close(ours.double().numpy(), wanted)


def test_closed_form_class_sums_equal_dense_sums(store):
    engine = influence.TracInEngine(store)
    dense = engine.matrix(per_checkpoint=True).double().numpy()
    assert_close(engine.class_sums(store.y_val, K).double().numpy(), dense @ np.eye(K)[store.y_val])


def test_closed_forms_read_once_are_recomputed_for_other_labels(store):
    """Self-influence and the store's class sums come from one read of the train rows; other labels get their own."""
    engine = influence.TracInEngine(store)
    dense = engine.matrix(per_checkpoint=True).double().numpy()
    errors, features = (torch.stack(parts).double().numpy() for parts in zip(
        *(engine.train_factors(i, i + 1, weighted=False) for i in range(N))))  # (n, T, 1, .) row by row
    expected_si = engine.weights.double().numpy()[:, None] * (errors**2).sum(-1)[..., 0].T * (features**2).sum(-1)[..., 0].T
    assert_close(engine.self_influence().double().numpy(), expected_si)
    other = (store.y_val + 1) % K
    assert_close(engine.class_sums(other, K).double().numpy(), dense @ np.eye(K)[other])
    assert_close(engine.class_sums(store.y_val, K).double().numpy(), dense @ np.eye(K)[store.y_val])
