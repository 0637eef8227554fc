from __future__ import annotations

import numpy as np
import torch

from model.calibration import fit_temperature, fold_temperature


def test_temperature_undoes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    # Calibrated logits: labels drawn from softmax(logits) itself.
    logits = rng.normal(0, 1.5, size=(4000, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in probabilities])
    assert 0.85 < fit_temperature(logits, labels) < 1.15
    # The same model, five times too sure of itself: the fit finds T near 5.
    assert 4.0 < fit_temperature(logits * 5, labels) < 6.0
    assert fit_temperature(np.empty((0, 3)), np.empty(0, dtype=int)) == 1.0


def test_folding_divides_the_head_output() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 3)
    inputs = torch.randn(5, 8)
    expected = head(inputs) / 2.5
    fold_temperature(head, 2.5)
    assert torch.allclose(head(inputs), expected, atol=1e-6)
