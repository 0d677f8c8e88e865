"""Every signal on a hand-worked influence matrix, and the study's MI cancellation."""
from __future__ import annotations

import numpy as np
import pytest

from types import SimpleNamespace

from influence_signals import signals
from influence_signals.influence import DenseInfluence, class_masses

# 3 training rows (observed labels 0, 1, 0) x 4 validation rows (labels 0, 0, 1, 1), one checkpoint.
MATRIX = np.array([
    [2.0, 1.0, -1.0, 0.0],
    [-3.0, 0.0, 1.0, 2.0],
    [0.5, 0.5, 0.5, 0.5],
], dtype=np.float32)
Y_TRAIN = np.array([0, 1, 0])
Y_VAL = np.array([0, 0, 1, 1])
SELF = np.array([4.0, 9.0, 1.0], dtype=np.float32)


def fake_store(y_train: np.ndarray, y_val: np.ndarray, n_checkpoints: int = 1) -> SimpleNamespace:
    """What SignalInputs reads of a factor store, for influence given directly as a matrix."""
    meta = SimpleNamespace(n_classes=int(max(y_train.max(), y_val.max())) + 1, learning_rates=[1.0] * n_checkpoints)
    return SimpleNamespace(y_train=y_train, y_val=y_val, meta=meta, n_checkpoints=n_checkpoints)


def inputs_of(matrix: np.ndarray, self_influence: np.ndarray, y_train: np.ndarray = Y_TRAIN, y_val: np.ndarray = Y_VAL,
              block_size: int = 1024) -> signals.SignalInputs:
    store = fake_store(y_train, y_val, len(matrix))
    return signals.SignalInputs(DenseInfluence(matrix, self_influence, np.ones(len(matrix))), store, block_size, block_size)  # type: ignore[arg-type]


def hand_signals(block_size: int) -> dict[str, np.ndarray]:
    inputs = inputs_of(MATRIX[None], SELF[None], block_size=block_size)
    # relabelled signals (CNCI, PCID, CFRank) need factors, not a matrix: tests/test_detect.py checks them
    names = [s.name for s in signals.SIGNALS if s.kind == "influence" and "relabelled" not in s.needs]
    table, _, _ = signals.compute(inputs, names)
    return {name: table[name].to_numpy() for name in names}


@pytest.mark.parametrize("block_size", [1, 2, 4])
def test_signals_by_hand(block_size):
    s = hand_signals(block_size)
    np.testing.assert_allclose(s["si"], [4, 9, 1])
    np.testing.assert_allclose(s["mi"], [2, 0, 2])  # row sums
    np.testing.assert_allclose(s["aai"], [4 / 4, 6 / 4, 2 / 4])  # mean |I|
    # per-class sums: row 0 (3, -1), row 1 (-3, 3), row 2 (1, 1); GD-class = -min
    np.testing.assert_allclose(s["gd_class"], [1, 3, -1])
    np.testing.assert_allclose(s["sign_aware"], [1, 3, 0])  # harmful mass
    # positive mass P (row x class): row 0 (3, 0), row 1 (0, 3), row 2 (1, 1); own classes 0, 1, 0
    # class_contrast = max other-class help - own-class help: row 0: 0 - 3; row 1: 0 - 3; row 2: 1 - 1
    np.testing.assert_allclose(s["class_contrast"], [-3, -3, 0])
    # harm_concentration = max other-class harm / (own help + total harm): row 0: 1 / (3 + 1); row 1: 3 / (3 + 3); row 2: 0
    np.testing.assert_allclose(s["harm_concentration"], [0.25, 0.5, 0], atol=1e-9)


def test_mi_cancels_where_sign_aware_does_not():
    """A row that helps half the validation set and harms the other half has MI 0 but large harm."""
    matrix = np.array([[5.0, 5.0, -5.0, -5.0], [0.1, 0.1, 0.1, 0.1]], dtype=np.float32)
    table, _, _ = signals.compute(inputs_of(matrix[None], np.ones((1, 2), np.float32), np.array([0, 1])), ["mi", "sign_aware"])
    s = {name: table[name].to_numpy() for name in ("mi", "sign_aware")}
    assert s["mi"][0] == 0 and s["mi"][0] < s["mi"][1]  # MI ranks the harmful row last
    assert s["sign_aware"][0] == 10 and s["sign_aware"][1] == 0  # sign-aware ranks it first


def test_per_checkpoint_masses_sum_to_totals_when_signs_agree():
    per_t = np.stack([MATRIX, 2 * MATRIX])
    source = DenseInfluence(per_t, np.stack([SELF, 2 * SELF]), np.ones(2))
    pos, neg, pos_t, neg_t = class_masses(source, Y_VAL, 2, 2, 3)
    np.testing.assert_allclose(pos_t.sum(0), pos)
    np.testing.assert_allclose(neg_t.sum(0), neg)
    np.testing.assert_allclose(pos_t[1], 2 * pos_t[0])


def test_slope_by_hand():
    values = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    np.testing.assert_allclose(signals.slope(values), [1.0, 0.0])
