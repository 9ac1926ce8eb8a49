"""The pretraining loop: seeded, cosine schedule, resumable checkpoints.

A checkpoint holds everything the rest of the run depends on (model and memory,
optimizer, scheduler, RNG states, the data order generator, the step history)
and the resolved config, so a resumed run ends bit-identical to an
uninterrupted one on CPU.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from duel.config import PretrainConfig, RuntimeConfig, flatten
from duel.data.augment import to_unit
from duel.data.datasets import Batch, IndexedImages
from duel.diagnostics import memory_diagnostics
from duel.errors import DuelError
from duel.methods import SSLMethod
from duel.utils import progress, rng_states, save_torch, set_rng_states

StepCallback = Callable[[dict[str, float]], None]
EpochCallback = Callable[[dict[str, Any]], None]


def _cosine(total_steps: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def training_step(
    method: SSLMethod,
    augment: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    runtime: RuntimeConfig,
    step: int,
    total_steps: int,
) -> torch.Tensor:
    """One step on a uint8 batch already on the device: the method's views and loss, backward,
    optimizer step, the method's after-step updates. Returns the loss (not synchronised)."""
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    batch = batch._replace(images=to_unit(batch.images))
    with torch.no_grad():
        views = [v.contiguous(memory_format=memory_format) for v in method.views(batch, augment)]
    with torch.autocast(batch.images.device.type, dtype=torch.bfloat16, enabled=runtime.precision == "bf16"):
        output = method.training_loss(views, batch)
    optimizer.zero_grad(set_to_none=True)
    output.loss.backward()
    optimizer.step()
    method.after_step(output, batch, step, total_steps)
    return output.loss.detach()


@torch.no_grad()
def refresh_memory(
    method: SSLMethod, dataset: IndexedImages, augment: nn.Module, batch_size: int, runtime: RuntimeConfig
) -> None:
    """Re-encode the images behind the memory's keys with the current encoder (one new augmented view
    each) and rescore the memory, so DUEL compares keys of one encoder state instead of stale ones."""
    memory = method.memory
    assert memory is not None
    device = memory.keys.device
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    keys = []
    positions = dataset.positions(memory.indices[: memory.num_filled])
    for batch in dataset.batches(positions, batch_size, device, runtime.num_workers):
        views = augment(to_unit(batch.images)).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=runtime.precision == "bf16"):
            keys.append(method.memory_keys(views))
    memory.rekey(torch.cat(keys))


def _data_on_device(dataset: IndexedImages, runtime: RuntimeConfig, device: torch.device) -> bool:
    """Whether to hold the uint8 training set on the device: by default for small in-memory images on CUDA."""
    if not dataset.images.in_memory or device.type == "cpu":
        return False
    if runtime.data_on_device is not None:
        return runtime.data_on_device
    return dataset.images.shape[-1] <= 96


CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "order", "rng", "epoch", "history", "diagnostics", "config"}


def _load_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint to resume from; None when it is damaged: it is then set aside (`*.damaged`, with a
    warning) and the run starts over, which loses nothing the damaged file still held."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or not set(state) >= CHECKPOINT_KEYS:
            raise ValueError("not a pretraining checkpoint")
    except Exception as exc:  # truncated, not a zip or pickle, a foreign object: whatever torch raises
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        aside = path.with_name(f"{path.name}.damaged")
        path.replace(aside)
        print(
            f"warning: checkpoint {path} is damaged ({reason}); moved to {aside}, training starts over", file=sys.stderr
        )
        return None
    if state["config"] != config:
        saved, now = flatten(state["config"]), flatten(config)
        key = next(k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k))
        raise DuelError(
            f"checkpoint {path} was written with {key}={saved.get(key)!r}, not {now.get(key)!r}; "
            "delete it or run without --resume"
        )
    return state


def pretrain(
    method: SSLMethod,
    dataset: IndexedImages,
    augment: nn.Module,
    cfg: PretrainConfig,
    runtime: RuntimeConfig,
    *,
    seed: int,
    num_classes: int,
    config: dict[str, Any],
    checkpoint: Path,
    resume: bool = False,
    on_step: StepCallback | None = None,
    class_counts: list[int] | None = None,
    on_epoch: EpochCallback | None = None,
    on_method_metrics: StepCallback | None = None,
    before_checkpoint: Callable[[], None] | None = None,
) -> tuple[list[dict[str, float]], list[dict[str, Any]]]:
    """Train `method` in place on `runtime`'s device; return the per-step history (loss, lr, memory
    entropy, images/s) and the memory diagnostics (`duel.diagnostics`, one record per `cfg.diagnostics_every` epochs and
    at the end; none without a memory or `class_counts`, the training images per class).

    `config` is the resolved config saved in every checkpoint (machine settings are not part of it,
    so a run resumes on another device); `resume` continues from `checkpoint` when it exists and was
    written with the same config. `on_epoch` receives each memory diagnostics record,
    `on_method_metrics` the method's `epoch_metrics` after every epoch; `before_checkpoint` runs before
    each checkpoint is written (a logger flushes there, so a run killed afterwards loses no step that
    its resumption will not recompute).
    """
    device = torch.device(runtime.device)
    method.to(device)
    augment.to(device)
    if runtime.channels_last:
        method.to(memory_format=torch.channels_last)
    if runtime.compile:
        method.compile_backbones()
    if _data_on_device(dataset, runtime, device):
        dataset.to(device)
    steps_per_epoch = len(dataset) // cfg.batch_size
    if steps_per_epoch == 0:
        raise DuelError(
            f"the training set has {len(dataset)} images, fewer than pretrain.batch_size={cfg.batch_size}; "
            "lower pretrain.batch_size or raise prepare.n_max"
        )
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or cfg.epochs * steps_per_epoch)
    optimizer = torch.optim.SGD(method.param_groups(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(total_steps))
    order = torch.Generator().manual_seed(seed)  # the data order, saved in checkpoints

    start_epoch, history, diagnostics = 0, [], []
    if resume and checkpoint.exists() and (state := _load_checkpoint(checkpoint, config)) is not None:
        method.load_state_dict(state["model"])  # weights, memory and per-sample state
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        order.set_state(state["order"])
        set_rng_states(state["rng"])
        start_epoch, history, diagnostics = state["epoch"], state["history"], state["diagnostics"]

    method.train()
    epochs = math.ceil(total_steps / steps_per_epoch)
    for epoch in progress(range(start_epoch, epochs), "pretrain", total=epochs - start_epoch):
        method.on_epoch_start(epoch, epochs)
        tic = time.perf_counter()
        perm = torch.randperm(len(dataset), generator=order)
        for batch in dataset.batches(perm, cfg.batch_size, device, runtime.num_workers, drop_last=True):
            if len(history) == total_steps:
                break
            lr = scheduler.get_last_lr()[0]
            step = len(history)
            loss = training_step(method, augment, optimizer, batch, runtime, step, total_steps).item()  # syncs
            scheduler.step()
            every = method.refresh_memory_every
            if method.memory is not None and every and (step + 1) % every == 0:
                refresh_memory(method, dataset, augment, cfg.batch_size, runtime)
            toc = time.perf_counter()
            record = {
                "step": step,
                "epoch": epoch,
                "loss": loss,
                "lr": lr,
                "images_per_s": len(batch.labels) / (toc - tic),
            }
            if method.memory is not None:
                record["memory_entropy"] = method.memory.class_entropy(num_classes)
            tic = toc
            history.append(record)
            if on_step is not None:
                on_step(record)
        last = epoch + 1 == epochs
        if on_method_metrics is not None and (scalars := method.epoch_metrics()):
            on_method_metrics({"step": len(history) - 1, **scalars})
        diagnose = cfg.diagnostics_every and ((epoch + 1) % cfg.diagnostics_every == 0 or last)
        if method.memory is not None and class_counts is not None and diagnose:
            record = {"epoch": epoch, "step": len(history) - 1, **memory_diagnostics(method.memory, class_counts)}
            diagnostics.append(record)
            if on_epoch is not None:
                on_epoch(record)
        if (epoch + 1) % cfg.checkpoint_every == 0 or last:
            if before_checkpoint is not None:
                before_checkpoint()
            save_torch(
                checkpoint,
                {
                    "model": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "order": order.get_state(),
                    "rng": rng_states(),
                    "epoch": epoch + 1,
                    "history": history,
                    "diagnostics": diagnostics,
                    "config": config,
                },
            )
    return history, diagnostics
