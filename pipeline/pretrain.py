"""Stage 2: one SSL run (method x imbalance x training set x LT draw x seed): encoder, final memory,
metrics, step log."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from duel.callbacks import Callback, Checkpoint, MemoryDiagnostics, MemorySnapshotting, OnlineEval
from duel.config import StudyConfig, for_method, to_dict
from duel.data.augment import normalizer, ssl_augmentation
from duel.data.datasets import IndexedImages
from duel.data.longtail import pretraining_indices
from duel.data.sources import SourceData
from duel.diagnostics import summary_metrics
from duel.distributed import World, launched
from duel.engine import Trainer
from duel.errors import DuelError
from duel.eval.groups import class_groups
from duel.eval.online import OnlineKNN, bank_indices, curve_summary
from duel.files import atomic_path, write_json
from duel.memory import class_entropy
from duel.methods import DataInfo, build_method
from duel.utils import configure_cpu, save_torch, seed_everything
from pipeline.common import RunKey, load_data, manifest_path
from pipeline.tracking import StageRun

LATE_SHARE = 3  # memory_entropy_late: the mean over the last third of the steps
ONLINE = "online_"  # the history's prefix of the accuracy measured during training (duel.callbacks.OnlineEval)


def pretraining_set(source: SourceData, train_indices: list[int]) -> IndexedImages:
    """A training subset (LT or its balanced match), plus the source's unlabeled images (indices after
    the training split)."""
    if source.unlabeled is None:
        return IndexedImages(source.train, train_indices)
    whole = source.train.concat(source.unlabeled)
    return IndexedImages(whole, [*train_indices, *range(len(source.train), len(whole))])


def pretrain(cfg: StudyConfig, key: RunKey, resume: bool) -> None:
    """One run, as one process or under torch's elastic launcher (`pipeline.cli.pretrain` checked its
    command line)."""
    configure_cpu(cfg.runtime)
    if cfg.pretrain.nproc_per_node > 1 and not launched():
        launch_data_parallel(cfg.pretrain.nproc_per_node)
        return
    world = World.from_launcher(cfg.runtime.device)
    try:
        run_pretraining(cfg, key, resume, world)
    finally:
        world.close()


def online_eval(cfg: StudyConfig, manifest: dict[str, Any], source: SourceData, normalize: nn.Module) -> list[Callback]:
    """The accuracy over training of `pretrain.online_eval` (none when off): the probe stage's kNN, its
    bank drawn from the balanced probe pool with the study's split seed, its queries the validation split."""
    oe = cfg.pretrain.online_eval
    if not oe.every:
        return []
    if not manifest["val_indices"]:
        raise DuelError(
            "pretrain.online_eval measures on the validation split, which is empty here; "
            "set data.val_fraction > 0 or pretrain.online_eval.every: 0"
        )
    bank = bank_indices(manifest["balanced_indices"], oe.bank_size, cfg.data.split_seed)
    pc = cfg.probe
    knn = OnlineKNN(
        IndexedImages(source.train, bank),
        IndexedImages(source.train, manifest["val_indices"]),
        source.num_classes,
        manifest["class_counts"],
        k=pc.knn_k,
        temperature=pc.knn_temperature,
        groups=pc.groups,
        thresholds=tuple(pc.shot_thresholds),
        batch_size=pc.batch_size,
    )
    return [OnlineEval(knn, normalize)]


class MLflowLogging(Callback):
    """A training run's curves in its MLflow run (rank 0): every record the run logs as `<section>/<name>`
    against its step, and the method's `epoch_metrics` after each epoch (section "method"); buffered, and
    sent before each checkpoint is written."""

    def __init__(self, run: StageRun) -> None:
        self.run = run

    def on_log(self, trainer: Trainer, record: dict[str, float], section: str) -> None:
        self.run.log_step(record, section)

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        if scalars := trainer.method.epoch_metrics():
            self.run.log_step({"step": trainer.global_step - 1, **scalars}, "method")

    def on_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        self.run.flush()


def online_curve(log: pd.DataFrame) -> pd.DataFrame:
    """The measured points of the history: step, epoch and each online value without its prefix."""
    columns = [c for c in log.columns if c.startswith(ONLINE)]
    measured = log.dropna(how="all", subset=columns) if columns else log.iloc[:0]
    return measured[["step", "epoch", *columns]].rename(columns=lambda c: c.removeprefix(ONLINE))


def launch_data_parallel(nproc: int) -> None:
    """Run this same command as `nproc` processes under torch's elastic launcher (one machine)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    proc = subprocess.run([*command, "-m", "pipeline", *sys.argv[1:]])
    if proc.returncode != 0:
        raise DuelError(
            f"data-parallel pretraining failed on one of its {nproc} processes (torchrun exit {proc.returncode}; "
            "its error is above); the last checkpoint is kept, so a rerun with --resume continues from it"
        )


def run_pretraining(cfg: StudyConfig, key: RunKey, resume: bool, world: World) -> None:
    """One run on this process's share of the data; rank 0 alone logs to MLflow and writes the outputs."""
    source, manifest = load_data(cfg, key.imbalance, key.draw)
    # The probe stage reports these groups; a grouping it would refuse is refused before the training.
    class_groups(manifest["class_counts"], cfg.probe.groups, tuple(cfg.probe.shot_thresholds))
    indices = pretraining_indices(manifest, key.train_set, source.train.labels)
    pre = for_method(cfg.pretrain, key.method)  # the section with this method's recipe applied
    config = {
        **key.config(),
        "data": to_dict(cfg.data),
        "pretrain": to_dict(pre),
        "manifest_fingerprint": manifest["source_fingerprint"],
        "num_train": len(indices),
        # What the run was, whichever launcher started it (torchrun over several machines included).
        "world_size": world.size,
        "global_batch_size": pre.batch_size * world.size,
    }

    seed = key.seed
    seed_everything(seed, cfg.runtime.device)
    dataset = pretraining_set(source, indices)
    model = build_method(key.method, pre, DataInfo(source.channels, len(dataset), source.num_classes))
    config["memory_policy"] = model.memory_policy
    mean, std = source.channel_stats()
    augment = ssl_augmentation(pre.augment, source.image_size, source.channels, mean, std)
    checkpoint = key.checkpoint
    diagnostics = MemoryDiagnostics(manifest["class_counts"])  # the LT set's counts for both training sets
    snapshots = MemorySnapshotting()
    online = online_eval(cfg, manifest, source, normalizer(mean, std))
    callbacks = [Checkpoint(checkpoint, config, resume), *online, diagnostics, snapshots]

    tracked = StageRun("pretrain", key.stage("pretrain"), config, cfg.tracking.experiment, resume=resume)
    with tracked if world.is_main else contextlib.nullcontext() as run:
        if run is not None:
            labels = dataset.labels.numpy()
            where = manifest_path(key.imbalance, key.draw)
            run.log_dataset(key.training_set(source.name), dataset.indices.numpy(), labels, where, "training")
            callbacks.append(MLflowLogging(run))
        tic = time.perf_counter()
        history = Trainer(model, dataset, augment, pre, cfg.runtime, seed, world, callbacks).fit()
        if run is None:
            return
        log = pd.DataFrame(history)
        metrics = {
            "final_loss": float(log["loss"].iloc[-1]),
            "train_seconds": time.perf_counter() - tic,
            "images_per_s": float(log["images_per_s"].median()),
            "steps": len(log),
        }
        if model.memory is not None:
            metrics["memory_entropy"] = model.memory.class_entropy(source.num_classes)
            # A final snapshot of a FIFO memory is one draw of the stream: compare memories over time.
            late = log["memory_entropy"].iloc[-max(1, len(log) // LATE_SHARE) :]
            metrics["memory_entropy_late"] = float(late.mean())
            # What a memory that mirrors the stream holds: the class entropy of the training set.
            metrics["stream_entropy"] = class_entropy(dataset.labels, source.num_classes)
        curve = online_curve(log)
        if len(curve):
            summary = curve_summary(curve["step"].tolist(), curve["knn_top1"].tolist())
            metrics |= {f"online_knn_{name}": value for name, value in summary.items()}
        if diagnostics.records:
            final = diagnostics.records[-1]
            metrics["memory_head_keys"] = sum(final["histogram"][c] for c in final["head_classes"])
            metrics.update(summary_metrics(final))

        out = key.pretrain_dir
        save_torch(
            out / "model.pt",
            {
                "backbone": pre.backbone,
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
        with atomic_path(out / "online_eval.csv") as tmp:  # the header alone when online_eval is off
            curve.to_csv(tmp, index=False)
        write_json(out / "memory_diagnostics.json", diagnostics.records, indent=None)  # one line: long count lists
        with atomic_path(out / "memory_snapshots.npz") as tmp:  # no point when off or without a memory
            np.savez_compressed(tmp, **snapshots.recorder.arrays())
        write_json(out / "metrics.json", metrics)
        run.log_metrics(metrics)
        for name in (
            "metrics.json",
            "train_log.csv",
            "online_eval.csv",
            "memory_diagnostics.json",
            "memory_snapshots.npz",
        ):
            run.log_artifact(out / name)
        if sample_state := model.sample_state():  # per-sample state (BCL's scores, GH's targets) in the run
            arrays = {"source_index": dataset.indices, **sample_state}
            run.log_arrays("sample_state.npz", {k: v.cpu().numpy() for k, v in arrays.items()})
    # The run is complete: its outputs supersede the crash-recovery checkpoint.
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
