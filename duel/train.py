"""The pretraining loop: seeded, cosine schedule, resumable checkpoints.

A checkpoint holds everything the rest of the run depends on (model and memory,
optimizer, scheduler, RNG states, the data order generator, the step history)
and the resolved config, so a resumed run ends bit-identical to an
uninterrupted one on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from duel.config import DuelError, PretrainConfig, flatten
from duel.data.augment import to_unit
from duel.data.datasets import IndexedImages
from duel.methods import SSLMethod
from duel.utils import progress, rng_states, save_torch, set_rng_states

StepCallback = Callable[[dict[str, float]], None]


def _cosine(total_steps: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def training_step(
    method: SSLMethod,
    augment: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    cfg: PretrainConfig,
) -> torch.Tensor:
    """One step on a uint8 batch already on the device: two augmented views, loss (and memory push),
    backward, optimizer step. Returns the loss (not synchronised)."""
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    x = to_unit(images)
    with torch.no_grad():
        views = [augment(x).contiguous(memory_format=memory_format) for _ in range(2)]
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        loss = method.training_loss(*views, labels, indices)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def _data_on_device(dataset: IndexedImages, cfg: PretrainConfig, device: torch.device) -> bool:
    """Whether to hold the uint8 training set on the device: by default for small in-memory images on CUDA."""
    if not dataset.images.in_memory or device.type == "cpu":
        return False
    if cfg.data_on_device is not None:
        return cfg.data_on_device
    return dataset.images.shape[-1] <= 96


def _load_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=False)
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
    *,
    seed: int,
    num_classes: int,
    config: dict[str, Any],
    checkpoint: Path,
    resume: bool = False,
    on_step: StepCallback | None = None,
) -> list[dict[str, float]]:
    """Train `method` in place; return the per-step history (loss, lr, memory entropy, images/s).

    `config` is the resolved config saved in every checkpoint; `resume` continues
    from `checkpoint` when it exists and was written with the same config.
    """
    device = torch.device(cfg.device)
    method.to(device)
    augment.to(device)
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    if cfg.compile:
        method.compile_backbones()
    if _data_on_device(dataset, cfg, device):
        dataset.to(device)
    steps_per_epoch = len(dataset) // cfg.batch_size
    if steps_per_epoch == 0:
        raise DuelError(
            f"the training set has {len(dataset)} images, fewer than pretrain.batch_size={cfg.batch_size}; "
            "lower pretrain.batch_size or raise prepare.n_max"
        )
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or cfg.epochs * steps_per_epoch)
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(total_steps))
    order = torch.Generator().manual_seed(seed)  # the data order, saved in checkpoints

    start_epoch, history = 0, []
    if resume and checkpoint.exists():
        state = _load_checkpoint(checkpoint, config)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        order.set_state(state["order"])
        set_rng_states(state["rng"])
        start_epoch, history = state["epoch"], state["history"]

    method.train()
    epochs = math.ceil(total_steps / steps_per_epoch)
    for epoch in progress(range(start_epoch, epochs), "pretrain", total=epochs - start_epoch):
        tic = time.perf_counter()
        perm = torch.randperm(len(dataset), generator=order)
        for images, labels, indices in dataset.batches(perm, cfg.batch_size, device, cfg.num_workers, drop_last=True):
            if len(history) == total_steps:
                break
            lr = scheduler.get_last_lr()[0]
            loss = training_step(method, augment, optimizer, images, labels, indices, cfg).item()  # syncs the device
            scheduler.step()
            toc = time.perf_counter()
            record = {
                "step": len(history),
                "epoch": epoch,
                "loss": loss,
                "lr": lr,
                "images_per_s": len(labels) / (toc - tic),
            }
            if method.memory is not None:
                record["memory_entropy"] = method.memory.class_entropy(num_classes)
            tic = toc
            history.append(record)
            if on_step is not None:
                on_step(record)
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == epochs:
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
                    "config": config,
                },
            )
    return history
