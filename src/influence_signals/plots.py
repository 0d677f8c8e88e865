"""The study's figures, an overview heatmap and Table 1, drawn with matplotlib from per-seed metrics.

The study's figures show its four signals (SI, MI, AAI, GD-class) in a colour-blind-safe categorical palette
(Okabe & Ito) with solid lines and plain bars; any other signal is set apart (dashed lines, hatched bars; the
detector in black), at most ``MAX_SERIES`` series per panel. Every seed is drawn as a point beside the mean,
so a reader sees the spread instead of an sd band over two values. Each PDF carries its caption.
Figure kinds are entries of ``FIGURE_KINDS``; labels and families come from the signal and glitch registries.
matplotlib is imported when a figure is drawn, so planning a run does not pay for it.
"""
from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .artifacts import atomic_path, write_csv, write_text
from .glitches import GLITCHES
from .metrics import summarise
from .registry import Entry, Registry
from .signals import FAMILY_LABELS, family
from .signals import labels as signal_labels

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#0072B2", "#D55E00", "#F0E442")
MAX_SERIES = len(OKABE_ITO) + 1  # seven colours and the detector's black
DETECTOR_COLOUR = "#000000"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
                         "hatch.linewidth": 0.6, "pdf.fonttype": 42})
    return plt


def save_figure(figure: plt.Figure, path: str, caption: str = "") -> None:
    """Write ``figure`` atomically, its caption set under everything drawn so the PDF explains itself."""
    import matplotlib.pyplot as plt

    if caption:
        bottom = figure.get_tightbbox().y0 / figure.get_figheight()
        figure.text(0.01, bottom - 0.02, textwrap.fill(caption, int(figure.get_figwidth() * 16)), ha="left", va="top",
                    fontsize=7)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=str(path).rsplit(".", 1)[-1], bbox_inches="tight")
    plt.close(figure)


@dataclass(frozen=True)
class Style:
    colour: str
    hatch: str
    line: Literal["-", "--"]
    study: bool


def styles(signals: Sequence[str]) -> dict[str, Style]:
    """The look of each series: the study's signals plain, every other one hatched / dashed, the detector black."""
    if len(signals) > MAX_SERIES:
        raise ValueError(f"{len(signals)} signals in one panel; at most {MAX_SERIES} stay readable: {list(signals)}")
    palette = iter(OKABE_ITO)
    out = {}
    for name in signals:
        study = family(name) == "study" and not name.endswith("_first")
        colour = DETECTOR_COLOUR if family(name) == "detector" else next(palette)
        out[name] = Style(colour=colour, hatch="" if study else "////", line="-" if study else "--", study=study)
    return out


def _legend(figure: plt.Figure, signals: Sequence[str], look: dict[str, Style], bars: bool) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = signal_labels()
    handles = [Patch(facecolor=look[s].colour, hatch=look[s].hatch, edgecolor="white", label=names.get(s, s)) if bars else
               Line2D([], [], color=look[s].colour, linestyle=look[s].line, marker="o", label=names.get(s, s))
               for s in signals]
    figure.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False, title="signal",
                  title_fontsize=7)


def _panels(n_rows: int, n_cols: int, width: float, height: float) -> tuple[plt.Figure, np.ndarray]:
    figure, axes = _pyplot().subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows), squeeze=False)
    return figure, axes


def _seed_points(values: np.ndarray, centre: float, spread: float = 0.18) -> np.ndarray:
    """Positions of per-seed points around ``centre``, spread evenly so that equal values stay visible."""
    return centre + (np.linspace(-spread, spread, len(values)) if len(values) > 1 else np.zeros(1))


def bar_panels(data: pd.DataFrame, path: str, signals: Sequence[str], title: str, caption: str,
               row: str, col: str) -> None:
    """Horizontal bars of F1 per signal (mean over seeds, each seed a dot), one panel per ``row`` x ``col``."""
    look, names = styles(signals), signal_labels()
    rows = list(dict.fromkeys(data[row]))
    cols = list(data.groupby(col, sort=False)["panel_order"].min().sort_values(kind="stable").index)
    figure, axes = _panels(len(rows), len(cols), 2.3, 0.28 * len(signals) + 0.9)
    for i, row_value in enumerate(rows):
        labelled = False  # signal names on the first drawn panel of each row only
        for j, col_value in enumerate(cols):
            ax = axes[i, j]
            panel = data[(data[row] == row_value) & (data[col] == col_value)]
            if panel.empty:
                ax.set_axis_off()
                continue
            for y, signal in enumerate(signals):
                values = panel.loc[panel["signal"] == signal, "f1"].to_numpy(dtype=float)
                if len(values) == 0:
                    continue
                mean = float(np.nanmean(values))
                ax.barh(y, mean, color=look[signal].colour, hatch=look[signal].hatch, edgecolor="white", linewidth=0,
                        height=0.75)
                ax.scatter(values, _seed_points(values, y), s=7, color="0.15", edgecolors="white", linewidths=0.3,
                           zorder=3)
                ax.text(1.02, y, f"{mean:.2f}", va="center", ha="left", fontsize=6, transform=ax.get_yaxis_transform())
            ax.set_yticks(range(len(signals)), [names.get(s, s) for s in signals] if not labelled else [])
            labelled = True
            ax.set_ylim(len(signals) - 0.5, -0.5)  # the first signal on top
            ax.set_xlim(0, 1)
            ax.grid(axis="x", color="0.9", linewidth=0.5)
            ax.set_axisbelow(True)
            ax.set_title(f"{row_value}\n{col_value}" if len(rows) > 1 else str(col_value))
            ax.set_xlabel("F1 at the glitch ratio")
    if title:
        figure.suptitle(title, y=1.0)
    figure.tight_layout()
    save_figure(figure, path, caption)


def line_panels(data: pd.DataFrame, path: str, signals: Sequence[str], title: str, caption: str,
                x: str, xlabel: str) -> None:
    """F1 of each signal against ``x`` (the mean over seeds as a line, each seed a point), a panel per setting."""
    look = styles(signals)
    settings = list(dict.fromkeys(data["setting"]))
    figure, axes = _panels(1, len(settings), 4.0, 2.8)
    for ax, setting in zip(axes[0], settings):
        panel = data[data["setting"] == setting]
        for signal in signals:
            rows = panel[panel["signal"] == signal]
            if rows.empty:
                continue
            mean = rows.groupby(x)["f1"].mean()
            ax.plot(mean.index, mean.to_numpy(), color=look[signal].colour, linestyle=look[signal].line, linewidth=1.2)
            ax.scatter(rows[x], rows["f1"], s=7, color=look[signal].colour, alpha=0.7, linewidths=0)
        ticks = sorted(panel[x].unique())
        ax.set_xticks(ticks if len(ticks) <= 10 else ticks[::int(np.ceil(len(ticks) / 10))])
        ax.set_ylim(-0.02, 1.02)
        ax.grid(color="0.9", linewidth=0.5)
        ax.set_title(setting)
        ax.set_xlabel(xlabel)
    axes[0, 0].set_ylabel("F1 at the glitch ratio")
    _legend(figure, signals, look, bars=False)
    if title:
        figure.suptitle(title, y=1.0)
    figure.tight_layout()
    save_figure(figure, path, caption)


def _labelled(frame: pd.DataFrame, signals: Sequence[str], keep_targets: bool = False) -> pd.DataFrame:
    glitch_names = GLITCHES.labels()
    frame = frame[frame["signal"].isin(signals)].copy()
    if "target" not in frame.columns:
        frame["target"] = "all"
    if not keep_targets:
        frame = frame[frame["target"] == "all"]
    frame["Glitch"] = frame["glitch"].map(lambda g: glitch_names.get(g, g))
    frame["setting"] = frame["dataset"] + " / " + frame["model"]
    order = {name: index for index, name in enumerate(GLITCHES.names())}  # panels in the glitch registry's order
    frame["panel_order"] = frame["glitch"].map(order) * 100 + frame["target"].map(lambda t: order.get(t, -1) + 1)
    return frame


def bars(metrics: pd.DataFrame, path: str, signals: Sequence[str], title: str = "", caption: str = "") -> None:
    """Figures 1 and 2: F1 of each signal, a panel per glitch type and data set / model."""
    bar_panels(_labelled(metrics, signals), path, signals, title, caption, row="setting", col="Glitch")


def ratios(metrics: pd.DataFrame, path: str, signals: Sequence[str], title: str = "", caption: str = "") -> None:
    """Figure 4: F1 against the glitch ratio, one line per signal, one panel per data set / model."""
    line_panels(_labelled(metrics, signals), path, signals, title, caption, "ratio", "glitch ratio (%)")


def epochs(epoch_metrics: pd.DataFrame, path: str, signals: Sequence[str], title: str = "", caption: str = "") -> None:
    """Figure 5: F1 of each signal computed from one epoch's checkpoint alone, against the epoch."""
    data = _labelled(epoch_metrics, signals)
    data["setting"] = data["setting"] + " / " + data["ratio"].astype(str) + " %"
    line_panels(data, path, signals, title, caption, "epoch", "epoch (single checkpoint)")


def _mixtures_split(frame: pd.DataFrame) -> pd.DataFrame:
    """A mixture as its glitch types scored on their own rows ("Mixture: <type>" in ``Glitch``), not as a whole."""
    glitch_names = GLITCHES.labels()
    frame = frame[frame["target"].ne("all") | frame["glitch"].ne("mixture")].copy()
    mixed = frame["target"] != "all"
    frame.loc[mixed, "Glitch"] = "Mixture: " + frame.loc[mixed, "target"].map(lambda g: glitch_names.get(g, g))
    return frame


def per_type(metrics: pd.DataFrame, path: str, signals: Sequence[str], title: str = "", caption: str = "") -> None:
    """Figure 6: F1 of each detector or signal per glitch type, mixtures split by the type of their rows."""
    data = _mixtures_split(_labelled(metrics, signals, keep_targets=True))
    bar_panels(data, path, signals, title, caption, row="setting", col="Glitch")


def overview(summary: pd.DataFrame, path: str, signals: Sequence[str]) -> None:
    """A heatmap a reader scans: mean F1 (over models, ratios and seeds) of every signal (rows, grouped by
    family) on every data set and glitch type (columns; a mixture's types scored on their own rows)."""
    plt = _pyplot()
    names = signal_labels()
    data = _mixtures_split(_labelled(summary, signals, keep_targets=True))
    order = sorted((s for s in signals if s in set(data["signal"])), key=lambda s: list(FAMILY_LABELS).index(family(s)))
    table = data.pivot_table(index="signal", columns=["dataset", "Glitch"], values="f1_mean", aggfunc="mean").reindex(order)
    values = table.to_numpy(dtype=float)
    figure, ax = plt.subplots(figsize=(1.0 + 0.5 * table.shape[1], 0.8 + 0.22 * len(order)))
    image = ax.imshow(values, cmap="cividis", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="black" if value > 0.6 else "white")
    ax.set_xticks(range(table.shape[1]), [glitch for _, glitch in table.columns], rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(len(order)), [names.get(s, s) for s in order], fontsize=7)
    sets = [dataset for dataset, _ in table.columns]
    for j in range(1, len(sets)):
        if sets[j] != sets[j - 1]:
            ax.axvline(j - 0.5, color="white", linewidth=3)
    for dataset in dict.fromkeys(sets):
        columns = [j for j, d in enumerate(sets) if d == dataset]
        ax.text(float(np.mean(columns)), -0.8, dataset, ha="center", va="bottom", fontsize=8, fontweight="bold")
    families = [family(s) for s in order]
    for i in range(1, len(order)):
        if families[i] != families[i - 1]:
            ax.axhline(i - 0.5, color="white", linewidth=2)
    for name in dict.fromkeys(families):
        rows = [i for i, f in enumerate(families) if f == name]
        ax.text(table.shape[1] - 0.3, float(np.mean(rows)), FAMILY_LABELS[name], ha="left", va="center", fontsize=7,
                fontweight="bold")
    figure.colorbar(image, ax=ax, fraction=0.03, pad=0.4, shrink=0.7, label="F1 at the glitch ratio")
    ax.set_title("Every signal on every glitch type (mean F1 over models, ratios and seeds)", pad=18)
    save_figure(figure, path, "Rows: signals grouped by family; columns: data set and glitch type (a mixture's "
                "types each scored on their own rows). Brighter is better; blank: not computed for that setting.")


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


@dataclass(frozen=True, kw_only=True)
class FigureKind(Entry):
    """A kind of figure: how it is drawn and which per-job file of metrics it reads."""

    draw: Callable[[pd.DataFrame, str, Sequence[str], str, str], None]
    per_job: str  # a file in each run folder


FIGURE_KINDS: Registry[FigureKind] = Registry("figure kind")
FIGURE_KINDS.add(FigureKind(name="bars", label="F1 per signal and model", draw=bars, per_job="metrics.csv"))
FIGURE_KINDS.add(FigureKind(name="ratios", label="F1 against the glitch ratio", draw=ratios, per_job="metrics.csv"))
FIGURE_KINDS.add(FigureKind(name="epochs", label="F1 per single epoch", draw=epochs, per_job="epoch_metrics.csv"))
FIGURE_KINDS.add(FigureKind(name="per_type", label="F1 per glitch type, mixtures split", draw=per_type,
                            per_job="metrics.csv"))
