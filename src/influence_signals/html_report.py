"""The debug command's page, ``report.html``: one self-contained file (styles, script and images inline).

It opens with one summary per issue type (what it is, how many rows, how sure), then two plots of the
evidence, the most confused class pairs, and a table of the flagged rows that sorts and filters in the browser
(plain inline JavaScript that only reorders and hides rows rendered here, so every value passes through
Jinja's autoescaping and none is ever parsed as HTML or script).
"""
from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import datasets
from .companions import COMPANIONS
from .crossfit import fold_folders
from .detector import LFDR_CUT, predictability

TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_ROWS = 500
"""Rows the table holds at most: beyond that a page gets slow to sort, and suspects.csv holds every row."""
N_CONTEXT = 20
"""Unflagged rows shown after the flagged ones: the borderline, so a reader sees where the cut falls."""
N_PAIRS = 10
STANDS_OUT = 2.0
"""A value is listed as deviating from |robust z| >= this (or a category / blank this rare, as a z)."""


def thumbnail(path: Path, size: int = 72) -> str:
    """A PNG data URI of an image, upscaled (nearest) when small, downscaled when large."""
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def original_rows(spec: Mapping[str, Any], ids: np.ndarray) -> pd.DataFrame:
    """The user's table as written (feature columns only, text and blanks included), indexed by row id:
    what the page shows, not the encoded numbers the networks saw."""
    frame = datasets.read_frame(Path(spec["path"]), "table")
    frame = frame.drop(columns=[c for c in (spec["label"], spec.get("id"), *spec.get("drop", ())) if c in frame.columns])
    return frame.set_axis(ids.astype(str), axis=0)


def shown(value: Any) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value)


# ----------------------------------------------------------------------------------------------
# Which of a row's values stand out


def _rarity_z(share: np.ndarray) -> np.ndarray:
    """A share of rows as the |z| of a normal two-sided tail that rare, so rare categories and blanks rank
    with numeric deviations (1 % of rows -> 2.6)."""
    from scipy.stats import norm

    return np.asarray(norm.isf(np.clip(share, 1e-12, 1.0) / 2))


def deviations(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per cell, how far the user's value lies from its column's bulk (a robust z: against the median and
    the MAD, not the mean and sd, which the anomalies themselves inflate) and the share of rows holding it
    where that is the better measure (categories, blanks, near-constant columns; NaN otherwise).

    Numbers (and text that is numbers) get (v - median) / (1.4826 MAD), with 1.2533 x mean absolute
    deviation where the MAD is 0; a category its rarity (``_rarity_z``), signed +; free text and dates are
    not judged (NaN), as ``datasets.encode_features`` does not use them."""
    z = pd.DataFrame(np.nan, index=frame.index, columns=frame.columns)
    share = pd.DataFrame(np.nan, index=frame.index, columns=frame.columns)
    n = max(len(frame), 1)
    for column in frame.columns:
        values = frame[column]
        if not pd.api.types.is_bool_dtype(values) and pd.api.types.is_numeric_dtype(values):
            numbers = values.astype(np.float64)
        else:
            text = values.astype("string").str.strip()
            present = text.notna() & (text != "")
            numbers = pd.to_numeric(text.where(present), errors="coerce")
            if not present.any() or numbers[present].notna().mean() < 0.95:
                if 0 < text[present].nunique() <= datasets.MAX_CATEGORIES:
                    filled = text.fillna("")
                    counts = filled.map(filled.value_counts()).to_numpy(np.float64) / n
                    z[column], share[column] = _rarity_z(counts), counts
                continue
        numbers = numbers.astype(np.float64)
        blank = numbers.isna().to_numpy()
        present_numbers = numbers[~blank]
        if len(present_numbers):
            median = float(present_numbers.median())
            spread = 1.4826 * float((present_numbers - median).abs().median())
            spread = spread or 1.2533 * float((present_numbers - median).abs().mean())
            if spread > 0:
                z[column] = ((numbers - median) / spread).to_numpy()
            else:  # one value in every row: the rows that differ, by how rare they are
                counts = numbers.map(numbers.value_counts()).to_numpy(np.float64) / n
                z[column] = np.where(numbers == median, 0.0, _rarity_z(counts))
                share[column] = np.where(numbers == median, np.nan, counts)
        if blank.any():
            z.loc[blank, column] = float(_rarity_z(np.array([blank.mean()]))[0])
            share.loc[blank, column] = blank.mean()
    return z, share


def standing_out(values: pd.Series, z: pd.Series, share: pd.Series, count: int) -> list[dict[str, Any]]:
    """The ``count`` values of a row furthest from their columns' bulk, from |z| >= ``STANDS_OUT``."""
    order = z.abs().sort_values(ascending=False, kind="mergesort")
    picked = order[order >= STANDS_OUT].head(count).index
    return [{"column": str(c), "value": shown(values[c]) or "(blank)", "z": float(z[c]),
             "share": None if np.isnan(share[c]) else float(share[c])} for c in picked]


# ----------------------------------------------------------------------------------------------
# Plots: overlaid histograms as inline SVG


def histograms(groups: Sequence[tuple[str, str, np.ndarray]], lo: float, hi: float, ticks: Sequence[tuple[float, str]],
               bins: int = 20, width: int = 460, height: int = 150) -> dict[str, Any]:
    """Bars of overlaid histograms over [lo, hi] (values beyond are counted in the end bins), one per group
    (name, css class, values), each as the share of its own group's rows: a group of 10 rows and one of
    1,000 show their shapes side by side, which counts would hide."""
    edges = np.linspace(lo, hi, bins + 1)
    bar = width / bins
    shares = []
    for _, _, values in groups:
        counts, _ = np.histogram(np.clip(values, lo, hi), bins=edges)
        shares.append((counts, counts / max(len(values), 1)))
    tallest = max([float(s.max()) for _, s in shares if len(s)] + [1e-12])
    out = []
    for (name, kind, values), (counts, share) in zip(groups, shares):
        bars = [{"x": round(i * bar, 1), "w": round(bar - 1, 1), "h": round(height * s / tallest, 1),
                 "y": round(height - height * s / tallest, 1), "count": int(c), "share": float(s),
                 "lo": float(edges[i]), "hi": float(edges[i + 1])} for i, (c, s) in enumerate(zip(counts, share)) if c]
        out.append({"name": name, "kind": kind, "n": len(values), "bars": bars})
    return {"groups": out, "width": width, "height": height, "lo": lo, "hi": hi, "tallest": tallest, "ticks": list(ticks),
            "x": lambda value: round((min(max(value, lo), hi) - lo) / (hi - lo) * width, 1)}


def confused_pairs(suspects: pd.DataFrame, count: int = N_PAIRS) -> dict[str, Any]:
    """The ``count`` most frequent (observed, suggested) pairs among the flagged mislabels, and how many
    pairs and rows are left out: a 40-pair list on a 7-class table buries the few that matter."""
    flagged = suspects[suspects["glitch_type"] == "mislabel"]
    pairs = Counter(zip(flagged["observed_label"], flagged["suggested_label"])).most_common()
    return {"pairs": [{"observed": o, "suggested": s, "count": n} for (o, s), n in pairs[:count]],
            "pairs_more": max(0, len(pairs) - count), "pairs_more_rows": sum(n for _, n in pairs[count:])}


# ----------------------------------------------------------------------------------------------
# The page


def report_context(runs: Sequence[str | Path], folds: int, model: str, data: datasets.DataSet, spec: Mapping[str, Any],
                   suspects: pd.DataFrame, harms: Mapping[str, pd.DataFrame], top: float, settings: Mapping[str, Any],
                   pred_probs: np.ndarray, learners: Sequence[str] = ("network",), n_explained: int = 10,
                   max_rows: int = MAX_ROWS) -> dict[str, Any]:
    """Everything the template shows; ``suspects`` is suspects.csv's table (class names, most suspicious
    first), ``pred_probs`` the held-out probabilities in the data's row order, the mean of ``learners``'
    (``crossfit.Evidence``)."""
    names = data.class_names
    n_cut = max(1, int(round(top * len(suspects))))
    kinds = Counter(suspects["glitch_type"])
    accuracy = [pd.read_csv(folder / "history.csv")["val_accuracy"].iloc[-1] for _, _, folder in fold_folders(runs, folds)]
    position = pd.Series(np.arange(len(data.ids)), index=data.ids.astype(str))
    rows_of = position.reindex(suspects["id"].astype(str)).to_numpy()
    p_observed = pred_probs[rows_of, data.y[rows_of]]
    kind = suspects["glitch_type"].to_numpy()
    n_flagged = int((kind != "none").sum())
    n_shown = min(len(suspects), max_rows, n_flagged + N_CONTEXT)

    original = z = share = None
    if data.modality == "tabular":
        original = original_rows(spec, data.ids)
        z, share = deviations(original)
    rows = []
    for rank, line in enumerate(suspects.head(n_shown).itertuples(index=False), start=1):
        entry = {"rank": rank, "id": str(line.id), "observed": line.observed_label, "suggested": line.suggested_label,
                 "glitch_type": line.glitch_type, "suspicion": float(line.suspicion), "confidence": float(line.confidence),
                 "p_observed": float(p_observed[rank - 1]), "thumbnail": None, "standing_out": [], "furthest": 0.0,
                 "values": [], "more_values": 0}
        if data.modality == "image":
            entry["thumbnail"] = thumbnail(Path(spec["path"]) / str(line.id))
        else:
            assert original is not None and z is not None and share is not None
            key = str(line.id)
            values = original.loc[key]
            entry["standing_out"] = standing_out(values, z.loc[key], share.loc[key], 5 if line.glitch_type == "anomaly" else 3)
            entry["furthest"] = float(np.nan_to_num(z.loc[key].abs().max(), nan=0.0))
            entry["values"] = [(str(c), shown(v) or "(blank)") for c, v in list(values.items())[:40]]
            entry["more_values"] = max(0, len(values) - 40)
        rows.append(entry)

    mislabels = suspects[suspects["glitch_type"] == "mislabel"]
    anomalies = suspects[suspects["glitch_type"] == "anomaly"]
    kept = kind != "anomaly"
    issues = {
        "mislabel": {"count": len(mislabels), "share": len(mislabels) / len(suspects),
                     "confidence": float(mislabels["confidence"].mean()) if len(mislabels) else None,
                     "judged": int(kept.sum()),
                     "disagree": int((pred_probs[rows_of].argmax(1) != data.y[rows_of])[kept].sum())},
        "anomaly": {"count": len(anomalies), "share": len(anomalies) / len(suspects),
                    "confidence": float(anomalies["confidence"].mean()) if len(anomalies) else None,
                    "nearest": float(anomalies["novelty"].min()) if len(anomalies) else None,
                    "furthest": float(anomalies["novelty"].max()) if len(anomalies) else None, "lfdr": LFDR_CUT},
    }
    novelty = suspects["novelty"].to_numpy(np.float64)
    label_plot = histograms([("not flagged", "none", p_observed[kind == "none"]),
                             ("flagged as mislabels", "mislabel", p_observed[kind == "mislabel"])], 0.0, 1.0,
                            [(0.0, "0"), (0.5, "0.5"), (1.0, "1")])
    novelty_plot = histograms([("not anomalies", "none", novelty[kept & np.isfinite(novelty)]),
                               ("anomalies", "anomaly", novelty[~kept & np.isfinite(novelty)])], -5.0, 10.0,
                              [(-5.0, "≤ -5"), (0.0, "0"), (5.0, "5"), (10.0, "≥ 10")], bins=30)
    novelty_plot["first_anomaly"] = float(novelty[~kept].min()) if (~kept).any() else None

    explained = []
    for line in suspects.head(n_explained).itertuples(index=False):
        harmed = harms.get(str(line.id))
        explained.append({"id": line.id, "observed": line.observed_label, "suggested": line.suggested_label,
                          "harmed": [] if harmed is None else
                          [{"id": h.val_id, "label": names[int(h.val_label)], "influence": h.influence}
                           for h in harmed.itertuples(index=False)]})
    class_counts = np.bincount(data.y, minlength=len(names))
    agreement, majority, weak = predictability(data.y, pred_probs)
    return {
        "agreement": agreement, "majority": majority, "weak_labels": weak,
        "name": data.name, "path": spec["path"], "modality": data.modality, "model": model,
        "companions": [COMPANIONS[name].label for name in learners if name != "network"],
        "folds": folds, "seeds": len(runs) // folds, "runs": len(runs), "epochs": settings.get("epochs"),
        "n_scores": len(runs) // folds * (folds - 1),
        "n_rows": len(suspects), "n_classes": len(names),
        "classes": [{"name": n, "count": int(c)} for n, c in zip(names, class_counts)],
        "n_features": int(np.prod(data.x.shape[1:])), "shape": "x".join(str(s) for s in data.x.shape[1:]),
        "accuracy_mean": float(np.mean(accuracy)), "accuracy_sd": float(np.std(accuracy, ddof=1)) if len(accuracy) > 1 else 0.0,
        "top": top, "n_cut": n_cut, "n_mislabel": kinds.get("mislabel", 0), "n_anomaly": kinds.get("anomaly", 0),
        "n_none": kinds.get("none", 0), "n_flagged": n_flagged, "issues": issues,
        "rows": rows, "n_unflagged_shown": sum(r["glitch_type"] == "none" for r in rows), "max_rows": max_rows,
        "stands_out": STANDS_OUT,
        **confused_pairs(suspects),
        "label_plot": label_plot, "novelty_plot": novelty_plot,
        "explained": explained,
    }


def render_report(context: Mapping[str, Any]) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)
    return environment.get_template("report.html.j2").render(**context)
