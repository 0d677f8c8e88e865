"""Loaders (embedded and real formats, written here in miniature) and the study's preparation."""
from __future__ import annotations

from pathlib import Path

import gzip
import pickle
import struct

import numpy as np
import pytest

from influence_signals import datasets
from influence_signals.datasets import DataError


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if compress else open)(path, "wb").write(payload)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
@pytest.mark.parametrize("compress", [False, True])
def test_mnist_like_reads_idx_files(tmp_path, name, folder, compress):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / folder / "raw" / f"train-images-idx3-ubyte{suffix}", images, compress)
    write_idx(tmp_path / folder / "raw" / f"train-labels-idx1-ubyte{suffix}", labels, compress)
    data = datasets.load(name, data_dir=tmp_path)
    assert data.x.shape == (12, 1, 28, 28) and data.modality == "image"
    np.testing.assert_allclose(data.x[:, 0] * 255, images, atol=1e-4)
    np.testing.assert_array_equal(data.y, labels)


def test_cifar10_reads_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    raw = []
    for index in range(1, 6):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        raw.append(data)
        with open(folder / f"data_batch_{index}", "wb") as handle:
            pickle.dump({b"data": data, b"labels": list(rng.integers(0, 10, 4))}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, handle)
    data = datasets.load("cifar10", data_dir=tmp_path)
    assert data.x.shape == (20, 3, 32, 32) and data.class_names[3] == "c3"
    np.testing.assert_allclose(data.x[0] * 255, raw[0][0].reshape(3, 32, 32), atol=1e-4)


def test_openml_tables_read_csv_and_arff(tmp_path):
    folder = tmp_path / "openml"
    folder.mkdir()
    (folder / "jannis.csv").write_text("a,b,class\n1,2,x\n3,4,y\n5,6,x\n")
    jannis = datasets.load("jannis", data_dir=tmp_path)
    np.testing.assert_array_equal(jannis.y, [0, 1, 0])
    assert jannis.class_names == ("x", "y") and jannis.x.shape == (3, 2)
    (folder / "covertype.arff").write_text(
        "@RELATION cover\n@ATTRIBUTE f1 NUMERIC\n@ATTRIBUTE f2 NUMERIC\n@ATTRIBUTE class {1,2}\n@DATA\n0.5,1,1\n2,3,2\n"
    )
    cover = datasets.load("covertype", data_dir=tmp_path)
    np.testing.assert_allclose(cover.x, [[0.5, 1], [2, 3]])
    np.testing.assert_array_equal(cover.y, [0, 1])


def test_missing_files_say_which_and_how(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*download: true"):
        datasets.load("mnist", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"data_batch_1"):
        datasets.load("cifar10", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"epsilon.csv"):
        datasets.load("epsilon", data_dir=tmp_path)


def test_user_tables_are_checked(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("a,b,label\n1,,x\n3,4,y\n")
    with pytest.raises(DataError, match="label column 'target' missing"):
        datasets.load("mine", {"loader": "table", "path": str(path), "label": "target"})
    blank = datasets.load("mine", {"loader": "table", "path": str(path), "label": "label"})
    np.testing.assert_array_equal(blank.x, [[1, 4, 1], [3, 4, 0]])  # the blank: the median, marked in a column
    assert blank.notes == ("b: 1 blanks set to the median, marked in a column of their own",)
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        datasets.load("imagenet")


def test_embedded_sets():
    digits = datasets.load("digits")
    assert digits.x.shape == (1797, 1, 8, 8) and 0 <= digits.x.min() and digits.x.max() <= 1
    shapes = datasets.load("shapes")
    assert shapes.x.shape == (2000, 1, 16, 16) and np.bincount(shapes.y).tolist() == [200] * 10
    np.testing.assert_array_equal(shapes.x, datasets.make_shapes().x)  # generated reproducibly
    table = datasets.load("synth_tabular", {"n_rows": 500, "n_classes": 3})
    assert table.x.shape == (500, 16) and table.n_classes == 3
    assert datasets.load("breast_cancer").n_classes == 2


def test_prepare_is_stratified_and_standardises_on_train_only():
    data = datasets.make_tabular(n_rows=2000, n_classes=4)
    train, val, pool = datasets.prepare(data, 0.1, 0.2, seed=0)
    assert len(train.y) == 160 and len(val.y) == 40 and len(pool.y) == 1800  # the pool: rows outside the subsample
    np.testing.assert_allclose(np.bincount(train.y) / 160, np.bincount(data.y) / 2000, atol=0.02)
    np.testing.assert_allclose(train.x.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train.x.std(0), 1, atol=1e-4)
    assert np.abs(val.x.mean(0)).max() > 1e-3  # validation uses the train statistics, not its own
    again = datasets.prepare(data, 0.1, 0.2, seed=0)[0]
    np.testing.assert_array_equal(train.x, again.x)


def test_saved_sets_round_trip(tmp_path, images):
    datasets.save(tmp_path / "d.npz", images)
    back = datasets.load_saved(tmp_path / "d.npz")
    assert back.class_names == images.class_names and back.modality == "image"
    np.testing.assert_array_equal(back.x, images.x)


def test_an_image_folder_refuses_empty_classes_nested_images_and_links_out(tmp_path):
    from PIL import Image

    def folder(name: str) -> Path:
        root = tmp_path / name
        for cls in ("a", "b"):
            (root / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(root / cls / f"{i}.png")
        return root

    empty = folder("empty")
    (empty / "c").mkdir()
    with pytest.raises(datasets.DataError, match="class folder .*c holds no images"):
        datasets.read_image_folder(empty, "x", None, 3)
    nested = folder("nested")
    (nested / "a" / "more").mkdir()
    Image.new("RGB", (4, 4)).save(nested / "a" / "more" / "9.png")
    with pytest.raises(datasets.DataError, match="sub-folder of class folder"):
        datasets.read_image_folder(nested, "x", None, 3)
    linked = folder("linked")
    Image.new("RGB", (4, 4)).save(tmp_path / "secret.png")
    (linked / "a" / "9.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(datasets.DataError, match="links to .*secret.png, outside"):
        datasets.read_image_folder(linked, "x", None, 3)
    assert len(datasets.read_image_folder(folder("fine"), "x", None, 3).y) == 6
