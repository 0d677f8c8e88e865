"""The README's results section, generated from a run's outputs: no number in it is typed by hand.

``python -m influence_signals.report readme [--section real]`` copies a run's ``summary.csv``,
``accuracy_summary.csv`` and per-stage benchmark times into ``docs/results/`` (or ``docs/results-real/``;
small, committed) and rewrites the README between the section's ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` markers from those copies; ``... report benchmark`` copies the TracIn benchmark's CPU run
from ``benchmarks/results.md``, ``... report detection`` the detection benchmark's table from
``benchmarks/detection_results.md``. A test re-renders each section and compares.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .artifacts import write_text
from .glitches import GLITCHES
from .signals import labels, table_names

SECTIONS = {"results": Path("docs/results"), "real": Path("docs/results-real")}  # README section -> its summaries


def markers(section: str) -> tuple[str, str]:
    return f"<!-- {section}:start -->", f"<!-- {section}:end -->"


START, END = markers("results")
STUDY_SIGNALS = ("si", "mi", "aai", "gd_class")
FINDS = 0.3  # an F1 at the glitch ratio from which a signal is said to find a glitch type
TABLE_SIGNALS = tuple(table_names())  # from the registry: a new signal appears in the tables
SINGLE_SIGNALS = tuple(s for s in TABLE_SIGNALS if s != "detector")


def f1_table(summary: pd.DataFrame, dataset: str, ratio: int = 10, signals: Sequence[str] = TABLE_SIGNALS) -> str:
    """Mean F1 at the glitch ratio per signal (rows) and glitch type (columns), averaged over models; best in bold."""
    rows = summary[(summary["dataset"] == dataset) & (summary["ratio"] == ratio) & summary["signal"].isin(signals)]
    table = rows.groupby(["signal", "glitch"])["f1_mean"].mean().unstack("glitch")
    glitch_order = [g for g in GLITCHES.names() if g in table.columns]
    table = table.reindex(index=[s for s in signals if s in table.index], columns=glitch_order)
    names, glitch_names = labels(), GLITCHES.labels()
    per_column = {g: ", ".join(sorted(rows.loc[rows["glitch"] == g, "model"].unique())) for g in glitch_order}
    seeds = int(rows["n_seeds"].min()) if len(rows) else 0
    same = len(set(per_column.values())) <= 1
    models = next(iter(per_column.values()), "") if same else "per column, the models that ran it (below)"
    lines = [f"**{dataset}** ({ratio} % glitches; mean over {seeds} seeds and {'the models: ' if same else ''}{models}):",
             "", "| signal | " + " | ".join(glitch_names[g] for g in glitch_order) + " |",
             "| --- |" + " --- |" * len(glitch_order)]
    best = table.max(axis=0)
    for signal, values in table.iterrows():
        cells = [("**%.2f**" if v == best[g] else "%.2f") % v if pd.notna(v) else "" for g, v in values.items()]
        lines.append(f"| {names.get(str(signal), str(signal))} | " + " | ".join(cells) + " |")
    if not same:
        lines += ["", "Models per column: " + "; ".join(f"{glitch_names[g]}: {m}" for g, m in per_column.items()) + "."]
    return "\n".join(lines)


def _mean_f1(summary: pd.DataFrame, dataset: str, glitch: str, signal: str, ratio: int = 10) -> float:
    rows = summary[(summary["dataset"] == dataset) & (summary["glitch"] == glitch) & (summary["ratio"] == ratio)
                   & (summary["signal"] == signal)]
    return float(rows["f1_mean"].mean()) if len(rows) else float("nan")


def findings(summary: pd.DataFrame) -> str:
    """The study's findings, each checked against this run's numbers (holds / does not hold)."""
    lines = []
    for dataset in sorted(summary["dataset"].unique()):
        present = set(summary.loc[summary["dataset"] == dataset, "glitch"])
        study = {s: _mean_f1(summary, dataset, "uniform", s) for s in STUDY_SIGNALS}
        if "uniform" in present:
            best = max(study, key=lambda s: study[s])
            worst = min(study, key=lambda s: study[s])
            lines.append(f"- {dataset}, uniform noise: SI best of the study's four signals: "
                         f"{'holds' if best == 'si' else 'does not hold'} (best {best} {study[best]:.2f}, SI {study['si']:.2f}); "
                         f"MI worst: {'holds' if worst == 'mi' else 'does not hold'} (MI {study['mi']:.2f}).")
        for glitch in ("far_ca", "outlier"):
            if glitch in present:
                top = max(_mean_f1(summary, dataset, glitch, s) for s in STUDY_SIGNALS)
                novelty = _mean_f1(summary, dataset, glitch, "knn_distance")
                lines.append(f"- {dataset}, {GLITCHES[glitch].label}: no influence signal finds them (best of the four "
                             f"{top:.2f}): {'holds' if top < FINDS else 'does not hold'}; "
                             f"kNN distance {novelty:.2f}.")
        if "near_ca" in present:
            total, first = _mean_f1(summary, dataset, "near_ca", "si"), _mean_f1(summary, dataset, "near_ca", "si_first")
            early = first >= FINDS and first > total
            lines.append(f"- {dataset}, Near-CA: found by the first epoch's SI, not by the cumulative SI (first epoch "
                         f"{first:.2f}, cumulative {total:.2f}): {'holds' if early else 'does not hold'}.")
    return "\n".join(lines)


def detector_table(summary: pd.DataFrame, ratio: int = 10) -> str:
    """Per data set and glitch type (mixtures split by type): the detector's F1 against the best single
    signal and cleanlab, and its type and repair accuracy on the rows it flags."""
    rows = summary[summary["ratio"] == ratio]
    names, glitch_names = labels(), GLITCHES.labels()
    lines = ["| data set | glitch | detector F1 | best single signal | cleanlab CL | type acc. | repair acc. |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for (dataset, glitch, target), group in rows.groupby(["dataset", "glitch", "target"], sort=True):
        f1 = group.groupby("signal")["f1_mean"].mean()
        if "detector" not in f1:
            continue
        single = f1.reindex([s for s in SINGLE_SIGNALS if s in f1.index])
        best = str(single.idxmax())
        detector_rows = group[(group["signal"] == "detector") & (group["target"] == "all")]
        quality = [detector_rows[c].mean() if c in detector_rows else float("nan")
                   for c in ("type_accuracy_mean", "repair_accuracy_mean")]
        kind = glitch_names.get(glitch, glitch) + ("" if target == "all" else f": {glitch_names.get(target, target)} rows")
        cells = [f"{f1['detector']:.2f}", f"{names.get(best, best)} {single[best]:.2f}",
                 f"{f1.get('confident_learning', float('nan')):.2f}",
                 *("" if pd.isna(q) or target != "all" else f"{q:.2f}" for q in quality)]
        lines.append(f"| {dataset} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def accuracy_lines(accuracy: pd.DataFrame) -> str:
    clean = accuracy[accuracy["glitch"].isin(["uniform"]) & (accuracy["ratio"] == 10)]
    rows = [f"{r.dataset} / {r.model}: {r.accuracy_validation_mean:.3f} ± {r.accuracy_validation_std:.3f}"
            for r in clean.itertuples()]
    return "Validation accuracy at 10 % uniform noise (mean ± sd over seeds): " + "; ".join(rows) + "."


def timing_lines(times: pd.DataFrame) -> str:
    per_stage = times.groupby("stage")["s"].agg(["sum", "count"])
    cells = [f"{stage} {row['sum']:.0f} s ({int(row['count'])} jobs)" for stage, row in per_stage.iterrows()]
    return "CPU-side wall seconds per stage, summed over jobs (Snakemake `benchmark:` files): " + ", ".join(cells) + "."


def wall_seconds(results: Path) -> float | None:
    """The elapsed time Snakemake logged for its newest invocation in the folder holding ``results``."""
    logs = sorted((results.resolve().parent / ".snakemake" / "log").glob("*.snakemake.log"))
    for log in reversed(logs):
        match = re.search(r"^Elapsed time: (\d+):(\d\d):(\d\d(?:\.\d+)?)$", log.read_text(), flags=re.MULTILINE)
        if match:
            hours, minutes, seconds = match.groups()
            return 3600 * int(hours) + 60 * int(minutes) + float(seconds)
    return None


def wall_line(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"Wall time of the run (Snakemake's log of its last invocation): {minutes} min {rest} s."


def render(shown: Path, folder: Path | None = None, section: str = "results") -> str:
    """The results section from the summaries in ``folder`` (default ``shown``, the path the README names)."""
    folder = folder or shown
    start, end = markers(section)
    by_target = pd.read_csv(folder / "summary.csv")
    if "target" not in by_target.columns:
        by_target["target"] = "all"
    summary = by_target[by_target["target"] == "all"]
    accuracy = pd.read_csv(folder / "accuracy_summary.csv")
    meta = (folder / "machine.txt").read_text().strip() if (folder / "machine.txt").exists() else ""
    parts = [start, "", f"From `{shown}/` ({meta}).", ""]
    for dataset in sorted(summary["dataset"].unique()):
        parts += [f1_table(summary, dataset), ""]
    parts += [f"The study's findings on this data (a signal *finds* a glitch type where its F1 at the glitch ratio is at "
              f"least {FINDS}):", "", findings(summary), ""]
    if "detector" in set(summary["signal"]):
        parts += ["The detector (`detector.py`) against the best single signal of the table above and cleanlab "
                  "(mixtures: each type scored on its own rows):", "", detector_table(by_target), ""]
    parts += [accuracy_lines(accuracy), ""]
    if (folder / "wall_seconds.txt").exists():
        parts += [wall_line(float((folder / "wall_seconds.txt").read_text())), ""]
    if (folder / "stage_seconds.csv").exists():
        parts += [timing_lines(pd.read_csv(folder / "stage_seconds.csv")), ""]
    return "\n".join(parts + [end])


def stage_seconds(results: Path) -> pd.DataFrame:
    """Every job's wall seconds from the ``benchmark:`` files under ``results/benchmarks/<stage>/``."""
    rows = []
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        stage = path.relative_to(results / "benchmarks").parts[0]
        rows.append({"stage": stage.removesuffix(".tsv"), "s": float(pd.read_csv(path, sep="\t")["s"].iloc[0])})
    return pd.DataFrame(rows, columns=["stage", "s"])


def collect(results: Path, docs: Path) -> None:
    """Copy a finished run's summaries (and per-stage seconds) into ``docs``."""
    docs.mkdir(parents=True, exist_ok=True)
    for name in ("summary.csv", "accuracy_summary.csv"):
        shutil.copyfile(results / name, docs / name)
    stage_seconds(results).to_csv(docs / "stage_seconds.csv", index=False)
    wall = wall_seconds(results)
    (docs / "wall_seconds.txt").unlink(missing_ok=True)  # never a stale run's time beside new summaries
    if wall is not None:
        write_text(docs / "wall_seconds.txt", f"{wall:.1f}\n")
    write_text(docs / "machine.txt", f"{platform.machine()}, {cpu_model()}, "
                                     f"{os.cpu_count()} cores, Python {platform.python_version()}\n")


def cpu_model() -> str:
    """The CPU's model name and widest vector extension: hosts of one name have differed ~2x in per-core speed."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "CPU"
    name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), []))
    vectors = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), "")
    return f"{name} with {vectors}" if vectors else name


def section_text(text: str, section: str) -> str:
    """The README's generated section ``section``, markers included."""
    start, end = markers(section)
    if start not in text or end not in text:
        raise ValueError(f"the README has no {start} ... {end} section")
    return start + text.split(start, 1)[1].split(end, 1)[0] + end


def update_readme(readme: Path, docs: Path, section: str = "results") -> None:
    text = readme.read_text()
    old = section_text(text, section)
    write_text(readme, text.replace(old, render(docs, section=section)))


BENCHMARK = Path("benchmarks/results.md")
BENCHMARK_RUN = "cpu, full"  # the run of benchmarks/tracin_benchmark.py the README shows
DETECTION = Path("benchmarks/detection_results.md")


def render_benchmark(results_md: Path, run: str | None = BENCHMARK_RUN, section: str = "benchmark") -> str:
    """A README section holding a benchmark script's results file as written: one run's ``## run`` section of
    it, or (``run=None``) its body below the title line."""
    text = results_md.read_text()
    shown = BENCHMARK_SECTIONS[section][0]  # the file as the README names it, wherever it was read from
    if run is None:
        body, origin = text.split("\n", 1)[1].strip(), f"From `{shown}`"
    elif f"\n## {run}\n" in text:
        body, origin = text.split(f"\n## {run}\n", 1)[1].split("\n## ", 1)[0].strip(), f"From `{shown}`, section *{run}*"
    else:
        raise ValueError(f"{results_md} has no section '## {run}'; run its benchmark script first")
    start, end = markers(section)
    return "\n".join([start, "", f"{origin} (written by the benchmark script):", "", body, "", end])


SCALE = Path("benchmarks/scale_results.md")
SCALE_RUN = "Scale: the debug command at 1 seed, 3 folds, 2 cores"  # the sections benchmarks/scale_benchmark.py writes
SPEED_RUN = "Against cleanlab: the debug command's defaults (3 seeds, 5 folds, 2 cores)"

BENCHMARK_SECTIONS = {"benchmark": (BENCHMARK, BENCHMARK_RUN), "detection": (DETECTION, None), "scale": (SCALE, SCALE_RUN),
                      "speed": (SCALE, SPEED_RUN)}


def update_benchmark(readme: Path, section: str = "benchmark") -> None:
    """Rewrite the README's ``section`` from its benchmark's results file (found beside the README)."""
    results_md, run = BENCHMARK_SECTIONS[section]
    text = readme.read_text()
    write_text(readme, text.replace(section_text(text, section),
                                    render_benchmark(readme.parent / results_md, run, section)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m influence_signals.report")
    parser.add_argument("command", choices=["readme", *BENCHMARK_SECTIONS],
                        help="readme: a run's results section; benchmark / detection: that benchmark's section from its "
                             "results file")
    parser.add_argument("--results", type=Path, default=Path("results"), help="a finished run's results folder")
    parser.add_argument("--section", choices=sorted(SECTIONS), default="results", help="which README section")
    parser.add_argument("--docs", type=Path, help="where the summaries are kept (default: the section's folder)")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args(argv)
    if args.command in BENCHMARK_SECTIONS:
        update_benchmark(args.readme, args.command)
        return
    docs = args.docs or SECTIONS[args.section]
    collect(args.results, docs)
    update_readme(args.readme, docs, args.section)


if __name__ == "__main__":
    main()
