"""Stage 2: one SSL run (method x imbalance x training set x LT draw x seed): encoder, final memory,
metrics, step log."""

from __future__ import annotations

import shutil
import time
from typing import Annotated

import pandas as pd
import typer

from duel.config import to_dict
from duel.data.augment import ssl_augmentation
from duel.data.datasets import IndexedImages
from duel.data.longtail import pretraining_indices
from duel.data.sources import SourceData
from duel.diagnostics import summary_metrics
from duel.methods import DataInfo, build_method
from duel.train import pretrain as train
from duel.utils import atomic_path, save_torch, seed_everything, write_json
from pipeline.common import (
    PARAMS,
    DrawOption,
    ImbalanceOption,
    MethodOption,
    ParamsOption,
    RunKey,
    SeedOption,
    TrainSetOption,
    check_imbalance,
    check_method,
    check_train_set,
    load_data,
    load_params,
)
from pipeline.tracking import StageRun


def pretraining_set(source: SourceData, train_indices: list[int]) -> IndexedImages:
    """A training subset (LT or its balanced match), plus the source's unlabeled images (indices after
    the training split)."""
    if source.unlabeled is None:
        return IndexedImages(source.train, train_indices)
    whole = source.train.concat(source.unlabeled)
    return IndexedImages(whole, [*train_indices, *range(len(source.train), len(whole))])


def pretrain(
    method: MethodOption,
    imbalance: ImbalanceOption,
    train_set: TrainSetOption = "lt",
    draw: DrawOption = 0,
    seed: SeedOption = 0,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run from its last checkpoint")] = False,
    params: ParamsOption = PARAMS,
) -> None:
    """Pretrain one encoder; writes model.pt, memory.pt, metrics.json, train_log.csv and memory_diagnostics.json."""
    cfg = load_params(params)
    check_method(method)
    check_imbalance(cfg, imbalance)
    check_train_set(train_set)
    key = RunKey(method, imbalance, train_set, draw, seed)
    source, manifest = load_data(cfg, imbalance, draw)
    indices = pretraining_indices(manifest, train_set, source.train.labels)
    config = {
        **key.config(),
        "data": to_dict(cfg.data),
        "pretrain": to_dict(cfg.pretrain),
        "manifest_fingerprint": manifest["source_fingerprint"],
        "num_train": len(indices),
    }

    seed_everything(seed, cfg.runtime.device)
    dataset = pretraining_set(source, indices)
    model = build_method(method, cfg.pretrain, DataInfo(source.channels, len(dataset), source.num_classes))
    config["memory_policy"] = model.memory_policy
    mean, std = source.channel_stats()
    augment = ssl_augmentation(cfg.pretrain.augment, source.image_size, source.channels, mean, std)
    checkpoint = key.checkpoint

    with StageRun("pretrain", key.stage("pretrain"), config, cfg.tracking.experiment, resume=resume) as run:
        tic = time.perf_counter()
        history, diagnostics = train(
            model,
            dataset,
            augment,
            cfg.pretrain,
            cfg.runtime,
            seed=seed,
            num_classes=source.num_classes,
            config=config,
            checkpoint=checkpoint,
            resume=resume,
            on_step=run.log_step,
            # The LT set's counts for both training sets: a balanced run's diagnostics then name the same
            # head and tail classes as the LT run it is compared with (as the probe's groups do).
            class_counts=manifest["class_counts"],
            on_epoch=lambda record: run.log_step({"step": record["step"], **summary_metrics(record)}, "memory"),
            on_method_metrics=lambda record: run.log_step(record, "method"),
            before_checkpoint=run.flush,
        )
        log = pd.DataFrame(history)
        metrics = {
            "final_loss": float(log["loss"].iloc[-1]),
            "train_seconds": time.perf_counter() - tic,
            "images_per_s": float(log["images_per_s"].median()),
            "steps": len(log),
        }
        if model.memory is not None:
            metrics["memory_entropy"] = model.memory.class_entropy(source.num_classes)
        if diagnostics:
            final = diagnostics[-1]
            metrics["memory_head_keys"] = sum(final["histogram"][c] for c in final["head_classes"])
            metrics.update(summary_metrics(final))

        out = key.pretrain_dir
        save_torch(
            out / "model.pt",
            {
                "backbone": cfg.pretrain.backbone,
                "in_channels": source.channels,
                "state_dict": model.backbone.state_dict(),
                # The whole method without its memory (in memory.pt): key encoder and projectors, for analysis.
                "method_state_dict": {k: v for k, v in model.state_dict().items() if not k.startswith("memory.")},
                "normalize": {"mean": mean, "std": std},
                "config": config,
            },
        )
        memory = model.memory.state_dict() if model.memory is not None else {}
        save_torch(out / "memory.pt", {"policy": getattr(model.memory, "policy", None), "state_dict": memory})
        with atomic_path(out / "train_log.csv") as tmp:
            log.to_csv(tmp, index=False)
        write_json(out / "memory_diagnostics.json", diagnostics, indent=None)  # one line: long count lists
        write_json(out / "metrics.json", metrics)
        run.log_metrics(metrics)
        for path in (out / "metrics.json", out / "train_log.csv", out / "memory_diagnostics.json"):
            run.log_artifact(path)
        if sample_state := model.sample_state():  # per-sample state (BCL's scores, GH's targets) in the run
            arrays = {"source_index": dataset.indices, **sample_state}
            run.log_arrays("sample_state.npz", {k: v.cpu().numpy() for k, v in arrays.items()})
    # The run is complete: its outputs supersede the crash-recovery checkpoint.
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
