"""The follow-up's signals on a hand-built case, the sign fact, mixtures, and the detector's verdicts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import softmax

from influence_signals import datasets, detector, glitches, influence, metrics, models, signals, training
from influence_signals.factors import ARRAYS, FactorStore

RNG = np.random.default_rng(7)
N, M, C, D, T = 7, 9, 3, 4, 2


def write_store(folder: Path, logits: dict[str, np.ndarray], features: dict[str, np.ndarray], y_train: np.ndarray,
                y_val: np.ndarray, weights: list[float]) -> FactorStore:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train_logits": logits["train"], "train_features": features["train"],
              "val_logits": logits["val"], "val_features": features["val"]}
    for name in ARRAYS:
        np.save(folder / f"{name}.npy", arrays[name].astype(np.float32))
    np.save(folder / "y_train.npy", y_train)
    np.save(folder / "y_val.npy", y_val)
    meta = {"n_train": len(y_train), "n_val": len(y_val), "n_classes": C, "dim": D, "learning_rates": weights,
            "train_batch_size": 32, "epochs": list(range(1, len(weights) + 1)), "checkpoints": []}
    (folder / "meta.json").write_text(json.dumps(meta))
    return FactorStore(folder)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    logits = {"train": RNG.normal(size=(T, N, C)), "val": RNG.normal(size=(T, M, C))}
    features = {"train": RNG.random((T, N, D)), "val": RNG.random((T, M, D))}
    y_train, y_val = np.array([0, 1, 2, 0, 1, 2, 0]), np.array([0, 0, 1, 1, 2, 2, 0, 1, 2])
    store = write_store(tmp_path_factory.mktemp("store"), logits, features, y_train, y_val, [0.5, 0.25])
    return store, logits, features, y_train, y_val


def dense(logits, features, y_train, y_val, t):
    """I_t(i, j) = w_t (e_i . e_j)(h_i . h_j + 1) written out with numpy, labels given explicitly."""
    e_train = softmax(logits["train"][t], -1) - np.eye(C)[y_train]
    e_val = softmax(logits["val"][t], -1) - np.eye(C)[y_val]
    h_train, h_val = features["train"][t], features["val"][t]
    return (e_train @ e_val.T) * (h_train @ h_val.T + 1)


def test_cnci_pcid_cfrank_equal_their_definitions(case):
    store, logits, features, y_train, y_val = case
    weights = [0.5, 0.25]
    total = sum(w * dense(logits, features, y_train, y_val, t) for t, w in enumerate(weights))
    onehot = np.eye(C)[y_val]
    neg, pos = np.minimum(total, 0) @ onehot, np.maximum(total, 0) @ onehot
    # CNCI: relabel to the class harmed most, recompute at the last checkpoint, negative part on the own class
    relabel = neg.argmin(1)
    last = weights[-1] * dense(logits, features, relabel, y_val, T - 1)
    cnci = np.array([np.minimum(last[i], 0)[y_val == y_train[i]].sum() for i in range(N)])
    # PCID: relabel to the second-most-helped class; 1 / (MPI * max_l |P - P'|)
    second = np.argsort(-pos, axis=1, kind="stable")[:, 1]
    last2 = weights[-1] * dense(logits, features, second, y_val, T - 1)
    pcid = 1 / (np.maximum(total, 0).sum(1) * np.abs(pos - np.maximum(last2, 0) @ onehot).max(1))
    inputs = signals.SignalInputs(influence.TracInEngine(store), store, row_block=3, col_block=4)
    table, _, _ = signals.compute(inputs, ["cnci", "pcid", "cfrank"])
    np.testing.assert_allclose(table["cnci"], cnci, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(table["pcid"], pcid, rtol=1e-4)
    ranks = lambda v: np.argsort(np.argsort(v, kind="stable"), kind="stable")  # noqa: E731
    np.testing.assert_array_equal(table["cfrank"], np.maximum(ranks(cnci), ranks(pcid)))


def test_ordinal_ranks_by_hand():
    np.testing.assert_array_equal(signals.ordinal_ranks(np.array([0.3, -1.0, 0.3, np.nan])), [2, 1, 3, 0])


def test_rows_never_harm_their_own_class_when_head_inputs_are_nonnegative(tmp_path):
    """ReLU features make h_i . h_j + 1 > 0 and e_i . e_j > 0 for equal labels: N_iy = 0 exactly (why the
    study's class-and-sign-aware signal is degenerate there, and ours use P_iy instead)."""
    assert models.MODELS["mlp"].nonnegative_head_inputs
    data = datasets.make_tabular(n_rows=240, n_features=5, n_classes=3, seed=3)
    train, val, _ = datasets.prepare(data, 1.0, 0.25, 0)
    train, _ = glitches.inject(train, "uniform", 0.2, 0)
    torch.manual_seed(0)
    model = models.build("mlp", (5,), 3, {"n_blocks": 2, "d_block": 16})
    training.train(model, train, val, training.TrainSettings(epochs=3, lr=0.1, batch_size=32), tmp_path / "c",
                   tmp_path / "f")
    store = FactorStore(tmp_path / "f")
    assert store.all("train_features").min() >= 0
    pos, neg, _, neg_t = influence.class_masses(influence.TracInEngine(store), store.y_val, 3)
    rows = np.arange(len(store.y_train))
    rounding = 1e-5 * float(pos.abs().max())  # N = S - P (closed-form sums minus the positive pass): zero up to rounding
    assert neg[rows, store.y_train].abs().max() <= rounding and neg_t[:, rows, store.y_train].abs().max() <= rounding
    assert (neg.sum(1) < 0).any()  # harm exists, on the other classes


def test_mixture_error_table_is_exact(images, shapes):
    """Each type on its own rows, with the counts its share asks for; clean rows untouched."""
    options = {"components": {"uniform": 0.5, "outlier": 0.25, "far_ca": 0.25}}
    glitched, table = glitches.inject(images, "mixture", 0.2, 1, shapes, options)
    family = table["glitch"].str.split(":").str[0]
    n = len(images.y)
    assert (family == "uniform").sum() == glitches.glitch_count(0.1, n)
    assert (family == "outlier").sum() == glitches.glitch_count(0.05, n)
    assert (family == "far_ca").sum() == glitches.glitch_count(0.05, len(glitched.y))
    original = table[table["origin"] == "train"]
    source_x, source_y = images.x[original["origin_index"]], images.y[original["origin_index"]]
    changed_x = (glitched.x[original["row"]] != source_x).reshape(len(original), -1).any(1)
    changed_y = glitched.y[original["row"]] != source_y
    np.testing.assert_array_equal(changed_x, family[original.index].eq("outlier").to_numpy())
    np.testing.assert_array_equal(changed_y, family[original.index].eq("uniform").to_numpy())
    np.testing.assert_array_equal(table["true_label"][original.index], source_y)
    assert set(metrics.targets(table)) == {"all", "uniform", "outlier", "far_ca"}


def test_benjamini_hochberg_and_empirical_p_values_by_hand():
    null = np.array([0.0, 1.0, 2.0, 3.0])
    # within the null: (1 + #beyond) / (m + 1); beyond its maximum 3, an exponential tail with the robust sd 1.4826
    np.testing.assert_allclose(detector.empirical_p_values(np.array([5.0, 2.0, -1.0]), null),
                               [np.exp(-2 / 1.4826) / 5, 3 / 5, 1.0], rtol=1e-6)
    p = np.array([0.01, 0.02, 0.03, 0.5])  # BH at 0.1: p_(k) <= 0.1 k / 4 holds for k = 1, 2, 3
    np.testing.assert_array_equal(detector.benjamini_hochberg(p, 0.1), [True, True, True, False])
    assert not detector.benjamini_hochberg(np.array([0.2, 0.5, 0.9]), 0.1).any()


def test_the_detector_finds_types_and_repairs_labels(tmp_path):
    """On a table with mislabels and far-off rows: verdict columns, types and suggested labels."""
    data = datasets.make_tabular(n_rows=900, n_features=6, n_classes=3, seed=5)
    train, val, _ = datasets.prepare(data, 1.0, 0.3, 0)
    train, errors = glitches.inject(train, "mixture", 0.1, 2, options={"components": {"uniform": 0.5, "outlier": 0.5}})
    torch.manual_seed(0)
    model = models.build("mlp", (6,), 3, {"n_blocks": 2, "d_block": 32})
    training.train(model, train, val, training.TrainSettings(epochs=8, lr=0.1, batch_size=32), tmp_path / "c",
                   tmp_path / "f")
    store = FactorStore(tmp_path / "f")
    inputs = signals.SignalInputs(influence.TracInEngine(store), store, data=(train.x, val.x))
    verdict = inputs.detections
    assert list(verdict.columns) == list(detector.VERDICT_COLUMNS)
    assert set(verdict["glitch_type"]) <= {"mislabel", "anomaly", "none"} and verdict["confidence"].between(0, 1).all()
    quality = metrics.detector_quality(verdict, errors)
    assert quality["type_accuracy"] >= 0.8 and quality["repair_accuracy"] >= 0.8
    assert metrics.detection(verdict["suspicion"].to_numpy(), errors["glitched"].to_numpy())["f1"] >= 0.6
    outliers = errors["glitch"].str.startswith("outlier").to_numpy()
    assert (verdict.loc[outliers, "glitch_type"] == "anomaly").mean() >= 0.8


def test_the_anomaly_count_is_zero_under_the_null_and_counts_a_cluster():
    rng = np.random.default_rng(0)
    null = rng.random(2000)
    assert detector.excess_count(null) == 0 and not detector.declared_anomalies(-null, null).any()
    mixed = np.concatenate([rng.random(1800), rng.random(200) * 1e-3])  # 200 rows far beyond the null
    declared = detector.declared_anomalies(-np.log(mixed), mixed)
    assert 180 <= declared.sum() <= 200 / (1 - detector.FDR) + 10 and declared[1800:].mean() > 0.95  # FDR-controlled


def test_in_a_mixture_each_type_is_scored_by_the_detectors_own_typing():
    errors = pd.DataFrame({"row": range(6), "glitched": [1, 1, 0, 1, 0, 0], "true_label": [0, 1, 1, 0, 1, 0],
                           "glitch": ["uniform", "outlier:stripe", "none", "uniform", "none", "none"]}).astype({"glitched": bool})
    verdict = pd.DataFrame({"row": range(6), "suspicion": [0.5, 0.9, 0.6, 0.4, 0.1, 0.2],
                            "glitch_type": ["mislabel", "anomaly", "none", "mislabel", "none", "none"],
                            "label_score": [0.5, 0.9, 0.6, 0.4, 0.1, 0.2], "novelty": [0.0, 5.0, 0.1, 0.2, 0.3, 0.4]})
    typed = metrics.typed_detection(verdict, errors).set_index("target")
    # uniform: the two rows typed mislabel rank first -> both found; outlier: the one anomaly first
    assert typed.loc["uniform", "f1"] == 1.0 and typed.loc["outlier", "f1"] == 1.0
    plain = metrics.detection(verdict["suspicion"].to_numpy(), errors["glitch"].eq("uniform").to_numpy())
    assert plain["f1"] == 0.0  # the plain ranking puts the outlier and a clean row above both mislabels
    # fewer rows typed than there are mislabels: the next candidates are untyped rows, never the typed anomaly
    verdict.loc[3, "glitch_type"] = "none"
    verdict.loc[3, "label_score"] = 0.3
    typed = metrics.typed_detection(verdict, errors).set_index("target")
    assert typed.loc["uniform", "f1"] == 0.5  # row 0 first, then the untyped row 2 (0.6) before row 3 (0.3)
    verdict.loc[2, "label_score"] = 0.05
    assert metrics.typed_detection(verdict, errors).set_index("target").loc["uniform", "f1"] == 1.0  # not row 1


def test_label_score_is_the_threshold_adjusted_margin_by_hand():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.4, 0.6]])
    # thresholds: t_0 = mean p0 over rows labelled 0 = 0.6, t_1 = mean p1 over rows labelled 1 = 0.7
    thresholds = detector.class_thresholds(labels, probs)
    np.testing.assert_allclose(thresholds, [0.6, 0.7])
    expected = [(0.1 - 0.7) - (0.9 - 0.6), (0.7 - 0.7) - (0.3 - 0.6), (0.2 - 0.6) - (0.8 - 0.7), (0.4 - 0.6) - (0.6 - 0.7)]
    np.testing.assert_allclose(detector.label_score(labels, probs), expected)
    np.testing.assert_array_equal(detector.suggested_labels(labels, probs), [1, 1, 0, 0])


def test_the_mislabel_count_is_cleanlabs_calibrated_estimate_even_with_an_absent_class():
    from cleanlab.count import num_label_issues

    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), 300)
    labels = probs.argmax(1)
    labels[:30] = (labels[:30] + 1) % 3
    assert detector.mislabel_count(labels, probs) == num_label_issues(labels, probs, estimation_method="off_diagonal_calibrated")
    four = np.concatenate([probs, np.zeros((300, 1))], axis=1)  # a fourth class no row is labelled with
    assert detector.mislabel_count(labels, four) == detector.mislabel_count(labels, probs)


def test_the_exponential_tail_scale_is_its_maximum_likelihood_fit():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0, 0.4, 5000), 1 + rng.exponential(0.7, 20000), 30 + rng.random(50)])
    band = z[(z >= 1) & (z < 3)] - 1
    grid = np.linspace(0.3, 1.5, 2401)  # brute force: the truncated exponential's log-likelihood on a grid
    loglik = [-len(band) * (np.log(b) + np.log1p(-np.exp(-2 / b))) - band.sum() / b for b in grid]
    assert detector.tail_scale(z) == pytest.approx(grid[int(np.argmax(loglik))], abs=1e-3)
    assert detector.tail_scale(z) == pytest.approx(0.7, abs=0.03)  # the rows beyond the band do not move it


def test_local_fdr_by_hand():
    z = np.array([0.0, 0.5, 1.2, 1.4, 2.0, 5.0, 5.1, 5.2])
    scale = 1.0  # 6 rows at z >= 1: the tail expects 6 exp(-(z - 1)) beyond z
    lfdr = detector.local_fdr(z, scale, window=0.5)
    expected_at_5 = 6 * (np.exp(-3.5) - np.exp(-4.5))
    assert lfdr[5] == pytest.approx(expected_at_5 / 3)  # 5.0 +/- 0.5 holds three rows
    assert lfdr[4] == pytest.approx(min(1.0, 6 * (np.exp(-0.5) - np.exp(-1.5)) / 1))
    assert (lfdr[:4] == 1.0).all()  # below the band's start plus the window: the data is its own null


def gaussian_table(n: int = 2000, d: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) * np.linspace(0.5, 20, d)  # columns of any scale


def test_robust_novelty_declares_shifted_rows_and_nothing_in_clean_data():
    x = gaussian_table()
    rng = np.random.default_rng(1)
    shifted = rng.choice(len(x), 100, replace=False)  # 5 %: they are in every "reference" the rows are compared with
    glitched = x.copy()
    for row in shifted:
        columns = rng.choice(x.shape[1], 5, replace=False)
        glitched[row, columns] += rng.choice([-5, 5], 5) * x[:, columns].std(0)
    novelty = detector.robust_novelty([glitched])
    truth = np.isin(np.arange(len(x)), shifted)
    assert (novelty.declared & truth).sum() >= 95 and (novelty.declared & ~truth).sum() <= 5
    assert metrics.f1_at_k(novelty.score, truth) >= 0.95
    assert detector.robust_novelty([x]).declared.sum() <= 3  # a clean Gaussian table: (almost) nothing declared
    assert novelty.p_values[truth].max() < novelty.p_values[~truth].min() + 0.05


def test_one_near_constant_column_does_not_dominate_the_distances():
    x = gaussian_table(1000, 6)
    rare = np.zeros((1000, 1))
    rare[:20, 0] = 1.0  # 2 % of rows have a natural rare value: 7 sd out, in one column of seven
    z = detector.robust_novelty([np.hstack([x, rare])]).score
    assert detector.winsorised(np.hstack([x, rare]))[:, -1].max() == pytest.approx(7.0, abs=0.1)
    clipped = detector.winsorised(np.hstack([x, 100 * rare]), limit=3.0)
    assert clipped.max() == 3.0 and clipped.min() >= -3.0
    assert np.isfinite(z).all()


def test_the_verdict_sets_anomalies_aside_and_flags_the_estimated_count_of_mislabels():
    rng = np.random.default_rng(2)
    n, c = 400, 3
    true = rng.integers(0, c, n)
    probs = np.full((n, c), 0.05)
    probs[np.arange(n), true] = 0.9
    labels = true.copy()
    flipped = np.arange(40)
    labels[flipped] = (true[flipped] + 1) % c
    declared = np.zeros(n, dtype=bool)
    declared[390:] = True  # ten anomalies: their probabilities say nothing
    novelty = detector.Novelty(np.where(declared, 10.0, 0.0), declared, np.where(declared, 1e-6, 1.0))
    verdict = detector.verdict(labels, probs, novelty)
    kinds = verdict["glitch_type"].to_numpy()
    assert (kinds[390:] == "anomaly").all() and (verdict["suggested_label"].to_numpy()[390:] == -1).all()
    expected = detector.mislabel_count(labels[:390], probs[:390])
    assert (kinds == "mislabel").sum() == expected and 35 <= expected <= 45
    assert set(np.flatnonzero(kinds == "mislabel")) <= set(flipped) | set(range(40, 390))
    assert (kinds[flipped] == "mislabel").mean() >= 0.85
    np.testing.assert_array_equal(verdict["suggested_label"].to_numpy()[flipped], true[flipped])
    order = np.argsort(-verdict["suspicion"].to_numpy(), kind="stable")
    assert set(order[:10]) == set(range(390, 400)) and verdict["suspicion"].between(0, 1).all()


def test_the_repair_follows_the_estimated_noise_when_the_probabilities_are_torn():
    """Class 0 is flipped into class 1 (never 2 into 1): a row labelled 1 that looks as much like 0 as like 2
    is most likely a flipped 0, which the estimated transitions say and the bare probabilities cannot."""
    rng = np.random.default_rng(0)
    true = np.repeat([0, 1, 2], 200)
    probs = np.full((600, 3), 0.05)
    probs[np.arange(600), true] = 0.9
    labels = true.copy()
    labels[rng.choice(200, 60, replace=False)] = 1  # 30 % of class 0 labelled 1
    transitions = detector.noise_transitions(labels, probs)
    np.testing.assert_allclose(transitions.sum(0), 1.0)
    assert transitions[1, 0] > 1.5 * transitions[1, 2]  # observed 1: far likelier from a true 0 than from a true 2
    torn = np.array([[0.45, 0.10, 0.45]])
    assert detector.suggested_labels(np.array([1]), torn, transitions)[0] == 0
    assert detector.suggested_labels(np.array([1]), torn)[0] in (0, 2)  # a tie without them


# ----------------------------------------------------------------------------------------------
# Nearest neighbours past the exact limit (large tables)


def blobs(n: int = 3000, dim: int = 8, seed: int = 0) -> np.ndarray:
    """Clustered rows, as a network's features or a real table's are."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(12, dim))
    return centres[rng.integers(0, 12, n)] + rng.normal(size=(n, dim))


def test_nearest_neighbours_within_the_exact_limit_are_scikit_learns():
    from sklearn.neighbors import NearestNeighbors

    x, queries = blobs(400, 5), blobs(150, 5, seed=1)
    assert 20_000**2 <= detector.EXACT_PAIRS  # every search of a table of up to 20,000 rows is exact
    np.testing.assert_array_equal(detector.nearest_distances(x, x, 5, same=True),
                                  NearestNeighbors(n_neighbors=6).fit(x).kneighbors(x)[0][:, 1:])
    np.testing.assert_array_equal(detector.nearest_distances(queries, x, 5),
                                  NearestNeighbors(n_neighbors=5).fit(x).kneighbors(queries)[0])
    np.testing.assert_array_equal(detector.knn_log_distance(x), detector.knn_log_distance(x, max_pairs=None))


@pytest.mark.parametrize("same, block", [(True, detector.QUERY_BLOCK), (False, detector.QUERY_BLOCK), (True, 700)])
def test_the_approximate_search_finds_most_true_neighbours_and_never_a_closer_one(same, block, monkeypatch):
    """Recall against the exact search on a small clustered case; a missed neighbour only lengthens a distance
    (also with the queries searched in several blocks)."""
    from sklearn.neighbors import NearestNeighbors

    monkeypatch.setattr(detector, "QUERY_BLOCK", block)
    references = blobs(3000)
    queries = references if same else blobs(1000, seed=1)
    distances, indices = detector.approximate_neighbours(queries, references, 5, same=same)
    exact = NearestNeighbors(n_neighbors=5 + same).fit(references).kneighbors(queries)[0][:, int(same):]
    assert (distances >= exact - 1e-9).all() and (np.diff(distances, axis=1) >= 0).all()
    recall = float((distances <= exact[:, -1:] + 1e-9).mean())
    assert recall >= 0.95, recall
    np.testing.assert_allclose(distances, np.linalg.norm(queries[:, None] - references[indices], axis=-1), rtol=1e-9)
    if same:
        assert not (indices == np.arange(len(queries))[:, None]).any()  # a row is never its own neighbour
    assert detector.neighbour_recall(queries, references, 5, same=same, sample=500) == pytest.approx(
        float((distances <= exact[:, -1:] + 1e-6 * exact[:, -1:]).mean()), abs=0.05)


def test_robust_novelty_past_the_exact_limit_declares_what_the_exact_search_declares():
    x = blobs(3000, 10)
    rng = np.random.default_rng(2)
    shifted = rng.choice(len(x), 60, replace=False)
    for row in shifted:  # each pushed its own way: outliers, not a cluster of their own
        columns = rng.choice(x.shape[1], 5, replace=False)
        x[row, columns] += rng.choice([-6, 6], 5) * x[:, columns].std(0)
    exact, approximate = detector.robust_novelty([x], max_pairs=None), detector.robust_novelty([x], max_pairs=0)
    both, either = (exact.declared & approximate.declared).sum(), (exact.declared | approximate.declared).sum()
    assert both / either >= 0.9 and approximate.declared[shifted].mean() >= 0.95
    assert np.corrcoef(exact.score, approximate.score)[0, 1] >= 0.99
