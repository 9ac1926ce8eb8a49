"""Many / medium / few accuracies: classes sorted by their LT training count, cut into thirds."""

from __future__ import annotations

import numpy as np


def class_groups(train_counts: list[int]) -> dict[str, list[int]]:
    """Thirds of the classes by descending count (ties by class index; np.array_split sizes)."""
    order = sorted(range(len(train_counts)), key=lambda c: (-train_counts[c], c))
    many, medium, few = np.array_split(np.asarray(order), 3)
    return {"many": many.tolist(), "medium": medium.tolist(), "few": few.tolist()}


def group_accuracies(y_true: np.ndarray, y_pred: np.ndarray, train_counts: list[int]) -> dict[str, float]:
    """Top-1 overall and per group, and the std of the three group accuracies (balancedness)."""
    correct = y_true == y_pred
    out = {"top1": float(correct.mean())}
    for name, classes in class_groups(train_counts).items():
        mask = np.isin(y_true, classes)
        out[name] = float(correct[mask].mean()) if mask.any() else float("nan")
    out["group_std"] = float(np.std([out["many"], out["medium"], out["few"]]))
    return out
