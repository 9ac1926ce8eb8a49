"""Long-tailed subsets (DESIGN §3): per-class counts by profile and deterministic manifests.

A manifest stores indices into the source's training split (never image copies):
the validation split, carved per class before the long-tailed draw, the balanced
pool left after it, and the long-tailed subset drawn from that pool.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from duel.config import DataConfig, PrepareConfig
from duel.data.sources import DataError, SourceData


def class_counts(profile: str, n_max: int, num_classes: int, imbalance: float, match_profile: str = "exp") -> list[int]:
    """Images per class, head first (before `head_order` assigns them to classes)."""
    c_count = num_classes
    if profile == "exp":  # Cao et al. 2019
        return [math.floor(n_max * imbalance ** (-c / (c_count - 1))) for c in range(c_count)]
    if profile == "step":
        head = c_count // 2
        return [n_max] * head + [math.floor(n_max / imbalance)] * (c_count - head)
    if profile == "dominant":  # the head holds a fraction rho_max of the set
        rest = math.floor(n_max * (1 - imbalance) / (imbalance * (c_count - 1)))
        return [n_max] + [rest] * (c_count - 1)
    if profile == "balanced":
        return [n_max] * c_count
    if profile == "balanced_matched":  # balanced, same total as the reference LT set
        total = sum(class_counts(match_profile, n_max, c_count, imbalance))
        return [total // c_count + (1 if c < total % c_count else 0) for c in range(c_count)]
    raise ValueError(f"unknown profile {profile!r}")


def build_manifest(source: SourceData, data: DataConfig, cfg: PrepareConfig, imbalance: float) -> dict[str, Any]:
    rng = np.random.default_rng(cfg.seed)
    labels = source.train.labels
    val, pool = [], []
    for c in range(source.num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = round(len(idx) * data.val_fraction)
        val.append(idx[:n_val])
        pool.append(idx[n_val:])

    counts = class_counts(cfg.profile, cfg.n_max, source.num_classes, imbalance, cfg.match_profile)
    order = np.arange(source.num_classes)
    if cfg.head_order == "shuffled":
        order = rng.permutation(source.num_classes)
    per_class = [0] * source.num_classes
    for rank, c in enumerate(order):
        per_class[int(c)] = counts[rank]

    lt = []
    for c, n in enumerate(per_class):
        if n > len(pool[c]):
            raise DataError(
                f"prepare.n_max={cfg.n_max} asks for {n} images of class {source.classes[c]!r} but only "
                f"{len(pool[c])} remain after the validation split; lower prepare.n_max"
            )
        if n < 1:
            raise DataError(
                f"class {source.classes[c]!r} gets 0 images at imbalance {imbalance:g}; raise prepare.n_max "
                "or lower the imbalance"
            )
        lt.append(np.sort(pool[c][:n]))

    return {
        "source": source.name,
        "source_fingerprint": source.fingerprint(),
        "classes": source.classes,
        "profile": cfg.profile,
        "imbalance": imbalance,
        "n_max": cfg.n_max,
        "head_order": cfg.head_order,
        "class_order": [int(c) for c in order],
        "seed": cfg.seed,
        "class_counts": per_class,
        "num_train": int(sum(per_class)),
        "train_indices": np.concatenate(lt).tolist(),
        "balanced_indices": np.sort(np.concatenate(pool)).tolist(),
        "val_indices": np.sort(np.concatenate(val)).tolist(),
    }


def check_manifest(manifest: dict[str, Any], source: SourceData) -> None:
    if manifest["source_fingerprint"] != source.fingerprint():
        raise DataError(f"the {source.name} data differ from those the manifest was built on; rerun the prepare stage")
