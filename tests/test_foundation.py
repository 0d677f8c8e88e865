"""Published backbones load exactly, inputs get their weights' normalisation, a frozen trunk is computed once."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from influence_signals import config as cfg
from influence_signals import datasets, models, training
from influence_signals.models import IMAGENET, ModelError

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights" / "resnet20-cifar10.th"
CIFAR_TEST = SHARED / "data" / "cifar10-jpeg" / "test"
needs_weights = pytest.mark.skipif(not WEIGHTS.exists(), reason="../shared/weights/resnet20-cifar10.th is absent (never committed)")


@needs_weights
def test_the_shared_resnet20_weights_match_every_key():
    net = models.build("resnet20", (3, 32, 32), 10)
    state = models.weights_file(WEIGHTS, net)
    assert len(state) == 97
    models.load_backbone(net, state, str(WEIGHTS))  # raises on any missing, extra or mismatched key
    own = {k for k in net.net.state_dict() if not k.endswith("num_batches_tracked")}
    assert own == set(state)


@needs_weights
@pytest.mark.skipif(not CIFAR_TEST.exists(), reason="../shared/data/cifar10-jpeg is absent")
def test_the_shared_resnet20_is_a_real_cifar10_network():
    """With its own head, the option-A network scores ~81 % on the JPEG test subset (README of shared/)."""
    net = models.build("resnet20", (3, 32, 32), 10)
    net.net.load_state_dict({**net.net.state_dict(), **models.weights_file(WEIGHTS, net)})
    test = datasets.load("cifar10_jpeg", {"loader": "image_folder", "path": str(CIFAR_TEST)})
    net.eval()
    with torch.no_grad():
        predicted = net(torch.from_numpy(test.x)).argmax(1).numpy()
    assert (predicted == test.y).mean() > 0.75


def test_exact_key_matching_refuses_missing_and_extra_keys():
    source = models.build("resnet20", (3, 32, 32), 10).net.state_dict()
    target = models.build("resnet20", (1, 28, 28), 4)
    models.load_backbone(target, source, "ok")
    missing = {k: v for k, v in source.items() if k != "layer2.1.conv1.weight"}
    with pytest.raises(ModelError, match="missing.*layer2.1.conv1.weight"):
        models.load_backbone(target, missing, "missing")
    with pytest.raises(ModelError, match="unexpected.*layer4.0.conv1.weight"):
        models.load_backbone(target, {**source, "layer4.0.conv1.weight": torch.zeros(1)}, "extra")


def test_weights_files_strip_dataparallel_prefixes(tmp_path):
    net = models.build("resnet20", (3, 32, 32), 10)
    path = tmp_path / "w.th"
    torch.save({"best_prec1": 1.0, "state_dict": {f"module.{k}": v for k, v in net.net.state_dict().items()}}, path)
    assert set(models.weights_file(path, net)) == set(net.net.state_dict())
    path.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="corrupt"):
        models.weights_file(path, net)


@pytest.mark.parametrize("name,expected", [("resnet20", IMAGENET), ("resnet20_hub", models.CIFAR10_CHENYAOFO),
                                           ("convnext_tiny", IMAGENET), ("vit_b_16", IMAGENET)])
def test_each_backbone_gets_the_normalisation_its_weights_were_trained_with(name, expected):
    net = models.build(name, (1, 28, 28), 10, {"resolution": 32})
    grey = torch.full((1, 1, 28, 28), 0.5)
    adapted = net.adapter(grey)
    assert adapted.shape == (1, 3, 32, 32)  # grey repeated to RGB, resized
    mean, std = expected
    np.testing.assert_allclose(adapted[0, :, 0, 0].numpy(), (0.5 - np.array(mean)) / np.array(std), rtol=1e-5)


def test_tabular_inputs_are_not_normalised():
    net = models.build("mlp", (4,), 3)
    x = torch.randn(2, 4)
    torch.testing.assert_close(net.adapter(x), x)


@pytest.mark.parametrize("trainable,frozen", [(["layer3.2"], 8), (["layer3"], 6), (["layer2.0", "layer3"], 3), (None, 0)])
def test_a_frozen_trunk_is_cached_exactly(trainable, frozen):
    """Frozen layers run in eval mode, so their output is the same every epoch and checkpoint: compute it once."""
    torch.manual_seed(0)
    net = models.build("resnet20", (1, 28, 28), 10)
    models.set_trainable(net, trainable)
    assert training.frozen_blocks(net) == frozen
    x = torch.rand(6, 1, 28, 28)
    inputs, forward = training.forward_on(net, x, torch.device("cpu"))
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(forward(inputs), net(x), rtol=1e-5, atol=1e-5)
    training.train_mode(net)
    assert net.net.bn1.training == (frozen == 0) and net.net.layer1[0].bn1.training == (frozen == 0)
    assert net.net.layer3[2].bn1.training


def test_the_far_ca_source_may_not_be_a_pretraining_source():
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    config["pretrain"]["resnet20"]["source"] = config["glitch_options"]["far_ca"]["sources"]["mnist5k"]
    with pytest.raises(cfg.ConfigError, match="pre-trained on 'shapes'"):
        cfg.validate(config)


def test_default_far_ca_sources_differ_from_every_pretraining_source():
    config = cfg.validate(yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text()))
    pretraining = {spec["source"] for spec in config["pretrain"].values()}
    assert not pretraining & set(config["glitch_options"]["far_ca"]["sources"].values())
