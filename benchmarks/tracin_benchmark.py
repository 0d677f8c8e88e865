"""TracIn speed and memory: our factorised engine against Captum's TracInCPFast, run by hand (not in CI).

    python benchmarks/tracin_benchmark.py                 # the issue's sizes: n=20000, m=5000, d=192, k=10, T=10
    python benchmarks/tracin_benchmark.py --device cuda   # on a GPU

Prints times as ratios, our achieved GFLOP/s against a plain float32 matmul on the same machine, and the
peak memory of computing every signal at n=200000, m=50000 (in a child process, so the figure is its own).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from influence_signals import datasets, influence, signals
from influence_signals.factors import ARRAYS, FactorMeta, FactorStore
from influence_signals.models import AdaptedModel, InputAdapter


def toy_problem(n: int, m: int, d: int, k: int, checkpoints: int, folder: Path, seed: int = 0):
    """A model whose penultimate layer is a fixed random projection, and ``checkpoints`` random heads."""
    generator = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, k))
    model = AdaptedModel(InputAdapter(False), net, "2")
    paths = []
    for t in range(checkpoints):
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        path = folder / f"epoch{t + 1:03d}_step{t + 1:07d}.pt"
        torch.save({"model_state_dict": model.state_dict(), "learning_rate": 0.1, "epoch": t + 1, "step": t + 1}, path)
        paths.append(path)
    rng = np.random.default_rng(seed)

    def split(rows: int) -> datasets.DataSet:
        return datasets.DataSet("toy", rng.normal(size=(rows, d)).astype(np.float32), rng.integers(0, k, rows),
                                tuple(str(c) for c in range(k)), "tabular")

    return model, paths, split(n), split(m)


def time_captum(model, paths, train, val, batch_size: int) -> float:
    from captum.influence import TracInCPFast
    from torch.utils.data import TensorDataset

    from influence_signals.training import load_checkpoint

    tracin = TracInCPFast(model, model.head, TensorDataset(torch.from_numpy(train.x), torch.from_numpy(train.y)),
                          [str(p) for p in paths], checkpoints_load_func=load_checkpoint,
                          loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=batch_size)
    began = time.perf_counter()
    scores = tracin.influence((torch.from_numpy(val.x), torch.from_numpy(val.y)))
    elapsed = time.perf_counter() - began
    assert scores.shape == (len(val.y), len(train.y))
    return elapsed


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ours(model, paths, train, val, folder: Path, device: str) -> tuple[float, float, float]:
    """Seconds for the factors, for the whole matrix (blockwise, summed over checkpoints), for all signals."""
    began = time.perf_counter()
    influence.compute_factors(model, paths, train, val, folder / "factors", device=device, batch_size=4096)
    factors = time.perf_counter() - began
    engine = influence.TracInEngine(FactorStore(folder / "factors"), device)
    began = time.perf_counter()
    for _rows, _cols, block in engine.blocks(1024, 1024):
        block.sum(0)
    synchronize(device)
    matrix = time.perf_counter() - began
    began = time.perf_counter()
    signals.accumulate_class_masses(engine, engine.store.y_val, engine.store.meta.n_classes, 1024, 1024)
    synchronize(device)
    return factors, matrix, time.perf_counter() - began


def matmul_gflops(device: str, size: int = 4096, repeats: int = 5) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - began) / 1e9


def write_synthetic_factors(folder: Path, n: int, m: int, d: int, k: int, checkpoints: int) -> None:
    """A factor folder of random values, written row-block by row-block so the writer stays small too."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shapes = {"train_logits": (n, k), "train_features": (n, d), "val_logits": (m, k), "val_features": (m, d)}
    for name in ARRAYS:
        array = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float32, shape=(checkpoints, *shapes[name]))
        for t in range(checkpoints):
            for start in range(0, shapes[name][0], 50_000):
                stop = min(start + 50_000, shapes[name][0])
                array[t, start:stop] = rng.normal(size=(stop - start, shapes[name][1])).astype(np.float32)
        array.flush()
        del array
    np.save(folder / "y_train.npy", rng.integers(0, k, n))
    np.save(folder / "y_val.npy", rng.integers(0, k, m))
    meta = FactorMeta(n, m, k, d, [0.1] * checkpoints, list(range(1, checkpoints + 1)), [], "lr")
    (folder / "meta.json").write_text(json.dumps(meta.__dict__))


class FirstRowBlocks:
    """The engine, with its tiles limited to the first ``row_blocks`` row blocks (accumulators keep full size)."""

    def __init__(self, engine: influence.TracInEngine, row_blocks: int | None) -> None:
        self.engine, self.row_blocks = engine, row_blocks
        self.n_checkpoints, self.n_train, self.n_val = engine.n_checkpoints, engine.n_train, engine.n_val

    def blocks(self, row_block: int, col_block: int):
        for rows, cols, block in self.engine.blocks(row_block, col_block):
            if self.row_blocks is not None and rows.start >= self.row_blocks * row_block:
                return
            yield rows, cols, block

    def self_influence(self) -> torch.Tensor:
        return self.engine.self_influence()


def peak_resident_mib() -> float:
    """VmHWM: this process's own peak RSS (ru_maxrss would carry the parent's peak across fork + exec)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def peak_memory_child(folder: str, device: str, row_blocks: int | None) -> None:
    """Run in a child process: every signal's one-pass accumulation, then print the peak RSS in MiB."""
    engine = FirstRowBlocks(influence.TracInEngine(FactorStore(folder), device), row_blocks)
    began = time.perf_counter()
    signals.accumulate_class_masses(engine, engine.engine.store.y_val, engine.engine.store.meta.n_classes, 1024, 1024)
    synchronize(device)
    rows = engine.n_train if row_blocks is None else min(engine.n_train, row_blocks * 1024)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0
    print(json.dumps({"peak_rss_mib": peak_resident_mib(), "peak_gpu_mib": gpu,
                      "seconds": time.perf_counter() - began, "rows": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--m", type=int, default=5_000)
    parser.add_argument("--d", type=int, default=192)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--captum-batch", type=int, default=1024, help="Captum's train batch size (its default is 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-n", type=int, default=200_000)
    parser.add_argument("--memory-m", type=int, default=50_000)
    parser.add_argument("--memory-row-blocks", type=int, default=None,
                        help="stop the memory run after this many 1024-row blocks (peak is reached in the first)")
    parser.add_argument("--skip-captum", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_memory_child(args.child, args.device, args.memory_row_blocks)
        return
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, paths, train, val = toy_problem(args.n, args.m, args.d, args.k, args.checkpoints, folder)
        factors, matrix, all_signals = time_ours(model, paths, train, val, folder, args.device)
        flops = 2 * args.checkpoints * args.n * args.m * (args.k + args.d + 1)
        peak = matmul_gflops(args.device)
        print(f"sizes: n={args.n} m={args.m} d={args.d} k={args.k} T={args.checkpoints} device={args.device} "
              f"threads={torch.get_num_threads()}")
        print(f"ours: factors {factors:.2f} s, train->validation matrix {matrix:.2f} s, all signals (one pass) {all_signals:.2f} s")
        print(f"ours: {flops / matrix / 1e9:.1f} GFLOP/s on the matrix; plain float32 matmul {peak:.1f} GFLOP/s; "
              f"ratio {flops / matrix / 1e9 / peak:.2f}")
        if not args.skip_captum:
            captum = time_captum(model, paths, train, val, args.captum_batch)
            print(f"captum TracInCPFast (train batch {args.captum_batch}): {captum:.2f} s")
            print(f"speed-up, captum / ours (factors + matrix): {captum / (factors + matrix):.1f}x")
        memory_folder = folder / "memory"
        write_synthetic_factors(memory_folder, args.memory_n, args.memory_m, args.d, args.k, args.checkpoints)
        child = [sys.executable, __file__, "--child", str(memory_folder), "--device", args.device]
        if args.memory_row_blocks is not None:
            child += ["--memory-row-blocks", str(args.memory_row_blocks)]
        result = json.loads(subprocess.run(child, capture_output=True, text=True, check=True).stdout)
        print(f"all signals at n={args.memory_n} m={args.memory_m}: peak RSS {result['peak_rss_mib']:.0f} MiB, "
              f"peak GPU {result['peak_gpu_mib']:.0f} MiB "
              f"({result['rows']} train rows processed in {result['seconds']:.1f} s)")


if __name__ == "__main__":
    main()
