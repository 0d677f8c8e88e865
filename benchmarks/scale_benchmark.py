"""Scale benchmark: how the debug command's time and memory grow with the rows of a table, and its time
against cleanlab's on the same data. Run by hand (15 to 25 minutes on 2 cores, most of it the 200,000 rows;
it writes GBs of factors under ``--work`` and removes them after each size):

    python benchmarks/scale_benchmark.py                                  # both parts -> benchmarks/scale_results.md
    python benchmarks/scale_benchmark.py --part scale --sizes 10000 50000 # fewer sizes (the exponent needs two)
    python benchmarks/scale_benchmark.py --part cleanlab --work /tmp/b    # run folders under /tmp/b

Part ``scale``: generated tables (``make_classification``: 20 features, 4 classes, 10 % of the labels flipped,
2 % of the rows shifted 5 sd in half their features) of 10,000, 50,000 and 200,000 rows, each run as
``influence-signals debug data.csv --label label --seeds 1 --folds 3 --cores 2 --keep-runs`` in a subprocess (the
runs' factors are kept for the comparisons below, then removed). Measured:
wall time; peak RSS of the command's process tree, sampled with psutil every 0.2 s (the largest single
process, its anonymous part, and the tree's sum), beside ``ru_maxrss`` of the waited-for children and the
per-job ``max_rss`` of Snakemake's benchmark files (with the warm server on, those measure each job's
launcher only); each step's seconds from the jobs' logs (``crossfit.Progress``); the exponent b of
time ~ a n^b fitted by least squares on log-log. Where a size is past the exact limits, the approximations
are measured against the exact computations on that run's own data: the recall of the approximate
nearest-neighbour searches (``detector.neighbour_recall``: the novelty search over all rows, and the
kNN-distance signal of fold 1) with the exact and approximate novelty's agreement (Spearman of the scores,
Jaccard of the declared anomalies), and the sampled pairwise pass (``influence.PAIR_BUDGET``) against the
exact one on 2,000 random training rows of fold 1 (Spearman and top-10 % overlap of each influence signal
that needs it).

Part ``cleanlab``: scikit-learn's breast_cancer (569 rows, 10 % of the labels flipped) and generated tables of
2,000 and 10,000 rows; the debug command with its defaults (3 seeds, 5 folds, 2 cores) and, in the same run
right after it, cleanlab's usual path: 5-fold out-of-sample probabilities from HistGradientBoosting and from
logistic regression (standardised features), each followed by ``Datalab(data=..., label_name=...)
.find_issues(pred_probs=..., features=...)`` with its default checks (the best of 3 runs after a warm-up);
the ratio of our time to each. Also the debug command's terminal output and its line count.

The machine is shared (its load average is recorded): times are wall times on whatever else was running.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from influence_signals import report as readme_report

import detection_benchmark  # its generated table and cleanlab's out-of-sample probabilities, shared (same folder)

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "scale_results.md"
SIZES = (10_000, 50_000, 200_000)
CLEANLAB_SETS = ("breast_cancer", "generated_2000", "generated_10000")
SCORED_BY_PASS = ("aai", "sign_aware", "class_contrast", "harm_concentration", "cnci", "pcid", "cfrank")
BEFORE = """Measured once before this benchmark's changes (commit c54960c plus step logging, 1 seed, 3 folds, 2 cores
shared with another benchmark), from the jobs' logs: at 50,000 rows the debug command took 428 s: training
74 s (3 folds), the exact pairwise influence pass 284 s (72 %; it grows as n^2), closed-form influence 4 s,
relabelled passes 7 s, every other signal 20 s (the kNN-distance signal's exact search 4.6 s a fold),
the report job 14 s (the novelty's exact kNN search 7 s). At 10,000 rows (in-process under cProfile):
training 117 of 152 s, the pairwise pass 22 s, the report job 3.7 s."""
MEMORY = """Where a 200,000-row crossfit job's memory goes, measured once in-process (a scratch script sampling
/proc/self/status per logged step, 1 thread as the job runs): the peak RSS is reached while a fold trains, and it is
the factor files, not the job's own arrays: training.FactorRecorder writes them through a writable memmap, so all
4.6 GB of a fold's factors (30 checkpoints x 200,000 rows x 192 features) stay mapped and count as file-backed RSS
(RssFile 4,849 MiB). Writing each checkpoint at its offset with seek + tofile instead kept RssFile at 345 MiB at
the same speed (302-329 s either way); the anonymous peak is then 1,625 MiB (every other signal's step, fold 2),
RSS about 1,960 MiB. training.FactorRecorder now writes that way (commit d38ac3f): measured with this script
(--sizes 10000 200000) after it, 200,000 rows took 341 s at a peak RSS of 1,748 MiB."""


# ----------------------------------------------------------------------------------------------
# Data


def generated(n: int, seed: int = 11) -> pd.DataFrame:
    """``make_classification`` (20 features, 4 classes) with 10 % of the labels flipped to another class and 2 %
    of the other rows shifted 5 sd in half their features."""
    x, y, _ = detection_benchmark.generated(n, seed)
    return _glitched(x, y, 4, 0.02)


def breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return _glitched(bunch.data, bunch.target, 2, 0.0)


def _glitched(x: np.ndarray, y: np.ndarray, n_classes: int, shifted: float) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    flip = rng.random(len(y)) < 0.10
    y = np.where(flip, (y + rng.integers(1, n_classes, len(y))) % n_classes, y)
    shift = ~flip & (rng.random(len(y)) < shifted)
    x = x + np.where(shift[:, None] & (rng.random(x.shape) < 0.5), 5.0 * x.std(0), 0.0)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    frame["label"] = np.array([f"class_{c}" for c in range(n_classes)])[y]
    return frame


# ----------------------------------------------------------------------------------------------
# Running the command and watching its memory


class TreeMemory:
    """Samples the RSS of a process and all its descendants (psutil) until stopped: each process's peak (and
    its anonymous part, from /proc), named by its role, and the peak of the tree's sum."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        import psutil

        self.root, self.every = psutil.Process(pid), every
        self.peaks: dict[int, dict[str, Any]] = {}
        self.tree_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _anonymous(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _role(self, process: Any) -> str:
        try:
            command = " ".join(process.cmdline())
            parent = process.parent()
            parent_command = " ".join(parent.cmdline()) if parent else ""
        except Exception:  # noqa: BLE001 - a process gone while sampled
            return "?"
        if "warm.py" in command:
            return "job (forked from the warm server)" if "warm.py" in parent_command else "warm server"
        if "snakemake" in command and "-m snakemake" in command:
            return "snakemake"
        if "stage.py" in command or ".snakemake/scripts" in command:
            return "launcher of a job"
        return "debug command" if process.pid == self.root.pid else command[:60]

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            for process in processes:
                try:
                    rss = process.memory_info().rss
                    created = process.create_time()
                except psutil.Error:
                    continue
                total += rss
                entry = self.peaks.get(process.pid)
                if entry is None:
                    entry = self.peaks[process.pid] = {"role": self._role(process), "created": created, "rss": 0, "anon": 0}
                entry["rss"] = max(entry["rss"], rss)
                entry["anon"] = max(entry["anon"], self._anonymous(process.pid))
            self.tree_peak = max(self.tree_peak, total)
            time.sleep(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def jobs(self) -> list[dict[str, Any]]:
        """The forked jobs in the order they started (their stage follows from the workflow's order)."""
        return sorted((e for e in self.peaks.values() if e["role"].startswith("job")), key=lambda e: e["created"])


def run_debug(csv: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    """``influence-signals debug`` on ``csv`` in a subprocess: wall seconds, its terminal output and memory."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "influence_signals.debug", "debug", str(csv), "--label", "label", "--out", str(out),
               "--cores", "2", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = TreeMemory(process.pid)
    output, _ = process.communicate()
    seconds = time.perf_counter() - started
    memory.stop()
    if process.returncode != 0:
        raise RuntimeError(f"debug failed on {csv} (exit {process.returncode}):\n{output[-3000:]}")
    children_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    largest = max(memory.peaks.values(), key=lambda e: e["rss"])
    return {"seconds": seconds, "output": output, "lines": len(output.splitlines()), "memory": memory,
            "peak_rss": largest["rss"], "peak_role": largest["role"],
            "peak_anon": max(e["anon"] for e in memory.peaks.values()), "tree_peak": memory.tree_peak,
            "ru_maxrss_children": children_maxrss if children_maxrss > before * 1024 else None,
            "snakemake_jobs": snakemake_benchmarks(out), "steps": step_times(out)}


def snakemake_benchmarks(out: Path) -> pd.DataFrame:
    """Each job's line of Snakemake's benchmark files (``benchmark:``), with the job's path."""
    frames = [pd.read_csv(path, sep="\t").assign(job=str(path.relative_to(out / "results" / "benchmarks")))
              for path in sorted((out / "results" / "benchmarks").rglob("*.tsv"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


STEP_DONE = re.compile(r"INFO influence_signals: (?:fold \d+ of \d+: )?(.+): done in ([\d.]+) s")


def step_times(out: Path) -> pd.DataFrame:
    """Seconds of each logged step (``crossfit.Progress``), summed over folds and seeds, per job kind."""
    rows = []
    for log in sorted((out / "results" / "logs").rglob("*.log")):
        job = "debug_report" if log.name == "debug_report.log" else "crossfit"
        for match in STEP_DONE.finditer(log.read_text()):
            step = re.sub(r"^reading (?!\d).*", "reading the table", re.sub(r" \(si, mi, .*\)$", "", match[1]))
            rows.append({"job": job, "step": step, "seconds": float(match[2])})
    if not rows:
        return pd.DataFrame(columns=["job", "step", "seconds"])
    return pd.DataFrame(rows).groupby(["job", "step"], sort=False, as_index=False)["seconds"].sum()


# ----------------------------------------------------------------------------------------------
# The approximations against the exact computations


def approximation_quality(out: Path) -> dict[str, Any]:
    """Recall of the approximate searches and agreement of the sampled pass, on one run's own data and fold 1."""
    import yaml
    from scipy.stats import spearmanr

    from influence_signals import crossfit, datasets, detector, influence
    from influence_signals.factors import FactorStore

    config = yaml.safe_load((out / "config.yaml").read_text())
    name = config["debug"]["dataset"]
    data = datasets.load(name, config["datasets"][name])
    space = detector.winsorised(crossfit.novelty_spaces(data)[0])
    result: dict[str, Any] = {}
    if len(space) ** 2 > detector.EXACT_PAIRS:
        result["novelty_recall"] = detector.neighbour_recall(space, space, detector.NEIGHBOURS, same=True)
        approximate = detector.robust_novelty(crossfit.novelty_spaces(data))  # as the report job computes it
        exact = detector.robust_novelty(crossfit.novelty_spaces(data), max_pairs=None)
        result["novelty_spearman"] = float(spearmanr(approximate.score, exact.score)[0])
        union = (approximate.declared | exact.declared).sum()
        result["declared_jaccard"] = float((approximate.declared & exact.declared).sum() / union) if union else 1.0
        result["declared"] = (int(exact.declared.sum()), int(approximate.declared.sum()))
    folder = next((out / "results" / "crossfit").rglob("f0")) / "factors"
    store = FactorStore(folder)
    last = store.n_checkpoints - 1
    train, val = store.read("train_features", last), store.read("val_features", last)
    if len(train) * len(val) > detector.EXACT_PAIRS:
        result["knn_signal_recall"] = detector.neighbour_recall(train, val, 5)
    if store.meta.n_train * store.meta.n_val > influence.PAIR_BUDGET:
        result.update(sampled_pass_agreement(store))
    return result


def sampled_pass_agreement(store: Any, rows: int = 2000) -> dict[str, Any]:
    """The pass's signals on ``rows`` random training rows of ``store``, exact and sampled as the full run samples
    them (the same share of validation columns): Spearman and top-10 % overlap per signal."""
    import json

    from scipy.stats import spearmanr

    from influence_signals import influence, signals
    from influence_signals.factors import FactorStore

    chosen = np.sort(np.random.default_rng(0).choice(store.meta.n_train, rows, replace=False))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in ("train_logits", "train_features"):
            np.save(folder / f"{name}.npy", np.stack([store.read(name, t)[chosen] for t in range(store.n_checkpoints)]))
        for name in ("val_logits", "val_features", "y_val"):
            os.symlink(store.folder / f"{name}.npy", folder / f"{name}.npy")
        np.save(folder / "y_train.npy", store.y_train[chosen])
        meta = dict(store.meta.__dict__, n_train=rows)
        (folder / "meta.json").write_text(json.dumps(meta))
        subset = FactorStore(folder)
        budget = influence.PAIR_BUDGET * rows // store.meta.n_train  # the full run's share of columns
        tables = {}
        for label, max_pairs in (("exact", None), ("sampled", budget)):
            inputs = signals.SignalInputs(influence.TracInEngine(subset, max_pairs=max_pairs), subset)
            tables[label] = signals.compute(inputs, list(SCORED_BY_PASS))[0]
        columns = influence.TracInEngine(subset, max_pairs=budget).column_sample(store.y_val, store.meta.n_classes)[0]
    agreement = {}
    for name in SCORED_BY_PASS:
        exact, sampled = tables["exact"][name].to_numpy(), tables["sampled"][name].to_numpy()
        finite = np.isfinite(exact) & np.isfinite(sampled)
        top = max(1, rows // 10)
        rank = lambda v: set(np.argsort(-np.nan_to_num(v, nan=-np.inf), kind="stable")[:top])  # noqa: E731
        agreement[name] = (float(spearmanr(exact[finite], sampled[finite])[0]), len(rank(exact) & rank(sampled)) / top)
    return {"pass_columns": (len(columns), store.meta.n_val), "pass_agreement": agreement}


# ----------------------------------------------------------------------------------------------
# cleanlab on the same data


def cleanlab_times(frame: pd.DataFrame, repeats: int = 3) -> dict[str, float]:
    """Seconds of cleanlab's usual path per classifier: 5-fold out-of-sample probabilities, then Datalab; the
    best of ``repeats`` runs, after one warm-up run on 200 rows (imports and first calls are not counted)."""
    from cleanlab import Datalab
    from sklearn.preprocessing import StandardScaler

    x = frame.drop(columns=["label"]).to_numpy(np.float64)
    _, y = np.unique(frame["label"].astype(str).to_numpy(), return_inverse=True)

    def run(kind: str, rows: slice) -> float:
        started = time.perf_counter()
        probabilities = detection_benchmark.out_of_sample(x[rows], y[rows], kind)
        scaled = StandardScaler().fit_transform(x[rows])
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            lab = Datalab(data={"label": y[rows]}, label_name="label", verbosity=0)
            lab.find_issues(pred_probs=probabilities, features=scaled)
        return time.perf_counter() - started

    times = {}
    for kind in ("hgb", "lr"):
        run(kind, slice(0, 200))
        times[kind] = min(run(kind, slice(None)) for _ in range(repeats))
    return times


# ----------------------------------------------------------------------------------------------
# The parts


def fit_exponent(sizes: list[int], seconds: list[float]) -> float:
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def scale_part(work: Path, sizes: list[int]) -> str:
    rows, details, steps, seconds = [], [], [], []
    for n in sizes:
        csv = work / f"generated_{n}.csv"
        generated(n).to_csv(csv, index=False)
        out = work / f"scale_{n}"
        print(f"[scale] {n} rows ...", flush=True)
        run = run_debug(csv, out, ["--seeds", "1", "--folds", "3", "--keep-runs"])  # the factors are compared below
        print(f"[scale] {n} rows: {run['seconds']:.0f} s, peak RSS {mib(run['peak_rss'])} MiB", flush=True)
        quality = approximation_quality(out)
        shutil.rmtree(out / "results" / "crossfit", ignore_errors=True)  # factors: GBs at 200,000 rows
        jobs = run["memory"].jobs()
        job_peaks = ", ".join(f"{mib(j['rss'])} ({mib(j['anon'])} anon)" for j in jobs)
        smk = run["snakemake_jobs"]
        smk_text = ", ".join(f"{r.job}: {r.max_rss:.0f}" for r in smk.itertuples()) if len(smk) else "-"
        recalls = [f"novelty search {quality['novelty_recall']:.4f}" if "novelty_recall" in quality else "",
                   f"kNN-distance signal {quality['knn_signal_recall']:.4f}" if "knn_signal_recall" in quality else ""]
        rows.append(f"| {n:,} | {run['seconds']:.0f} | {mib(run['peak_rss'])} ({run['peak_role']}) | {mib(run['peak_anon'])} "
                    f"| {mib(run['tree_peak'])} | {mib(run['ru_maxrss_children'])} | {'; '.join(r for r in recalls if r) or 'exact'} |")
        details.append(f"- {n:,} rows: processes forked from the warm server in start order (the crossfit jobs first, the debug_report job last), peak RSS MiB (anonymous part): {job_peaks}; "
                       f"Snakemake's benchmark files, max_rss MB: {smk_text}")
        if "novelty_spearman" in quality:
            exact_count, approx_count = quality["declared"]
            details.append(f"  - novelty, approximate vs exact search: Spearman {quality['novelty_spearman']:.4f}; "
                           f"declared anomalies {approx_count} vs {exact_count}, Jaccard {quality['declared_jaccard']:.3f}")
        if "pass_agreement" in quality:
            visited, total = quality["pass_columns"]
            parts = ", ".join(f"{k} {rho:.4f} / {top:.2f}" for k, (rho, top) in quality["pass_agreement"].items())
            details.append(f"  - sampled pairwise pass ({visited:,} of {total:,} validation rows), on 2,000 training rows "
                           f"of fold 1, Spearman / top-10 % overlap with the exact pass: {parts}")
        steps.append(run["steps"].assign(n=n))
        seconds.append(run["seconds"])
        details.append(f"  - load average when it ended: {os.getloadavg()[0]:.1f}")
    exponent = fit_exponent(sizes, seconds) if len(sizes) > 1 else float("nan")
    table = pd.concat(steps).pivot_table(index=["job", "step"], columns="n", values="seconds", sort=False)
    step_lines = ["| job | step | " + " | ".join(f"{n:,} rows" for n in table.columns) + " |",
                  "|---|---|" + "---:|" * len(table.columns)]
    step_lines += [f"| {job} | {step} | " + " | ".join(f"{v:.1f}" for v in values) + " |"
                   for (job, step), values in zip(table.index, table.to_numpy())]
    return "\n".join([
        f"## {readme_report.SCALE_RUN}",
        "",
        "| rows | wall s | peak RSS MiB (process) | peak anonymous MiB | tree sum MiB | ru_maxrss children MiB | recall of the approximate searches |",
        "|---:|---:|---|---:|---:|---:|---|",
        *rows,
        "",
        f"Fitted exponent of wall time against rows ({', '.join(f'{n:,}' for n in sizes)}): **{exponent:.2f}** (goal: <= 1.2).",
        "",
        *details,
        "",
        "Seconds per logged step (summed over folds):",
        "",
        *step_lines,
        "",
        "Before the changes: " + BEFORE,
        "",
        "Memory: " + MEMORY,
        "",
    ])


def cleanlab_part(work: Path) -> str:
    rows, outputs = [], []
    for name in CLEANLAB_SETS:
        frame = breast_cancer() if name == "breast_cancer" else generated(int(name.split("_")[1]))
        csv = work / f"{name}.csv"
        frame.to_csv(csv, index=False)
        print(f"[cleanlab] {name} ({len(frame)} rows) ...", flush=True)
        run = run_debug(csv, work / f"default_{name}", [])
        times = cleanlab_times(frame)
        rows.append(f"| {name} | {len(frame):,} | {run['seconds']:.0f} | {times['hgb']:.1f} | {times['lr']:.1f} "
                    f"| {run['seconds'] / times['hgb']:.1f} | {run['seconds'] / times['lr']:.1f} | {run['lines']} |")
        outputs.append((name, run["output"]))
    name, text = outputs[0]
    return "\n".join([
        f"## {readme_report.SPEED_RUN}",
        "",
        "cleanlab's time: 5-fold out-of-sample probabilities (HistGradientBoosting, or logistic regression on "
        "standardised features) plus `Datalab(...).find_issues(pred_probs=..., features=...)` with its default "
        "checks, measured in the same run right after the debug command: the best of 3 runs after a warm-up (imports "
        "not counted), against one run of the debug command as a user starts it (its start-up included).",
        "",
        "| data | rows | debug s | cleanlab + HGB s | cleanlab + LR s | ratio to HGB | ratio to LR | terminal lines |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"The terminal output of the default run on {name} ({len(text.splitlines())} lines):",
        "",
        "```",
        text.rstrip(),
        "```",
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("scale", "cleanlab", "both"), default="both")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--work", type=Path, help="where the tables and run folders go (default: a temporary folder)")
    parser.add_argument("--results", type=Path, default=RESULTS_MD)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="scale-benchmark-"))
    work.mkdir(parents=True, exist_ok=True)
    started, load = time.perf_counter(), os.getloadavg()[0]
    sections = []
    if args.part in ("scale", "both"):
        sections.append(scale_part(work, sorted(args.sizes)))
    if args.part in ("cleanlab", "both"):
        sections.append(cleanlab_part(work))
    header = [
        "# Scale benchmark",
        "",
        f"`python benchmarks/scale_benchmark.py{' ' + ' '.join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else ''}`"
        f" on {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{(time.perf_counter() - started) / 60:.0f} min in all; load average {load:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end (another benchmark shared the machine where it is above 2). "
        "See the script's docstring for what is measured.",
        "",
    ]
    text = "\n".join(header + sections)
    args.results.write_text(text)
    print(text)
    if args.results == RESULTS_MD and args.part == "both":  # the README's sections come from this file
        for section in ("scale", "speed"):
            readme_report.update_benchmark(HERE.parent / "README.md", section)


if __name__ == "__main__":
    main()
