"""Stage 3: linear probe and kNN on frozen features of one pretrain run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The LT heads' first torch.optim optimizer imports torch._dynamo (1.5 s here). Imported here, it is start-up
# like the stage's other imports, and probe_seconds times the probe alone (benchmarks/repro.py).
import torch._dynamo

from duel.backbones import build_backbone
from duel.config import StudyConfig, to_dict
from duel.data.augment import normalizer
from duel.data.datasets import IndexedImages
from duel.data.sources import SourceData
from duel.eval.features import extract_features
from duel.eval.protocol import Features, evaluate, evaluate_heads, probe_train_sets
from duel.files import atomic_path, write_json
from duel.utils import configure_cpu
from pipeline.common import RunKey, load_data, read_output
from pipeline.tracking import StageRun


def load_encoder(key: RunKey) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The frozen backbone of a pretrain run and its input normalisation."""

    def load(path: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        encoder, _ = build_backbone(saved["backbone"], saved["in_channels"])
        encoder.load_state_dict(saved["state_dict"])
        return encoder, normalizer(saved["normalize"]["mean"], saved["normalize"]["std"])

    return read_output(key.pretrain_dir / "model.pt", key.stage("pretrain"), load)


def probe_encoder(
    encoder: torch.nn.Module, normalize: torch.nn.Module, source: SourceData, manifest: dict[str, Any], cfg: StudyConfig
) -> tuple[dict[str, float], Features]:
    """The probe protocol on one frozen encoder: the metrics and the test features."""
    pc = cfg.probe
    train_sets = probe_train_sets(manifest, source.train.labels, source.classes, pc)
    lt_set = np.asarray(manifest["train_indices"]) if pc.heads else np.empty(0, dtype=np.int64)
    pool = np.unique(np.concatenate([*train_sets, lt_set]))  # features of every probe image, extracted once
    sets = {
        "pool": IndexedImages(source.train, pool),
        "val": IndexedImages(source.train, manifest["val_indices"]),
        "test": IndexedImages(source.test, np.arange(len(source.test))),
    }
    rt = cfg.runtime
    feats = {
        k: Features(
            extract_features(encoder, normalize, ds, pc.batch_size, rt.device, rt.num_workers), ds.labels.numpy()
        )
        for k, ds in sets.items()
    }
    counts = manifest["class_counts"]
    metrics = evaluate(pool, feats["pool"], feats["val"], feats["test"], train_sets, counts, pc)
    if pc.heads:
        rows = np.searchsorted(pool, lt_set)
        lt_train = Features(feats["pool"].features[rows], feats["pool"].labels[rows])
        metrics |= evaluate_heads(lt_train, feats["val"], feats["test"], counts, pc)
    return metrics, feats["test"]


def probe(cfg: StudyConfig, key: RunKey) -> None:
    """The probe of one pretrain run, written and logged (`pipeline.cli.probe` checked its command line)."""
    configure_cpu(cfg.runtime)
    source, manifest = load_data(cfg, key.imbalance, key.draw)  # bad inputs fail here, before any run or output
    encoder, normalize = load_encoder(key)
    config = {**key.config(), "probe": to_dict(cfg.probe)}
    # The MLflow run spans the stage's work, so the runs table's durations are the stage's.
    with StageRun("probe", key.stage("probe"), config, cfg.tracking.experiment) as run:
        tic = time.perf_counter()
        metrics, test = probe_encoder(encoder, normalize, source, manifest, cfg)
        metrics["probe_seconds"] = time.perf_counter() - tic  # benchmarks/repro.py: compute vs. overhead
        out = key.probe_dir
        with atomic_path(out / "test_features.npz") as tmp, tmp.open("wb") as fh:
            np.savez_compressed(fh, features=test.features, labels=test.labels)
        write_json(out / "metrics.json", metrics)
        run.log_metrics(metrics)
        run.log_artifact(out / "metrics.json")
