"""Figures of the study, drawn with seaborn from the aggregated metrics."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .artifacts import atomic_path  # noqa: E402

SIGNAL_LABELS = {
    "si": "Self-Influence", "mi": "Marginal Infl.", "aai": "Avg. Abs. Infl.", "gd_class": "GD-class",
    "sign_aware": "Sign-aware", "class_sign_aware": "Class+sign-aware", "harm_other_classes": "Harm other classes",
    "loss": "Loss", "aum": "AUM", "confident_learning": "Confident learning", "isolation_forest": "Isolation Forest",
    "knn_distance": "kNN distance", "grad_norm": "Gradient norm",
}


def save_figure(figure: plt.Figure, path: str) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=str(path).rsplit(".", 1)[-1], bbox_inches="tight")
    plt.close(figure)


def overview(summary: pd.DataFrame, path: str, signals: tuple[str, ...] = tuple(SIGNAL_LABELS)) -> None:
    """Mean F1 (over seeds) of each signal, one panel per glitch type, bars per data set / model."""
    data = summary[summary["signal"].isin(signals)].copy()
    data["signal"] = data["signal"].map(SIGNAL_LABELS)
    data["setting"] = data["dataset"] + " / " + data["model"] + " / " + data["ratio"].astype(str) + " %"
    grid = sns.catplot(data=data, kind="bar", x="f1_mean", y="signal", hue="setting", col="glitch", col_wrap=3,
                       height=4, aspect=1.0, order=[SIGNAL_LABELS[s] for s in signals])
    grid.set_axis_labels("F1 at the glitch ratio (mean over seeds)", "")
    grid.set_titles("{col_name}")
    grid.set(xlim=(0, 1))
    save_figure(grid.figure, path)
