from __future__ import annotations

import pytest

from influence_signals import datasets


@pytest.fixture(scope="session")
def tabular() -> datasets.DataSet:
    data = datasets.make_tabular(n_rows=400, n_features=6, n_classes=4, seed=1)
    return datasets.prepare(data, 1.0, 0.2, 0)[0]


@pytest.fixture(scope="session")
def images() -> datasets.DataSet:
    return datasets.prepare(datasets.load_digits_images(), 0.5, 0.2, 0)[0]


@pytest.fixture(scope="session")
def shapes() -> datasets.DataSet:
    return datasets.make_shapes(n_per_class=100)

