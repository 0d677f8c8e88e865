"""The debug command's page, ``report.html``: one self-contained file (styles inline, images as data URIs)."""
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
from .crossfit import fold_folders

TEMPLATES = Path(__file__).resolve().parent / "templates"


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


def histogram(values: np.ndarray, cut: float, bins: int = 20, width: int = 520, height: int = 160) -> dict[str, Any]:
    """Bars of an inline SVG histogram of suspicion over [0, 1], and the cut's x position."""
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    tallest = max(int(counts.max()), 1)
    bar = width / bins
    bars = [{"x": round(i * bar, 1), "w": round(bar - 1, 1), "h": round(height * c / tallest, 1),
             "y": round(height - height * c / tallest, 1), "count": int(c), "lo": float(edges[i]), "hi": float(edges[i + 1])}
            for i, c in enumerate(counts)]
    return {"bars": bars, "width": width, "height": height, "cut_x": round(cut * width, 1), "cut": cut, "tallest": tallest}


def report_context(runs: Sequence[str | Path], folds: int, model: str, data: datasets.DataSet, spec: Mapping[str, Any],
                   suspects: pd.DataFrame, harms: Mapping[str, pd.DataFrame], top: float, settings: Mapping[str, Any],
                   n_top_rows: int = 20, n_explained: int = 10) -> dict[str, Any]:
    names = data.class_names
    n_cut = max(1, int(round(top * len(suspects))))
    kinds = Counter(suspects["glitch_type"])
    accuracy = [pd.read_csv(folder / "history.csv")["val_accuracy"].iloc[-1] for _, _, folder in fold_folders(runs, folds)]
    original = original_rows(spec, data.ids) if data.modality == "tabular" else None
    rows = []
    for rank, line in enumerate(suspects.head(n_top_rows).itertuples(index=False), start=1):
        entry = {"rank": rank, "id": line.id, "observed": line.observed_label, "suggested": line.suggested_label,
                 "glitch_type": line.glitch_type, "suspicion": line.suspicion, "confidence": line.confidence,
                 "n_scores": line.n_scores, "features": [], "more_features": 0, "thumbnail": None}
        if data.modality == "image":
            entry["thumbnail"] = thumbnail(Path(spec["path"]) / str(line.id))
        else:
            assert original is not None
            values = original.loc[str(line.id)]
            entry["features"] = [(str(c), shown(v)) for c, v in list(values.items())[:40]]
            entry["more_features"] = max(0, len(values) - 40)
        rows.append(entry)
    flagged = suspects[suspects["glitch_type"] == "mislabel"]
    pairs = Counter(zip(flagged["observed_label"], flagged["suggested_label"])).most_common()
    explained = []
    for line in suspects.head(n_explained).itertuples(index=False):
        harmed = harms.get(str(line.id))
        explained.append({"id": line.id, "observed": line.observed_label, "suggested": line.suggested_label,
                          "harmed": [] if harmed is None else
                          [{"id": h.val_id, "label": names[int(h.val_label)], "influence": h.influence}
                           for h in harmed.itertuples(index=False)]})
    class_counts = np.bincount(data.y, minlength=len(names))
    return {
        "name": data.name, "path": spec["path"], "modality": data.modality, "model": model,
        "folds": folds, "seeds": len(runs), "runs": len(runs) * folds, "epochs": settings.get("epochs"),
        "n_rows": len(suspects), "n_classes": len(names),
        "classes": [{"name": n, "count": int(c)} for n, c in zip(names, class_counts)],
        "n_features": int(np.prod(data.x.shape[1:])), "shape": "x".join(str(s) for s in data.x.shape[1:]),
        "accuracy_mean": float(np.mean(accuracy)), "accuracy_sd": float(np.std(accuracy, ddof=1)) if len(accuracy) > 1 else 0.0,
        "top": top, "n_cut": n_cut, "n_mislabel": kinds.get("mislabel", 0), "n_anomaly": kinds.get("anomaly", 0),
        "n_none": kinds.get("none", 0), "top_rows": rows,
        "pairs": [{"observed": o, "suggested": s, "count": n} for (o, s), n in pairs],
        "histogram": histogram(suspects["suspicion"].to_numpy(), float(suspects["suspicion"].iloc[n_cut - 1])),
        "explained": explained,
    }


def render_report(context: Mapping[str, Any]) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)
    return environment.get_template("report.html.j2").render(**context)
