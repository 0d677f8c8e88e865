"""Bad input and faults, tried as a user would: no silent wrong result, no code execution, early clear errors."""
from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from influence_signals import checkpoints, config as cfg, datasets, models, training
from influence_signals.artifacts import ArtifactError, load_npz, save_npz
from influence_signals.datasets import DataError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "config.yaml").read_text())


def with_change(path: str, value: object) -> dict:
    """The default config with the dotted key ``path`` set to ``value`` (created if absent)."""
    config = copy.deepcopy(DEFAULT)
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


# 1. misspelled keys and bad per-model settings are refused, naming the key, before any job
@pytest.mark.parametrize("path,value,named", [
    ("trian", {"defaults": {}}, "trian"),
    ("train.models.mlp.epohcs", 3, "epohcs"),
    ("signals.k_neighbors", 3, "k_neighbors"),
    ("prepare.fracton", 0.5, "fracton"),
    ("train.models.mlp.epochs", 0, "train.models.mlp.epochs"),
    ("train.models.mlp.epochs", "three", "train.models.mlp.epochs"),
    ("train.models.mlp.lr", -1, "train.models.mlp.lr"),
    ("train.models.mlp.options", {"n_blokcs": 2}, "n_blokcs"),
    ("train.models.gpt", {"epochs": 1}, "gpt"),
    ("glitch_options.outlier.severity", 9, "severity"),
    ("glitch_options.far_ca.labelz", "single", "labelz"),
    ("datasets.segment", {"fraction": 0.5}, "fraction"),
    ("glitch_options.mixture.components", {"unifrom": 0.5, "outlier": 0.5}, "unifrom"),
    ("pretrain.resnet2O", {"source": "digits"}, "resnet2O"),
    ("pretrain.resnet20.options", {"resolutoin": 28}, "resolutoin"),
])
def test_misspelled_keys_and_bad_settings_are_refused(path, value, named):
    with pytest.raises(cfg.ConfigError, match=named.replace(".", r"\.")):
        cfg.validate(with_change(path, value))


# 5. a data set cannot be its own far-CA source
def test_far_ca_from_the_data_set_itself_is_refused():
    with pytest.raises(cfg.ConfigError, match="its own far_ca source"):
        cfg.validate(with_change("glitch_options.far_ca.sources.mnist5k", "mnist5k"))


def test_far_ca_from_a_data_set_of_another_kind_is_refused_when_planned():
    with pytest.raises(cfg.ConfigError, match="'segment' is tabular data but 'mnist5k' is image"):
        cfg.validate(with_change("glitch_options.far_ca.sources.mnist5k", "segment"))


# 7. names become paths: no '/', no '..', no leading dot
@pytest.mark.parametrize("section,name", [("datasets", "../../../escape_x"), ("datasets", "a/b"), ("figures", "../fig"),
                                          ("tables", ".hidden")])
def test_names_that_would_escape_the_work_folder_are_refused(section, name):
    config = copy.deepcopy(DEFAULT)
    entry = {"loader": "segment"} if section == "datasets" else next(iter(config[section].values()))
    config[section][name] = entry
    with pytest.raises(cfg.ConfigError, match="does not match"):
        cfg.validate(config)


# 6. a crafted CIFAR-10 batch cannot run code
class Exploit:
    def __reduce__(self):
        return (Path("/tmp/influence_signals_pwned").write_text, ("owned",))


def test_a_malicious_cifar_batch_fails_closed(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = Path("/tmp/influence_signals_pwned")
    marker.unlink(missing_ok=True)
    with open(folder / "data_batch_1", "wb") as handle:
        pickle.dump({b"data": Exploit(), b"labels": [0]}, handle)
    with pytest.raises(DataError, match="refusing to unpickle"):
        datasets.load("cifar10", data_dir=tmp_path)
    assert not marker.exists()


# 8. bad data is named at prepare, with the file, column or class, and the fix
def test_bad_tables_are_named(tmp_path):
    def table(text: str) -> datasets.DataSet:
        path = tmp_path / "t.csv"
        path.write_text(text)
        return datasets.load("mine", {"loader": "table", "path": str(path), "label": "y"})

    with pytest.raises(DataError, match="is empty"):
        table("")
    with pytest.raises(DataError, match="header but no rows"):
        table("a,b,y\n")
    with pytest.raises(DataError, match="every row has label 'x'"):
        datasets.prepare(table("a,y\n1,x\n2,x\n3,x\n"), 1.0, 0.2, 0)
    with pytest.raises(DataError, match="'lonely' \\(1 row\\)"):
        datasets.prepare(table("a,y\n" + "".join(f"{i},common\n" for i in range(9)) + "9,lonely\n"), 1.0, 0.2, 0)
    bad_arff = tmp_path / "t.arff"
    bad_arff.write_text("@RELATION r\n@ATTRIBUTE a WEIRD\n@DATA\n1\n")
    with pytest.raises(DataError, match="t.arff"):
        datasets.load("mine", {"loader": "table", "path": str(bad_arff), "label": "a"})


def test_a_truncated_artifact_is_named(tmp_path):
    save_npz(tmp_path / "a.npz", x=np.zeros(1000))
    data = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "a.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="a.npz"):
        load_npz(tmp_path / "a.npz")


def test_rows_with_infinite_values_are_named_by_their_ids(tmp_path):
    path = tmp_path / "t.csv"  # blanks are imputed (and marked); an infinite value is an error in the data
    path.write_text("id,a,y\n" + "".join(f"r{i},{'inf' if i in (3, 11) else i},{'xy'[i % 2]}\n" for i in range(20)))
    with pytest.raises(DataError, match=r"2 rows hold NaN or infinite .*\(rows r3, r11\)"):
        datasets.load("mine", {"loader": "table", "path": str(path), "label": "y", "id": "id"})


def test_the_id_column_is_never_a_feature(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,a,b,y\n" + "".join(f"r{i},{i % 3},{i % 5},{'xy'[i % 2]}\n" for i in range(20)))
    data = datasets.load("mine", {"loader": "table", "path": str(path), "label": "y", "id": "id", "drop": ["b"]})
    assert data.x.shape == (20, 1) and list(data.ids[:2]) == ["r0", "r1"]


# 2, 3, 10. checkpoints: gaps, racing writers, corruption
@pytest.fixture()
def trained(tmp_path):
    data = datasets.make_tabular(n_rows=200, n_features=4, n_classes=2)
    train, val, _ = datasets.prepare(data, 1.0, 0.2, 0)
    torch.manual_seed(0)
    model = models.build("mlp", (4,), 2, {"n_blocks": 1, "d_block": 8})
    folder = tmp_path / "ckpt"
    training.train(model, train, val, training.TrainSettings(epochs=3, lr=0.1, batch_size=32), folder)
    return model, train, val, folder


def test_a_deleted_middle_checkpoint_is_refused(trained):
    *_, folder = trained
    checkpoints.epoch_checkpoints(folder)[1].unlink()
    with pytest.raises(ArtifactError, match="missing"):
        checkpoints.verified_checkpoints(folder)


def test_a_corrupt_checkpoint_is_refused_by_its_manifest(trained):
    *_, folder = trained
    path = checkpoints.epoch_checkpoints(folder)[2]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ArtifactError, match="differs from the manifest"):
        checkpoints.verified_checkpoints(folder)
    assert checkpoints.manifest_problem(folder) is None  # same size: only the hash tells, when the stage runs
    path.write_bytes(b"short")
    assert "differs" in checkpoints.manifest_problem(folder)  # a changed size is seen at planning time


def test_an_unfinished_run_has_no_manifest_and_is_refused(trained):
    *_, folder = trained
    (folder / checkpoints.MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="did not finish"):
        checkpoints.verified_checkpoints(folder)


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(trained):
    model, train, val, folder = trained
    with checkpoints.exclusive(folder):
        with pytest.raises(ArtifactError, match="another process is training"):
            training.train(model, train, val, training.TrainSettings(epochs=4, lr=0.1, batch_size=32), folder)


def fresh_model() -> torch.nn.Module:
    """The ``trained`` fixture's model as it was before training: what a rerun of its job builds."""
    torch.manual_seed(0)
    return models.build("mlp", (4,), 2, {"n_blocks": 1, "d_block": 8})


def test_resuming_keeps_only_a_gap_free_prefix_of_epochs(trained, caplog):
    _, train, val, folder = trained
    partial = folder.with_name(folder.name + ".partial")
    folder.rename(partial)
    paths = checkpoints.epoch_checkpoints(partial)
    paths[1].unlink()  # epochs 1 and 3 left: only epoch 1 is a prefix
    kept = paths[0].read_bytes()
    with caplog.at_level("INFO", logger="influence_signals"):
        history = training.train(fresh_model(), train, val, training.TrainSettings(epochs=3, lr=0.1, batch_size=32), folder)
    assert "resuming after epoch 1" in caplog.text and "from scratch" not in caplog.text
    assert list(history["epoch"]) == [1, 2, 3] and not partial.exists()
    assert len(checkpoints.verified_checkpoints(folder)) == 3 and checkpoints.epoch_checkpoints(folder)[0].read_bytes() == kept


@pytest.mark.parametrize("change", ["lr", "data", "architecture"])
def test_a_run_started_with_other_settings_data_or_weights_starts_over(trained, caplog, change):
    """An interrupted run is never continued under a changed setting: its epochs would mix two runs."""
    _, train, val, folder = trained
    partial = folder.with_name(folder.name + ".partial")
    folder.rename(partial)
    checkpoints.epoch_checkpoints(partial)[2].unlink()  # killed during epoch 3
    settings = training.TrainSettings(epochs=3, lr=0.05 if change == "lr" else 0.1, batch_size=32)
    if change == "data":
        train = datasets.DataSet(train.name, train.x + 1.0, train.y, train.class_names, train.modality, train.ids)
    model = fresh_model()
    if change == "architecture":
        torch.manual_seed(0)
        model = models.build("mlp", (4,), 2, {"n_blocks": 1, "d_block": 12})
    with caplog.at_level("INFO", logger="influence_signals"):
        history = training.train(model, train, val, settings, folder)
    expected = {"lr": "settings", "data": "data", "architecture": "weights"}[change]
    assert f"its {expected} changed since it was started; training from scratch" in caplog.text
    assert "resuming after" not in caplog.text and list(history["epoch"]) == [1, 2, 3]
    torch.manual_seed(0)
    clean = fresh_model() if change != "architecture" else model
    other = folder.with_name("clean")
    if change != "architecture":
        training.train(clean, train, val, settings, other)
        for ours, theirs in zip(checkpoints.epoch_checkpoints(folder), checkpoints.epoch_checkpoints(other)):
            a, b = (torch.load(p, weights_only=True)["model_state_dict"] for p in (ours, theirs))
            assert all(torch.equal(a[k], b[k]) for k in a)  # every epoch as a clean run's: nothing of the old run


def test_a_config_key_given_twice_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("prepare:\n  fraction: 0.5\n  fraction: 0.6\n")
    with pytest.raises(cfg.ConfigError, match="line 3: the key 'fraction' is given twice"):
        cfg.check_files([str(path)])
