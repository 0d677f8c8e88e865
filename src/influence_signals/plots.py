"""The study's figures and Table 1, drawn with seaborn from aggregated metrics (mean +/- sd over seeds)."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .artifacts import atomic_path, write_csv, write_text  # noqa: E402
from .metrics import summarise  # noqa: E402

SIGNAL_LABELS = {
    "si": "Self-Influence", "mi": "Marginal Infl.", "aai": "Avg. Abs. Infl.", "gd_class": "GD-class",
    "sign_aware": "Sign-aware", "class_sign_aware": "Class+sign-aware", "harm_other_classes": "Harm other classes",
    "si_first": "SI, first epoch", "si_slope": "SI slope",
    "knn_distance": "kNN distance", "grad_norm": "Gradient norm",
    "loss": "Loss", "aum": "AUM", "confident_learning": "Confident learning", "isolation_forest": "Isolation Forest",
}
GLITCH_LABELS = {
    "uniform": "Mislabeled (uniform)", "class_dependent": "Mislabeled (class-dependent)",
    "single_class": "Mislabeled (single class)", "near_ca": "Near-CA", "far_ca": "Far-CA", "outlier": "Outliers",
}
KINDS = ("bars", "ratios", "epochs")


def save_figure(figure: plt.Figure, path: str) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=str(path).rsplit(".", 1)[-1], bbox_inches="tight")
    plt.close(figure)


def _labelled(frame: pd.DataFrame, signals: Sequence[str]) -> pd.DataFrame:
    frame = frame[frame["signal"].isin(signals)].copy()
    frame["Signal"] = frame["signal"].map(lambda s: SIGNAL_LABELS.get(s, s))
    frame["Glitch"] = frame["glitch"].map(lambda g: GLITCH_LABELS.get(g, g))
    return frame


def _order(signals: Sequence[str]) -> list[str]:
    return [SIGNAL_LABELS.get(s, s) for s in signals]


def bars(metrics: pd.DataFrame, path: str, signals: Sequence[str], title: str = "") -> None:
    """Figures 1 and 2: F1 of each signal per model (bars, mean +/- sd over seeds), data set x glitch panels."""
    data = _labelled(metrics, signals)
    grid = sns.catplot(data=data, kind="bar", x="f1", y="Signal", hue="model", row="dataset", col="Glitch",
                       order=_order(signals), errorbar="sd", height=3.6, aspect=0.9, sharex=True, margin_titles=True)
    grid.set_axis_labels("F1 at the glitch ratio", "")
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    grid.set(xlim=(0, 1))
    if title:
        grid.figure.suptitle(title, y=1.02)
    save_figure(grid.figure, path)


def _lines(data: pd.DataFrame, path: str, signals: Sequence[str], title: str, x: str, xlabel: str) -> None:
    """F1 of each signal (a line each, mean +/- sd over seeds) against ``x``, one panel per ``setting``."""
    grid = sns.relplot(data=data, kind="line", x=x, y="f1", hue="Signal", hue_order=_order(signals),
                       col="setting", marker="o", errorbar="sd", height=3.6, aspect=1.25)
    grid.set_axis_labels(xlabel, "F1 at the glitch ratio")
    grid.set_titles("{col_name}")
    grid.set(ylim=(0, 1))
    if title:
        grid.figure.suptitle(title, y=1.04)
    save_figure(grid.figure, path)


def ratios(metrics: pd.DataFrame, path: str, signals: Sequence[str], title: str = "") -> None:
    """Figure 4: F1 against the glitch ratio, one line per signal, one panel per data set / model."""
    data = _labelled(metrics, signals)
    data["setting"] = data["dataset"] + " / " + data["model"]
    _lines(data, path, signals, title, "ratio", "glitch ratio (%)")


def epochs(epoch_metrics: pd.DataFrame, path: str, signals: Sequence[str], title: str = "") -> None:
    """Figure 5: F1 of each signal computed from one epoch's checkpoint alone, against the epoch."""
    data = _labelled(epoch_metrics, signals)
    data["setting"] = data["dataset"] + " / " + data["model"] + " / " + data["ratio"].astype(str) + " %"
    _lines(data, path, signals, title, "epoch", "epoch (single checkpoint)")


def overview(summary: pd.DataFrame, path: str, signals: Sequence[str] = tuple(SIGNAL_LABELS)) -> None:
    """Mean F1 (over seeds) of each signal, one panel per glitch type, bars per data set / model / ratio."""
    data = _labelled(summary, signals)
    data["setting"] = data["dataset"] + " / " + data["model"] + " / " + data["ratio"].astype(str) + " %"
    grid = sns.catplot(data=data, kind="bar", x="f1_mean", y="Signal", hue="setting", col="Glitch", col_wrap=3,
                       height=4, aspect=1.0, order=_order(signals))
    grid.set_axis_labels("F1 at the glitch ratio (mean over seeds)", "")
    grid.set_titles("{col_name}")
    grid.set(xlim=(0, 1))
    save_figure(grid.figure, path)


def accuracy_table(accuracy: pd.DataFrame, csv_path: str, markdown_path: str) -> pd.DataFrame:
    """Table 1: accuracy (mean +/- sd over seeds) on the clustered-anomaly rows and on clean validation."""
    columns = ["accuracy_glitched", "accuracy_clean_train", "accuracy_validation"]
    table = summarise(accuracy, ["dataset", "model", "glitch", "ratio"], columns)
    write_csv(csv_path, table)
    lines = ["| data set | model | glitch | ratio (%) | acc. on anomalies | acc. on clean train | acc. on validation |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in table.itertuples():
        cells = [f"{getattr(row, c + '_mean'):.3f} ± {getattr(row, c + '_std'):.3f}" for c in columns]
        lines.append(f"| {row.dataset} | {row.model} | {GLITCH_LABELS.get(row.glitch, row.glitch)} | {row.ratio} | "
                     + " | ".join(cells) + " |")
    write_text(markdown_path, "\n".join(lines) + "\n")
    return table
