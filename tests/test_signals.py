"""Every signal on a hand-worked influence matrix, and the study's MI cancellation."""
from __future__ import annotations

import numpy as np
import pytest

from influence_signals import signals
from influence_signals.influence import DenseInfluence

# 3 training rows (observed labels 0, 1, 0) x 4 validation rows (labels 0, 0, 1, 1), one checkpoint.
MATRIX = np.array([
    [2.0, 1.0, -1.0, 0.0],
    [-3.0, 0.0, 1.0, 2.0],
    [0.5, 0.5, 0.5, 0.5],
], dtype=np.float32)
Y_TRAIN = np.array([0, 1, 0])
Y_VAL = np.array([0, 0, 1, 1])
SELF = np.array([4.0, 9.0, 1.0], dtype=np.float32)


def hand_signals(block_size: int) -> dict[str, np.ndarray]:
    source = DenseInfluence(MATRIX[None], SELF[None])
    pos, neg, _, _ = signals.accumulate_class_masses(source, Y_VAL, 2, block_size, block_size)
    return signals.signals_from_masses(pos.numpy(), neg.numpy(), SELF, Y_TRAIN, len(Y_VAL))


@pytest.mark.parametrize("block_size", [1, 2, 4])
def test_signals_by_hand(block_size):
    s = hand_signals(block_size)
    np.testing.assert_allclose(s["si"], [4, 9, 1])
    np.testing.assert_allclose(s["mi"], [2, 0, 2])  # row sums
    np.testing.assert_allclose(s["aai"], [4 / 4, 6 / 4, 2 / 4])  # mean |I|
    # per-class sums: row 0 (3, -1), row 1 (-3, 3), row 2 (1, 1); GD-class = -min
    np.testing.assert_allclose(s["gd_class"], [1, 3, -1])
    np.testing.assert_allclose(s["sign_aware"], [1, 3, 0])  # harmful mass
    # own-class harm + other-class help: row 0 (own 0): 0 + 0; row 1 (own 1): 0 + 0 (class 0 positive 0); row 2: 0 + 1
    np.testing.assert_allclose(s["class_sign_aware"], [0, 0, 1])
    # harm to other classes: row 0 (own 0): class 1 negative mass 1; row 1 (own 1): class 0 negative 3; row 2: 0
    np.testing.assert_allclose(s["harm_other_classes"], [1, 3, 0])


def test_mi_cancels_where_sign_aware_does_not():
    """A row that helps half the validation set and harms the other half has MI 0 but large harm."""
    matrix = np.array([[5.0, 5.0, -5.0, -5.0], [0.1, 0.1, 0.1, 0.1]], dtype=np.float32)
    source = DenseInfluence(matrix[None], np.ones((1, 2), np.float32))
    pos, neg, _, _ = signals.accumulate_class_masses(source, Y_VAL, 2)
    s = signals.signals_from_masses(pos.numpy(), neg.numpy(), np.ones(2), np.array([0, 1]), 4)
    assert s["mi"][0] == 0 and s["mi"][0] < s["mi"][1]  # MI ranks the harmful row last
    assert s["sign_aware"][0] == 10 and s["sign_aware"][1] == 0  # sign-aware ranks it first


def test_per_checkpoint_masses_sum_to_totals_when_signs_agree():
    per_t = np.stack([MATRIX, 2 * MATRIX])
    source = DenseInfluence(per_t, np.stack([SELF, 2 * SELF]))
    pos, neg, pos_t, neg_t = signals.accumulate_class_masses(source, Y_VAL, 2, 2, 3)
    np.testing.assert_allclose(pos_t.sum(0), pos)
    np.testing.assert_allclose(neg_t.sum(0), neg)
    np.testing.assert_allclose(pos_t[1], 2 * pos_t[0])


def test_slope_by_hand():
    values = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    np.testing.assert_allclose(signals.slope(values), [1.0, 0.0])
