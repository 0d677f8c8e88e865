"""Scores per training row, one registry entry each (``SIGNALS``): influence signals, novelty and baselines.

All scores are "higher = more suspicious". Each entry declares the inputs it needs; ``SignalInputs``
computes each input once, on first request, for every signal that asks for it, so the pairwise pass over
the train -> validation influence runs only when some selected signal needs |I| or its signed parts.

Notation: I(i, j) = sum_t I_t(i, j) the TracIn influence of train row i on validation row j (positive =
helpful, it lowers j's loss), S_ic = sum_{j in class c} I(i, j) the per-class sums (closed form, no
pairwise pass), P_ic / N_ic the sums of its positive / negative parts over validation rows of class c,
y_i the row's observed label, m the number of validation rows.

With non-negative head inputs (ReLU or pooled-ReLU features: ``ModelSpec.nonnegative_head_inputs``),
h_i . h_j + 1 > 0, so sign I_t(i, j) = sign(e_i . e_j), and for two rows of the same observed label c,
e_i . e_j = sum_{k != c} p_ik p_jk + (1 - p_ic)(1 - p_jc) > 0: a row never harms validation rows of its
own observed class (N_iy = 0). Signals built on "harm to the own class" are then degenerate; ours use
help to the own class (P_iy) and harm to the others instead.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pandas as pd

from .factors import FactorStore
from .registry import Entry, Registry

if TYPE_CHECKING:
    import torch

    from .detector import Novelty

INPUTS = ("class_sums", "class_masses", "self_influence", "features", "logits", "relabelled", "data")


class InfluenceSource(Protocol):
    """What the signals need: per-checkpoint influence tiles, class sums and self-influence (engine or Captum's)."""

    @property
    def n_checkpoints(self) -> int: ...

    @property
    def n_train(self) -> int: ...

    @property
    def n_val(self) -> int: ...

    @property
    def weights(self) -> Any: ...

    def blocks(self, row_block: int, col_block: int) -> Any: ...

    def class_sums(self, y_val: np.ndarray, n_classes: int) -> torch.Tensor: ...

    def self_influence(self) -> torch.Tensor: ...


class View:
    """The influence inputs of one scope: the total over checkpoints (shape (n, ...)) or per checkpoint ((T, n, ...))."""

    def __init__(self, inputs: SignalInputs, per_checkpoint: bool) -> None:
        self._inputs, self._per_checkpoint = inputs, per_checkpoint
        self.y_train: np.ndarray = inputs.y_train
        self.n_val: int = inputs.n_val

    def _pick(self, arrays: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return arrays[1] if self._per_checkpoint else arrays[0]

    @property
    def sums(self) -> np.ndarray:
        return self._pick(self._inputs.class_sums)

    @property
    def pos(self) -> np.ndarray:
        return self._pick(self._inputs.class_masses[0])

    @property
    def neg(self) -> np.ndarray:
        return self._pick(self._inputs.class_masses[1])

    @property
    def si(self) -> np.ndarray:
        si_t = self._inputs.self_influence
        return si_t if self._per_checkpoint else si_t.sum(0)

    @property
    def own(self) -> np.ndarray:
        """(n, C) mask of each row's observed class."""
        mask = np.zeros((len(self.y_train), self._inputs.n_classes), dtype=bool)
        mask[np.arange(len(self.y_train)), self.y_train] = True
        return mask


class SignalInputs:
    """Every input a signal may need, each computed once on first use (float64 numpy arrays)."""

    def __init__(self, source: InfluenceSource, store: FactorStore, row_block: int = 4096, col_block: int = 512,
                 k_neighbours: int = 5, seed: int = 0, data: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.source, self.store, self.data = source, store, data  # data: train and validation inputs, if given
        self.row_block, self.col_block, self.k_neighbours, self.seed = row_block, col_block, k_neighbours, seed
        self.y_train: np.ndarray = store.y_train
        self.y_val: np.ndarray = store.y_val
        self.n_val: int = len(store.y_val)
        self.n_classes: int = store.meta.n_classes
        self.total, self.per_checkpoint = View(self, False), View(self, True)

    @cached_property
    def class_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """S (n, C) and S_t (T, n, C): closed form e_i^T (sum_{j in c} e_j [h_j, 1]^T) [h_i, 1], no pairwise pass."""
        per_t = self.source.class_sums(self.y_val, self.n_classes).cpu().numpy().astype(np.float64)
        return per_t.sum(0), per_t

    @cached_property
    def class_masses(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """(P, P_t), (N, N_t): positive and negative mass per validation class, from one pairwise pass."""
        import torch

        from .influence import class_masses

        sums = torch.from_numpy(self.class_sums[1]).float()  # N = S - P: the pass computes only P
        pos, neg, pos_t, neg_t = (a.cpu().numpy().astype(np.float64) for a in
                                  class_masses(self.source, self.y_val, self.n_classes, self.row_block, self.col_block, sums))
        return (pos, pos_t), (neg, neg_t)

    @cached_property
    def self_influence(self) -> np.ndarray:
        """(T, n), weighted by each checkpoint's w_t."""
        return self.source.self_influence().cpu().numpy().astype(np.float64)

    @property
    def unweighted_self_influence(self) -> np.ndarray:
        """(T, n) with w_t divided out, so trajectories are comparable across learning rates."""
        return self.self_influence / self.source.weights.cpu().numpy().astype(np.float64)[:, None]

    @cached_property
    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """Penultimate features of train and validation rows at the last checkpoint."""
        last = self.store.n_checkpoints - 1
        return self.store.read("train_features", last), self.store.read("val_features", last)

    @cached_property
    def logits(self) -> np.ndarray:
        """Training rows' logits at every checkpoint (T, n, C)."""
        return self.store.all("train_logits")

    def relabelled_masses(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P', N' (n, C): class masses of the last checkpoint's influence with train labels replaced by ``labels``."""
        from .influence import Relabelled, TracInEngine, class_masses

        engine = self.source if isinstance(self.source, TracInEngine) else TracInEngine(self.store)
        relabelled = Relabelled(engine, labels, self.source.weights)
        pos, neg, _, _ = class_masses(relabelled, self.y_val, self.n_classes, self.row_block, self.col_block)
        return pos.cpu().numpy().astype(np.float64), neg.cpu().numpy().astype(np.float64)

    @cached_property
    def cnci(self) -> np.ndarray:
        """The follow-up's CNCI: relabel each row to y' = argmin_l N_il (the class it harms most), recompute its
        last-checkpoint influence, and sum its negative part over validation rows of its observed class."""
        (_, _), (neg, _) = self.class_masses
        _, neg_relabelled = self.relabelled_masses(neg.argmin(-1))
        return np.asarray(neg_relabelled[np.arange(len(self.y_train)), self.y_train])

    @cached_property
    def pcid(self) -> np.ndarray:
        """The follow-up's PCID: 1 / (MPI_i max_l |P_il - P'_il|), P' with each row relabelled to its
        second-most-helped class, MPI_i = sum_l P_il."""
        (pos, _), _ = self.class_masses
        second = np.argsort(-pos, axis=-1, kind="stable")[:, 1]
        pos_relabelled, _ = self.relabelled_masses(second)
        with np.errstate(divide="ignore"):
            return 1.0 / (pos.sum(-1) * np.abs(pos - pos_relabelled).max(-1))

    @cached_property
    def reference_probabilities(self) -> np.ndarray:
        """P(class | features) of training rows from a classifier fitted on the validation rows (fitted once)."""
        from .detector import clean_reference_probabilities

        train_features, val_features = self.features
        return clean_reference_probabilities(train_features, val_features, self.y_val, self.n_classes)

    @cached_property
    def novelty(self) -> Novelty:
        """Novelty against the validation rows, in the penultimate and (where given) the input space."""
        from .detector import reference_novelty

        spaces = [self.features]
        if self.data is not None:
            spaces.append((self.data[0].reshape(len(self.data[0]), -1), self.data[1].reshape(len(self.data[1]), -1)))
        return reference_novelty(spaces)

    @cached_property
    def detections(self) -> pd.DataFrame:
        """The detector's verdict with the validation split as its clean reference: label evidence is the
        reference classifier's 1 - p(observed label) fused by rank with AUM (the training-dynamics margin)."""
        from .baselines import area_under_margin
        from .detector import percentile, verdict

        probabilities = self.reference_probabilities
        p_observed = probabilities[np.arange(len(self.y_train)), self.y_train]
        evidence = (percentile(1 - p_observed) + percentile(area_under_margin(self.logits, self.y_train))) / 2
        return verdict(self.y_train, probabilities, self.novelty, score=evidence)


@dataclass(frozen=True, kw_only=True)
class Signal(Entry):
    """A score per training row: what it needs and how it is computed (from a ``View``, or from all inputs)."""

    needs: tuple[str, ...]
    kind: Literal["influence", "dynamics", "novelty", "baseline", "detector"]
    of_view: Callable[[View], np.ndarray] | None = None  # influence signals: also per checkpoint ("<name>_first")
    of_inputs: Callable[[SignalInputs], np.ndarray] | None = None
    clean_reference: bool = False  # treats the validation rows as clean: meaningless where they are not (debug)
    in_tables: bool = True  # a row of the README's F1 tables (the SI trajectory summaries are not)
    origin: Literal["study", "follow-up", "other"] = "other"  # the study's four, the follow-up's three, the rest

    def __post_init__(self) -> None:
        if (self.of_view is None) == (self.of_inputs is None):
            raise ValueError(f"signal {self.name}: give exactly one of of_view / of_inputs")
        unknown = set(self.needs) - set(INPUTS)
        if unknown:
            raise ValueError(f"signal {self.name}: unknown inputs {sorted(unknown)}; known: {INPUTS}")

    @property
    def per_checkpoint(self) -> bool:
        return self.of_view is not None


def slope(values: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row's trajectory over checkpoints; ``values`` is (T, n)."""
    t = np.arange(values.shape[0], dtype=np.float64)
    t -= t.mean()
    return (t[:, None] * values).sum(0) / max(float((t**2).sum()), 1e-12)


def _trapezoid(values: np.ndarray) -> np.ndarray:
    return np.asarray(np.trapezoid(values, axis=0)) if len(values) > 1 else values[0]


def knn_distance(inputs: SignalInputs) -> np.ndarray:
    """Mean distance of a row's penultimate features to its k nearest validation rows (exact up to
    ``detector.EXACT_PAIRS`` train x validation pairs, approximate beyond: ``detector.nearest_distances``)."""
    from .detector import nearest_distances

    train_features, val_features = inputs.features
    return nearest_distances(train_features, val_features, min(inputs.k_neighbours, len(val_features))).mean(1)


def grad_norm(inputs: SignalInputs) -> np.ndarray:
    """The norm of a row's last-layer gradient at the last checkpoint, |e| sqrt(|h|^2 + 1)."""
    from scipy.special import softmax

    logits = inputs.logits[-1].astype(np.float64)
    errors = softmax(logits, axis=-1)
    errors[np.arange(len(inputs.y_train)), inputs.y_train] -= 1.0
    features = inputs.features[0]  # squared in row blocks: a float64 copy of all is 200 MB at 200,000 rows
    squares = np.concatenate([(features[start:start + 8192].astype(np.float64) ** 2).sum(-1)
                              for start in range(0, len(features), 8192)])
    return np.linalg.norm(errors, axis=-1) * np.sqrt(squares + 1)


def ordinal_ranks(values: np.ndarray) -> np.ndarray:
    """0 for the smallest value .. n - 1 for the largest; ties by row index (stable), NaN as the smallest."""
    order = np.argsort(np.nan_to_num(values, nan=-np.inf), kind="stable")
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(len(values))
    return ranks


def _baselines() -> Any:
    """The baselines module, imported when a baseline is computed (it needs scikit-learn and cleanlab)."""
    from . import baselines

    return baselines


SIGNALS: Registry[Signal] = Registry("signal")
_add = SIGNALS.add
_add(Signal(name="si", label="Self-Influence", needs=("self_influence",), kind="influence", origin="study",
            of_view=lambda v: v.si))  # I(i, i) (Pruthi et al. 2020; the study's SI)
_add(Signal(name="mi", label="Marginal Infl.", needs=("class_sums",), kind="influence", origin="study",
            of_view=lambda v: v.sums.sum(-1)))  # sum_j I(i, j): helpful and harmful mass cancel
_add(Signal(name="aai", label="Avg. Abs. Infl.", needs=("class_masses",), kind="influence", origin="study",
            of_view=lambda v: (v.pos - v.neg).sum(-1) / v.n_val))  # mean_j |I(i, j)|
_add(Signal(name="gd_class", label="GD-class", needs=("class_sums",), kind="influence", origin="study",
            of_view=lambda v: -v.sums.min(-1)))  # -min_c S_ic (the study's GD-class)
_add(Signal(name="sign_aware", label="Sign-aware", needs=("class_masses",), kind="influence",
            of_view=lambda v: -v.neg.sum(-1)))  # the harmful mass -sum_c N_ic, free of MI's cancellation
# Help to the other classes minus help to the own: a mislabelled row's features belong to another class,
# so its gradient helps that class's validation rows and barely its (wrong) own. Not degenerate when N_iy = 0.
_add(Signal(name="class_contrast", label="Other- vs own-class help", needs=("class_masses",), kind="influence",
            of_view=lambda v: (v.pos * ~v.own).max(-1) - (v.pos * v.own).sum(-1)))
# The largest harm to one other class, relative to the row's help to its own: harm concentrated on one
# class (a mislabel's true class) rather than spread thin (a hard but correct row).
_add(Signal(name="harm_concentration", label="Concentrated harm", needs=("class_masses",), kind="influence",
            of_view=lambda v: (-v.neg * ~v.own).max(-1) / ((v.pos * v.own).sum(-1) + (-v.neg).sum(-1) + 1e-12)))
_add(Signal(name="cnci", label="CNCI", needs=("class_masses", "relabelled"), kind="influence", origin="follow-up", of_inputs=lambda i: i.cnci))
_add(Signal(name="pcid", label="PCID", needs=("class_masses", "relabelled"), kind="influence", origin="follow-up", of_inputs=lambda i: i.pcid))
# CFRank: each row's rank under CNCI and under PCID (0 = least suspicious), the larger kept
_add(Signal(name="cfrank", label="CFRank", needs=("class_masses", "relabelled"), kind="influence", origin="follow-up",
            of_inputs=lambda i: np.maximum(ordinal_ranks(i.cnci), ordinal_ranks(i.pcid))))
_add(Signal(name="si_max", label="SI, max over epochs", needs=("self_influence",), kind="dynamics", in_tables=False,
            of_inputs=lambda i: i.unweighted_self_influence.max(0)))
_add(Signal(name="si_area", label="SI, area over epochs", needs=("self_influence",), kind="dynamics", in_tables=False,
            of_inputs=lambda i: _trapezoid(i.unweighted_self_influence)))
_add(Signal(name="si_slope", label="SI slope", needs=("self_influence",), kind="dynamics", in_tables=False,
            of_inputs=lambda i: slope(i.unweighted_self_influence)))
_add(Signal(name="knn_distance", label="kNN distance", needs=("features",), kind="novelty", of_inputs=knn_distance))
_add(Signal(name="grad_norm", label="Gradient norm", needs=("features", "logits"), kind="novelty", of_inputs=grad_norm))
_add(Signal(name="loss", label="Loss", needs=("logits",), kind="dynamics",
            of_inputs=lambda i: _baselines().final_loss(i.logits[-1], i.y_train)))
_add(Signal(name="aum", label="AUM", needs=("logits",), kind="dynamics",
            of_inputs=lambda i: _baselines().area_under_margin(i.logits, i.y_train)))
_add(Signal(name="confident_learning", label="Confident learning", needs=("features",), kind="baseline",
            of_inputs=lambda i: _baselines().confident_learning(i.features[0], i.y_train, i.n_classes, i.seed)))
_add(Signal(name="isolation_forest", label="Isolation Forest", needs=("features",), kind="baseline",
            of_inputs=lambda i: _baselines().isolation_forest(i.features[0], i.seed)))
_add(Signal(name="clean_reference", label="Clean-reference classifier", needs=("features",), kind="novelty",
            clean_reference=True, of_inputs=lambda i: 1 - i.reference_probabilities[np.arange(len(i.y_train)), i.y_train]))
_add(Signal(name="novelty", label="Reference novelty", needs=("features", "data"), kind="novelty",
            clean_reference=True, of_inputs=lambda i: i.novelty.score))
_add(Signal(name="detector", label="Detector (ours)", needs=("features", "logits", "data"), kind="detector",
            clean_reference=True, of_inputs=lambda i: i.detections["suspicion"].to_numpy()))

FIRST_SUFFIX = "_first"  # "<signal>_first": the signal from the first checkpoint alone (the study's early-epoch view)


def table_names() -> list[str]:
    """The rows of the README's F1 tables: every signal that asks for one, the influence signals followed by
    SI from the first checkpoint alone (the study's early-epoch view), then the others."""
    influence = [s.name for s in SIGNALS if s.in_tables and s.kind == "influence"]
    return [*influence, f"si{FIRST_SUFFIX}", *(s.name for s in SIGNALS if s.in_tables and s.kind != "influence")]


FAMILY_LABELS = {"study": "The study's signals", "follow-up": "The follow-up's signals", "influence": "Our influence signals",
                 "dynamics": "Training dynamics", "novelty": "Novelty", "baseline": "Baselines", "detector": "Detector"}


def family(name: str) -> str:
    """A score column's family, for figures that group signals: the study's and the follow-up's signals by
    origin, every other by kind (``<signal>_first`` joins its signal's family)."""
    signal = SIGNALS[name.removesuffix(FIRST_SUFFIX)]
    return signal.origin if signal.origin != "other" else signal.kind


def cross_fitted_names() -> list[str]:
    """What a cross-fitted run on a user's data computes: no signal that treats the validation rows as clean
    (they hold the user's glitches too), and no baseline detector (the detector combines the runs itself)."""
    return [s.name for s in SIGNALS if not s.clean_reference and s.kind != "baseline"]


PAIRWISE_NEEDS = frozenset({"class_masses", "relabelled"})
"""Inputs only the pairwise pass over (training row, validation row) pairs gives: after training, the most
costly part of a cross-fitted run (10,000 rows, 3 folds: 2.6 s of a job's 7, `benchmarks/scale_results.md`)."""


def without_pairwise_pass(names: Sequence[str]) -> list[str]:
    """The selected signals that need no pairwise pass (``PAIRWISE_NEEDS``), in their given order: what the
    debug command computes in the runs of every seed but the first."""
    return [name for name in names if not PAIRWISE_NEEDS & set(SIGNALS[name].needs)]


def per_checkpoint_names(names: Sequence[str] | None = None) -> list[str]:
    """The selected signals that exist per checkpoint, in registry order."""
    return [s.name for s in SIGNALS if s.per_checkpoint and (names is None or s.name in names)]


def score_names(names: Sequence[str] | None = None) -> list[str]:
    """Every column ``compute`` writes for the selected signals: each signal, then each ``<signal>_first``."""
    chosen = [s.name for s in SIGNALS if names is None or s.name in names]
    return [*chosen, *(f"{n}{FIRST_SUFFIX}" for n in per_checkpoint_names(names))]


def labels() -> dict[str, str]:
    """Plot labels of every score column, derived ones included."""
    out = SIGNALS.labels()
    out.update({f"{s.name}{FIRST_SUFFIX}": f"{s.label}, first epoch" for s in SIGNALS if s.per_checkpoint})
    return out


def compute(inputs: SignalInputs, names: Sequence[str] | None = None) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """The selected signals (all by default) per training row; the per-checkpoint ones also as (T, n, S).

    Returns the score table (``row`` plus one column per score), the per-checkpoint array and its signal names.
    """
    chosen = [SIGNALS[name] for name in (names if names is not None else SIGNALS.names())]
    scores: dict[str, np.ndarray] = {}
    for signal in chosen:
        if signal.of_view is not None:
            scores[signal.name] = signal.of_view(inputs.total)
        else:
            assert signal.of_inputs is not None
            scores[signal.name] = signal.of_inputs(inputs)
    stepwise = [s for s in chosen if s.of_view is not None]
    per_epoch = np.zeros((inputs.store.n_checkpoints, len(inputs.y_train), len(stepwise)), dtype=np.float32)
    for index, signal in enumerate(stepwise):
        assert signal.of_view is not None
        per_epoch[:, :, index] = signal.of_view(inputs.per_checkpoint)
        scores[f"{signal.name}{FIRST_SUFFIX}"] = per_epoch[0, :, index].astype(np.float64)
    frame = pd.DataFrame({"row": np.arange(len(inputs.y_train)), **scores})
    return frame, per_epoch, [s.name for s in stepwise]
