"""Plain-SGD training with a checkpoint per epoch, as TracIn assumes (no momentum, no weight decay).

Checkpoints are dicts ``{"model_state_dict", "learning_rate", "epoch", "step"}``: the learning rate in
force is what TracIn weights each checkpoint by, and Captum's loaders read the same keys. Shuffling and
dropout are seeded per epoch, so a run resumed from its last checkpoint ends bit-identical to one that
never stopped. Runs write into a locked ``.partial`` folder renamed when finished (see ``checkpoints``).
A run also records every checkpoint's logits and head inputs (the TracIn factors, ``factors``) as each
epoch ends, from its frozen-trunk cache: no second process re-reads the data, the trunk or the checkpoints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .artifacts import ArtifactError, atomic_path
from .checkpoints import (MANIFEST, checkpoint_name, checkpoint_paths, epoch_checkpoints, epoch_of, exclusive,
                          gap_free_prefix, verified_checkpoints, write_manifest)
from .datasets import DataSet
from .factors import ARRAYS, FactorMeta
from .models import set_trainable
from .networks import AdaptedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 128
    trainable: Sequence[str] | None = None
    seed: int = 0
    device: str = "cpu"
    checkpoint_every_steps: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive: {self}")


def place(model: torch.nn.Module, device: torch.device) -> None:
    """Move ``model`` to ``device``, its convolution weights channels-last: oneDNN's fast layout, in which the
    default run's ResNet-20 fine-tuning takes 12 % less time (convolutions then return channels-last too)."""
    model.to(device)
    model.to(memory_format=torch.channels_last)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
    return torch.device(name)


def save_checkpoint(path: Path, model: torch.nn.Module, learning_rate: float, epoch: int, step: int,
                    metrics: dict[str, float] | None = None) -> None:
    """Save atomically; ``metrics`` (the epoch's history row) lets a resumed run rebuild its full history."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"model_state_dict": state, "learning_rate": float(learning_rate), "epoch": epoch, "step": step,
               "metrics": dict(metrics or {})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(model: torch.nn.Module, path: str | Path) -> float:
    """Load a checkpoint into ``model`` and return its learning rate (Captum's loader contract)."""
    return float(read_checkpoint(model, path)["learning_rate"])


def read_checkpoint(model: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint into ``model`` and return the rest of it (learning rate, epoch, step, metrics)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["model_state_dict"])
        float(payload["learning_rate"]), int(payload["epoch"])
        return {k: v for k, v in payload.items() if k != "model_state_dict"}
    except FileNotFoundError as err:
        raise ArtifactError(f"missing checkpoint {path}") from err
    except (RuntimeError, KeyError, EOFError, TypeError, ValueError, OSError, pickle.UnpicklingError) as err:
        raise ArtifactError(f"corrupt or mismatched checkpoint {path}: {err}") from err


@torch.no_grad()
def sgd_step(parameters: Sequence[torch.Tensor], lr: float) -> None:
    """Plain SGD, p <- p - lr * grad: ``torch.optim.SGD`` with momentum and weight decay 0, whose constructor
    alone costs every train job a second of imports (``torch._dynamo``)."""
    for parameter in parameters:
        if parameter.grad is not None:
            parameter.add_(parameter.grad, alpha=-lr)


def batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


def logit_scores(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``logits`` against the labels ``target``."""
    if len(target) == 0:
        return 0.0, 0.0
    return float(F.cross_entropy(logits.float(), target)), float((logits.argmax(1) == target).float().mean())


@torch.no_grad()
def evaluate(forward: Callable[..., torch.Tensor], model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             device: torch.device, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``forward`` on rows ``x`` in eval mode."""
    model.eval()
    logits = [forward(x[rows].to(device)).cpu() for rows in batches(len(y), batch_size, None)]
    return logit_scores(torch.cat(logits) if logits else torch.zeros(0, 1), y)


def frozen_blocks(model: AdaptedModel) -> int:
    """How many leading blocks of a block-structured network (ResNet-20) are frozen, stem included; else 0."""
    net = model.net
    if not hasattr(net, "trunk"):
        return 0
    if any(p.requires_grad for name, p in net.named_parameters() if name.split(".")[0] in ("conv1", "bn1")):
        return 0
    count = 0
    for block in net.blocks():  # type: ignore[operator]
        if any(p.requires_grad for p in block.parameters()):
            break
        count += 1
    return count


def frozen_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that have parameters, none of them trainable."""
    return [m for m in model.modules()
            if (own := list(m.parameters(recurse=False))) and not any(p.requires_grad for p in own)]


def frozen_state(model: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers of the frozen modules: what a cached trunk output depends on."""
    return [t for m in frozen_modules(model) for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))]


def train_mode(model: torch.nn.Module) -> None:
    """Train mode for what is trained; frozen modules stay in eval mode (their BatchNorm statistics too)."""
    model.train()
    for module in frozen_modules(model):
        module.eval()


RECALIBRATION_ROWS = 1024
"""Training rows the BatchNorm statistics are re-estimated on after each epoch (all rows where fewer): at
ResNet-20's 7 x 7 last stage that is 50,000 values per channel, a sampling error far below what a training
batch of 128 sees, for 43 % of a full pass over the default run's 2,400 rows."""


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, forward: Callable[..., torch.Tensor], x: torch.Tensor,
                          device: torch.device, generator: torch.Generator, batch_size: int = 512) -> None:
    """Re-estimate the trained BatchNorm layers' running statistics from the current weights, as averages
    over ``RECALIBRATION_ROWS`` training rows drawn with ``generator``.

    Under plain SGD the running averages lag behind the weights; evaluated (and checkpointed for TracIn)
    with stale statistics, a fine-tuned network's validation accuracy swung by up to 0.5 between epochs.
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
              and any(p.requires_grad for p in m.parameters())]
    if not layers:
        return
    train_mode(model)
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches below
    rows = torch.randperm(len(x), generator=generator)[:RECALIBRATION_ROWS]
    for part in rows.split(batch_size):
        forward(x[part].to(device))
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


@torch.no_grad()
def frozen_inputs(model: AdaptedModel, x: torch.Tensor, blocks: int, device: torch.device,
                  batch_size: int = 512) -> torch.Tensor:
    """The frozen trunk's output for every row, computed once: exact, since frozen layers run in eval mode."""
    was_training = model.training
    model.eval()
    parts = [model.net.trunk(model.adapter(x[start : start + batch_size].to(device)), blocks)  # type: ignore[operator]
             for start in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(parts)


def forward_on(model: AdaptedModel, x: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, Callable[..., torch.Tensor]]:
    """The rows to feed and the function to feed them to: the trainable top on cached trunk outputs where possible."""
    blocks = frozen_blocks(model)
    if blocks == 0:
        return x, model
    return frozen_inputs(model, x, blocks, device), lambda inputs: model.net.top(inputs, blocks)  # type: ignore[operator]


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


RUN_KEY = "run.json"


def run_key(model: AdaptedModel, train_set: DataSet, val_set: DataSet, settings: TrainSettings) -> dict[str, str]:
    """What a run's checkpoints depend on besides the number of epochs: its settings, the starting weights
    (architecture, seed, pre-trained weights), the training and validation data, and the training code."""
    from .fingerprint import stage_fingerprint

    def digest(*arrays: Any) -> str:
        hashed = hashlib.sha256()
        for array in arrays:
            hashed.update(np.ascontiguousarray(array).tobytes())
        return hashed.hexdigest()

    state = model.state_dict()
    kept = {k: v for k, v in dataclasses.asdict(settings).items() if k != "epochs"}
    return {"settings": json.dumps(kept, sort_keys=True, default=str),
            "weights": digest(*(state[k].cpu().numpy() for k in sorted(state)), np.array(sorted(state), dtype=str)),
            "data": digest(train_set.x, train_set.y, val_set.x, val_set.y), "code": stage_fingerprint("train")}


def _take_over(folder: Path, partial: Path, key: dict[str, str]) -> None:
    """Resume from a finished run (more epochs asked) or a killed one: keep its gap-free prefix of epochs.

    Only a run started with the same ``run_key`` is resumed; one started with other settings, data, weights
    or code is removed and training starts over (logged), never continued with mixed epochs.
    """
    if folder.exists() and not partial.exists():
        os.replace(folder, partial)
    if partial.exists():
        try:
            previous = json.loads((partial / RUN_KEY).read_text())
        except (OSError, ValueError):
            previous = None
        if previous != key:
            changed = sorted(k for k in key if not isinstance(previous, dict) or previous.get(k) != key[k])
            log.info("not resuming %s: its %s changed since it was started; training from scratch",
                     partial, ", ".join(changed))
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    with atomic_path(partial / RUN_KEY) as tmp:
        tmp.write_text(json.dumps(key, indent=1))
    (partial / MANIFEST).unlink(missing_ok=True)
    for stray in partial.glob(".*"):  # half-written temporary files of a killed run
        stray.unlink(missing_ok=True)
    prefix = gap_free_prefix(partial)
    for path in checkpoint_paths(partial):
        if epoch_of(path) > prefix:
            path.unlink()


def train(model: AdaptedModel, train_set: DataSet, val_set: DataSet, settings: TrainSettings,
          checkpoint_dir: str | Path, factors_dir: str | Path | None = None) -> pd.DataFrame:
    """Train ``model`` with SGD into ``checkpoint_dir``; resume from the last complete epoch of an earlier run.

    With ``factors_dir``, also record every checkpoint's factors there (``FactorRecorder``) as its epoch
    ends, reusing the frozen trunk's output computed for training. Returns the per-epoch history (loss and
    accuracy on train and validation, seconds).
    """
    folder = Path(checkpoint_dir)
    partial = folder.with_name(folder.name + ".partial")
    device = resolve_device(settings.device)
    trainable = set_trainable(model, settings.trainable)
    log.info("training %d parameter tensors: %s", len(trainable), ", ".join(trainable[:8]))
    key = run_key(model, train_set, val_set, settings)
    with exclusive(folder), contextlib.ExitStack() as stack:
        _take_over(folder, partial, key)
        done = epoch_checkpoints(partial)
        start_epoch, step = 1, 0
        if done:
            payload = read_checkpoint(model, done[-1])
            start_epoch, step = int(payload["epoch"]) + 1, int(payload["step"])
            log.info("resuming after epoch %d from %s", start_epoch - 1, done[-1])
        place(model, device)
        parameters = [p for p in model.parameters() if p.requires_grad]
        x, forward = forward_on(model, torch.from_numpy(train_set.x), device)
        val_x, _ = forward_on(model, torch.from_numpy(val_set.x), device)
        y, val_y = torch.from_numpy(train_set.y), torch.from_numpy(val_set.y)
        recorder = None
        if factors_dir is not None:
            recorder = FactorRecorder(stack.enter_context(atomic_path(factors_dir, directory=True)),
                                      max(settings.epochs, len(done)), train_set, val_set, device, model,
                                      {"train": (x, forward), "val": (val_x, forward)})
            for index, path in enumerate(done):  # a resumed run's earlier epochs; the last leaves the model as it was
                recorder.record_checkpoint(index, model, path)
        for epoch in range(start_epoch, settings.epochs + 1):
            began = time.perf_counter()
            generator = torch.Generator().manual_seed(_epoch_seed(settings.seed, epoch))
            torch.manual_seed(_epoch_seed(settings.seed, epoch))
            train_mode(model)
            running_loss, running_correct = 0.0, 0
            for rows in batches(len(y), settings.batch_size, generator):
                inputs, target = x[rows].to(device), y[rows].to(device)
                logits = forward(inputs)
                loss = F.cross_entropy(logits, target)
                for parameter in parameters:
                    parameter.grad = None
                loss.backward()
                sgd_step(parameters, settings.lr)
                step += 1
                running_loss += float(loss.detach()) * len(rows)
                running_correct += int((logits.argmax(1) == target).sum())
                every = settings.checkpoint_every_steps
                if every and step % every == 0:
                    save_checkpoint(partial / checkpoint_name(epoch, step), model, settings.lr, epoch, step)
            recalibrate_batchnorm(model, forward, x, device, generator)
            if recorder is None:
                val_loss, val_acc = evaluate(forward, model, val_x, val_y, device)
            else:
                val_logits = recorder.record(epoch - 1, model, checkpoint_name(epoch, step), settings.lr, epoch)
                val_loss, val_acc = logit_scores(torch.from_numpy(val_logits), val_y)
            row = {"epoch": epoch, "train_loss": running_loss / len(y), "train_accuracy": running_correct / len(y),
                   "val_loss": val_loss, "val_accuracy": val_acc, "seconds": time.perf_counter() - began}
            if not np.isfinite(row["train_loss"]):
                raise FloatingPointError(f"training diverged at epoch {epoch} (non-finite loss); lower the learning rate")
            save_checkpoint(partial / checkpoint_name(epoch, step), model, settings.lr, epoch, step, row)
            log.info("epoch %d/%d: train loss %.4f acc %.3f | val loss %.4f acc %.3f | %.2fs", epoch, settings.epochs,
                     row["train_loss"], row["train_accuracy"], val_loss, val_acc, row["seconds"])
        write_manifest(partial, settings.epochs)
        if recorder is not None:
            recorder.complete(settings.batch_size)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(partial, folder)
    return history(folder)


@torch.no_grad()
def logits_and_features(model: torch.nn.Module, inputs: torch.Tensor, forward: Callable[..., torch.Tensor],
                        device: torch.device, batch_size: int = 1024, head: torch.nn.Module | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The model's logits and the head's input (penultimate features) for every row, in eval mode; ``head``
    is the final layer (default: an ``AdaptedModel``'s own)."""
    model.eval()
    captured: list[torch.Tensor] = []
    head = head if head is not None else model.head  # type: ignore[assignment]
    assert head is not None
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    logits = []
    try:
        for start in range(0, len(inputs), batch_size):
            logits.append(forward(inputs[start : start + batch_size].to(device)).float().cpu())
    finally:
        hook.remove()
    features = torch.cat([c.float().cpu().reshape(c.shape[0], -1) for c in captured])
    return torch.cat(logits).numpy(), features.numpy()


Cache = dict[str, tuple[torch.Tensor, Callable[..., torch.Tensor]]]


class FactorRecorder:
    """Writes a run's per-checkpoint TracIn factors of ``train`` and ``val`` into a temporary folder.

    Training records each epoch as it ends (``record``): the same forward passes give the epoch's validation
    loss and accuracy, so no checkpoint is read back and validation is not run twice; ``record_checkpoint``
    records one from its file (a resumed run's earlier epochs). ``cached`` holds, per
    split, the rows to feed and the function to feed them to (``forward_on``) for the model's current frozen
    trunk; it is recomputed whenever a checkpoint's frozen state differs, so any checkpoints of the network
    may be recorded (``record_factors``).
    """

    def __init__(self, folder: Path, n_checkpoints: int, train: DataSet, val: DataSet, device: torch.device,
                 model: AdaptedModel | None = None, cached: Cache | None = None) -> None:
        """``cached`` (with the ``model`` it was computed for) saves recomputing the frozen trunk's outputs."""
        self.folder, self.n_checkpoints, self.train, self.val, self.device = folder, n_checkpoints, train, val, device
        self.cached = dict(cached or {})
        self.trunk = [t.clone() for t in frozen_state(model)] if model is not None and cached else []
        self.recorded: dict[int, tuple[str, float, int]] = {}  # index -> checkpoint name, learning rate, epoch
        self.arrays: dict[str, tuple[Path, int, tuple[int, ...]]] = {}  # name -> .npy file, data offset, shape

    def _inputs(self, model: AdaptedModel) -> Cache:
        state = frozen_state(model)
        if not self.cached or len(state) != len(self.trunk) or not all(torch.equal(a, b) for a, b in zip(state, self.trunk)):
            self.cached = {split: forward_on(model, torch.from_numpy(data.x), self.device)
                           for split, data in (("train", self.train), ("val", self.val))}
            self.trunk = [t.clone() for t in state]
        return self.cached

    def record(self, index: int, model: AdaptedModel, name: str, learning_rate: float, epoch: int) -> np.ndarray:
        """Record the model as it is now as checkpoint ``index``; return its validation logits."""
        cached = self._inputs(model)
        parts = (*logits_and_features(model, *cached["train"], self.device),
                 *logits_and_features(model, *cached["val"], self.device))
        for array_name, part in zip(ARRAYS, parts):
            self._write(array_name, index, np.ascontiguousarray(part, dtype=np.float32))
        self.recorded[index] = (name, float(learning_rate), int(epoch))
        return parts[ARRAYS.index("val_logits")]

    def _write(self, array_name: str, index: int, block: np.ndarray) -> None:
        """Checkpoint ``index``'s block of an array, written at its offset in the ``.npy`` file. Not through a
        writable memmap: its dirty pages count as the job's resident memory (4.6 GB of a 200,000-row fold's
        factors, 5.3 GiB peak RSS; written like this, 1.96 GiB in a scratch test)."""
        if array_name not in self.arrays:
            path = self.folder / f"{array_name}.npy"
            created = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(self.n_checkpoints, *block.shape))
            self.arrays[array_name] = (path, int(created.offset), tuple(created.shape))
            del created  # the header and the file's size are written; nothing of it stays mapped
        path, offset, shape = self.arrays[array_name]
        if block.shape != shape[1:]:
            raise ArtifactError(f"{array_name}: checkpoint {index} has shape {block.shape}, the others {shape[1:]}")
        with open(path, "r+b") as handle:
            handle.seek(offset + index * block.nbytes)
            block.tofile(handle)

    def record_checkpoint(self, index: int, model: AdaptedModel, path: Path) -> None:
        """Load the checkpoint at ``path`` into ``model`` (already placed on the recorder's device; loading keeps
        its device and layout) and record it as checkpoint ``index``."""
        payload = read_checkpoint(model, path)
        self.record(index, model, Path(path).name, payload["learning_rate"], payload["epoch"])

    def complete(self, train_batch_size: int) -> FactorMeta:
        """Write the labels and the folder's metadata once every checkpoint is recorded."""
        missing = sorted(set(range(self.n_checkpoints)) - set(self.recorded))
        if missing:
            raise ArtifactError(f"checkpoints {missing} of {self.n_checkpoints} were never recorded")
        np.save(self.folder / "y_train.npy", self.train.y)
        np.save(self.folder / "y_val.npy", self.val.y)
        names, rates, epochs = (list(column) for column in zip(*(self.recorded[i] for i in range(self.n_checkpoints))))
        meta = FactorMeta(len(self.train.y), len(self.val.y), self.train.n_classes,
                          self.arrays["train_features"][2][-1], rates, train_batch_size, epochs, names)
        (self.folder / "meta.json").write_text(json.dumps(meta.__dict__, indent=2))
        self.arrays.clear()
        return meta


def record_factors(model: AdaptedModel, checkpoints: Sequence[Path], train: DataSet, val: DataSet, out_dir: str | Path,
                   train_batch_size: int, device: str | torch.device = "cpu") -> FactorMeta:
    """Write the TracIn factors of ``checkpoints`` (any of the network's) into the folder ``out_dir``."""
    if not checkpoints:
        raise ArtifactError("no checkpoints to record factors from")
    dev = resolve_device(str(device))
    place(model, dev)
    with atomic_path(out_dir, directory=True) as tmp:
        recorder = FactorRecorder(tmp, len(checkpoints), train, val, dev)
        for index, path in enumerate(checkpoints):
            recorder.record_checkpoint(index, model, path)
        return recorder.complete(train_batch_size)


def history(checkpoint_dir: str | Path) -> pd.DataFrame:
    """Per-epoch loss and accuracy of a run, read back from its epoch checkpoints."""
    rows = [torch.load(p, map_location="cpu", weights_only=True).get("metrics", {})
            for p in verified_checkpoints(checkpoint_dir)]
    return pd.DataFrame(rows)
