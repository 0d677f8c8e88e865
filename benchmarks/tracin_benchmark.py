"""TracIn speed and memory, run by hand (not in CI): the Captum path a user would take against our engine.

    python benchmarks/tracin_benchmark.py                  # n = 5k, 10k, 20k, 40k (m = n / 4); memory at n = 200k, m = 50k
    python benchmarks/tracin_benchmark.py --quick          # n = 2k, 4k, 8k; memory at n = 20k, m = 5k
    python benchmarks/tracin_benchmark.py --quick --device cuda

Every size trains the same tiny MLP (32 inputs -> 64 ReLU features = the head's input d, k = 10 classes)
for T = 5 epochs on generated tabular data with 10 % uniform label noise, one checkpoint per epoch. Then:

(a) Captum: TracInCPFast, and TracInCP on the final layer, each producing the dense validation x train
    matrix (train batches of 1024), then the study's four signals (SI, MI, AAI, GD-class) from it in numpy;
(b) ours: the factors (one forward pass per checkpoint), then every influence signal through
    ``signals.SignalInputs`` + ``signals.compute``;
(c) ours, closed forms alone: SI, MI, GD-class (class sums, self-influence; no pairwise pass);
(d) the pairwise pass (``influence.class_masses``) against the GEMM bound: the minimal float32 GEMM work
    of exact |I|, 2 T n m (d + k - 1) FLOPs, at the machine's measured float32 matmul rate.

Then the peak RSS of the whole signals job (every signal, baselines and detector included) in a child
process. The tables go to benchmarks/results.md, one section per device and mode (``write_results``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from influence_signals import datasets, glitches, influence, models, signals, training
from influence_signals import kernel as tile_kernel
from influence_signals import report as readme_report
from influence_signals.networks import AdaptedModel
from influence_signals.factors import FactorStore

D_IN, D, K, T = 32, 64, 10, 5
CAPTUM_BATCH = 1024
BATCH = 128  # the toy runs' training batch size
REPEATS = 3  # timings in the table: the best of this many runs (factors and the memory run: one)
RESULTS = Path(__file__).with_name("results.md")
FOUR = ("si", "mi", "aai", "gd_class")  # the study's signals, computed by both paths
CLOSED_FORMS = ("si", "mi", "gd_class")


def toy_run(n: int, m: int, folder: Path, device: str, seed: int = 0
            ) -> tuple[AdaptedModel, list[Path], datasets.DataSet, datasets.DataSet]:
    """The tiny MLP trained for T epochs on n rows with 10 % label noise; m validation rows; its checkpoints."""
    data = datasets.make_tabular(n_rows=n + m, n_features=D_IN, n_classes=K, seed=seed)
    x = ((data.x - data.x[:n].mean(0)) / data.x[:n].std(0)).astype(np.float32)
    train = datasets.DataSet("toy", x[:n], data.y[:n], data.class_names, "tabular")
    val = datasets.DataSet("toy", x[n:], data.y[n:], data.class_names, "tabular")
    train, _ = glitches.uniform_noise(train, 0.1, np.random.default_rng(seed))
    torch.manual_seed(seed)
    model = models.build("mlp", (D_IN,), K, {"n_blocks": 1, "d_block": D, "dropout": 0.0})
    training.train(model, train, val, training.TrainSettings(epochs=T, lr=0.1, batch_size=BATCH, seed=seed, device=device),
                   folder / "ckpt")
    return model, training.epoch_checkpoints(folder / "ckpt"), train, val


def timed(device: str, fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float]:
    """The result and the best wall time of ``repeats`` calls (the least disturbed by other work)."""
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        began = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - began)
    return result, best


def matmul_gflops(device: str) -> float:
    """The machine's float32 matmul rate: the best of a few large square products."""
    best = 0.0
    for size in (2048, 3072, 4096) if device == "cpu" else (8192,):
        a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
        out = torch.mm(a, b)
        for _ in range(3):
            _, seconds = timed(device, lambda: torch.mm(a, b, out=out))
            best = max(best, 2 * size**3 / seconds / 1e9)
    return best


def four_signals(matrix: np.ndarray, self_influence: np.ndarray, y_val: np.ndarray) -> dict[str, np.ndarray]:
    """SI, MI, AAI and GD-class in numpy from a dense (m, n) validation x train matrix, as a Captum user would."""
    sums = np.eye(K, dtype=matrix.dtype)[y_val].T @ matrix  # (C, n) per-class sums
    return {"si": self_influence, "mi": matrix.sum(0), "aai": np.abs(matrix).mean(0), "gd_class": -sums.min(0)}


def captum(kind: str, model: AdaptedModel, checkpoints: list[Path], train: datasets.DataSet,
           val: datasets.DataSet, device: str) -> dict[str, np.ndarray]:
    """Captum's influence matrix and self-influence (weighted by each checkpoint's learning rate), then the four signals."""
    from captum.influence import TracInCP, TracInCPFast
    from torch.utils.data import TensorDataset

    model.to(device)
    dataset = TensorDataset(torch.from_numpy(train.x).to(device), torch.from_numpy(train.y).to(device))
    loss = torch.nn.CrossEntropyLoss(reduction="sum")
    paths = [str(p) for p in checkpoints]
    if kind == "fast":
        tracin: Any = TracInCPFast(model, model.head, dataset, paths, checkpoints_load_func=training.load_checkpoint,
                                   loss_fn=loss, batch_size=CAPTUM_BATCH)
    else:
        tracin = TracInCP(model, dataset, paths, checkpoints_load_func=training.load_checkpoint,
                          layers=[f"net.{model.head_name}"], loss_fn=loss, batch_size=CAPTUM_BATCH,
                          sample_wise_grads_per_batch=True)
    matrix = tracin.influence((torch.from_numpy(val.x).to(device), torch.from_numpy(val.y).to(device)))
    self_influence = tracin.self_influence()
    return four_signals(matrix.detach().cpu().numpy(), self_influence.detach().cpu().numpy(), val.y)


def influence_names() -> list[str]:
    return [s.name for s in signals.SIGNALS if s.kind == "influence"]


def one_size(n: int, m: int, folder: Path, device: str, row_block: int, col_block: int, gflops: float,
             skip_captum: bool) -> dict[str, Any]:
    model, checkpoints, train, val = toy_run(n, m, folder, device)
    row: dict[str, Any] = {"n": n, "m": m}
    if not skip_captum:
        for kind in ("fast", "cp"):
            theirs, row[f"captum_{kind}"] = timed(device, lambda: captum(kind, model, checkpoints, train, val, device),
                                                  REPEATS)
    _, row["factors"] = timed(device, lambda: training.record_factors(model, checkpoints, train, val, folder / "factors",
                                                                        BATCH, device))
    store = FactorStore(folder / "factors")

    def run(names: list[str]) -> Any:
        inputs = signals.SignalInputs(influence.TracInEngine(store, device), store, row_block, col_block)
        return signals.compute(inputs, names)[0]

    ours, row["signals"] = timed(device, lambda: run(influence_names()), REPEATS)
    row["ours"] = row["factors"] + row["signals"]
    _, row["closed"] = timed(device, lambda: run(list(CLOSED_FORMS)), REPEATS)
    engine = influence.TracInEngine(store, device)
    sums = engine.class_sums(store.y_val, K)  # the signals job has them from the closed forms: N = S - P
    for key, kernel in (("pass", "auto"), ("pass_torch", "torch")):
        _, row[key] = timed(device, lambda: engine.class_masses(store.y_val, K, row_block, col_block, sums, kernel),
                            REPEATS)
    row["bound"] = 2 * T * n * m * (D + K - 1) / (gflops * 1e9)
    if not skip_captum:  # the same four signals both ways: their largest difference relative to their range
        row["agreement"] = max(float(np.abs(ours[s].to_numpy() - theirs[s]).max() / np.ptp(theirs[s])) for s in FOUR)
    return row


def peak_resident_mib() -> float:
    """VmHWM: this process's own peak RSS (ru_maxrss would carry the parent's peak across fork + exec)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def memory_child(folder: str, device: str, row_block: int, col_block: int) -> None:
    """In a child process: the signals job (every signal, baselines and detector included); prints its peak RSS."""
    began = time.perf_counter()
    store = FactorStore(Path(folder) / "factors")
    data = (np.load(Path(folder) / "train_x.npy"), np.load(Path(folder) / "val_x.npy"))
    inputs = signals.SignalInputs(influence.open_influence(Path(folder) / "factors", device), store, row_block, col_block,
                                  5, 0, data)
    _, pass_seconds = timed(device, lambda: inputs.class_masses)  # each input is computed once, then reused
    _, influence_seconds = timed(device, lambda: signals.compute(inputs, influence_names()))
    _, other_seconds = timed(device, lambda: (signals.compute(inputs), inputs.detections))
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0
    print(json.dumps({"peak_rss_mib": peak_resident_mib(), "peak_gpu_mib": gpu, "seconds": time.perf_counter() - began,
                      "pass": pass_seconds, "influence": influence_seconds, "other": other_seconds}))


def memory_run(n: int, m: int, folder: Path, device: str, row_block: int, col_block: int) -> dict[str, Any]:
    model, checkpoints, train, val = toy_run(n, m, folder, device)
    training.record_factors(model, checkpoints, train, val, folder / "factors", BATCH, device)
    np.save(folder / "train_x.npy", train.x)
    np.save(folder / "val_x.npy", val.x)
    child = [sys.executable, __file__, "--child", str(folder), "--device", device,
             "--row-block", str(row_block), "--col-block", str(col_block)]
    result = json.loads(subprocess.run(child, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    return {"n": n, "m": m, **result}


def exponent(rows: list[dict[str, Any]], key: str) -> float:
    """The fitted exponent p of time ~ n^p (least squares on log-log)."""
    points = [(r["n"], r[key]) for r in rows if key in r]
    return float(np.polyfit(np.log([p[0] for p in points]), np.log([p[1] for p in points]), 1)[0])


COLUMNS = (  # key, header
    ("captum_fast", "(a) Captum TracInCPFast + 4 signals"),
    ("captum_cp", "(a) Captum TracInCP, last layer + 4 signals"),
    ("factors", "(b) ours: factors"),
    ("signals", "(b) ours: every influence signal"),
    ("ours", "(b) ours: total"),
    ("closed", "(c) closed forms alone"),
    ("pass", "(d) pairwise pass"),
    ("pass_torch", "(d) pass with torch ops"),
    ("bound", "(d) GEMM bound"),
)


def markdown(report: dict[str, Any]) -> str:
    """The section of benchmarks/results.md for one run: the machine, the time table, exponents, memory."""
    rows = report["rows"]
    keys = [(key, header) for key, header in COLUMNS if key in rows[0]]
    lines = [f"Machine: {report['machine']}; torch {torch.__version__}, {report['threads']} threads, device "
             f"{report['device']}; measured float32 matmul: {report['gflops']:.0f} GFLOP/s.",
             "",
             f"Sizes: m = n / 4, d = {D}, k = {K}, T = {T} checkpoints; the pass: {report['kernel']}; torch ops' "
             f"tiles {report['tiles']}. Times in seconds, the best of {REPEATS} runs (factors: one).",
             "",
             "| n | m | " + " | ".join(header for _, header in keys) + " | pass / bound | torch ops / bound |"
             + (" Captum vs ours |" if "agreement" in rows[0] else ""),
             "|" + " --- |" * (len(keys) + 4 + ("agreement" in rows[0]))]
    for r in rows:
        cells = [f"{r['n']:,}", f"{r['m']:,}", *(f"{r[key]:.3g}" for key, _ in keys), f"{r['bound'] / r['pass']:.2f}",
                 f"{r['bound'] / r['pass_torch']:.2f}"]
        if "agreement" in r:
            cells.append(f"{r['agreement']:.0e}")
        lines.append("| " + " | ".join(cells) + " |")
    fitted = [f"{exponent(rows, key):.2f}" for key, _ in keys]
    lines.append("| time ~ n^p, p = | | " + " | ".join(fitted) + " | | |" + (" |" if "agreement" in rows[0] else ""))
    memory = report["memory"]
    verdict = "meets" if memory["peak_rss_mib"] <= 2048 else "misses"
    gpu = f", peak GPU memory {memory['peak_gpu_mib']:,.0f} MiB" if memory["peak_gpu_mib"] else ""
    lines += ["",
              f"Peak RSS of the whole signals job (every signal, baselines and detector included) at n = "
              f"{memory['n']:,}, m = {memory['m']:,}, in a child process: **{memory['peak_rss_mib']:,.0f} MiB**{gpu}, "
              f"in {memory['seconds']:.3g} s: the pairwise pass {memory['pass']:.3g} s (pass / bound = "
              f"{2 * T * memory['n'] * memory['m'] * (D + K - 1) / (report['gflops'] * 1e9) / memory['pass']:.2f}), "
              f"the other influence signals {memory['influence']:.3g} s (two relabelled one-checkpoint passes, "
              f"closed forms), baselines, novelty and the detector {memory['other']:.3g} s. This {verdict} the goal "
              "of <= 2 GiB; the full pass ran, nothing was bounded.",
              "",
              "(b) every influence signal = " + ", ".join(influence_names()) + ", each also from the first "
              "checkpoint alone. (c) = SI, MI, GD-class. (d) the pass computes the positive class masses P, "
              "per checkpoint and in total (N = S - P, S from the closed forms, which the signals job has "
              "computed already). The fused kernel (`kernel.py`) computes, per register block of train rows x "
              "validation columns, both Grams from the factors, their product, the running total over checkpoints "
              "and the positive class sums, in registers, never writing an influence value to memory; with torch "
              "ops each tile and checkpoint is two GEMMs and elementwise passes over their outputs. GEMM bound: "
              "every I_t(i, j) is needed on its own "
              "(|.| and the clamp of the sum over checkpoints are not linear), and I_t = (E E^T) o (H H^T + 1): a "
              "Gram of rank d (the + 1 is an elementwise add) and one of rank k - 1 (error rows sum to zero), so "
              "2 T n m (d + k - 1) FLOPs is the least GEMM work; one Khatri-Rao GEMM would need width d(k - 1). "
              f"Captum's train batches: {CAPTUM_BATCH}. Captum vs ours: the largest difference of the four "
              "signals, relative to each signal's range."]
    return "\n".join(lines) + "\n"


def write_results(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or add) the section ``## title`` of results.md, keeping the other sections."""
    header = ("# TracIn benchmark results\n\nProduced by `python benchmarks/tracin_benchmark.py` (one section per "
              "device and mode); not edited by hand.\n")
    text = path.read_text() if path.exists() else header
    sections = text.split("\n## ")
    kept = [s for s in sections[1:] if s.split("\n", 1)[0] != title]
    path.write_text("\n## ".join([sections[0].rstrip("\n") + "\n", *sorted([*kept, f"{title}\n\n{body}"])]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="n = 2k, 4k, 8k; memory at n = 20k, m = 5k")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--row-block", type=int, default=4096)
    parser.add_argument("--col-block", type=int, default=512)
    parser.add_argument("--skip-captum", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        memory_child(args.child, args.device, args.row_block, args.col_block)
        return
    sizes, memory_n = ((2_000, 4_000, 8_000), 20_000) if args.quick else ((5_000, 10_000, 20_000, 40_000), 200_000)
    gflops = matmul_gflops(args.device)
    with tempfile.TemporaryDirectory() as tmp:  # warm-up (first calls, lazy initialisation), not reported
        one_size(1_000, 250, Path(tmp), args.device, args.row_block, args.col_block, gflops, args.skip_captum)
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(one_size(n, n // 4, Path(tmp), args.device, args.row_block, args.col_block, gflops,
                                 args.skip_captum))
        print(json.dumps(rows[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        memory = memory_run(memory_n, memory_n // 4, Path(tmp), args.device, args.row_block, args.col_block)
    print(json.dumps(memory), flush=True)
    machine = readme_report.cpu_model() if args.device == "cpu" else torch.cuda.get_device_name(args.device)
    lib = tile_kernel.library() if args.device == "cpu" else None
    kernel = "torch ops" if lib is None else (f"fused C kernel, {tile_kernel.block_columns(lib)}-column blocks, "
                                              f"{tile_kernel.column_tile(lib, T, D + 1 + K)}-column tiles")
    report = {"rows": rows, "memory": memory, "gflops": gflops, "device": args.device, "threads": torch.get_num_threads(),
              "kernel": kernel,
              "machine": machine, "tiles": f"{args.row_block} x {args.col_block}"}
    body = markdown(report)
    print(body)
    title = f"{args.device}, {'quick' if args.quick else 'full'}"
    write_results(title, body)
    if title == readme_report.BENCHMARK_RUN:
        readme_report.update_benchmark(Path(__file__).resolve().parents[1] / "README.md", "benchmark")


if __name__ == "__main__":
    main()
