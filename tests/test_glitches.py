"""Glitch semantics: exact counts, changes exactly where the error table says, determinism."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pytest

from influence_signals import datasets, glitches
from influence_signals.glitches import GlitchError, glitch_count, inject


@pytest.mark.parametrize("glitch", ["uniform", "class_pairs", "single_class"])
@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.2])
def test_label_noise_changes_exactly_the_tabled_rows(tabular, glitch, ratio):
    noisy, table = inject(tabular, glitch, ratio, seed=3)
    expected = glitch_count(ratio, len(tabular.y))
    assert table["glitched"].sum() == expected
    assert (table["true_label"] == tabular.y).all()
    assert (table["observed_label"] == noisy.y).all()
    changed = np.flatnonzero(noisy.y != tabular.y)
    np.testing.assert_array_equal(changed, np.flatnonzero(table["glitched"]))
    np.testing.assert_array_equal(noisy.x, tabular.x)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.3])
def test_class_dependent_flips_floor_ratio_of_one_class_to_one_class(tabular, seed, ratio):
    """The study's definition: one class c_i, floor(ratio x |c_i|) of its rows, all to one other class c_j."""
    noisy, table = inject(tabular, "class_dependent", ratio, seed=seed)
    flipped = table[table["glitched"]]
    assert flipped["true_label"].nunique() == 1 and flipped["observed_label"].nunique() == 1
    source, target = int(flipped["true_label"].iloc[0]), int(flipped["observed_label"].iloc[0])
    assert source != target
    assert len(flipped) == int(np.floor(ratio * (tabular.y == source).sum()))
    np.testing.assert_array_equal(np.flatnonzero(noisy.y != tabular.y), flipped["row"])
    assert set(table.loc[table["glitched"], "glitch"]) == {"class_dependent"}


def test_class_pairs_noise_follows_one_derangement(tabular):
    noisy, table = inject(tabular, "class_pairs", 0.3, seed=5)
    flipped = table[table["glitched"]]
    mapping = flipped.groupby("true_label")["observed_label"].nunique()
    assert (mapping == 1).all()  # each class goes to exactly one target
    targets = flipped.groupby("true_label")["observed_label"].first()
    assert (targets.index != targets.values).all()
    perm = glitches.derangement(7, np.random.default_rng(0))
    assert sorted(perm) == list(range(7)) and not np.any(perm == np.arange(7))


def test_single_class_noise_flips_one_class_to_one_target(tabular):
    _, table = inject(tabular, "single_class", 0.05, seed=2)
    flipped = table[table["glitched"]]
    assert flipped["true_label"].nunique() == 1 and flipped["observed_label"].nunique() == 1
    assert (flipped["true_label"] != flipped["observed_label"]).all()


@pytest.mark.parametrize("ratio", [0.02, 0.1, 0.2])
def test_near_ca_downsamples_one_class_to_the_ratio(tabular, ratio):
    glitched, table = inject(tabular, "near_ca", ratio, seed=4)
    k = int(table["glitched"].sum())
    assert k == glitch_count(ratio, len(glitched.y))
    anomaly = table.loc[table["glitched"], "true_label"].unique()
    assert len(anomaly) == 1
    assert (glitched.y == anomaly[0]).sum() == k  # the rare class is exactly the glitched rows
    assert (table["true_label"] == table["observed_label"]).all()  # labels stay correct
    others = tabular.y != anomaly[0]
    assert (glitched.y != anomaly[0]).sum() == others.sum()  # every other row kept
    np.testing.assert_array_equal(glitched.x, tabular.x[table["origin_index"]])


@pytest.mark.parametrize("labels", ["single", "per_row"])
def test_far_ca_rows_come_from_the_source_class(images, shapes, labels):
    glitched, table = inject(images, "far_ca", 0.1, seed=1, source=shapes, options={"labels": labels, "source_class": 3})
    far = table[table["glitched"]]
    assert len(far) == glitch_count(0.1, len(glitched.y))
    assert len(glitched.y) == len(images.y) + len(far)
    assert (far["origin"] == "shapes").all()
    assert (shapes.y[far["origin_index"]] == 3).all()
    converted = glitches.convert_images(shapes.x[far["origin_index"]], 1, 8, 8)
    np.testing.assert_allclose(glitched.x[far["row"]], converted, atol=1e-6)
    clean = table[~table["glitched"]]
    np.testing.assert_array_equal(glitched.x[clean["row"]], images.x[clean["origin_index"]])
    np.testing.assert_array_equal(glitched.y[clean["row"]], images.y[clean["origin_index"]])
    if labels == "single":
        assert far["observed_label"].nunique() == 1


def test_convert_images_fits_channels_and_size():
    grey = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    rgb = glitches.convert_images(grey, 3, 32, 32)
    assert rgb.shape == (3, 3, 32, 32) and rgb.min() >= 0 and rgb.max() <= 1
    np.testing.assert_array_equal(rgb[:, 0], rgb[:, 2])
    assert glitches.convert_images(rgb, 1, 8, 8).shape == (3, 1, 8, 8)


def test_image_outliers_change_chosen_images_only(images):
    corrupted, table = inject(images, "outlier", 0.2, seed=7)
    changed = np.flatnonzero((corrupted.x != images.x).reshape(len(images.y), -1).any(1))
    np.testing.assert_array_equal(changed, np.flatnonzero(table["glitched"]))
    assert set(table.loc[table["glitched"], "glitch"]) == {"outlier:brightness", "outlier:stripe"}
    assert corrupted.x.min() >= 0 and corrupted.x.max() <= 1
    np.testing.assert_array_equal(corrupted.y, images.y)


def test_brightness_by_hand():
    grey = np.array([[[[0.0, 0.5, 0.9]]]], dtype=np.float32)
    np.testing.assert_allclose(glitches.brightness(grey, 0.3), [[[[0.3, 0.8, 1.0]]]])
    rgb = np.array([[[[0.2]], [[0.4]], [[0.0]]]], dtype=np.float32)  # V = 0.4
    out = glitches.brightness(rgb, 0.2)  # V' = 0.6: every channel scaled by 1.5, hue kept
    np.testing.assert_allclose(out[:, :, 0, 0], [[0.3, 0.6, 0.0]], rtol=1e-6)
    black = np.zeros((1, 3, 1, 1), dtype=np.float32)  # V = 0, S = 0: becomes grey V'
    np.testing.assert_allclose(glitches.brightness(black, 0.3)[0, :, 0, 0], [0.3, 0.3, 0.3])
    # the benchmarks' severities: CIFAR-10-C for RGB, MNIST-C for grey (severity 5 = 0.3 and 0.5)
    assert glitches.brightness_amount(3, 5) == 0.3 and glitches.brightness_amount(3, 1) == 0.05
    assert glitches.brightness_amount(1, 5) == 0.5 and glitches.brightness_amount(1, 1) == 0.1


def test_stripe_is_mnist_c_on_a_hand_computed_image():
    """MNIST-C's stripe inverts columns 0-6 and 21-27 of a 28 x 28 image, and leaves columns 7-20."""
    image = np.tile(np.linspace(0, 1, 28, dtype=np.float32), (28, 1))[None, None]  # column j holds j / 27
    expected = image.copy()
    for column in [*range(0, 7), *range(21, 28)]:
        expected[..., column] = 1.0 - column / 27
    np.testing.assert_allclose(glitches.stripe(image), expected, atol=1e-6)
    np.testing.assert_array_equal(glitches.stripe(image)[..., 7:21], image[..., 7:21])


def test_tabular_outliers_shift_features_of_chosen_rows(tabular):
    shifted, table = inject(tabular, "outlier", 0.1, seed=1)
    diff = np.abs(shifted.x - tabular.x)
    rows = np.flatnonzero(table["glitched"])
    assert set(np.flatnonzero(diff.sum(1) > 0)) == set(rows)
    np.testing.assert_allclose(diff[diff > 0], 6.0, rtol=1e-5)


def _digest(dataset, table):
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    return hashlib.sha256(dataset.x.tobytes() + dataset.y.tobytes() + buffer.getvalue().encode()).hexdigest()


@pytest.mark.parametrize("glitch", ["uniform", "class_dependent", "near_ca", "outlier"])
def test_same_seed_same_bytes(tabular, glitch):
    assert _digest(*inject(tabular, glitch, 0.1, 9)) == _digest(*inject(tabular, glitch, 0.1, 9))
    assert _digest(*inject(tabular, glitch, 0.1, 9)) != _digest(*inject(tabular, glitch, 0.1, 10))


@pytest.mark.parametrize("ratio", [0.0, -0.1, 0.51, 1.0])
def test_ratio_outside_range_is_refused(tabular, ratio):
    with pytest.raises(GlitchError, match="ratio"):
        inject(tabular, "uniform", ratio, 0)


def test_impossible_requests_are_refused(tabular, images, shapes):
    with pytest.raises(GlitchError, match="unknown glitch"):
        inject(tabular, "gaussian", 0.1, 0)
    with pytest.raises(GlitchError, match="single_class"):
        balanced = datasets.DataSet("t", np.zeros((8, 2), np.float32), np.repeat(np.arange(4), 2), tuple("abcd"), "tabular")
        inject(balanced, "single_class", 0.5, 0)
    with pytest.raises(GlitchError, match="near_ca"):
        inject(images, "near_ca", 0.1, 0)
    with pytest.raises(GlitchError, match="needs .* rows"):
        inject(images, "far_ca", 0.5, 0, source=shapes.subset(np.arange(30)), options={"source_class": 0})
    with pytest.raises(GlitchError, match="features"):
        inject(tabular, "far_ca", 0.1, 0, source=datasets.make_tabular("other", n_rows=100, n_features=4, n_classes=2))
    with pytest.raises(GlitchError, match="the data set itself"):
        inject(images, "far_ca", 0.1, 0, source=images)
    with pytest.raises(GlitchError, match="source"):
        inject(images, "far_ca", 0.1, 0)


def test_error_table_has_the_documented_columns(tabular):
    _, table = inject(tabular, "uniform", 0.1, 0)
    assert tuple(table.columns) == glitches.ERROR_COLUMNS
    assert isinstance(table, pd.DataFrame) and (table["row"] == np.arange(len(table))).all()


def test_an_error_table_with_a_stray_glitched_cell_is_refused_naming_the_row(tmp_path):
    from influence_signals.artifacts import ArtifactError

    data = datasets.make_tabular(n_rows=50, n_features=3, n_classes=2, seed=0)
    _, table = glitches.inject(data, "uniform", 0.1, 0)
    table.to_csv(tmp_path / "errors.csv", index=False)
    read = glitches.read_error_table(str(tmp_path / "errors.csv"))
    assert read["glitched"].dtype == bool and read["glitched"].sum() == 5 and (read["id"] == table["id"]).all()
    table["glitched"] = table["glitched"].astype(object)
    table.loc[7, "glitched"] = "yes"
    table.to_csv(tmp_path / "errors.csv", index=False)
    with pytest.raises(ArtifactError, match="row 7 holds 'yes'"):
        glitches.read_error_table(str(tmp_path / "errors.csv"))
