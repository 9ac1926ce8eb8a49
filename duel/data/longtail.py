"""Long-tailed subsets (DESIGN §3): per-class counts by profile and deterministic manifests.

A manifest stores indices into the source's training split (never image copies):
the validation split, carved per class before the long-tailed draw, the balanced
pool left after it, the long-tailed subset drawn from that pool (D_i) and a
class-balanced subset of the pool with the same total (D_b, what SDCLR's table
pretrains on to show what the imbalance costs).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from duel.config import GIVEN_PROFILES, DataConfig, PrepareConfig
from duel.errors import DataError

if TYPE_CHECKING:  # annotations only: sources import torch, which class_counts (use-profile --smoke) does not need
    from duel.data.sources import SourceData


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
        return matched_counts(sum(class_counts(match_profile, n_max, c_count, imbalance)), c_count)
    raise ValueError(f"unknown profile {profile!r}")


def _load_indices(template: str, imbalance: float, draw: int, n: int, key: str) -> np.ndarray:
    """A .npy of indices into the training split; `{imbalance}` and `{draw}` in the path name the setting."""
    path = Path(template.replace("{imbalance}", f"{imbalance:g}").replace("{draw}", str(draw))).expanduser()
    try:
        idx = np.load(path, allow_pickle=False).astype(np.int64).ravel()
    except (OSError, ValueError) as exc:
        raise DataError(f"{key}: cannot read {path} ({exc}); point it at a .npy of training-split indices") from exc
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= n or len(np.unique(idx)) != len(idx):
        raise DataError(f"{key}: {path} must hold distinct indices in [0, {n}) of the source's training split")
    return np.sort(idx)


def matched_counts(total: int, num_classes: int) -> list[int]:
    """A balanced split of `total` images over the classes (the first `total % C` classes get one more)."""
    return [total // num_classes + (1 if c < total % num_classes else 0) for c in range(num_classes)]


def build_manifest(
    source: SourceData, data: DataConfig, cfg: PrepareConfig, imbalance: float, draw: int = 0
) -> dict[str, Any]:
    rng = np.random.default_rng(cfg.seed)
    labels = source.train.labels
    n = len(labels)
    given = None
    if cfg.profile == "file":
        given = _load_indices(cfg.index_file, imbalance, draw, n, "prepare.index_file")
    fixed_val = source.val_indices
    if cfg.val_index_file is not None:
        fixed_val = _load_indices(cfg.val_index_file, imbalance, draw, n, "prepare.val_index_file")
    if fixed_val is not None and given is not None and np.intersect1d(fixed_val, given).size:
        raise DataError("the validation indices overlap prepare.index_file; use disjoint split files")

    val, pool = [], []
    for c in range(source.num_classes):
        members = np.flatnonzero(labels == c)
        if fixed_val is not None:
            val.append(np.intersect1d(members, fixed_val))
            pool.append(np.setdiff1d(members, fixed_val))
            continue
        # Carved per class before any LT draw (a given LT set is kept out of it).
        idx = rng.permutation(members if given is None else np.setdiff1d(members, given))
        n_val = min(round(len(members) * data.val_fraction), len(idx))
        val.append(idx[:n_val])
        pool.append(idx[n_val:] if given is None else np.union1d(idx[n_val:], np.intersect1d(members, given)))

    if draw:
        # Draw 0 goes on with the generator of the validation carve; draw k > 0 reorders each class's
        # pool with its own generator, so every draw keeps the same validation split and pool.
        rng = np.random.default_rng([cfg.seed, draw])
        pool = [rng.permutation(p) for p in pool]

    order = np.arange(source.num_classes)
    if cfg.profile in GIVEN_PROFILES:
        lt = [np.intersect1d(p, given) if given is not None else np.sort(p) for p in pool]
        per_class = [len(x) for x in lt]
    else:
        counts = class_counts(cfg.profile, cfg.n_max, source.num_classes, imbalance, cfg.match_profile)
        if cfg.head_order == "shuffled":
            order = rng.permutation(source.num_classes)
        per_class = [0] * source.num_classes
        for rank, c in enumerate(order):
            per_class[int(c)] = counts[rank]
        lt = []
        for c, k in enumerate(per_class):
            if k > len(pool[c]):
                raise DataError(
                    f"prepare.n_max={cfg.n_max} asks for {k} images of class {source.classes[c]!r} but only "
                    f"{len(pool[c])} remain after the validation split; lower prepare.n_max"
                )
            lt.append(np.sort(pool[c][:k]))
    for c, k in enumerate(per_class):
        if k < 1:
            raise DataError(
                f"class {source.classes[c]!r} gets 0 images at imbalance {imbalance:g}; raise prepare.n_max, "
                "lower the imbalance or fix the split file"
            )
    if not all(len(v) for v in val):
        empty = source.classes[next(c for c, v in enumerate(val) if not len(v))]
        raise DataError(f"class {empty!r} has no validation image; raise data.val_fraction or fix the split file")
    # D_b; a source long-tailed as published (profile natural) may hold no balanced set that large.
    wanted = matched_counts(sum(per_class), source.num_classes)
    matched = None
    if all(k <= len(p) for k, p in zip(wanted, pool, strict=True)):
        matched = np.concatenate([np.sort(rng.choice(p, k, replace=False)) for k, p in zip(wanted, pool, strict=True)])

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
        "draw": draw,
        "class_counts": per_class,
        "num_train": int(sum(per_class)),
        "train_indices": np.concatenate(lt).tolist(),
        "matched_indices": None if matched is None else matched.tolist(),
        "balanced_indices": np.sort(np.concatenate(pool)).tolist(),
        "val_indices": np.sort(np.concatenate(val)).tolist(),
    }


def pretraining_indices(manifest: dict[str, Any], train_set: str, labels: np.ndarray) -> list[int]:
    """The training-split indices `train_set` (sweep.train_sets) names: the LT set or its balanced match."""
    if train_set == "lt":
        return manifest["train_indices"]
    if manifest["matched_indices"] is None:
        pool = np.bincount(labels[manifest["balanced_indices"]], minlength=len(manifest["classes"]))
        need, c = -(-manifest["num_train"] // len(pool)), int(pool.argmin())
        raise DataError(
            f"a balanced set of the LT set's size ({manifest['num_train']} images) needs {need} per class but class "
            f"{manifest['classes'][c]!r} has {pool[c]} in its pool; drop balanced from sweep.train_sets"
        )
    return manifest["matched_indices"]


def check_manifest(manifest: dict[str, Any], source: SourceData) -> None:
    if manifest["source_fingerprint"] != source.fingerprint():
        raise DataError(f"the {source.name} data differ from those the manifest was built on; rerun the prepare stage")


def kshot_subsets(
    pool: list[int], labels: np.ndarray, classes: list[str], shots: int, splits: int, seed: int
) -> list[np.ndarray]:
    """`splits` seeded draws of `shots` images per class from the balanced pool (k-shot probe sets)."""
    pool_arr = np.asarray(pool, dtype=np.int64)
    by_class = [pool_arr[labels[pool_arr] == c] for c in range(len(classes))]
    for name, members in zip(classes, by_class, strict=True):
        if len(members) < shots:
            raise DataError(
                f"probe.shots={shots} but class {name!r} has {len(members)} images in the pool; lower probe.shots"
            )
    draws = []
    for split in range(splits):
        rng = np.random.default_rng([seed, split])
        draws.append(np.sort(np.concatenate([rng.choice(m, shots, replace=False) for m in by_class])))
    return draws
