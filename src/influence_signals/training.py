"""Plain-SGD training with a checkpoint per epoch, as TracIn assumes (no momentum, no weight decay).

Checkpoints are dicts ``{"model_state_dict", "learning_rate", "epoch", "step"}``: the learning rate in
force is what TracIn weights each checkpoint by, and Captum's loaders read the same keys. Shuffling and
dropout are seeded per epoch, so a run resumed from its last checkpoint ends bit-identical to one that
never stopped.
"""
from __future__ import annotations

import logging
import pickle
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .artifacts import ArtifactError, atomic_path
from .datasets import DataSet
from .models import AdaptedModel, set_trainable

log = logging.getLogger(__name__)
CHECKPOINT = re.compile(r"epoch(\d{3})_step(\d{7})\.pt$")


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
    return torch.device(name)


def checkpoint_paths(folder: str | Path) -> list[Path]:
    """The checkpoints of a run in training order."""
    return sorted(p for p in Path(folder).glob("*.pt") if CHECKPOINT.search(p.name))


def epoch_checkpoints(folder: str | Path) -> list[Path]:
    """The checkpoints saved at the end of each epoch, in order."""
    paths = checkpoint_paths(folder)
    ends: dict[int, Path] = {}
    for path in paths:
        match = CHECKPOINT.search(path.name)
        assert match is not None
        ends[int(match.group(1))] = path
    return [ends[e] for e in sorted(ends)]


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
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["model_state_dict"])
        return float(payload["learning_rate"])
    except FileNotFoundError as err:
        raise ArtifactError(f"missing checkpoint {path}") from err
    except (RuntimeError, KeyError, EOFError, TypeError, ValueError, OSError, pickle.UnpicklingError) as err:
        raise ArtifactError(f"corrupt or mismatched checkpoint {path}: {err}") from err


def batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: DataSet, device: torch.device, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data`` in eval mode."""
    model.eval()
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    loss, correct = 0.0, 0
    for rows in batches(len(y), batch_size, None):
        logits = model(x[rows].to(device))
        target = y[rows].to(device)
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    return loss / max(1, len(y)), correct / max(1, len(y))


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def train(model: AdaptedModel, train_set: DataSet, val_set: DataSet, settings: TrainSettings,
          checkpoint_dir: str | Path) -> pd.DataFrame:
    """Train ``model`` with SGD, writing checkpoints into ``checkpoint_dir``; resume from the last epoch there.

    Returns the per-epoch history (loss and accuracy on train and validation, seconds).
    """
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    device = resolve_device(settings.device)
    trainable = set_trainable(model, settings.trainable)
    log.info("training %d parameter tensors: %s", len(trainable), ", ".join(trainable[:8]))
    done = epoch_checkpoints(folder)
    start_epoch, step = 1, 0
    if done:
        payload = torch.load(done[-1], map_location="cpu", weights_only=True)
        load_checkpoint(model, done[-1])
        start_epoch, step = int(payload["epoch"]) + 1, int(payload["step"])
        log.info("resuming after epoch %d from %s", start_epoch - 1, done[-1])
    model.to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=settings.lr, momentum=0.0)
    x, y = torch.from_numpy(train_set.x), torch.from_numpy(train_set.y)
    for epoch in range(start_epoch, settings.epochs + 1):
        began = time.perf_counter()
        generator = torch.Generator().manual_seed(_epoch_seed(settings.seed, epoch))
        torch.manual_seed(_epoch_seed(settings.seed, epoch))
        model.train()
        running_loss, running_correct = 0.0, 0
        for rows in batches(len(y), settings.batch_size, generator):
            inputs, target = x[rows].to(device), y[rows].to(device)
            logits = model(inputs)
            loss = F.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running_loss += float(loss.detach()) * len(rows)
            running_correct += int((logits.argmax(1) == target).sum())
            every = settings.checkpoint_every_steps
            if every and step % every == 0:
                save_checkpoint(folder / f"epoch{epoch:03d}_step{step:07d}.pt", model, settings.lr, epoch, step)
        val_loss, val_acc = evaluate(model, val_set, device)
        row = {"epoch": epoch, "train_loss": running_loss / len(y), "train_accuracy": running_correct / len(y),
               "val_loss": val_loss, "val_accuracy": val_acc, "seconds": time.perf_counter() - began}
        if not np.isfinite(row["train_loss"]):
            raise FloatingPointError(f"training diverged at epoch {epoch} (non-finite loss); lower the learning rate")
        save_checkpoint(folder / f"epoch{epoch:03d}_step{step:07d}.pt", model, settings.lr, epoch, step, row)
        log.info("epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f | %.2fs", epoch, row["train_loss"],
                 row["train_accuracy"], val_loss, val_acc, row["seconds"])
    return history(folder)


def history(checkpoint_dir: str | Path) -> pd.DataFrame:
    """Per-epoch loss and accuracy of a run, read back from its epoch checkpoints."""
    rows = [torch.load(p, map_location="cpu", weights_only=True).get("metrics", {}) for p in epoch_checkpoints(checkpoint_dir)]
    return pd.DataFrame(rows)
