"""Companion learners: their held-out probabilities against independent computations."""
from __future__ import annotations

import numpy as np

from influence_signals import companions
from influence_signals.companions import COMPANIONS, FOREST_TREES, KNN_NEIGHBOURS, TREE_WIDTH_BUDGET


def test_knn_probabilities_are_the_smoothed_vote_of_the_nearest_training_rows_by_brute_force():
    rng = np.random.default_rng(0)
    x_train, y_train, x_held = rng.normal(size=(60, 3)), rng.integers(0, 4, 60), rng.normal(size=(15, 3))
    probabilities = companions.nearest_neighbours(x_train, y_train, x_held, 4, seed=0)
    for row, query in enumerate(x_held):
        nearest = np.argsort(((x_train - query) ** 2).sum(1))[:KNN_NEIGHBOURS]
        votes = np.bincount(y_train[nearest], minlength=4)
        np.testing.assert_allclose(probabilities[row], (votes + 0.5) / (KNN_NEIGHBOURS + 2.0))
    assert (probabilities > 0).all()  # never 0: a label the neighbours never show keeps a finite loss


def test_gradient_boosting_is_scikit_learns_with_the_classes_it_never_saw_at_zero():
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(1)
    x_train, x_held = rng.normal(size=(80, 4)), rng.normal(size=(10, 4))
    y_train = np.where(x_train[:, 0] > 0, 2, 0)  # classes 1 and 3 of 4 absent from this fold's training rows
    probabilities = companions.gradient_boosting(x_train, y_train, x_held, 4, seed=3)
    expected = HistGradientBoostingClassifier(random_state=3).fit(x_train, y_train).predict_proba(x_held)
    np.testing.assert_allclose(probabilities[:, [0, 2]], expected)
    assert (probabilities[:, [1, 3]] == 0).all()
    np.testing.assert_allclose(probabilities.sum(1), 1.0)


def test_random_forest_is_scikit_learns_with_the_classes_it_never_saw_at_zero():
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(4)
    x_train, x_held = rng.normal(size=(80, 6)), rng.normal(size=(10, 6))
    y_train = np.where(x_train[:, 1] > 0, 3, 1)  # classes 0 and 2 of 4 absent from this fold's training rows
    probabilities = companions.random_forest(x_train, y_train, x_held, 4, seed=5)
    expected = RandomForestClassifier(FOREST_TREES, random_state=5).fit(x_train, y_train).predict_proba(x_held)
    np.testing.assert_allclose(probabilities[:, [1, 3]], expected)
    assert (probabilities[:, [0, 2]] == 0).all()


def test_boosting_on_narrow_tables_a_forest_on_wide_ones_and_nothing_on_images():
    names = COMPANIONS.names()
    assert companions.fitted(names, "tabular", (40, 5), 4) == ["gradient_boosting", "knn"]
    wide = (40, TREE_WIDTH_BUDGET // 4 + 1)  # features x classes just over the budget
    assert companions.fitted(names, "tabular", wide, 4) == ["random_forest", "knn"]
    assert companions.fitted(names, "tabular", (40, TREE_WIDTH_BUDGET // 4), 4) == ["gradient_boosting", "knn"]
    assert companions.fitted(["knn"], "tabular", wide, 4) == ["knn"]
    assert companions.fitted(names, "image", (40, 3, 8, 8), 4) == []  # images get none
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 5)), np.arange(40) % 4
    chosen = companions.held_out_probabilities(["random_forest", "knn"], x, y, x[:5], 4, 0)
    assert list(chosen) == ["random_forest", "knn"] and all(p.shape == (5, 4) for p in chosen.values())
    assert companions.held_out_probabilities([], x, y, x[:5], 4, 0) == {}


def test_a_config_without_companions_gets_every_registered_one():
    from influence_signals import config as cfg

    validated = cfg.validate({"datasets": {"segment": {}}, "debug": {"dataset": "segment", "model": "mlp"}})
    assert validated["debug"]["companions"] == COMPANIONS.names()


def test_an_unknown_companion_is_a_one_line_config_error_before_any_work(tmp_path):
    import pandas as pd
    import pytest

    from influence_signals import find_issues
    from influence_signals.config import ConfigError

    frame = pd.DataFrame({"a": range(40), "b": range(40), "y": ["p", "q", "r", "s"] * 10})
    with pytest.raises(ConfigError, match="companions.*'forest' is not one of"):
        find_issues(frame, label="y", companions=["forest"], out=tmp_path / "out", dry_run=True)
    assert not (tmp_path / "out" / "config.yaml").exists()
