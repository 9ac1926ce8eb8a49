"""The evaluation protocol on frozen features (DESIGN §4), independent of the pipeline.

Which images train the probe (`probe_train_sets`: the balanced pool, the LT set,
or k-shot draws from the balanced pool), then per training set a linear probe
with C chosen on validation and a kNN classifier, scored on test overall and per
many / medium / few group (`evaluate`). The LT-aware heads (`evaluate_heads`) are
the supervised side of the field: trained on the long-tailed set itself, their
hyper-parameters chosen on validation. Test labels are only ever used to score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from duel.config import ProbeConfig
from duel.data.longtail import kshot_subsets
from duel.eval.groups import group_accuracies
from duel.eval.heads import HEADS, lt_head_probe
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


def evaluate_heads(
    lt_train: Features, val: Features, test: Features, class_counts: list[int], cfg: ProbeConfig
) -> dict[str, float]:
    """Each of `cfg.heads` on the LT training set's features; per head, test top-1 overall and per group
    as trained (`head_<name>_*`) and after post-hoc logit adjustment (`head_<name>_posthoc_*`), with the
    hyper-parameter and tau validation chose."""
    grouping = {"mode": cfg.groups, "thresholds": tuple(cfg.shot_thresholds)}
    metrics: dict[str, float] = {}
    for name in cfg.heads:
        loss, drw_start = HEADS[name]
        result = lt_head_probe(
            (lt_train.features, lt_train.labels),
            (val.features, val.labels),
            test.features,
            class_counts,
            loss,
            posthoc_taus=cfg.posthoc_taus,
            epochs=cfg.head_epochs,
            drw_start=drw_start,
        )
        for key, predictions in ((name, result.test_predictions), (f"{name}_posthoc", result.posthoc_test_predictions)):
            scores = group_accuracies(test.labels, predictions, class_counts, **grouping)
            metrics |= {f"head_{key}_{k}": v for k, v in scores.items()}
        metrics |= {f"head_{name}_hp": float(result.best_hp), f"head_{name}_posthoc_tau": float(result.posthoc_tau)}
    return metrics
