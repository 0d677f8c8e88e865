"""Detection metrics on hand-worked rankings."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from influence_signals import baselines, metrics


def test_f1_flags_exactly_k_with_ties_to_lower_rows():
    scores = np.array([0.9, 0.5, 0.5, 0.1, 0.5])
    glitched = np.array([True, False, True, False, False])  # k = 2
    result = metrics.detection(scores, glitched)
    # top 2: row 0, then the tie 1/2/4 goes to row 1 -> one hit of two
    assert result["k"] == 2 and result["f1"] == pytest.approx(0.5)
    assert result["precision_at_k"] == result["recall_at_k"] == pytest.approx(0.5)
    np.testing.assert_array_equal(metrics.ranking(scores), [0, 1, 2, 4, 3])


def test_perfect_and_worst_rankings():
    glitched = np.array([False, True, True, False])
    perfect = metrics.detection(np.array([0.0, 2.0, 1.0, 0.5]), glitched)
    assert perfect["f1"] == perfect["ap"] == perfect["auroc"] == 1.0
    worst = metrics.detection(np.array([3.0, 0.0, 1.0, 2.0]), glitched)
    assert worst["f1"] == 0.0 and worst["auroc"] == 0.0


def test_average_precision_by_hand():
    # ranking: G, C, G -> precision at hits 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    result = metrics.detection(np.array([3.0, 2.0, 1.0]), np.array([True, False, True]))
    assert result["ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert result["auroc"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(6))
def test_ap_and_auroc_equal_scikit_learns_with_ties_nan_and_infinities(seed):
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(seed)
    n = 300
    scores = rng.integers(0, 12 if seed % 2 else 1000, n).astype(float)  # many ties, or few
    scores[rng.choice(n, 10, replace=False)] = [np.nan] * 4 + [np.inf] * 3 + [-np.inf] * 3
    glitched = rng.random(n) < 0.15
    finite = np.finfo(np.float64)
    clean = np.nan_to_num(np.where(np.isnan(scores), -np.inf, scores), neginf=finite.min, posinf=finite.max)
    assert metrics.average_precision(scores, glitched) == pytest.approx(average_precision_score(glitched, clean), abs=1e-12)
    assert metrics.auroc(scores, glitched) == pytest.approx(roc_auc_score(glitched, clean), abs=1e-12)


def test_nan_scores_rank_last():
    result = metrics.detection(np.array([np.nan, 1.0, 0.0]), np.array([False, True, False]))
    assert result["f1"] == 1.0


def test_found_vs_inspected():
    scores = np.arange(10, dtype=float)[::-1]  # row 0 first
    glitched = np.zeros(10, bool)
    glitched[[0, 5]] = True
    curve = metrics.found_vs_inspected(scores, glitched, (0.1, 0.5, 0.6, 1.0))
    np.testing.assert_allclose(curve["found"], [0.5, 0.5, 1.0, 1.0])


def test_curves_cover_every_signal():
    scores = pd.DataFrame({"row": [0, 1, 2, 3], "a": [4.0, 3, 2, 1], "b": [1.0, 2, 3, 4]})
    errors = pd.DataFrame({"row": [0, 1, 2, 3], "glitched": [True, False, False, False]})
    curve = metrics.curves(scores, errors)
    first = curve[curve["inspected"] == 0.01].set_index("signal")["found"]  # top row only
    last = curve[curve["inspected"] == 0.5].set_index("signal")["found"]  # top two rows
    assert first["a"] == 1.0 and first["b"] == 0.0 and last["b"] == 0.0


def test_summarise_over_seeds():
    frame = pd.DataFrame({"signal": ["si", "si", "mi"], "seed": [0, 1, 0], "f1": [0.2, 0.4, 0.1],
                          "ap": [0.1, 0.1, 0.1], "auroc": [0.5, 0.7, 0.6]})
    summary = metrics.summarise(frame, ["signal"]).set_index("signal")
    assert summary.loc["si", "f1_mean"] == pytest.approx(0.3)
    assert summary.loc["si", "f1_std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert summary.loc["si", "n_seeds"] == 2


def test_accuracy_table():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    errors = pd.DataFrame({"row": [0, 1, 2], "observed_label": [0, 0, 0], "glitched": [True, True, False]})
    assert metrics.accuracy_table(logits, errors) == {"accuracy_glitched": 0.5, "accuracy_clean_train": 1.0}


def test_baselines_by_hand():
    logits = np.array([[[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]]])  # (T=2, n=2, k=3)
    labels = np.array([0, 1])
    # margins: row 0: (2 - 1), (1 - 1) -> mean 0.5; row 1: (3 - 0), (0 - 2) -> mean 0.5
    np.testing.assert_allclose(baselines.area_under_margin(logits, labels), [-0.5, -0.5])
    expected = -np.log(np.exp(1.0) / (2 * np.exp(1.0) + 1))
    assert baselines.final_loss(logits[1], labels)[0] == pytest.approx(expected)


def test_no_glitches_gives_no_score_rather_than_an_error():
    result = metrics.detection(np.array([1.0, 2.0]), np.array([False, False]))
    assert result["k"] == 0 and np.isnan(result["f1"]) and np.isnan(result["auroc"])
