"""The TracIn engine against Captum's TracInCP and against brute-force per-sample gradients."""
from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch

from influence_signals import datasets, influence, models, training
from influence_signals.artifacts import ArtifactError
from influence_signals.factors import FactorStore


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    data = datasets.make_tabular(n_rows=250, n_features=6, n_classes=3, seed=2)
    train, val, _ = datasets.prepare(data, 1.0, 0.2, 0)
    torch.manual_seed(0)
    model = models.build("mlp", train.x.shape[1:], 3, {"n_blocks": 1, "d_block": 12, "dropout": 0.1})
    training.train(model, train, val, training.TrainSettings(epochs=3, lr=0.2, batch_size=32), folder / "ckpt",
                   folder / "factors")
    checkpoints = training.epoch_checkpoints(folder / "ckpt")
    influence.write_dense(folder / "captum.npz", "captum", folder / "factors", model=model, checkpoints=checkpoints,
                          train=train, val=val)
    return model, checkpoints, train, val, folder


def brute_force_gradients(model, checkpoint, data) -> tuple[np.ndarray, float]:
    """Per-row gradients of the loss w.r.t. the head's (weight, bias), one backward pass per row."""
    lr = training.load_checkpoint(model, checkpoint)
    model.eval()
    rows = []
    for x, y in zip(data.x, data.y):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[None])), torch.tensor([y]))
        loss.backward()
        rows.append(torch.cat([model.head.weight.grad.flatten(), model.head.bias.grad]).numpy().copy())
    return np.stack(rows), lr


def test_engine_equals_brute_force(run):
    model, checkpoints, train, val, folder = run
    expected = np.zeros((len(train.y), len(val.y)))
    expected_self = np.zeros(len(train.y))
    for checkpoint in checkpoints:
        g_train, lr = brute_force_gradients(model, checkpoint, train)
        g_val, _ = brute_force_gradients(model, checkpoint, val)
        expected += lr * g_train @ g_val.T
        expected_self += lr * (g_train**2).sum(1)
    engine = influence.TracInEngine(FactorStore(folder / "factors"))
    np.testing.assert_allclose(engine.matrix().numpy(), expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    np.testing.assert_allclose(engine.self_influence().sum(0).numpy(), expected_self, rtol=1e-4)


def test_engine_equals_captum_tracincp(run):
    *_, folder = run
    engine = influence.TracInEngine(FactorStore(folder / "factors"))
    captum = influence.open_influence(folder / "factors", dense=folder / "captum.npz")
    assert isinstance(captum, influence.DenseInfluence)
    ours, theirs = engine.matrix(per_checkpoint=True).numpy(), captum.per_checkpoint.numpy()
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
    ours_self, theirs_self = engine.self_influence().numpy(), captum.self_influence().numpy()
    assert np.abs(ours_self - theirs_self).max() <= 1e-5 * np.abs(theirs_self).max()


def test_blocks_tile_the_matrix_whatever_the_block_size(run):
    *_, folder = run
    engine = influence.TracInEngine(FactorStore(folder / "factors"))
    full = engine.matrix(per_checkpoint=True)
    tiled = torch.zeros_like(full)
    for rows, cols, block in engine.blocks(row_block=7, col_block=5):
        tiled[:, rows, cols] = block
    torch.testing.assert_close(tiled, full)


def test_lr_over_batch_scales_by_the_training_batch_size(run):
    *_, folder = run
    scaled = influence.TracInEngine(FactorStore(folder / "factors"), weighting="lr_over_batch").matrix()
    plain = influence.TracInEngine(FactorStore(folder / "factors")).matrix()
    torch.testing.assert_close(scaled * 32, plain, rtol=1e-5, atol=1e-7)


def test_the_engines_dense_matrix_is_the_one_written(run, tmp_path):
    *_, folder = run
    influence.write_dense(tmp_path / "dense.npz", "factors", folder / "factors", weighting="lr_over_batch")
    dense = influence.open_influence(folder / "factors", dense=tmp_path / "dense.npz")
    engine = influence.TracInEngine(FactorStore(folder / "factors"), weighting="lr_over_batch")
    torch.testing.assert_close(dense.per_checkpoint, engine.matrix(per_checkpoint=True))
    torch.testing.assert_close(dense.weights, engine.weights)


def test_factors_recorded_in_training_equal_a_fresh_recording_from_the_checkpoints(tmp_path):
    """Training records factors from its frozen-trunk cache; loading each checkpoint anew gives the same."""
    train, val, _ = datasets.prepare(datasets.make_shapes(n_per_class=30, size=16, seed=1), 1.0, 0.25, 0)
    torch.manual_seed(0)
    model = models.build("resnet20", train.x.shape[1:], train.n_classes, None)
    settings = training.TrainSettings(epochs=2, lr=0.05, batch_size=16, trainable=["layer3", "linear"])
    training.train(model, train, val, settings, tmp_path / "ckpt", tmp_path / "recorded")
    torch.manual_seed(1)
    fresh = models.build("resnet20", train.x.shape[1:], train.n_classes, None)  # other weights everywhere until loaded
    models.set_trainable(fresh, settings.trainable)
    training.record_factors(fresh, training.epoch_checkpoints(tmp_path / "ckpt"), train, val, tmp_path / "fresh", 16)
    recorded, again = FactorStore(tmp_path / "recorded"), FactorStore(tmp_path / "fresh")
    assert recorded.meta == again.meta and recorded.meta.learning_rates == [0.05, 0.05]
    for name in ("train_logits", "train_features", "val_logits", "val_features"):
        np.testing.assert_allclose(recorded.all(name), again.all(name), rtol=1e-5, atol=1e-6)


def test_factor_store_reads_rows_without_loading_everything(run):
    *_, folder = run
    store = FactorStore(folder / "factors")
    whole = np.load(folder / "factors" / "train_features.npy")
    np.testing.assert_array_equal(store.read("train_features", 1, 10, 20), whole[1, 10:20])
    assert store.meta.learning_rates == [0.2, 0.2, 0.2] and store.meta.epochs == [1, 2, 3]
    assert store.meta.train_batch_size == 32


def test_broken_artifacts_are_named(tmp_path, run):
    with pytest.raises(ArtifactError, match="not a complete factor folder"):
        FactorStore(tmp_path)
    *_, folder = run
    import shutil

    shutil.copytree(folder / "factors", tmp_path / "cut")
    features = tmp_path / "cut" / "train_features.npy"
    features.write_bytes(features.read_bytes()[:-100])  # truncated: not a reshape error later, the file named now
    with pytest.raises(ArtifactError, match="train_features.npy holds .* bytes but its header needs"):
        FactorStore(tmp_path / "cut")
    model, *_ = run
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="bad.pt"):
        training.load_checkpoint(model, bad)


def test_signals_agree_between_engine_and_captum_backend(run):
    from influence_signals import signals

    *_, folder = run
    store = FactorStore(folder / "factors")
    ours, ours_epochs, _ = signals.compute(signals.SignalInputs(influence.TracInEngine(store), store, 64, 16))
    theirs, theirs_epochs, _ = signals.compute(signals.SignalInputs(influence.open_influence(folder / "factors", dense=folder / "captum.npz"), store))
    columns = [c for c in ours.columns if c != "row"]
    scale = np.abs(theirs[columns].to_numpy()).max(axis=0)
    np.testing.assert_array_less(np.abs(ours[columns].to_numpy() - theirs[columns].to_numpy()).max(axis=0), 1e-4 * scale + 1e-9)
    np.testing.assert_allclose(ours_epochs, theirs_epochs, rtol=1e-3, atol=1e-6 * np.abs(theirs_epochs).max())


def test_closed_form_class_sums_equal_the_dense_matrix(run):
    """MI and GD-class need only per-class sums, which the engine computes without a pairwise pass."""
    *_, folder = run
    store = FactorStore(folder / "factors")
    engine = influence.TracInEngine(store)
    dense = engine.matrix(per_checkpoint=True).double().numpy()
    onehot = np.eye(store.meta.n_classes)[store.y_val]
    closed = engine.class_sums(store.y_val, store.meta.n_classes).double().numpy()
    np.testing.assert_allclose(closed, dense @ onehot, rtol=1e-5, atol=1e-5 * np.abs(dense @ onehot).max())


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler here")
def test_a_replaced_cached_kernel_is_never_loaded(tmp_path, monkeypatch, caplog):
    """A library swapped into the cache (same symbols, a constructor that runs code) fails the hash check;
    one without the kernel's symbols is refused too: either way the pass falls back to torch ops."""
    import subprocess

    from influence_signals import kernel

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kernel.library.cache_clear()
    try:
        assert kernel.library() is not None
        built = next((tmp_path / "cache" / "influence_signals").glob("fused_pass_*.so"))
        assert (tmp_path / "cache" / "influence_signals").stat().st_mode & 0o777 == 0o700
        marker = tmp_path / "ran"
        evil = tmp_path / "evil.c"
        evil.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void run(void) '
                        f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
                        'void fused_pass(void) {}\nint block_columns(void) { return 1; }\n')
        compiler = shutil.which("cc") or shutil.which("gcc")
        subprocess.run([compiler, "-shared", "-fPIC", str(evil), "-o", str(built)], check=True)
        kernel.library.cache_clear()
        with caplog.at_level("WARNING"):
            assert kernel.library() is None
        assert "differs from the library built here" in caplog.text and not marker.exists()
        digest = built.with_suffix(".sha256")
        empty = tmp_path / "empty.c"
        empty.write_text("int unrelated(void) { return 0; }\n")
        subprocess.run([compiler, "-shared", "-fPIC", str(empty), "-o", str(built)], check=True)
        digest.write_text(hashlib.sha256(built.read_bytes()).hexdigest())  # even with a matching hash: no symbol
        import sys

        fresh = subprocess.run([sys.executable, "-c", "from influence_signals import kernel; print(kernel.library())"],
                               capture_output=True, text=True, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
        assert fresh.stdout.strip() == "None", fresh.stderr  # a fresh process: this one has the real library loaded
    finally:
        kernel.library.cache_clear()
