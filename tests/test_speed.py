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


# ----------------------------------------------------------------------------------------------
# Past the pair budget: the pass on a sample of the validation rows (large tables)


@pytest.fixture(scope="module")
def wide_store(tmp_path_factory) -> FactorStore:
    """Factors with many validation rows (4 classes, one rare), so that a small budget samples them."""
    folder = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(1)
    n, m, d, k, t = 150, 3000, 6, 4, 3
    shapes = {"train_logits": (n, k), "train_features": (n, d), "val_logits": (m, k), "val_features": (m, d)}
    for name in ARRAYS:
        np.save(folder / f"{name}.npy", rng.normal(size=(t, *shapes[name])).astype(np.float32))
    np.save(folder / "y_train.npy", rng.integers(0, k, n))
    np.save(folder / "y_val.npy", rng.choice(k, m, p=[0.5, 0.3, 0.18, 0.02]))
    (folder / "meta.json").write_text(json.dumps(FactorMeta(n, m, k, d, [0.3, 0.1, 0.05], 32, [1, 2, 3],
                                                            ["a.pt", "b.pt", "c.pt"]).__dict__))
    return FactorStore(folder)


def test_a_pass_within_the_pair_budget_is_exact(store):
    assert (20_000 // 2) ** 2 <= influence.PAIR_BUDGET  # any split of a table of up to 20,000 rows: exact
    engine = influence.TracInEngine(store)
    assert not engine.sampled and store.meta.n_train * store.meta.n_val <= influence.PAIR_BUDGET
    for ours, exact in zip(engine.class_masses(store.y_val, K), influence.TracInEngine(store, max_pairs=None)
                           .class_masses(store.y_val, K)):
        assert torch.equal(ours, exact)


def test_the_sampled_pass_estimates_the_exact_one_without_holding_the_validation_factors(wide_store):
    y_val, n_classes = wide_store.y_val, wide_store.meta.n_classes
    budget = wide_store.meta.n_train * wide_store.meta.n_val // 5  # a fifth of the columns
    engine = influence.TracInEngine(wide_store, max_pairs=budget)
    assert engine.sampled
    columns, weights = engine.column_sample(y_val, n_classes)
    counts = np.bincount(y_val[columns], minlength=n_classes)
    assert counts[3] == (y_val == 3).sum() < influence.MIN_CLASS_COLUMNS  # a rare class is visited whole
    np.testing.assert_allclose(weights, np.bincount(y_val, minlength=n_classes) / counts)
    pos, neg, pos_t, neg_t = engine.class_masses(y_val, n_classes)
    assert engine._val is None  # the closed forms and the pass streamed or sampled the validation factors
    exact = influence.TracInEngine(wide_store, max_pairs=None)
    pos_x, neg_x, pos_t_x, neg_t_x = exact.class_masses(y_val, n_classes)
    sums, sums_t = exact.class_sums(y_val, n_classes).sum(0), exact.class_sums(y_val, n_classes)
    torch.testing.assert_close(pos + neg, sums, rtol=1e-5, atol=1e-5)  # P + N = S: the sums are exact
    torch.testing.assert_close(pos_t + neg_t, sums_t, rtol=1e-5, atol=1e-5)
    assert (pos >= 0).all() and (neg <= 0).all() and (pos_t >= 0).all() and (neg_t <= 0).all()
    relative = ((pos - pos_x).abs().sum() / pos_x.abs().sum()).item()
    assert relative < 0.1, relative  # random factors: the noisiest case; real runs agree far closer (scale benchmark)
    aai, aai_x = (pos - neg).sum(-1).numpy(), (pos_x - neg_x).sum(-1).numpy()
    assert np.corrcoef(np.argsort(np.argsort(aai)), np.argsort(np.argsort(aai_x)))[0, 1] >= 0.95
    relabelled = influence.Relabelled(engine, (wide_store.y_train + 1) % n_classes)
    assert relabelled.sampled and relabelled._val is None
    pos_r = relabelled.class_masses(y_val, n_classes)[0]
    pos_r_x = influence.Relabelled(exact, (wide_store.y_train + 1) % n_classes).class_masses(y_val, n_classes)[0]
    assert ((pos_r - pos_r_x).abs().sum() / pos_r_x.abs().sum()).item() < 0.1


def test_rows_influence_streams_the_validation_rows_and_equals_the_dense_matrix(wide_store):
    rows = [3, 0, 77]
    dense = influence.TracInEngine(wide_store, max_pairs=None).matrix()[rows]
    sampled = influence.TracInEngine(wide_store, max_pairs=1)
    torch.testing.assert_close(sampled.rows_influence(rows), dense, rtol=1e-4, atol=1e-5)
    assert sampled._val is None
    torch.testing.assert_close(influence.TracInEngine(wide_store, max_pairs=None).rows_influence(rows), dense,
                               rtol=1e-4, atol=1e-5)
