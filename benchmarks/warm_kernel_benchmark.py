"""Are warm starts and the compiled kernel worth keeping? The default run timed with each switched off.

    python benchmarks/warm_kernel_benchmark.py                 # the default run, 3 variants x 2 runs (about 25 min)
    python benchmarks/warm_kernel_benchmark.py --target results/fig4b.pdf --repeats 1   # a quick look

Each run starts from an empty folder (the same config, so the same jobs) and is timed end to end, Snakemake's
start included. Variants run interleaved (A B C A B C), so that a shared machine's slow minutes fall on all of
them; the table gives each run's seconds and each variant's mean as a ratio to the default (warm starts on,
the C kernel). Warm starts off: ``--config warm_start=False``; the kernel off: ``INFLUENCE_SIGNALS_KERNEL=torch``
(the same pass as torch ops). Writes ``benchmarks/warm_kernel_results.md``.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIANTS = {
    "default (warm starts, C kernel)": ([], {}),
    "warm starts off": (["--config", "warm_start=False"], {}),
    "C kernel off (torch ops)": ([], {"INFLUENCE_SIGNALS_KERNEL": "torch"}),
}


def one_run(target: list[str], extra: list[str], env: dict[str, str], cores: int) -> float:
    folder = Path(tempfile.mkdtemp(prefix="warm-kernel-"))
    try:
        command = [sys.executable, "-m", "snakemake", *target, "--cores", str(cores), "-s", str(ROOT / "Snakefile"),
                   "-d", str(folder), "--configfile", str(ROOT / "config.yaml"), "--quiet", "all", *extra]
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", nargs="*", default=[], help="Snakemake targets (default: the whole default run)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "warm_kernel_results.md")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name, (extra, env) in VARIANTS.items():
            seconds[name].append(one_run(args.target, extra, env, args.cores))
            print(f"run {repeat + 1}, {name}: {seconds[name][-1]:.0f} s", flush=True)
    base = sum(seconds[next(iter(VARIANTS))]) / args.repeats
    lines = ["# Warm starts and the C kernel: the default run with each switched off", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores; `snakemake --cores {args.cores}` "
             f"{' '.join(args.target) or '(the whole default run)'} from an empty folder, runs interleaved.", "",
             "| variant | " + " | ".join(f"run {i + 1} (s)" for i in range(args.repeats)) + " | mean / default |",
             "| --- |" + " --- |" * (args.repeats + 1)]
    for name, values in seconds.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.0f}" for v in values) + f" | {sum(values) / args.repeats / base:.2f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
