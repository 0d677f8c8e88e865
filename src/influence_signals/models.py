"""The study's models behind one interface: a network whose last ``nn.Linear`` is the TracIn layer.

Every model is wrapped as ``AdaptedModel(adapter, net)``: the adapter is the one place where inputs are
fitted to a network (image normalisation with mean 0.5 / sd 0.5, grey -> RGB, resizing), and ``net``
keeps the original module names, so the paper's layer names (``layer3.2``, ``fc``, ``heads``,
``classifier.2``) select the layers to fine-tune.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ModelError(ValueError):
    """Unknown model, or weights that do not fit it."""


class InputAdapter(nn.Module):
    """Normalise images as the study does and fit them to the network's channels and resolution."""

    def __init__(self, image: bool, channels: int | None = None, resolution: int | None = None) -> None:
        super().__init__()
        self.image, self.channels, self.resolution = image, channels, resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.image:
            return x
        x = (x - 0.5) / 0.5
        if self.channels is not None and x.shape[1] != self.channels:
            x = x.repeat(1, self.channels // x.shape[1], 1, 1)
        if self.resolution is not None and x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return x


class AdaptedModel(nn.Module):
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
# ResNet-20 (He et al. 2016, the CIFAR variant: 3 stages x 3 basic blocks, 16/32/64 channels, ~0.27 M)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class ResNet20(nn.Module):
    def __init__(self, n_classes: int, in_channels: int = 3, blocks_per_stage: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            stages.append(nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                          for i in range(blocks_per_stage)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


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


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[..., nn.Module]
    head: str
    modality: str
    channels: int | None = None
    resolution: int | None = None
    weights: str | None = None  # torchvision weights enum, for "pretrained: torchvision"


def _mlp(d_in: int, n_classes: int, n_blocks: int = 3, d_block: int = 192, dropout: float = 0.1, **_: Any) -> nn.Module:
    from rtdl_revisiting_models import MLP

    return MLP(d_in=d_in, d_out=n_classes, n_blocks=n_blocks, d_block=d_block, dropout=dropout)


def _resnet_tabular(d_in: int, n_classes: int, n_blocks: int = 2, d_block: int = 192, dropout1: float = 0.15,
                    dropout2: float = 0.0, d_hidden_multiplier: float = 2.0, **_: Any) -> nn.Module:
    from rtdl_revisiting_models import ResNet

    return ResNet(d_in=d_in, d_out=n_classes, n_blocks=n_blocks, d_block=d_block, d_hidden=None,
                  d_hidden_multiplier=d_hidden_multiplier, dropout1=dropout1, dropout2=dropout2)


def _ft_transformer(d_in: int, n_classes: int, **kwargs: Any) -> nn.Module:
    return FTTransformerClassifier(d_in, n_classes, **kwargs)


def _resnet20(n_classes: int, **_: Any) -> nn.Module:
    return ResNet20(n_classes)


def _convnext_tiny(n_classes: int, **_: Any) -> nn.Module:
    from torchvision.models import convnext_tiny

    model = convnext_tiny(weights=None)
    model.classifier[2] = nn.Linear(model.classifier[2].in_features, n_classes)
    return model


def _vit_b_16(n_classes: int, image_size: int = 224, **_: Any) -> nn.Module:
    from torchvision.models import vit_b_16

    model = vit_b_16(weights=None, image_size=image_size)
    model.heads.head = nn.Linear(model.heads.head.in_features, n_classes)
    return model


MODELS: Mapping[str, ModelSpec] = {
    "mlp": ModelSpec(_mlp, "output", "tabular"),
    "resnet": ModelSpec(_resnet_tabular, "output.linear", "tabular"),
    "ft_transformer": ModelSpec(_ft_transformer, "net.backbone.output.linear", "tabular"),
    "resnet20": ModelSpec(_resnet20, "fc", "image", channels=3),
    "convnext_tiny": ModelSpec(_convnext_tiny, "classifier.2", "image", 3, 224, "ConvNeXt_Tiny_Weights.IMAGENET1K_V1"),
    "vit_b_16": ModelSpec(_vit_b_16, "heads.head", "image", 3, 224, "ViT_B_16_Weights.IMAGENET1K_V1"),
}


def spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


def build(name: str, input_shape: Sequence[int], n_classes: int, options: Mapping[str, Any] | None = None) -> AdaptedModel:
    """Build model ``name`` for inputs of ``input_shape`` (one row, without the batch axis)."""
    model_spec = spec(name)
    options = dict(options or {})
    image = len(input_shape) == 3
    if image != (model_spec.modality == "image"):
        kind = "image" if image else "tabular"
        raise ModelError(f"model {name} is for {model_spec.modality} data but the data set is {kind}")
    resolution = options.pop("resolution", model_spec.resolution)
    if image:
        if name == "vit_b_16":
            options.setdefault("image_size", resolution or input_shape[-1])
        net = model_spec.build(n_classes=n_classes, **options)
        adapter = InputAdapter(True, model_spec.channels, resolution)
    else:
        net = model_spec.build(d_in=int(input_shape[0]), n_classes=n_classes, **options)
        adapter = InputAdapter(False)
    return AdaptedModel(adapter, net, model_spec.head)


def set_trainable(model: AdaptedModel, prefixes: Sequence[str] | None) -> list[str]:
    """Freeze all parameters but those under ``prefixes`` (names inside ``net``); None trains everything.

    The head is always trained. Returns the names of the trainable parameters.
    """
    chosen = None if prefixes is None else [*prefixes, model.head_name]
    names = []
    for name, parameter in model.net.named_parameters():
        parameter.requires_grad_(chosen is None or any(name == p or name.startswith(p + ".") for p in chosen))
        if parameter.requires_grad:
            names.append(name)
    if chosen is not None:
        unknown = [p for p in prefixes or [] if not any(n == p or n.startswith(p + ".") for n, _ in model.net.named_parameters())]
        if unknown:
            raise ModelError(f"trainable layers {unknown} do not exist in the model")
    return names


def load_backbone(model: AdaptedModel, state: Mapping[str, torch.Tensor], origin: str) -> None:
    """Load pre-trained weights into ``net``, all but the head (whose class count differs)."""
    head_keys = {f"{model.head_name}.weight", f"{model.head_name}.bias"}
    own = model.net.state_dict()
    usable = {k: v for k, v in state.items() if k not in head_keys}
    mismatched = [k for k, v in usable.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in head_keys and k not in usable]
    if mismatched or missing:
        raise ModelError(f"pre-trained weights {origin} do not fit: missing {missing[:5]}, mismatched {mismatched[:5]}")
    model.net.load_state_dict({**own, **usable})


def torchvision_weights(name: str, download: bool) -> Mapping[str, torch.Tensor]:
    """ImageNet weights from the torch hub cache; fetched only when ``download`` allows it."""
    import torchvision.models as tvm

    enum_name, member = (spec(name).weights or "").split(".")
    weights = getattr(getattr(tvm, enum_name), member)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cached.exists() and not download:
        raise ModelError(f"{name}: pre-trained weights not in {cached}; set `download: true` or place the file there")
    return weights.get_state_dict(progress=False)
