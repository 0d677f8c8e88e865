"""Detect, characterise and repair: every row's suspicion, its glitch type and a suggested label.

The detector works on arrays, so that the study's pipeline and a user's data feed it the same way:
labels, out-of-sample class probabilities, a label score, and a ``Novelty`` (a score and the rows it
declares anomalies). What differs between the two settings is only where that evidence comes from:

- **A clean reference** (the study's validation split): ``reference_novelty`` turns distances to the
  validation rows into empirical p-values against the validation rows' own statistics, and the
  probabilities come from a classifier fitted on those rows (``clean_reference_probabilities``).
- **No clean reference** (``influence-signals debug``: every cross-fitting fold holds the same glitches):
  the probabilities are the cross-fitted models' own out-of-sample ones, and ``robust_novelty`` compares
  each row with the bulk of the data itself. Its null is fitted where anomalies are not (the robust centre
  and scale of the log kNN distance, an exponential tail fitted between 1 and 3 robust sd), so anomalies
  in the reference rows cannot absorb it; rows whose local false-discovery rate under that tail is low
  are declared.

Mislabels are flagged by an estimated count, not on every disagreement: confident learning's calibrated
estimate of the noise rate (``mislabel_count``, cleanlab's confident joint) fixes how many rows, the label
score which. Declared anomalies rank first (by novelty), every other row by its label score. Measured in
``benchmarks/detection_benchmark.py`` (README) against cleanlab, Datalab, Isolation Forest, LOF and kNN.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.stats import rankdata

FDR = 0.2
NEIGHBOURS = 5
WINSOR_SD = 8.0
"""Standardised features are clipped at +/- this many sd before distances: without it one near-constant
column (a pixel that is almost always 0) lets its rare natural values dominate every distance (digits:
kNN top-k precision on shifted rows 0.96, clipped 1.00)."""
TAIL_BAND = (1.0, 3.0)
"""Robust z range where the clean bulk's right tail is fitted: beyond the centre, before the anomalies."""
LFDR_WINDOW = 0.5  # half-width (robust sd) of the window in which observed and expected counts are compared
WEAK_MARGIN = 0.1
"""Held-out agreement with the observed labels must beat always guessing the largest class by this much, or
``predictability`` calls the label evidence weak."""
TRANSITION_PRIOR = 0.3
"""Mean cell counts added to each cell of the confident joint before it becomes noise transitions. One full
count flattened a one-way flip's transitions; none let uniform noise's sparse cells rule classes out. Repair
accuracy on the detection benchmark's label noise (54 cases, all their held-out probabilities) with 1 / 0.3 /
0.1 / 0 counts: 0.966 / 0.972 / 0.973 / 0.962; on the generated set's class-dependent noise 0.88 / 0.93 / 0.97 /
0.99. 0.1 lowered the default pipeline's repair accuracy on uniform noise (up to 0.007 on four rows); 0.3 left
its table as it was."""
LFDR_CUT = 0.2  # Efron's conventional cut-off: a row is declared where at most 20 % of its neighbourhood is null
EXACT_PAIRS = 20_000 * 20_000
"""Nearest-neighbour searches over at most this many (query, reference) pairs are exact (scikit-learn's brute
force; every search of a table of up to 20,000 rows); larger ones are approximate (``approximate_neighbours``).
Exact brute force grows as n^2: at 50,000 rows the novelty search took 7 s and one fold's kNN-distance signal
5 s (2 cores), 16 times that at 200,000; scikit-learn's trees were slower still (82 s for that fold in 192
dimensions)."""
PROBES = 32
"""Cells of the approximate search visited per query: recall 0.995 and above on the scale benchmark (20-dimensional
generated tables need the most: 0.91 with 8, 0.97 with 16 at 50,000 rows)."""
QUERY_BLOCK = 32_768  # queries searched at a time by the approximate search
VERDICT_COLUMNS = ("row", "suspicion", "glitch_type", "suggested_label", "confidence", "label_score", "novelty",
                   "novelty_p")


def percentile(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to (0, 1], ties averaged: comparable across signals of any scale."""
    return np.asarray(rankdata(values) / len(values))


@dataclass(frozen=True)
class Novelty:
    """How novel each row is (``score``, higher = more), which rows are declared anomalies, and a p-value."""

    score: np.ndarray
    declared: np.ndarray
    p_values: np.ndarray


# ----------------------------------------------------------------------------------------------
# Label evidence


def class_thresholds(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """Confident learning's per-class thresholds t_c: the mean p(c) over rows labelled c (1 where absent)."""
    thresholds = np.ones(pred_probs.shape[1])
    for c in np.unique(labels):
        thresholds[c] = pred_probs[labels == c, c].mean()
    return np.maximum(thresholds, 1e-12)


def label_score(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """max_{c != y} (p_c - t_c) - (p_y - t_y): the margin of the best other class over the observed one,
    each measured against its class's threshold (higher = more likely mislabelled).

    Thresholds make it class-aware, as confident learning's confident joint is: where one class is
    flipped into another, the flipped rows' p(y) is low for *their* class even when other classes' rows
    are less certain overall. Top-k precision on the benchmark's label noise, averaged: 0.85 against 0.82
    for 1 - p(y) and 0.82 for the plain margin (35 sets; class-dependent noise gained most).
    """
    rows = np.arange(len(labels))
    adjusted = pred_probs - class_thresholds(labels, pred_probs)
    observed = adjusted[rows, labels].copy()
    adjusted[rows, labels] = -np.inf
    return np.asarray(adjusted.max(1) - observed)


def label_evidence(labels: np.ndarray, pred_probs: np.ndarray, training_loss: np.ndarray | None = None) -> np.ndarray:
    """``label_score`` fused by rank with the row's loss while in training, where given.

    The two disagree usefully: held-out probabilities judge a row by models that never saw it, its training
    loss by how hard the models found it to fit (a wrong label is learnt last). The mean of their percentiles
    raised top-k precision on the benchmark's label noise from 0.84 to 0.85 on average (44 sets) and lost
    nowhere by more than 0.10, where either alone lost up to 0.15.

    The influence signals are not part of it: fused the same way as a third rank (the benchmark's ablation, 54
    label-noise cases), SI gave 0.852, AAI 0.850, the follow-up's CNCI 0.710, AUM 0.856 and the gradient norm
    0.857 against 0.854 without them, and the best of those lost 0.06 on MNIST's uniform noise. They stay in
    suspects.csv and the report as evidence to read, not in the verdict.
    """
    score = label_score(labels, pred_probs)
    return score if training_loss is None else (percentile(score) + percentile(training_loss)) / 2


def noise_transitions(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """T[i, j] = P(observed label i | true label j), from confident learning's calibrated confident joint,
    each cell given ``TRANSITION_PRIOR`` mean cell counts more (smoothing toward uniform: a cell with no count
    must not rule a class out)."""
    from cleanlab.count import compute_confident_joint

    n_classes = pred_probs.shape[1]
    present = np.unique(labels)
    counts = np.ones((n_classes, n_classes))
    if len(present) >= 2:
        probs = pred_probs[:, present] / np.maximum(pred_probs[:, present].sum(1, keepdims=True), 1e-12)
        joint = compute_confident_joint(np.searchsorted(present, labels), probs, calibrate=True).astype(np.float64)
        counts[np.ix_(present, present)] = joint + TRANSITION_PRIOR * joint.sum() / joint.size
    return np.asarray(counts / counts.sum(0, keepdims=True))


def suggested_labels(labels: np.ndarray, pred_probs: np.ndarray, transitions: np.ndarray | None = None) -> np.ndarray:
    """The repair if the row is mislabelled: the other class j with the largest p(j | x) T[y, j], the chance the
    row is of class j and a class-j row is labelled y (``noise_transitions``; without it, the largest p(j | x)).

    Where one class is flipped into another, the flipped rows' true class is the one the noise comes from:
    repair accuracy on the benchmark's class-dependent noise rose from 0.82 to 0.88 (generated set), 0.92 to
    0.95 (Image Segmentation), 0.95 to 0.97 (MNIST), and on average from 0.957 to 0.964 over all its sets."""
    weights = pred_probs * transitions[labels] if transitions is not None else pred_probs.copy()
    weights[np.arange(len(labels)), labels] = -np.inf
    return np.asarray(weights.argmax(1))


def mislabel_count(labels: np.ndarray, pred_probs: np.ndarray) -> int:
    """How many rows are mislabelled: confident learning's calibrated estimate (1 - trace of the estimated
    joint of observed and true labels, times n; cleanlab's ``num_label_issues``)."""
    from cleanlab.count import num_label_issues

    present = np.unique(labels)
    if len(present) < 2:
        return 0
    remap = np.searchsorted(present, labels)  # cleanlab wants every class 0..C-1 present
    probs = pred_probs[:, present] / np.maximum(pred_probs[:, present].sum(1, keepdims=True), 1e-12)
    return int(num_label_issues(remap, probs, estimation_method="off_diagonal_calibrated"))


def clean_reference_probabilities(train_features: np.ndarray, val_features: np.ndarray, val_labels: np.ndarray,
                                  n_classes: int) -> np.ndarray:
    """P(class | features) for training rows, from a classifier fitted on the clean validation rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    present = np.unique(val_labels)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(val_features, val_labels)
    probabilities = np.zeros((len(train_features), n_classes))
    probabilities[:, present] = model.predict_proba(train_features)
    return probabilities


# ----------------------------------------------------------------------------------------------
# Novelty against a clean reference


def density_statistics(train: np.ndarray, val: np.ndarray, k: int = NEIGHBOURS
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(statistic of training rows, its null from validation rows) for: log kNN distance to the validation
    rows, and log of its ratio to the kNN distance to the other training rows. Every search is exact while all
    of them are within ``EXACT_PAIRS``, else each is as ``nearest_distances`` does it for its size."""
    k = max(1, min(k, len(val) - 1, len(train) - 1))
    bound = None if len(train) * max(len(train), len(val)) <= EXACT_PAIRS else EXACT_PAIRS

    def log_mean(queries: np.ndarray, references: np.ndarray, same: bool = False) -> np.ndarray:
        return np.asarray(np.log(nearest_distances(queries, references, k, same, bound).mean(1) + 1e-12))

    train_to_val, val_to_val = log_mean(train, val), log_mean(val, val, same=True)  # a row itself excluded
    train_to_train, val_to_train = log_mean(train, train, same=True), log_mean(val, train)
    return [(train_to_val, val_to_val), (train_to_val - train_to_train, val_to_val - val_to_train)]


def empirical_p_values(statistic: np.ndarray, null: np.ndarray) -> np.ndarray:
    """(1 + #{null >= s}) / (m + 1) for each s: the chance a clean row is at least this novel.

    Beyond the null's maximum the tail is extrapolated exponentially (scale: the null's robust sd), so
    that rows far beyond every clean row get p-values below 1 / (m + 1), as Benjamini-Hochberg needs
    when the anomalies are fewer than the validation rows.
    """
    ordered = np.sort(null)
    beyond = len(ordered) - np.searchsorted(ordered, statistic, side="left")
    scale = 1.4826 * np.median(np.abs(ordered - np.median(ordered))) + 1e-12
    tail = np.exp(-np.maximum(0.0, statistic - ordered[-1]) / scale)
    return (1.0 + beyond) / (len(ordered) + 1.0) * tail


def benjamini_hochberg(p_values: np.ndarray, fdr: float = FDR) -> np.ndarray:
    """Which p-values Benjamini-Hochberg declares significant at false-discovery rate ``fdr``."""
    ordered = np.sort(p_values)
    passing = np.flatnonzero(ordered <= fdr * np.arange(1, len(ordered) + 1) / len(ordered))
    return p_values <= ordered[passing.max()] if len(passing) else np.zeros(len(p_values), dtype=bool)


def excess_count(p_values: np.ndarray, levels: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1), z: float = 2.0) -> int:
    """Rows beyond what a clean set would give: max over levels t of #{p <= t} - n t - z sd(n t), at least 0."""
    n = len(p_values)
    return max(0, *(int((p_values <= t).sum() - n * t - z * np.sqrt(n * t * (1 - t))) for t in levels))


def top_rows(score: np.ndarray, count: int) -> np.ndarray:
    """A mask of the ``count`` highest scores (ties to the lower row index)."""
    chosen = np.zeros(len(score), dtype=bool)
    chosen[np.argsort(-score, kind="stable")[:count]] = True
    return chosen


def declared_anomalies(score: np.ndarray, p_values: np.ndarray) -> np.ndarray:
    """The ``count`` most novel rows, ``count`` the larger of the BH discoveries and the excess estimate."""
    return top_rows(score, max(int(benjamini_hochberg(p_values).sum()), excess_count(p_values)))


def reference_novelty(spaces: list[tuple[np.ndarray, np.ndarray]]) -> Novelty:
    """Novelty of training rows against clean reference rows, in each space given as (train, reference).

    For each space the distance to the k nearest reference rows (outliers are far from everything) and its
    ratio to the distance to the k nearest other training rows (far-clustered anomalies sit in a dense
    cluster of their own that no reference row shares) get empirical p-values against the same statistics
    of the reference rows, combined by Bonferroni. How many rows are anomalies is estimated twice and the
    larger kept: Benjamini-Hochberg's discoveries at ``FDR``, and the excess of small p-values over what
    the null expects; the most novel rows are declared.
    """
    p_values = [empirical_p_values(statistic, null) for train, val in spaces
                for statistic, null in density_statistics(train, val)]
    combined = np.minimum(1.0, np.min(p_values, axis=0) * len(p_values))
    score = -np.log(combined) + 1e-3 * percentile(-np.min(p_values, axis=0))  # ties broken by the raw p-values
    return Novelty(score, declared_anomalies(score, combined), combined)


# ----------------------------------------------------------------------------------------------
# Novelty without a clean reference


def winsorised(x: np.ndarray, limit: float = WINSOR_SD) -> np.ndarray:
    """Each column standardised (mean, sd; constant columns centred only) and clipped at +/- ``limit`` sd."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    sd = flat.std(0)
    sd[sd == 0] = 1.0
    return np.asarray(np.clip((flat - flat.mean(0)) / sd, -limit, limit))


def nearest_neighbours(queries: np.ndarray, references: np.ndarray, k: int, same: bool = False,
                       max_pairs: int | None = EXACT_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices (n, k) of each query's k nearest references, ascending; ``same``: the queries are
    the references, each row's own entry left out. Exact up to ``max_pairs`` pairs (None: always), approximate
    beyond (``approximate_neighbours``, its recall measured in ``benchmarks/scale_benchmark.py``)."""
    from sklearn.neighbors import NearestNeighbors

    if max_pairs is None or len(queries) * len(references) <= max_pairs:
        if same:
            distances, indices = NearestNeighbors(n_neighbors=k + 1).fit(references).kneighbors(references)
            return np.asarray(distances[:, 1:]), np.asarray(indices[:, 1:])
        distances, indices = NearestNeighbors(n_neighbors=k).fit(references).kneighbors(queries)
        return np.asarray(distances), np.asarray(indices)
    return approximate_neighbours(queries, references, k, same)


def nearest_distances(queries: np.ndarray, references: np.ndarray, k: int, same: bool = False,
                      max_pairs: int | None = EXACT_PAIRS) -> np.ndarray:
    """The distances of ``nearest_neighbours``."""
    return nearest_neighbours(queries, references, k, same, max_pairs)[0]


def approximate_neighbours(queries: np.ndarray, references: np.ndarray, k: int, same: bool = False,
                           probes: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices (n, k) of approximate k nearest references, ascending: an inverted-file search.

    k-means (fitted on a sample) cuts the references into about sqrt(m) cells; each query is compared only
    with the references of its ``probes`` (default ``PROBES``) nearest cells: about n probes sqrt(m)
    distances instead of n m. Cell by cell, the queries that probe it are compared with its references in
    one matrix product (float32) and keep their k nearest there; the k nearest over all probed cells are
    chosen at the end and their distances recomputed in full precision. A missed neighbour can only make a
    distance larger. Written here because no approximate-search library is a dependency (scikit-learn has
    none, and its trees were slower than brute force on the networks' 192-dimensional features).
    """
    from sklearn.cluster import KMeans

    probes = probes or PROBES
    q = np.ascontiguousarray(queries, dtype=np.float32).reshape(len(queries), -1)
    r = np.ascontiguousarray(references, dtype=np.float32).reshape(len(references), -1)
    n_cells = max(1, min(len(r) // max(2 * k, 1), round(np.sqrt(len(r)))))
    count = min(probes, n_cells)
    rng = np.random.default_rng(seed)
    sample = r[np.sort(rng.choice(len(r), min(len(r), 40 * n_cells), replace=False))]
    centres = KMeans(n_cells, n_init=1, max_iter=25, random_state=seed).fit(sample).cluster_centers_.astype(np.float32)
    centre_norms = (centres**2).sum(1)

    def nearest_cells(x: np.ndarray, how_many: int) -> np.ndarray:
        out = np.empty((len(x), how_many), dtype=np.int64)
        for start in range(0, len(x), 8192):
            d2 = centre_norms[None, :] - 2 * x[start:start + 8192] @ centres.T
            out[start:start + 8192] = (np.argpartition(d2, how_many - 1, axis=1)[:, :how_many] if how_many < n_cells
                                       else np.broadcast_to(np.arange(n_cells), (len(d2), n_cells)))
        return out

    cell_of = nearest_cells(r, 1)[:, 0]
    order = np.argsort(cell_of, kind="stable")
    bounds = np.searchsorted(cell_of[order], np.arange(n_cells + 1))
    place = np.empty(len(r), dtype=np.int64)  # each reference's position within its cell
    place[order] = np.arange(len(r)) - bounds[cell_of[order]]
    # |q - r|^2 - |q|^2 = [q, 1] . [-2 r, |r|^2]: one matrix product per block ranks a query's references
    r_aug = np.hstack([-2 * r, (r**2).sum(1, keepdims=True)])
    best_d = np.empty((len(q), k), dtype=np.float32)
    best_i = np.empty((len(q), k), dtype=np.int64)
    for first in range(0, len(q), QUERY_BLOCK):  # queries in blocks: memory O(block x probes x k)
        chunk = slice(first, first + QUERY_BLOCK)
        q_aug = np.hstack([q[chunk], np.ones((len(q[chunk]), 1), dtype=np.float32)])
        own_cell = cell_of[first:first + len(q_aug)] if same else None
        probed = nearest_cells(q[chunk], count)  # (b, count): query i's slot p holds its p-th probed cell
        visits = np.argsort(probed, axis=None, kind="stable")  # the (query, slot) pairs grouped by cell
        visit_bounds = np.searchsorted(probed.ravel()[visits], np.arange(n_cells + 1))
        found_d = np.full((len(q_aug), count, k), np.inf, dtype=np.float32)  # each slot's k nearest in its cell
        found_i = np.full((len(q_aug), count, k), -1, dtype=np.int64)
        for cell in range(n_cells):
            members = order[bounds[cell]:bounds[cell + 1]]
            cell_visits = visits[visit_bounds[cell]:visit_bounds[cell + 1]]
            if not len(members) or not len(cell_visits):
                continue
            kept = min(k, len(members))
            block = np.ascontiguousarray(r_aug[members].T)
            step = max(1, 4_000_000 // len(members))
            for start in range(0, len(cell_visits), step):
                rows, slots = np.divmod(cell_visits[start:start + step], count)
                d2 = q_aug[rows] @ block
                if own_cell is not None:  # a query in this cell is one of its references: its own entry left out
                    own = np.flatnonzero(own_cell[rows] == cell)
                    d2[own, place[first + rows[own]]] = np.inf
                nearest = np.argpartition(d2, kept - 1, axis=1)[:, :kept] if kept < len(members) else \
                    np.broadcast_to(np.arange(len(members)), (len(rows), kept))
                found_d[rows, slots, :kept] = np.take_along_axis(d2, nearest, 1)
                found_i[rows, slots, :kept] = members[nearest]
        found_d, found_i = found_d.reshape(len(q_aug), -1), found_i.reshape(len(q_aug), -1)
        chosen = np.argpartition(found_d, k - 1, axis=1)[:, :k]
        best_d[chunk], best_i[chunk] = np.take_along_axis(found_d, chosen, 1), np.take_along_axis(found_i, chosen, 1)
    short = np.flatnonzero(~np.isfinite(best_d).all(1))  # too few references in the probed cells: exact
    if len(short):
        from sklearn.neighbors import NearestNeighbors

        exact = NearestNeighbors(n_neighbors=k + int(same)).fit(r).kneighbors(q[short], return_distance=False)
        if same:
            keep = np.argsort(exact == short[:, None], axis=1, kind="stable")[:, :k]  # its own entry last, dropped
            exact = np.take_along_axis(exact, keep, 1)
        best_i[short] = exact
    full_q = np.asarray(queries).reshape(len(queries), -1)
    full_r = np.asarray(references).reshape(len(references), -1)
    distances = np.empty(best_i.shape)
    for start in range(0, len(q), 8192):  # in full precision, a block of rows at a time
        gap = full_q[start:start + 8192, None, :].astype(np.float64) - full_r[best_i[start:start + 8192]]
        distances[start:start + 8192] = np.sqrt((gap**2).sum(-1))
    ascending = np.argsort(distances, axis=1, kind="stable")
    return np.take_along_axis(distances, ascending, 1), np.take_along_axis(best_i, ascending, 1)


def neighbour_recall(queries: np.ndarray, references: np.ndarray, k: int, same: bool = False, sample: int = 2000,
                     seed: int = 0, probes: int | None = None) -> float:
    """Recall of ``approximate_neighbours`` against the exact search, on ``sample`` random queries: the share
    of each query's k true nearest references it returns (ties counted by distance), averaged."""
    from sklearn.neighbors import NearestNeighbors

    rows = np.sort(np.random.default_rng(seed).choice(len(queries), min(sample, len(queries)), replace=False))
    subset = np.asarray(queries)[rows].reshape(len(rows), -1)
    refs = np.asarray(references).reshape(len(references), -1)
    exact = NearestNeighbors(n_neighbors=k + int(same)).fit(refs).kneighbors(subset)[0][:, int(same):]
    if same:  # the approximate search of these rows must leave out their own entries: search them as queries
        approx, _ = approximate_neighbours(np.asarray(queries), refs, k, same=True, probes=probes)
        approx = approx[rows]
    else:
        approx, _ = approximate_neighbours(subset, refs, k, probes=probes)
    tolerance = 1e-6 * np.maximum(exact[:, -1:], 1e-12)
    return float((approx <= exact[:, -1:] + tolerance).mean())


def knn_log_distance(x: np.ndarray, k: int = NEIGHBOURS, max_pairs: int | None = EXACT_PAIRS) -> np.ndarray:
    """log of the mean distance to a row's k nearest other rows (exact up to 20,000 rows: ``nearest_distances``)."""
    k = max(1, min(k, len(x) - 1))
    distances = nearest_distances(x, x, k, same=True, max_pairs=max_pairs).mean(1)
    floor = max(float(np.median(distances)) * 1e-6, 1e-12)  # duplicates: distance 0, log finite
    return np.asarray(np.log(distances + floor))


def robust_z(values: np.ndarray) -> np.ndarray:
    """(v - median) / scale, scale 1.4826 MAD (else IQR / 1.349, else sd, else 1): anomalies in the upper
    tail barely move it, whatever their share below one half."""
    centre = np.median(values)
    for scale in (1.4826 * np.median(np.abs(values - centre)),
                  float(np.subtract(*np.percentile(values, [75, 25]))) / 1.349, float(values.std())):
        if scale > 1e-12:
            return np.asarray((values - centre) / scale)
    return np.zeros(len(values))


def tail_scale(z: np.ndarray, band: tuple[float, float] = TAIL_BAND) -> float:
    """Maximum-likelihood scale b of an exponential tail P(z > t) ~ exp(-(t - lo) / b), fitted to the rows
    inside ``band`` = [lo, hi) only (a truncated exponential), so rows beyond hi cannot inflate it."""
    lo, hi = band
    inside = z[(z >= lo) & (z < hi)] - lo
    if len(inside) < 5:
        return 1.0  # too few rows to fit: about a Gaussian's tail scale over this band

    def negative_log_likelihood(scale: float) -> float:
        return float(len(inside) * (np.log(scale) + np.log1p(-np.exp(-(hi - lo) / scale))) + inside.sum() / scale)

    return float(minimize_scalar(negative_log_likelihood, bounds=(0.05, 10.0), method="bounded").x)


def tail_p_values(z: np.ndarray, scale: float, band: tuple[float, float] = TAIL_BAND) -> np.ndarray:
    """P(a clean row's z >= z_i): the empirical share below ``band``'s start, the fitted tail beyond it."""
    lo = band[0]
    share_beyond = max(float((z >= lo).mean()), 1.0 / len(z))
    empirical = (len(z) - np.searchsorted(np.sort(z), z, side="left")) / len(z)
    return np.where(z >= lo, share_beyond * np.exp(-(z - lo) / scale), empirical)


def local_fdr(z: np.ndarray, scale: float, band: tuple[float, float] = TAIL_BAND, window: float = LFDR_WINDOW
              ) -> np.ndarray:
    """Efron's local false-discovery rate of each row: the count the fitted tail expects within +/- ``window``
    of its z, over the count observed there (1 below ``band``'s start + window, where the null is the data).

    A few natural outliers are about as many as the tail expects (lfdr near 1); a group of anomalies is far
    more than it expects (lfdr near 0), and so is a single row far beyond the tail.
    """
    lo = band[0]
    beyond_lo = float((z >= lo).sum())
    ordered = np.sort(z)
    start, stop = np.maximum(z - window, lo), z + window
    expected = beyond_lo * (np.exp(-(start - lo) / scale) - np.exp(-(stop - lo) / scale))
    observed = np.searchsorted(ordered, stop, side="right") - np.searchsorted(ordered, start, side="left")
    return np.asarray(np.where(z >= lo + window, np.minimum(1.0, expected / np.maximum(observed, 1)), 1.0))


def robust_novelty(spaces: list[np.ndarray], k: int = NEIGHBOURS, max_pairs: int | None = EXACT_PAIRS) -> Novelty:
    """Novelty of every row against the rest of the data, with no clean reference: in each space the
    robust z of the log kNN distance (rows winsorised and standardised first), the largest over spaces.

    Rows whose local false-discovery rate under the bulk's fitted exponential tail is below ``LFDR_CUT``
    are declared anomalies. On the benchmark's feature anomalies (5 % of rows, features 5 sd out) this
    declared 100 % of them, with 0 to 2 clean rows declared per set; with no anomalies, 0 to 2 rows.
    """
    z = np.max([robust_z(knn_log_distance(winsorised(space), k, max_pairs)) for space in spaces], axis=0)
    scale = tail_scale(z)
    return Novelty(z, local_fdr(z, scale) < LFDR_CUT, tail_p_values(z, scale))


# ----------------------------------------------------------------------------------------------
# The verdict


def verdict(labels: np.ndarray, pred_probs: np.ndarray, novelty: Novelty, score: np.ndarray | None = None,
            training_loss: np.ndarray | None = None) -> pd.DataFrame:
    """Every row's suspicion (its percentile in the ranking, 1 = most suspicious), glitch type (mislabel /
    anomaly / none), suggested label and confidence.

    Declared anomalies are set aside first: their probabilities say nothing about their labels, so the
    label evidence (``score``, default ``label_evidence`` of the probabilities and ``training_loss``) and
    the count of mislabels (``mislabel_count``) come from the other rows. Suspicion puts declared anomalies
    first (by novelty), then every row by its label evidence; the suggested label follows the estimated label
    noise (``suggested_labels`` with ``noise_transitions``; -1 for anomalies, which have no class to repair to).
    """
    labels = np.asarray(labels)
    rows = np.arange(len(labels))
    anomalous = novelty.declared
    kept = ~anomalous
    if score is None:
        score = np.full(len(labels), -np.inf)
        if kept.any():
            score[kept] = label_evidence(labels[kept], pred_probs[kept],
                                         None if training_loss is None else training_loss[kept])
    count = mislabel_count(labels[kept], pred_probs[kept]) if kept.any() else 0
    mislabel = top_rows(np.where(anomalous, -np.inf, score), count) & kept
    suggested = suggested_labels(labels, pred_probs, noise_transitions(labels[kept], pred_probs[kept]) if kept.any() else None)
    suspicion = percentile(np.where(anomalous, 2 + percentile(novelty.score), percentile(score)))
    glitch_type = np.where(anomalous, "anomaly", np.where(mislabel, "mislabel", "none"))
    confidence = np.where(anomalous, 1 - novelty.p_values,
                          np.where(mislabel, pred_probs[rows, suggested], pred_probs[rows, labels]))
    columns = (rows, suspicion, glitch_type, np.where(anomalous, -1, suggested), confidence, score, novelty.score,
               novelty.p_values)
    return pd.DataFrame(dict(zip(VERDICT_COLUMNS, columns)))


def detect(labels: Sequence[int] | np.ndarray, pred_probs: np.ndarray, features: np.ndarray | None = None,
           training_loss: np.ndarray | None = None) -> pd.DataFrame:
    """The detector on arrays, as cleanlab's ``find_label_issues(labels, pred_probs)`` is: integer ``labels``
    (n,), out-of-sample ``pred_probs`` (n, C), and optionally ``features`` (n, ...) for the anomaly check
    (``robust_novelty``; without them no row is an anomaly) and each row's ``training_loss``. Returns the
    verdict per row in the input's order (``VERDICT_COLUMNS``)."""
    labels = np.asarray(labels)
    probs = np.asarray(pred_probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"pred_probs must be (n, classes) for {len(labels)} labels, got shape {probs.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must be integers 0..{probs.shape[1] - 1} (the columns of pred_probs)")
    if not np.allclose(probs.sum(1), 1.0, atol=1e-3) or (probs < 0).any():
        raise ValueError("pred_probs rows must be probabilities summing to 1 (apply a softmax first)")
    if features is None:
        novelty = Novelty(np.zeros(len(labels)), np.zeros(len(labels), dtype=bool), np.ones(len(labels)))
    else:
        novelty = robust_novelty([np.asarray(features, dtype=np.float64).reshape(len(labels), -1)])
    return verdict(labels, probs, novelty, training_loss=None if training_loss is None else np.asarray(training_loss))


def predictability(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[float, float, bool]:
    """(agreement, largest class's share, weak): how often the held-out probabilities' top class is the observed
    label, against always guessing the largest class; weak where it wins by less than ``WEAK_MARGIN``. Why: where
    the features barely predict the labels, confident learning's count counts guesses (a random 600-column table
    of 400 rows: 276 flagged, agreement 0.30 against 0.25), and a user must hear that before acting on the flags.
    Agreement is against the observed labels, glitches included, so 40 % uniform noise on a perfectly learnt
    4-class table still gives about 0.6 against 0.25: not weak."""
    agreement = float((pred_probs.argmax(1) == labels).mean())
    majority = float(np.bincount(labels).max() / len(labels))
    return agreement, majority, agreement < majority + WEAK_MARGIN
