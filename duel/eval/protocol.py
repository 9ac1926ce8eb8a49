"""The evaluation protocol on frozen features (DESIGN §4), independent of the pipeline.

Which images train the probe (`probe_train_sets`: the balanced pool, the LT set,
or k-shot draws from the balanced pool), then per training set a linear probe
with C chosen on validation and a kNN classifier, scored on test overall and per
many / medium / few group (`evaluate`). Test labels are only ever used to score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from duel.config import ProbeConfig
from duel.data.longtail import kshot_subsets
from duel.eval.groups import group_accuracies
from duel.eval.knn import knn_predict
from duel.eval.linear import linear_probe


@dataclass
class Features:
    """Cached features and labels of one split."""

    features: np.ndarray
    labels: np.ndarray


def probe_train_sets(manifest: dict[str, Any], source_labels: np.ndarray, classes: list[str], cfg: ProbeConfig):
    """The source indices of each probe training set: one set, or `cfg.splits` k-shot draws."""
    if cfg.train_set == "kshot":
        return kshot_subsets(
            manifest["balanced_indices"], source_labels, classes, cfg.shots, cfg.splits, cfg.split_seed
        )
    return [np.asarray(manifest["balanced_indices" if cfg.train_set == "balanced" else "train_indices"])]


def evaluate(
    pool_indices: np.ndarray,
    pool: Features,
    val: Features,
    test: Features,
    train_sets: list[np.ndarray],
    class_counts: list[int],
    cfg: ProbeConfig,
) -> dict[str, float]:
    """Every probe on every training set (rows of `pool`, whose source indices are the sorted
    `pool_indices`); metrics averaged over the sets, with their std when there are several."""
    num_classes = len(class_counts)
    grouping = {"mode": cfg.groups, "thresholds": tuple(cfg.shot_thresholds)}
    per_split = []
    for train_idx in train_sets:
        rows = np.searchsorted(pool_indices, train_idx)
        train = (pool.features[rows], pool.labels[rows])
        result = linear_probe(train, (val.features, val.labels), test.features, cfg.c_grid)
        knn = knn_predict(*train, test.features, num_classes, cfg.knn_k, cfg.knn_temperature)
        split = {
            f"linear_{k}": v
            for k, v in group_accuracies(test.labels, result.test_predictions, class_counts, **grouping).items()
        }
        split |= {f"knn_{k}": v for k, v in group_accuracies(test.labels, knn, class_counts, **grouping).items()}
        split |= {"linear_best_c": result.best_c, "linear_val_top1": result.val_accuracy[result.best_c]}
        per_split.append(split)
    table = pd.DataFrame(per_split)
    metrics = {k: float(v) for k, v in table.mean().items()}  # k-shot: the mean over the random splits
    metrics["linear_best_c"] = float(table["linear_best_c"].median())
    if len(table) > 1:
        metrics |= {f"{k}_split_std": float(table[k].std()) for k in ("linear_top1", "linear_few", "knn_top1")}
    return metrics
