"""Accuracy over training (the DUEL paper's Figure 4 form): kNN top-1 of the current encoder during
pretraining, for monitoring only.

A fixed labelled bank (a seeded subset of the probe pool, never the test split) votes for the images of
the validation split, overall and per many / medium / few group, with the probe stage's kNN
(`duel.eval.knn`) on the probe stage's features (`duel.eval.features`): the backbone in eval mode on
unaugmented images. Measuring draws no random number and updates no BatchNorm statistics, so a run
trains the same bytes with the monitor on or off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from duel.data.datasets import IndexedImages
from duel.eval.features import extract_features
from duel.eval.groups import group_accuracies
from duel.eval.knn import knn_predict


def bank_indices(pool: list[int], size: int, seed: int) -> list[int]:
    """`size` images of the probe pool (all of them when it holds fewer), the same for every run of a
    study that shares the pool and the seed."""
    pool_sorted = np.sort(np.asarray(pool))
    if size >= len(pool_sorted):
        return pool_sorted.tolist()
    return np.sort(np.random.default_rng([seed, 4]).choice(pool_sorted, size, replace=False)).tolist()


@dataclass
class OnlineKNN:
    bank: IndexedImages
    queries: IndexedImages
    num_classes: int
    train_counts: list[int]  # of the LT set: the groups the probe stage reports
    k: int = 200
    temperature: float = 0.1
    groups: str = "thirds"
    thresholds: tuple[int, int] = (20, 100)
    batch_size: int = 256

    def __call__(self, backbone: nn.Module, normalize: nn.Module, device: str) -> dict[str, float]:
        """knn_top1 and knn_<group> of `backbone` now; the caller puts the module back in train mode."""
        bank = extract_features(backbone, normalize, self.bank, self.batch_size, device)
        queries = extract_features(backbone, normalize, self.queries, self.batch_size, device)
        labels = self.queries.labels.numpy()
        pred = knn_predict(bank, self.bank.labels.numpy(), queries, self.num_classes, self.k, self.temperature)
        accuracies = group_accuracies(labels, pred, self.train_counts, self.groups, self.thresholds)
        return {f"knn_{name}": value for name, value in accuracies.items()}


def curve_summary(steps: list[float], accuracy: list[float]) -> dict[str, float]:
    """One run's accuracy over training in three numbers: the final value, the drop from the best to the
    final (the paper's "performance degradation", >= 0) and the area under the curve over the measured
    steps divided by their span (the trapezoidal mean accuracy; the value itself for one point)."""
    x, y = np.asarray(steps, dtype=float), np.asarray(accuracy, dtype=float)
    auc = float(np.trapezoid(y, x) / (x[-1] - x[0])) if len(x) > 1 else float(y[0])
    return {"final": float(y[-1]), "drop": float(y.max() - y[-1]), "auc": auc}
