"""A training run's checkpoint folder: naming, gap-free epochs, the manifest that marks it finished, the writer's lock.

A run writes into ``<folder>.partial`` under an exclusive lock and renames it to ``<folder>`` only when
every epoch is saved and ``manifest.json`` (epoch, file, size, hash) is written last; readers verify the
manifest, so a killed, racing or tampered run is never taken for a finished one. Pure standard library:
planning reads manifests without importing torch.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

from .artifacts import ArtifactError, atomic_path

CHECKPOINT = re.compile(r"epoch(\d{3})_step(\d{7})\.pt$")
MANIFEST = "manifest.json"


def checkpoint_name(epoch: int, step: int) -> str:
    return f"epoch{epoch:03d}_step{step:07d}.pt"


def epoch_of(path: Path) -> int:
    match = CHECKPOINT.search(path.name)
    if match is None:
        raise ArtifactError(f"{path} is not a checkpoint file name")
    return int(match.group(1))


def checkpoint_paths(folder: str | Path) -> list[Path]:
    """The checkpoints of a run in training order."""
    return sorted(p for p in Path(folder).glob("*.pt") if CHECKPOINT.search(p.name))


def epoch_checkpoints(folder: str | Path) -> list[Path]:
    """The checkpoints saved at the end of each epoch, in order; epochs must run 1..N without a gap."""
    ends = {epoch_of(path): path for path in checkpoint_paths(folder)}  # the last checkpoint of each epoch
    epochs = sorted(ends)
    if epochs != list(range(1, len(epochs) + 1)):
        raise ArtifactError(f"{folder}: epoch checkpoints {epochs} have a gap; expected epochs 1..{len(epochs)}")
    return [ends[e] for e in epochs]


def gap_free_prefix(folder: Path) -> int:
    """The last epoch E such that epochs 1..E all have a checkpoint."""
    epochs = {epoch_of(path) for path in checkpoint_paths(folder)}
    prefix = 0
    while prefix + 1 in epochs:
        prefix += 1
    return prefix


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, epochs: int) -> None:
    """List every checkpoint with its epoch, size and hash; written last, so it marks a finished run."""
    entries = [{"file": p.name, "epoch": epoch_of(p), "bytes": p.stat().st_size, "sha256": _digest(p)}
               for p in checkpoint_paths(folder)]
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"epochs": epochs, "checkpoints": entries}, indent=1))


def _manifest(folder: Path) -> dict[str, object]:
    try:
        return dict(json.loads((folder / MANIFEST).read_text()))
    except FileNotFoundError:
        raise ArtifactError(f"{folder} has no {MANIFEST}: the training run did not finish; rerun the train job") from None
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{folder}/{MANIFEST} is corrupt ({err}); rerun the train job") from None


def manifest_problem(folder: str | Path) -> str | None:
    """What is wrong with a finished run's folder, from file sizes alone (cheap enough for planning), or None."""
    folder = Path(folder)
    if not folder.exists():
        return None
    try:
        manifest = _manifest(folder)
    except ArtifactError as err:
        return str(err)
    for entry in manifest["checkpoints"]:  # type: ignore[attr-defined]
        path = folder / entry["file"]
        if not path.exists() or path.stat().st_size != entry["bytes"]:
            return f"{path} is missing or differs from the manifest"
    return None


def verified_checkpoints(folder: str | Path) -> list[Path]:
    """The epoch checkpoints of a finished run, after checking each against the manifest (size and hash)."""
    folder = Path(folder)
    manifest = _manifest(folder)
    for entry in manifest["checkpoints"]:  # type: ignore[attr-defined]
        path = folder / entry["file"]
        if not path.exists():
            raise ArtifactError(f"{path} listed in the manifest is missing; rerun the train job")
        if path.stat().st_size != entry["bytes"] or _digest(path) != entry["sha256"]:
            raise ArtifactError(f"{path} differs from the manifest (corrupt or edited); rerun the train job")
    paths = epoch_checkpoints(folder)
    if len(paths) != manifest["epochs"]:
        raise ArtifactError(f"{folder}: {len(paths)} epoch checkpoints but the run trained {manifest['epochs']} epochs")
    return paths


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock for ``folder``, or fail at once if another live process holds it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArtifactError(f"another process is training into {folder}; wait for it or kill it first") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
