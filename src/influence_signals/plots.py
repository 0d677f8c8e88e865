"""The study's figures and Table 1, drawn with seaborn from aggregated metrics (mean +/- sd over seeds).

Figure kinds are entries of ``FIGURE_KINDS``; labels come from the signal and glitch registries.
seaborn is imported when a figure is drawn, so planning a run does not pay for it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from .artifacts import atomic_path, write_csv, write_text
from .glitches import GLITCHES
from .metrics import summarise
from .registry import Entry, Registry
from .signals import labels as signal_labels

if TYPE_CHECKING:
    import matplotlib.pyplot as plt


def _seaborn() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    return sns


def save_figure(figure: plt.Figure, path: str) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=str(path).rsplit(".", 1)[-1], bbox_inches="tight")
    plt.close(figure)


def _labelled(frame: pd.DataFrame, signals: Sequence[str], keep_targets: bool = False) -> pd.DataFrame:
    names, glitch_names = signal_labels(), GLITCHES.labels()
    frame = frame[frame["signal"].isin(signals)].copy()
    if "target" not in frame.columns:
        frame["target"] = "all"
    if not keep_targets:
        frame = frame[frame["target"] == "all"]
    frame["Signal"] = frame["signal"].map(lambda s: names.get(s, s))
    frame["Glitch"] = frame["glitch"].map(lambda g: glitch_names.get(g, g))
    return frame


def _order(signals: Sequence[str]) -> list[str]:
    names = signal_labels()
    return [names.get(s, s) for s in signals]


def bars(metrics: pd.DataFrame, path: str, signals: Sequence[str], title: str = "") -> None:
    """Figures 1 and 2: F1 of each signal per model (bars, mean +/- sd over seeds), data set x glitch panels."""
    data = _labelled(metrics, signals)
    grid = _seaborn().catplot(data=data, kind="bar", x="f1", y="Signal", hue="model", row="dataset", col="Glitch",
                       order=_order(signals), errorbar="sd", height=3.6, aspect=0.9, sharex=True, margin_titles=True)
    grid.set_axis_labels("F1 at the glitch ratio", "")
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    grid.set(xlim=(0, 1))
    if title:
        grid.figure.suptitle(title, y=1.02)
    save_figure(grid.figure, path)


def _lines(data: pd.DataFrame, path: str, signals: Sequence[str], title: str, x: str, xlabel: str) -> None:
    """F1 of each signal (a line each, mean +/- sd over seeds) against ``x``, one panel per ``setting``."""
    grid = _seaborn().relplot(data=data, kind="line", x=x, y="f1", hue="Signal", hue_order=_order(signals),
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


def overview(summary: pd.DataFrame, path: str, signals: Sequence[str]) -> None:
    """Mean F1 (over seeds) of each signal, one panel per glitch type, bars per data set / model / ratio."""
    data = _labelled(summary, signals)
    data["setting"] = data["dataset"] + " / " + data["model"] + " / " + data["ratio"].astype(str) + " %"
    grid = _seaborn().catplot(data=data, kind="bar", x="f1_mean", y="Signal", hue="setting", col="Glitch", col_wrap=3,
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
        lines.append(f"| {row.dataset} | {row.model} | {GLITCHES.labels().get(row.glitch, row.glitch)} | {row.ratio} | "
                     + " | ".join(cells) + " |")
    write_text(markdown_path, "\n".join(lines) + "\n")
    return table


def per_type(metrics: pd.DataFrame, path: str, signals: Sequence[str], title: str = "") -> None:
    """Figure 6: F1 of each detector or signal per glitch type, mixtures split by the type of their rows."""
    data = _labelled(metrics, signals, keep_targets=True)
    glitch_names = GLITCHES.labels()
    mixed = data["target"] != "all"
    data = data[mixed | ~data["glitch"].eq("mixture")].copy()
    data.loc[mixed, "Glitch"] = "Mixture: " + data.loc[mixed, "target"].map(lambda g: glitch_names.get(g, g))
    grid = _seaborn().catplot(data=data, kind="bar", x="f1", y="Signal", hue="dataset", col="Glitch", col_wrap=4,
                              order=_order(signals), errorbar="sd", height=3.4, aspect=0.9, sharex=True)
    grid.set_axis_labels("F1 at the glitch ratio", "")
    grid.set_titles("{col_name}")
    grid.set(xlim=(0, 1))
    if title:
        grid.figure.suptitle(title, y=1.02)
    save_figure(grid.figure, path)


@dataclass(frozen=True, kw_only=True)
class FigureKind(Entry):
    """A kind of figure: how it is drawn and which per-job file of metrics it reads."""

    draw: Callable[[pd.DataFrame, str, Sequence[str], str], None]
    per_job: str  # a file in each run folder


FIGURE_KINDS: Registry[FigureKind] = Registry("figure kind")
FIGURE_KINDS.add(FigureKind(name="bars", label="F1 per signal and model", draw=bars, per_job="metrics.csv"))
FIGURE_KINDS.add(FigureKind(name="ratios", label="F1 against the glitch ratio", draw=ratios, per_job="metrics.csv"))
FIGURE_KINDS.add(FigureKind(name="epochs", label="F1 per single epoch", draw=epochs, per_job="epoch_metrics.csv"))
FIGURE_KINDS.add(FigureKind(name="per_type", label="F1 per glitch type, mixtures split", draw=per_type,
                            per_job="metrics.csv"))
