"""Models build and train; checkpoints hold what TracIn needs; runs resume bit-identically."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from influence_signals import datasets, models, training
from influence_signals.models import ModelError


@pytest.fixture(scope="module")
def tiny_images():
    data = datasets.load_digits_images()
    return datasets.prepare(data, 0.15, 0.2, 0)[:2]


@pytest.fixture(scope="module")
def tiny_table():
    return datasets.prepare(datasets.make_tabular(n_rows=300, n_features=8, n_classes=3), 1.0, 0.2, 0)[:2]


@pytest.mark.parametrize("name,options", [
    ("mlp", {"n_blocks": 1, "d_block": 16}),
    ("resnet", {"n_blocks": 1, "d_block": 16}),
    ("ft_transformer", {"n_blocks": 1}),
])
def test_tabular_models_train_with_checkpoints(tmp_path, tiny_table, name, options):
    train, val = tiny_table
    torch.manual_seed(0)
    model = models.build(name, train.x.shape[1:], 3, options)
    history = training.train(model, train, val, training.TrainSettings(epochs=2, lr=0.05, batch_size=32), tmp_path)
    assert list(history["epoch"]) == [1, 2] and np.isfinite(history["train_loss"]).all()
    assert {"train_accuracy", "val_loss", "val_accuracy"} <= set(history.columns)
    payload = torch.load(training.epoch_checkpoints(tmp_path)[-1], weights_only=True)
    assert set(payload) >= {"model_state_dict", "learning_rate", "epoch", "step"}
    assert payload["learning_rate"] == 0.05 and payload["epoch"] == 2
    assert f"net.{model.head_name}.weight" in payload["model_state_dict"]


def test_resnet20_is_the_cifar_network(tiny_images):
    model = models.build("resnet20", (3, 32, 32), 10)
    assert 0.26e6 < sum(p.numel() for p in model.parameters()) < 0.28e6
    out = model(torch.rand(2, 1, 8, 8))  # grey 8x8 digits adapted to 3 channels
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name,head", [("convnext_tiny", "classifier.2"), ("vit_b_16", "heads.head")])
def test_foundation_models_build_and_adapt_inputs(name, head):
    model = models.build(name, (1, 28, 28), 10, {"resolution": 32})
    assert model.head_name == head and model.head.out_features == 10
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    trained = models.set_trainable(model, [])
    assert trained == [f"{head}.weight", f"{head}.bias"]


@pytest.mark.parametrize("name,trainable", [("convnext_tiny", ["classifier.2"]), ("vit_b_16", ["heads"])])
def test_foundation_models_fine_tune_their_head(tmp_path, tiny_images, name, trainable):
    train, val = (data.subset(np.arange(16)) for data in tiny_images)
    torch.manual_seed(0)
    model = models.build(name, train.x.shape[1:], 10, {"resolution": 32})
    frozen = {k: v.clone() for k, v in model.net.state_dict().items() if not k.startswith(trainable[0])}
    history = training.train(model, train, val, training.TrainSettings(epochs=2, lr=0.05, batch_size=8,
                                                                      trainable=trainable), tmp_path)
    assert list(history["epoch"]) == [1, 2] and np.isfinite(history["train_loss"]).all()
    for key, value in frozen.items():
        if value.dtype.is_floating_point and "running" not in key:
            torch.testing.assert_close(model.net.state_dict()[key], value)
    assert len(training.epoch_checkpoints(tmp_path)) == 2


def test_fine_tuning_trains_only_the_chosen_layers(tmp_path, tiny_images):
    train, val = tiny_images
    torch.manual_seed(0)
    model = models.build("resnet20", train.x.shape[1:], 10)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    training.train(model, train, val, training.TrainSettings(epochs=1, lr=0.1, batch_size=64, trainable=["layer3.2"]), tmp_path)
    after = model.net.state_dict()
    changed = {k.split(".")[0] + "." + k.split(".")[1] if k.startswith("layer") else k.split(".")[0]
               for k, v in after.items() if v.dtype.is_floating_point and "running" not in k and not torch.equal(v, before[k])}
    assert changed == {"layer3.2", "linear"}
    with pytest.raises(ModelError, match="layer9"):
        models.set_trainable(model, ["layer9"])


def test_resumed_run_equals_uninterrupted(tmp_path, tiny_table):
    train, val = tiny_table
    settings = training.TrainSettings(epochs=3, lr=0.05, batch_size=32, seed=4)

    def fresh():
        torch.manual_seed(1)
        return models.build("mlp", train.x.shape[1:], 3, {"n_blocks": 1, "d_block": 16, "dropout": 0.2})

    whole = fresh()
    training.train(whole, train, val, settings, tmp_path / "whole", tmp_path / "whole_factors")
    part = fresh()
    training.train(part, train, val, training.TrainSettings(epochs=1, lr=0.05, batch_size=32, seed=4), tmp_path / "part")
    resumed = fresh()
    history = training.train(resumed, train, val, settings, tmp_path / "part", tmp_path / "resumed_factors")
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    assert list(history["epoch"]) == [1, 2, 3]
    # the resumed run records epoch 1 from its checkpoint, epochs 2-3 as they end: the same factors
    for name in ("train_logits", "train_features", "val_logits", "val_features"):
        assert np.array_equal(np.load(tmp_path / "whole_factors" / f"{name}.npy"),
                              np.load(tmp_path / "resumed_factors" / f"{name}.npy"))
    assert (json.loads((tmp_path / "whole_factors" / "meta.json").read_text())
            == json.loads((tmp_path / "resumed_factors" / "meta.json").read_text()))


def test_training_steps_are_torch_optims_plain_sgd_exactly(tiny_table):
    """Our step is p - lr * grad; torch.optim.SGD (momentum 0) gives bit-identical weights."""
    train, _ = tiny_table
    x, y = torch.from_numpy(train.x[:64]), torch.from_numpy(train.y[:64])
    nets = []
    for _ in range(2):
        torch.manual_seed(3)
        nets.append(models.build("mlp", train.x.shape[1:], train.n_classes, {"n_blocks": 2, "d_block": 16, "dropout": 0.0}))
    ours, theirs = nets
    optimizer = torch.optim.SGD(theirs.parameters(), lr=0.07, momentum=0.0)
    for step in range(5):
        rows = slice(8 * step, 8 * step + 16)
        for net in nets:
            net.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
        training.sgd_step(list(ours.parameters()), 0.07)
        optimizer.step()
    for mine, reference in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(mine, reference)


def test_wrong_modality_and_unknown_model():
    with pytest.raises(ModelError, match="tabular"):
        models.build("resnet20", (8,), 3)
    with pytest.raises(ModelError, match="unknown model"):
        models.build("gpt", (8,), 3)


def test_backbone_weights_load_all_but_the_head():
    source = models.build("resnet20", (3, 16, 16), 10)
    target = models.build("resnet20", (1, 8, 8), 4)
    models.load_backbone(target, source.net.state_dict(), "test")
    torch.testing.assert_close(target.net.conv1.weight, source.net.conv1.weight)
    assert target.head.out_features == 4
    with pytest.raises(ModelError, match="do not fit"):
        models.load_backbone(target, {"conv1.weight": torch.zeros(1)}, "broken")
