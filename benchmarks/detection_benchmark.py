"""Detection benchmark: the debug command against cleanlab, Datalab, Isolation Forest, LOF and kNN, run by hand.

    python benchmarks/detection_benchmark.py                      # 6 data sets x 4 scenarios x 3 seeds (about an hour on 2 cores)
    python benchmarks/detection_benchmark.py --sets wine --seeds 1 --out /tmp/bench   # one set, one seed

Each case writes a CSV as a user would have it: the features in their own units, a string id column and the
label by class name, with glitches injected by the project's own glitch registry on a standardised copy
(``glitches.inject``; the shifts are then mapped back to the feature's units):

- ``uniform``: 10 % of the labels flipped uniformly; ``class_dependent``: the study's, 30 % of one class
  flipped to one other class; ``anomaly``: 5 % of the rows with half their features pushed 5 sd out
  (labels kept); ``mixture``: 6 % uniform label noise and 4 % such anomalies on other rows.

Our detector is run exactly as a user runs it: ``influence-signals debug data.csv --label label --id key``
with its defaults (cross-fitted MLPs, no clean reference; Snakemake on 2 cores). The baselines see the same
CSV: cleanlab's
``find_label_issues`` on 5-fold out-of-sample probabilities from HistGradientBoosting and from logistic
regression (standardised features), Datalab's label and outlier issues with each of those probabilities
and the standardised features, and Isolation Forest, LOF and the mean distance to the 5 nearest rows on
the standardised features. Baseline results are cached per case (``<out>/cases/<case>/baselines.json``), and
so is each case's scored result, reused only for the same table and the same package source (``rows.json``).

Scored per case and target (``mislabel``: the clean and mislabelled rows; ``anomaly``: the clean and
anomalous rows; a mixture has both): top-k precision (k = the target's count; the detector's overall
suspicion, and in a mixture its own score for that type: ``label_score`` or ``novelty``), the flagged set's
precision, recall and F1 (the detector: the rows it types as that kind) and its size, and for the detector
the type accuracy on flagged glitches and the repair accuracy (suggested = true label) on flagged mislabels.
The per-case rows go to ``benchmarks/detection_results.csv`` and the summary (mean over seeds) to
``benchmarks/detection_results.md``, from which ``python -m influence_signals.report detection`` writes
the README's table.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from influence_signals import datasets, glitches
from influence_signals import report as readme_report
from influence_signals.debug import main as debug_main

HERE = Path(__file__).parent
RESULTS_CSV, RESULTS_MD = HERE / "detection_results.csv", HERE / "detection_results.md"
SHIFT_SD = 5.0
SCENARIOS: dict[str, tuple[str, float, dict[str, Any]]] = {
    "uniform": ("uniform", 0.10, {}),
    "class_dependent": ("class_dependent", 0.30, {}),
    "anomaly": ("outlier", 0.05, {"tabular_shift": SHIFT_SD}),
    "mixture": ("mixture", 0.10, {"components": {"uniform": 0.6, "outlier": 0.4}, "outlier": {"tabular_shift": SHIFT_SD}}),
}
LABEL_METHODS = ("cleanlab_lr", "cleanlab_hgb", "datalab_lr", "datalab_hgb")
ANOMALY_METHODS = ("isolation_forest", "lof", "knn", "datalab_lr", "datalab_hgb")


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn import datasets as sk

    bunch = {"wine": sk.load_wine, "breast_cancer": sk.load_breast_cancer, "digits": sk.load_digits}[name]()
    return bunch.data.astype(np.float64), bunch.target, [str(c) for c in bunch.target_names]


def generated(n_rows: int = 2000, seed: int = 11) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The generated table: ``make_classification`` with 20 features (10 informative), 4 classes."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n_rows, n_features=20, n_informative=10, n_redundant=4, n_classes=4,
                               n_clusters_per_class=2, class_sep=1.2, flip_y=0, random_state=seed)
    return x, y, [f"class_{c}" for c in range(4)]


def _project(name: str, flatten_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    data = datasets.load(name)
    return data.x.reshape(len(data.x), -1).astype(np.float64) * flatten_scale, data.y, list(data.class_names)


SETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, list[str]]]] = {
    "segment": lambda: _project("segment"),
    "mnist5k": lambda: _project("mnist5k", 255.0),  # 784 pixel columns (0-255), a table of images
    "wine": lambda: _sklearn("wine"),
    "breast_cancer": lambda: _sklearn("breast_cancer"),
    "digits": lambda: _sklearn("digits"),  # 64 pixel columns (0-16)
    "generated": generated,
}


def make_case(name: str, scenario: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The glitched table (``key``, ``f0..``, ``label``) and its truth (id, kind, true and observed label)."""
    x, y, classes = SETS[name]()
    mean, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    clean = datasets.DataSet(name, ((x - mean) / sd).astype(np.float32), np.asarray(y, dtype=np.int64),
                             tuple(classes), "tabular")
    glitch, ratio, options = SCENARIOS[scenario]
    glitched, errors = glitches.inject(clean, glitch, ratio, 1000 + seed, None, options)
    frame = pd.DataFrame(glitched.x.astype(np.float64) * sd + mean, columns=[f"f{i}" for i in range(x.shape[1])])
    ids = np.array([f"r{v:05d}" for v in np.random.default_rng(seed).permutation(len(frame))])
    frame.insert(0, "key", ids)
    names = np.asarray(classes)
    frame["label"] = names[glitched.y]
    kind = [glitches.kind_of(g) if g != "none" else "none" for g in errors["glitch"].astype(str)]
    truth = pd.DataFrame({"id": ids, "kind": kind, "true_label": names[errors["true_label"].to_numpy()],
                          "observed_label": names[errors["observed_label"].to_numpy()]})
    return frame, truth


# ----------------------------------------------------------------------------------------------
# The methods


def run_detector(csv: Path, out: Path) -> tuple[pd.DataFrame, float]:
    """``influence-signals debug`` with its defaults; its suspects.csv and wall seconds."""
    shutil.rmtree(out, ignore_errors=True)  # the benchmark's own folder from an earlier run: the command starts afresh
    started = time.perf_counter()
    code = debug_main(["debug", str(csv), "--label", "label", "--id", "key", "--out", str(out), "--cores", "2"])
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"debug failed on {csv} (exit {code})")
    suspects = pd.read_csv(out / "suspects.csv", dtype={"id": str, "observed_label": str, "suggested_label": str},
                           keep_default_na=False)
    return suspects, seconds


def out_of_sample(x: np.ndarray, y: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = (make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)) if kind == "lr"
             else HistGradientBoostingClassifier(random_state=seed))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    return np.asarray(cross_val_predict(model, x, y, cv=folds, method="predict_proba"))


def run_baselines(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Each baseline's scores (higher = more suspicious), flags (or None) and seconds."""
    from cleanlab import Datalab
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    x = frame.drop(columns=["key", "label"]).to_numpy(np.float64)
    classes, y = np.unique(frame["label"].astype(str).to_numpy(), return_inverse=True)
    scaled = StandardScaler().fit_transform(x)
    out: dict[str, dict[str, Any]] = {}
    for kind in ("lr", "hgb"):
        started = time.perf_counter()
        probabilities = out_of_sample(x, y, kind)
        fitted = time.perf_counter() - started
        started = time.perf_counter()
        quality = get_label_quality_scores(y, probabilities)
        flags = find_label_issues(y, probabilities)
        out[f"cleanlab_{kind}"] = {"label_score": 1 - quality, "label_flag": flags, "pred_probs": probabilities,
                                   "seconds": fitted + time.perf_counter() - started}
        started = time.perf_counter()
        lab = Datalab(data={"label": y}, label_name="label", verbosity=0)
        lab.find_issues(pred_probs=probabilities, features=scaled, issue_types={"label": {}, "outlier": {}})
        issues = lab.get_issues()
        out[f"datalab_{kind}"] = {"label_score": 1 - issues["label_score"].to_numpy(),
                                  "label_flag": issues["is_label_issue"].to_numpy(),
                                  "anomaly_score": 1 - issues["outlier_score"].to_numpy(),
                                  "anomaly_flag": issues["is_outlier_issue"].to_numpy(),
                                  "seconds": fitted + time.perf_counter() - started}
    started = time.perf_counter()
    forest = IsolationForest(random_state=0).fit(scaled)
    out["isolation_forest"] = {"anomaly_score": -forest.score_samples(scaled), "anomaly_flag": forest.predict(scaled) < 0,
                               "seconds": time.perf_counter() - started}
    started = time.perf_counter()
    lof = LocalOutlierFactor(n_neighbors=20)
    lof_flags = lof.fit_predict(scaled) < 0
    out["lof"] = {"anomaly_score": -lof.negative_outlier_factor_, "anomaly_flag": lof_flags,
                  "seconds": time.perf_counter() - started}
    started = time.perf_counter()
    distances = NearestNeighbors(n_neighbors=6).fit(scaled).kneighbors(scaled)[0][:, 1:].mean(1)
    out["knn"] = {"anomaly_score": distances, "anomaly_flag": None, "seconds": time.perf_counter() - started}
    return out


def cached_baselines(frame: pd.DataFrame, folder: Path) -> dict[str, dict[str, Any]]:
    """Baselines from ``folder/baselines.json`` when it was computed on this very table, else computed."""
    digest = hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()
    path = folder / "baselines.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("sha256") == digest:
            return {m: {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in entry.items()}
                    for m, entry in stored["methods"].items()}
    methods = run_baselines(frame)
    plain = {m: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in entry.items()} for m, entry in methods.items()}
    path.write_text(json.dumps({"sha256": digest, "methods": plain}))
    return methods


# ----------------------------------------------------------------------------------------------
# Scoring


def top_k_precision(score: np.ndarray, target: np.ndarray) -> float:
    """Share of target rows among the k highest scores, k = #target (ties to the lower row index)."""
    k = int(target.sum())
    order = np.lexsort((np.arange(len(score)), -np.nan_to_num(score.astype(np.float64), nan=-np.inf)))
    return float(target[order[:k]].mean()) if k else float("nan")


def flag_quality(flags: np.ndarray | None, target: np.ndarray) -> dict[str, float]:
    if flags is None:
        return {"precision": np.nan, "recall": np.nan, "f1": np.nan, "flagged": np.nan}
    flags = flags.astype(bool)
    hits = float((flags & target).sum())
    precision, recall = hits / max(flags.sum(), 1), hits / max(target.sum(), 1)
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "flagged": int(flags.sum())}


def score_case(suspects: pd.DataFrame, baselines: dict[str, dict[str, Any]], truth: pd.DataFrame,
               seconds: float) -> list[dict[str, Any]]:
    """One row per method and target: top-k precision, the flagged set's quality, and the detector's extras."""
    ours = suspects.set_index("id").loc[truth["id"]]
    kind = truth["kind"].to_numpy()
    present = [k for k in ("mislabel", "anomaly") if (kind == k).any()]
    rows: list[dict[str, Any]] = []
    for target in present:
        kept = (kind == "none") | (kind == target)
        mask = (kind == target)[kept]
        typed = ours["glitch_type"].to_numpy()
        score = ours["suspicion"].to_numpy() if len(present) == 1 else \
            ours["label_score" if target == "mislabel" else "novelty"].to_numpy()
        rows.append({"target": target, "method": "detector", "k": int(mask.sum()), "seconds": seconds,
                     "top_k": top_k_precision(score[kept], mask), **flag_quality((typed == target)[kept], mask)})
        column = "label" if target == "mislabel" else "anomaly"
        for method in (LABEL_METHODS if target == "mislabel" else ANOMALY_METHODS):
            entry = baselines[method]
            flags = entry.get(f"{column}_flag")
            rows.append({"target": target, "method": method, "k": int(mask.sum()), "seconds": entry["seconds"],
                         "top_k": top_k_precision(np.asarray(entry[f"{column}_score"])[kept], mask),
                         **flag_quality(None if flags is None else np.asarray(flags)[kept], mask)})
    flagged = (ours["glitch_type"] != "none").to_numpy() & (kind != "none")
    typed_kind = np.where(ours["glitch_type"].to_numpy() == "anomaly", "anomaly", "mislabel")
    repaired = flagged & (kind == "mislabel") & (ours["glitch_type"].to_numpy() == "mislabel")
    extras = {"type_accuracy": float((typed_kind[flagged] == kind[flagged]).mean()) if flagged.any() else np.nan,
              "repair_accuracy": float((ours["suggested_label"].to_numpy()[repaired] ==
                                        truth["true_label"].to_numpy()[repaired]).mean()) if repaired.any() else np.nan}
    for row in rows:
        if row["method"] == "detector":
            row.update(extras)
    return rows


# ----------------------------------------------------------------------------------------------
# The summary


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per data set, scenario and target: ours beside the best baseline, and the checks."""
    keys = ["set", "scenario", "target"]
    mean = results.groupby([*keys, "method"], sort=False)[["top_k", "f1", "flagged", "k", "seconds", "type_accuracy",
                                                           "repair_accuracy"]].mean()
    lines = []
    for (name, scenario, target), group in mean.groupby(level=[0, 1, 2], sort=False):
        group = group.droplevel([0, 1, 2])
        ours = group.loc["detector"]
        others = group.drop(index="detector")
        best_top = others["top_k"].idxmax()
        datalab = others.loc[[m for m in others.index if m.startswith("datalab")], "f1"]
        margin = 0.0 if target == "mislabel" else -0.02
        lines.append({
            "set": name, "scenario": scenario, "target": target, "k": ours["k"],
            "top_k": ours["top_k"], "best_baseline": best_top, "best_top_k": others.loc[best_top, "top_k"],
            "f1": ours["f1"], "datalab_f1": datalab.max(), "flagged": ours["flagged"],
            "type_accuracy": ours["type_accuracy"], "repair_accuracy": ours["repair_accuracy"],
            "seconds": ours["seconds"], "baseline_seconds": others.loc[best_top, "seconds"],
            "top_k_ok": bool(ours["top_k"] >= others.loc[best_top, "top_k"] + margin - 1e-9),
            "f1_ok": bool(ours["f1"] >= datalab.max() - 1e-9),
            "count_ok": bool(ours["top_k"] < 0.85 or abs(ours["flagged"] - ours["k"]) <= 0.3 * ours["k"]),
        })
    return pd.DataFrame(lines)


def markdown(table: pd.DataFrame, seeds: int, seconds: float, variants: pd.DataFrame | None = None) -> str:
    names = {"cleanlab_lr": "cleanlab (LR)", "cleanlab_hgb": "cleanlab (HGB)", "datalab_lr": "Datalab (LR)",
             "datalab_hgb": "Datalab (HGB)", "isolation_forest": "Isolation Forest", "lof": "LOF", "knn": "kNN"}
    fmt = lambda v: "" if pd.isna(v) else f"{v:.2f}"  # noqa: E731
    lines = ["# Detection benchmark results", "",
             "Produced by `python benchmarks/detection_benchmark.py`; not edited by hand.", "",
             f"Machine: {platform.machine()}, {platform.python_version()}; mean over {seeds} seeds; the whole run "
             f"took {seconds / 60:.0f} min.", "",
             "| data set | scenario | target | k | top-k ours | best baseline | its top-k | flagged F1 ours | Datalab F1 "
             "| flagged / true | type acc. | repair acc. | ours s | baseline s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for line in table.itertuples(index=False):
        mark = lambda ok: "" if ok else " ✗"  # noqa: E731
        lines.append(f"| {line.set} | {line.scenario} | {line.target} | {line.k:.0f} | {fmt(line.top_k)}{mark(line.top_k_ok)} "
                     f"| {names.get(line.best_baseline, line.best_baseline)} | {fmt(line.best_top_k)} "
                     f"| {fmt(line.f1)}{mark(line.f1_ok)} | {fmt(line.datalab_f1)} "
                     f"| {line.flagged:.0f} / {line.k:.0f}{mark(line.count_ok)} | {fmt(line.type_accuracy)} "
                     f"| {fmt(line.repair_accuracy)} | {line.seconds:.0f} | {line.baseline_seconds:.1f} |")
    checks = {"top-k": table["top_k_ok"], "flagged F1 >= Datalab": table["f1_ok"], "count within 30 %": table["count_ok"]}
    lines += ["", "✗: a check that fails. Checks passed: " + "; ".join(f"{name} {int(v.sum())} of {len(v)}"
                                                                      for name, v in checks.items()) + "."]
    if variants is not None and len(variants):
        lines += ["", "What each design choice is worth: the detector's alternatives recomputed from each case's "
                  "held-out probabilities (`pred_probs.csv`) and table, mean over the cases with that glitch kind "
                  "(label: mislabel rows; novelty: anomaly rows):", "",
                  "| part | variant | top-k | flagged F1 | cases |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {v.part} | {v.variant} | {v.top_k:.3f} | {v.f1:.3f} | {v.cases} |" for v in variants.itertuples()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# What each design choice is worth: variants recomputed from a case's held-out probabilities


FUSED_SIGNALS = {"si": "self-influence (SI, the study's)", "cnci": "CNCI (the follow-up's)", "aai": "AAI",
                 "aum": "AUM (training dynamics)", "grad_norm": "gradient norm"}
"""Influence and training-dynamics signals tried as a third rank in the label evidence (their mean over the runs
where the row was in training, suspects.csv's columns)."""


def label_variants(labels: np.ndarray, probs: np.ndarray, ours: np.ndarray, signals: dict[str, np.ndarray]
                   ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(ranking score, flags) of the label evidence the detector could have used, on the rows it keeps;
    ``ours``: the detector's own (suspects.csv's ``label_score``: held-out threshold margin and the training
    loss at the checkpoint it chose, fused by rank); ``signals``: each of ``FUSED_SIGNALS``' scores."""
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues

    from influence_signals import detector

    rows = np.arange(len(labels))
    others = probs.copy()
    others[rows, labels] = -np.inf
    count = detector.mislabel_count(labels, probs)
    variants = {"1 - p(observed)": 1 - probs[rows, labels], "margin": others.max(1) - probs[rows, labels],
                "threshold margin": detector.label_score(labels, probs), "threshold margin + training loss (ours)": ours}
    out = {name: (score, detector.top_rows(score, count)) for name, score in variants.items()}
    for name, values in signals.items():  # fused by rank as the training loss is: a third each
        fused = (2 * detector.percentile(ours) + detector.percentile(values)) / 3
        out[f"ours + {FUSED_SIGNALS[name]}, a third each"] = (fused, detector.top_rows(fused, count))
    out["ours, flagged by cleanlab's find_label_issues"] = (ours, find_label_issues(labels, probs))
    out["ours, flagged by the uncalibrated count"] = (ours, detector.top_rows(ours, int(num_label_issues(labels, probs))))
    return out


def novelty_variants(x: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(score, declared) of the novelty the detector could have used."""
    from influence_signals import detector

    raw = detector.robust_z(detector.knn_log_distance(detector.winsorised(x, np.inf)))
    z = detector.robust_z(detector.knn_log_distance(detector.winsorised(x)))
    scale = detector.tail_scale(z)
    p_values = detector.tail_p_values(z, scale)
    return {"kNN, not clipped": (raw, detector.local_fdr(raw, detector.tail_scale(raw)) < detector.LFDR_CUT),
            "kNN clipped at 8 sd, local FDR (ours)": (z, detector.local_fdr(z, scale) < detector.LFDR_CUT),
            "kNN clipped, Benjamini-Hochberg on tail p-values": (z, detector.benjamini_hochberg(p_values, 0.1)),
            "kNN clipped, robust z > 3.5": (z, z > 3.5)}


def ablation(out: Path) -> pd.DataFrame:
    """Mean top-k precision and flagged F1 of each variant over the cases in ``out`` (their stored files)."""
    rows = []
    for case in sorted((out / "cases").glob("*")):
        if not (case / "debug" / "pred_probs.csv").exists() or not (case / "truth.csv").exists():
            continue
        truth = pd.read_csv(case / "truth.csv", dtype={"id": str}, keep_default_na=False)
        probs_table = pd.read_csv(case / "debug" / "pred_probs.csv", dtype={"id": str}, keep_default_na=False)
        suspects = pd.read_csv(case / "debug" / "suspects.csv", dtype={"id": str}, keep_default_na=False).set_index("id")
        frame = pd.read_csv(case / "data.csv", dtype={"key": str}, keep_default_na=False).set_index("key")
        ids = probs_table["id"].to_numpy()
        kind = truth.set_index("id").loc[ids, "kind"].to_numpy()
        classes = list(probs_table.columns[2:])
        labels = np.searchsorted(classes, probs_table["observed_label"].astype(str).to_numpy())
        probs = probs_table[classes].to_numpy()
        kept = kind != "anomaly"  # as the detector does with the rows it declares
        if (kind == "mislabel").any():
            ours = suspects.loc[ids, "label_score"].to_numpy(np.float64)
            target = (kind == "mislabel")[kept]
            signals = {name: suspects.loc[ids, name].to_numpy(np.float64)[kept] for name in FUSED_SIGNALS}
            for name, (score, flags) in label_variants(labels[kept], probs[kept], ours[kept], signals).items():
                rows.append({"part": "label", "variant": name, "top_k": top_k_precision(score, target),
                             "f1": flag_quality(flags, target)["f1"]})
        if (kind == "anomaly").any():
            x = frame.loc[ids].drop(columns=["label"]).to_numpy(np.float64)
            kept = kind != "mislabel"
            target = (kind == "anomaly")[kept]
            for name, (score, declared) in novelty_variants(x).items():
                rows.append({"part": "novelty", "variant": name, "top_k": top_k_precision(score[kept], target),
                             "f1": flag_quality(declared[kept], target)["f1"]})
    table = pd.DataFrame(rows)
    return table.groupby(["part", "variant"], sort=False).agg(top_k=("top_k", "mean"), f1=("f1", "mean"),
                                                              cases=("f1", "size")).reset_index()


def code_digest() -> str:
    """A hash of the package's source: a case's detector result is reused only for the very same code."""
    import influence_signals

    package = Path(influence_signals.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".j2")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def detector_rows(frame: pd.DataFrame, truth: pd.DataFrame, case: Path, code: str) -> list[dict[str, Any]]:
    """The case's scored rows, from ``case/rows.json`` when made from this table and code, else computed."""
    key = {"data": hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest(), "code": code}
    path = case / "rows.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if stored["key"] == key:
            return list(stored["rows"])
    frame.to_csv(case / "data.csv", index=False)
    truth.to_csv(case / "truth.csv", index=False)
    suspects, seconds = run_detector(case / "data.csv", case / "debug")
    rows = score_case(suspects, cached_baselines(frame, case), truth, seconds)
    path.write_text(json.dumps({"key": key, "rows": rows}, default=float))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/detection_benchmark"), help="work folder")
    parser.add_argument("--no-write", action="store_true", help="print the summary; leave benchmarks/ as it is")
    args = parser.parse_args(argv)
    started, code = time.perf_counter(), code_digest()
    rows: list[dict[str, Any]] = []
    for name in args.sets:
        for scenario in args.scenarios:
            for seed in range(args.seeds):
                case = args.out / "cases" / f"{name}_{scenario}_{seed}"
                case.mkdir(parents=True, exist_ok=True)
                frame, truth = make_case(name, scenario, seed)
                scored = detector_rows(frame, truth, case, code)
                rows.extend({"set": name, "scenario": scenario, "seed": seed, **row} for row in scored)
                print(f"{name} {scenario} seed {seed}: detector {scored[0]['seconds']:.0f} s", flush=True)
    results = pd.DataFrame(rows)
    table = summary(results)
    text = markdown(table, args.seeds, time.perf_counter() - started, ablation(args.out))
    print(text)
    if not args.no_write:
        results.to_csv(RESULTS_CSV, index=False, float_format="%.4g")
        RESULTS_MD.write_text(text)
        readme_report.update_benchmark(HERE.parent / "README.md", "detection")


if __name__ == "__main__":
    main()
