"""Linear probe on cached features; C is chosen on the validation split, never on test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@dataclass
class ProbeResult:
    best_c: float
    val_accuracy: dict[float, float]  # every C tried
    test_predictions: np.ndarray


def linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test_features: np.ndarray,
    c_grid: list[float],
) -> ProbeResult:
    """Multinomial logistic regression on standardised features, one fit per C."""
    fits, val_accuracy = {}, {}
    for c in c_grid:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        model.fit(*train)
        fits[c] = model
        val_accuracy[c] = float((model.predict(val[0]) == val[1]).mean())
    best = max(c_grid, key=lambda c: (val_accuracy[c], -c))  # ties: the stronger regularisation
    return ProbeResult(best, val_accuracy, fits[best].predict(test_features))
