"""Stage 3: linear probe and kNN on frozen features of one pretrain run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from duel.backbones import build_backbone
from duel.config import DuelError, to_dict
from duel.data.augment import normalizer
from duel.data.datasets import IndexedImages
from duel.data.longtail import kshot_subsets
from duel.eval.features import extract_features
from duel.eval.groups import group_accuracies
from duel.eval.knn import knn_predict
from duel.eval.linear import linear_probe
from duel.utils import atomic_path, write_json
from pipeline.common import (
    PARAMS,
    ImbalanceOption,
    MethodOption,
    ParamsOption,
    SeedOption,
    check_imbalance,
    check_method,
    load_data,
    load_params,
    pretrain_dir,
    probe_dir,
    setting,
)
from pipeline.tracking import StageRun, stage_name


def load_encoder(path: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The frozen backbone of a pretrain run and its input normalisation."""
    if not path.exists():
        raise DuelError(f"{path} is missing; run the matching pretrain stage first")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        encoder, _ = build_backbone(saved["backbone"], saved["in_channels"])
        encoder.load_state_dict(saved["state_dict"])
    except (RuntimeError, KeyError, EOFError) as exc:
        raise DuelError(f"{path} is corrupt ({str(exc).splitlines()[0]}); rerun its pretrain stage") from exc
    return encoder, normalizer(saved["normalize"]["mean"], saved["normalize"]["std"])


def probe(
    method: MethodOption,
    imbalance: ImbalanceOption,
    seed: SeedOption = 0,
    params: ParamsOption = PARAMS,
) -> None:
    """Linear probe (C chosen on validation) and kNN; overall / many / medium / few top-1 on test."""
    cfg = load_params(params)
    check_method(method)
    check_imbalance(cfg, imbalance)
    pc = cfg.probe
    source, manifest = load_data(cfg, imbalance)
    encoder, normalize = load_encoder(pretrain_dir(method, imbalance, seed) / "model.pt")

    if pc.train_set == "kshot":
        pool_idx, all_labels = manifest["balanced_indices"], source.train.labels
        train_sets = kshot_subsets(pool_idx, all_labels, source.classes, pc.shots, pc.splits, pc.split_seed)
    else:
        train_sets = [np.asarray(manifest["balanced_indices" if pc.train_set == "balanced" else "train_indices"])]
    pool = np.unique(np.concatenate(train_sets))  # features of every probe image, extracted once
    sets = {
        "pool": IndexedImages(source.train, pool),
        "val": IndexedImages(source.train, manifest["val_indices"]),
        "test": IndexedImages(source.test, np.arange(len(source.test))),
    }
    workers = cfg.pretrain.num_workers
    feats = {k: extract_features(encoder, normalize, ds, pc.batch_size, pc.device, workers) for k, ds in sets.items()}
    labels = {k: ds.labels.numpy() for k, ds in sets.items()}

    grouping = {"mode": pc.groups, "thresholds": tuple(pc.shot_thresholds)}
    counts = manifest["class_counts"]
    per_split = []
    for train_idx in train_sets:
        rows = np.searchsorted(pool, train_idx)
        train = (feats["pool"][rows], labels["pool"][rows])
        result = linear_probe(train, (feats["val"], labels["val"]), feats["test"], pc.c_grid)
        knn = knn_predict(*train, feats["test"], source.num_classes, pc.knn_k, pc.knn_temperature)
        linear = group_accuracies(labels["test"], result.test_predictions, counts, **grouping)
        split = {f"linear_{k}": v for k, v in linear.items()}
        split |= {f"knn_{k}": v for k, v in group_accuracies(labels["test"], knn, counts, **grouping).items()}
        split |= {"linear_best_c": result.best_c, "linear_val_top1": result.val_accuracy[result.best_c]}
        per_split.append(split)
    table = pd.DataFrame(per_split)
    metrics = {k: float(v) for k, v in table.mean().items()}  # k-shot: the mean over the random splits
    metrics["linear_best_c"] = float(table["linear_best_c"].median())
    if len(table) > 1:
        metrics |= {f"{k}_split_std": float(table[k].std()) for k in ("linear_top1", "linear_few", "knn_top1")}
    config = {"method": method, "imbalance": imbalance, "seed": seed, "probe": to_dict(pc)}
    name = stage_name("probe", method, setting(imbalance), seed)
    with StageRun("probe", name, config, cfg.tracking.experiment) as run:
        out = probe_dir(method, imbalance, seed)
        with atomic_path(out / "test_features.npz") as tmp, tmp.open("wb") as fh:
            np.savez_compressed(fh, features=feats["test"], labels=labels["test"])
        write_json(out / "metrics.json", metrics)
        run.log_metrics(metrics)
        run.log_artifact(out / "metrics.json")
