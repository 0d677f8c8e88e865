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


class ResNet20(nn.Module):
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

    def trunk(self, x: torch.Tensor, frozen_blocks: int) -> torch.Tensor:
        """The input to block ``frozen_blocks`` (0-8 over layer1..layer3): what a frozen prefix computes."""
        x = F.relu(self.bn1(self.conv1(x)))
        for block in self.blocks()[:frozen_blocks]:
            x = block(x)
        return x

    def top(self, x: torch.Tensor, frozen_blocks: int) -> torch.Tensor:
        for block in self.blocks()[frozen_blocks:]:
            x = block(x)
        return getattr(self, self.head_name)(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def blocks(self) -> list[nn.Module]:
        return [*self.layer1, *self.layer2, *self.layer3]

    def block_names(self) -> list[str]:
        return [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.trunk(x, 0), 0)


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
