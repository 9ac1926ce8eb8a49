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
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from duel.config import PretrainConfig, RuntimeConfig, flatten
from duel.data.augment import to_unit
from duel.data.datasets import Batch, IndexedImages
from duel.diagnostics import memory_diagnostics
from duel.distributed import ONE_PROCESS, World
from duel.errors import DuelError
from duel.methods import SSLMethod, StepOutput
from duel.snapshots import MemorySnapshots, display_positions
from duel.utils import progress, rng_states, save_torch, seed_everything, set_rng_states

StepCallback = Callable[[dict[str, float]], None]
EpochCallback = Callable[[dict[str, Any]], None]
CHECK_EVERY = 50  # steps between the cross-rank checksums of the memory and per-sample state


class TrainingLoss(nn.Module):
    """`method.training_loss` as a module's forward: what DistributedDataParallel wraps, so that the
    backward of the loss averages the gradients over the ranks."""

    def __init__(self, method: SSLMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, views: list[torch.Tensor], batch: Batch) -> StepOutput:
        return self.method.training_loss(views, batch)


def data_parallel(method: SSLMethod, world: World, sync_batchnorm: bool = False) -> nn.Module:
    """The module `training_step` calls for the loss: DDP over the ranks, or the method itself.

    Buffers are not broadcast at every step (DDP's default): the memory and per-sample state agree
    by construction (checked every CHECK_EVERY steps), and each rank keeps its BatchNorm statistics
    unless `sync_batchnorm` (torch's SyncBatchNorm, CUDA only) computes them over the global batch.
    """
    loss = TrainingLoss(method)
    if not world.distributed:
        return loss
    from torch.nn.parallel import DistributedDataParallel

    if sync_batchnorm:
        nn.SyncBatchNorm.convert_sync_batchnorm(method)
    device = next(method.parameters()).device
    with warnings.catch_warnings():
        # torch 2.14 calls broadcast_buffers deprecated, yet its own message says to keep it False while
        # buffers must stay rank-local (BatchNorm statistics here) until its replacement exists.
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        return DistributedDataParallel(
            loss, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False
        )


def compile_step(method: SSLMethod, loss_module: nn.Module) -> nn.Module:
    """`runtime.compile`: the loss module as one graph (backbones, heads and the loss with its memory
    negatives; its backward through AOTAutograd), and the backbones in place for the passes outside it
    (re-encoding, diagnostics): on a CPU a little faster than the backbones alone at the default study's
    sizes, the same at 32 px (docs/benchmarks.md, benchmarks/compile_step.py)."""
    method.compile_backbones()
    return torch.compile(loss_module)


def _global_output(output: StepOutput, world: World) -> StepOutput:
    keys = None if output.keys is None else world.gather(output.keys, parts=len(output.keys) // len(output.per_sample))
    aux = {name: world.gather(value) for name, value in output.aux.items()}
    return StepOutput(output.loss.detach(), world.gather(output.per_sample), keys, aux)


def _global_batch(batch: Batch, world: World) -> Batch:
    """Every rank's labels, indices and positions; not the images, which no after-step update reads."""
    labels, indices, positions = (world.gather(part) for part in batch[1:])
    return Batch(batch.images[:0], labels, indices, positions)


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """The learning rate of `step` (0-based) as a fraction of the base one. Without warm-up, a cosine to 0
    over the run. With one, SDCLR's train_simCLR.py `cosine_annealing` (lr_min 0) as its loop runs it:
    the scheduler steps before each update, so update `step` takes its step + 1, linear from 1 / warm-up
    steps to 1, then the cosine over the steps after the warm-up."""
    if warmup_steps == 0:
        return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    step += 1
    if step < warmup_steps:
        return step / warmup_steps
    cosine_steps = max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup_steps, cosine_steps) / cosine_steps))


def training_step(
    method: SSLMethod,
    augment: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    runtime: RuntimeConfig,
    step: int,
    total_steps: int,
    world: World = ONE_PROCESS,
    loss_module: nn.Module | None = None,
) -> torch.Tensor:
    """One step on a uint8 batch already on the device: the method's views and loss, backward,
    optimizer step, the method's after-step updates. Returns the loss (not synchronised).

    Data-parallel (`world` of several ranks, `loss_module` from `data_parallel`): the loss is this
    rank's, the gradients are averaged, and `after_step` sees the global batch and every rank's
    keys and per-sample values in rank order, so the memory and per-sample state stay identical.
    The returned loss is then the mean over the ranks.
    """
    loss_module = loss_module if loss_module is not None else TrainingLoss(method)
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    batch = batch._replace(images=to_unit(batch.images))
    with torch.no_grad():
        views = [v.contiguous(memory_format=memory_format) for v in method.views(batch, augment)]
    with torch.autocast(batch.images.device.type, dtype=torch.bfloat16, enabled=runtime.precision == "bf16"):
        output = loss_module(views, batch)
    optimizer.zero_grad(set_to_none=True)
    output.loss.backward()
    optimizer.step()
    if world.distributed:
        output, batch = _global_output(output, world), _global_batch(batch, world)
    method.after_step(output, batch, step, total_steps)
    return world.mean(output.loss.detach())


@torch.no_grad()
def refresh_memory(
    method: SSLMethod,
    dataset: IndexedImages,
    augment: nn.Module,
    batch_size: int,
    runtime: RuntimeConfig,
    world: World = ONE_PROCESS,
) -> None:
    """Re-encode the images behind the memory's next `method.refresh_size()` slots with the current
    encoder (one new augmented view each) and rescore them, so DUEL compares keys of (nearly) one
    encoder state instead of stale ones.

    Data-parallel: each rank encodes an equal share of the window and every rank takes all shares in
    rank order, so the memories stay identical although each rank draws its own augmentations.
    """
    memory = method.memory
    assert memory is not None
    slots = memory.refresh_window(method.refresh_size())
    share = -(-len(slots) // world.size)  # the last rank's share is padded with the window's last slot
    padded = slots[torch.arange(share * world.size, device=slots.device).clamp_(max=len(slots) - 1)]
    mine = padded[world.rank * share : (world.rank + 1) * share]
    device = memory.keys.device
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    keys = []
    for batch in dataset.batches(dataset.positions(memory.indices[mine]), batch_size, device, runtime.num_workers):
        views = augment(to_unit(batch.images)).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=runtime.precision == "bf16"):
            keys.append(method.memory_keys(views))
    memory.rekey(slots, world.gather(torch.cat(keys))[: len(slots)])


@torch.no_grad()
def unaugmented_keys(
    method: SSLMethod,
    dataset: IndexedImages,
    positions: torch.Tensor,
    augment: nn.Module,
    batch_size: int,
    runtime: RuntimeConfig,
) -> torch.Tensor:
    """The current encoder's keys (`method.memory_keys`, fp32) of the images at `positions`, for measuring:
    unaugmented (only the augmentation's last step, the normalisation) and in eval mode, so they update no
    BatchNorm statistics, and with the CPU RNG restored after (a lazy set's DataLoader draws its base seed
    from it): training goes on exactly as without them."""
    normalize = augment[-1] if isinstance(augment, nn.Sequential) else augment
    device = next(method.parameters()).device
    method.eval()
    with torch.random.fork_rng(devices=[]):
        keys = [
            method.memory_keys(normalize(to_unit(batch.images))).float()
            for batch in dataset.batches(positions, batch_size, device, runtime.num_workers)
        ]
    method.train()
    return torch.cat(keys)


@torch.no_grad()
def current_keys(
    method: SSLMethod, dataset: IndexedImages, augment: nn.Module, batch_size: int, runtime: RuntimeConfig
) -> torch.Tensor:
    """The current encoder's keys of the memory's images, for diagnostics (`unaugmented_keys`). A slot with
    no image behind it (a random initial key, index -1) gets a row of NaN."""
    memory = method.memory
    assert memory is not None
    indices = memory.indices[: memory.num_filled]
    has_image = indices >= 0
    out = torch.full((len(indices), memory.dim), float("nan"), device=memory.keys.device)
    positions = dataset.positions(indices[has_image])
    if len(positions):
        out[has_image] = unaugmented_keys(method, dataset, positions, augment, batch_size, runtime)
    return out


def _data_on_device(dataset: IndexedImages, runtime: RuntimeConfig, device: torch.device) -> bool:
    """Whether to hold the uint8 training set on the device: by default for small in-memory images on CUDA."""
    if not dataset.images.in_memory or device.type == "cpu":
        return False
    if runtime.data_on_device is not None:
        return runtime.data_on_device
    return dataset.images.shape[-1] <= 96


CHECKPOINT_KEYS = {
    "model",
    "optimizer",
    "scheduler",
    "order",
    "rng",
    "epoch",
    "history",
    "diagnostics",
    "snapshots",
    "config",
}


def _load_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint to resume from; None when it is damaged: it is then set aside (`*.damaged`, with a
    warning) and the run starts over, which loses nothing the damaged file still held."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or not set(state) >= CHECKPOINT_KEYS:
            raise ValueError("not a pretraining checkpoint")
        if not isinstance(state["rng"], list):
            raise ValueError("an older checkpoint format (one RNG state, not one per rank)")
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
    world: World = ONE_PROCESS,
    monitor: Callable[[SSLMethod], dict[str, float]] | None = None,
    monitor_every: int = 1,
    on_monitor: StepCallback | None = None,
    snapshots: MemorySnapshots | None = None,
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

    Data-parallel (`world` of several ranks, every rank calling this with the same arguments): each
    step takes a global batch of `cfg.batch_size` images per rank (`cfg.lr` times the world size with
    `cfg.lr_scaling: linear`); each rank draws its own augmentations; rank 0 writes the checkpoints,
    which hold every rank's RNG state, so a resumed run continues as the uninterrupted one would.

    `monitor` (rank 0, every `monitor_every` epochs and after the last) measures the method
    without changing it (e.g. `duel.eval.online.OnlineKNN`); its values join the epoch's last history
    record as `online_<name>` (so checkpoints keep them) and go to `on_monitor`.

    `snapshots` receives the memory snapshots of `cfg.memory.snapshot_epochs` (`duel.snapshots`; rank 0,
    methods with a memory), a resumed checkpoint's included; they are measured like the diagnostics, so
    training is the same with them.
    """
    device = world.device(runtime.device)
    method.to(device)
    augment.to(device)
    if runtime.channels_last:
        method.to(memory_format=torch.channels_last)
    if method.memory is not None:
        method.memory.cuda_graphs = runtime.cuda_graphs
    if _data_on_device(dataset, runtime, device):
        dataset.to(device)
    global_batch = cfg.batch_size * world.size
    # A method with `drop_last` False also trains on each epoch's last, smaller batch, in one process only:
    # data-parallel ranks take whole global batches (world.shard), a partial one need not split evenly.
    keep_last = not method.drop_last and not world.distributed
    steps_per_epoch = math.ceil(len(dataset) / global_batch) if keep_last else len(dataset) // global_batch
    if steps_per_epoch == 0:
        raise DuelError(
            f"the training set has {len(dataset)} images, fewer than pretrain.batch_size={cfg.batch_size} "
            f"x {world.size} process(es); lower pretrain.batch_size or raise prepare.n_max"
        )
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or cfg.epochs * steps_per_epoch)
    lr = cfg.lr * (world.size if cfg.lr_scaling == "linear" else 1)
    optimizer = torch.optim.SGD(method.param_groups(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warmup_steps))
    order = torch.Generator().manual_seed(seed)  # the data order, the same on every rank; saved in checkpoints
    if method.memory is not None:
        method.memory.seed(seed)  # random eviction and a random start: the same draws on every rank
        if cfg.memory.init == "random":
            method.memory.fill_random()
    if world.distributed:  # each rank its own augmentations (rank 0's weights are broadcast by DDP)
        seed_everything(rank_seed(seed, world.rank), runtime.device)

    # Kept (and checkpointed) whether or not the caller asks for them: a resumed run then has every point.
    recorder = snapshots if snapshots is not None else MemorySnapshots()
    snapshot_epochs = cfg.memory.snapshot_epochs if method.memory is not None and world.is_main else []
    start_epoch, history, diagnostics = 0, [], []
    if resume and checkpoint.exists() and (state := _load_checkpoint(checkpoint, config)) is not None:
        if len(state["rng"]) != world.size:
            raise DuelError(
                f"checkpoint {checkpoint} was written by {len(state['rng'])} ranks, not {world.size}; "
                "resume with as many ranks, or delete it"
            )
        method.load_state_dict(state["model"])  # weights, memory and per-sample state
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        order.set_state(state["order"])
        set_rng_states(state["rng"][world.rank])
        start_epoch, history, diagnostics = state["epoch"], state["history"], state["diagnostics"]
        recorder.load_state_dict(state["snapshots"])
    loss_module = data_parallel(method, world, cfg.sync_batchnorm)
    if runtime.compile:
        loss_module = compile_step(method, loss_module)

    if snapshot_epochs:
        assert method.memory is not None
        recorder.watch(method.memory)  # after the random initial keys: those are no push of the stream
        display = display_positions(len(dataset), seed, recorder.display_images)
    method.train()
    epochs = math.ceil(total_steps / steps_per_epoch)
    remaining = range(start_epoch, epochs)
    # Steps whose loss and memory entropy are still on the device: read in one transfer every
    # `runtime.log_every` steps and at each epoch's end (so checkpoints hold every step's record).
    pending: list[tuple[int, int, float, list[torch.Tensor]]] = []

    def read_pending() -> None:
        nonlocal tic
        if not pending:
            return
        values = torch.stack([torch.stack([v.double() for v in tensors]) for *_, tensors in pending]).tolist()  # syncs
        toc = time.perf_counter()
        for (step, epoch, lr, _), (loss, *entropy) in zip(pending, values, strict=True):
            record = {"step": step, "epoch": epoch, "loss": loss, "lr": lr}
            record["images_per_s"] = len(pending) * global_batch / (toc - tic)
            if entropy:
                record["memory_entropy"] = entropy[0]
            history.append(record)
            if on_step is not None:
                on_step(record)
        pending.clear()
        tic = toc

    for epoch in progress(remaining, "pretrain", total=len(remaining)) if world.is_main else remaining:
        method.on_epoch_start(epoch, epochs)
        tic = time.perf_counter()
        epoch_order = torch.randperm(len(dataset), generator=order)
        mine = epoch_order if keep_last else world.shard(epoch_order, cfg.batch_size)
        for batch in dataset.batches(mine, cfg.batch_size, device, runtime.num_workers, drop_last=not keep_last):
            step = len(history) + len(pending)
            if step == total_steps:
                break
            lr = scheduler.get_last_lr()[0]
            loss = training_step(method, augment, optimizer, batch, runtime, step, total_steps, world, loss_module)
            scheduler.step()
            if method.memory is not None and method.refresh_size():
                refresh_memory(method, dataset, augment, cfg.batch_size, runtime, world)
            if world.distributed and ((step + 1) % CHECK_EVERY == 0 or step + 1 == total_steps):
                world.check_same(_shared_state(method), step)
            entropy = [method.memory.label_entropy(num_classes)] if method.memory is not None else []
            pending.append((step, epoch, lr, [loss, *entropy]))
            if len(pending) == runtime.log_every:
                read_pending()
        read_pending()
        last = epoch + 1 == epochs
        if monitor is not None and ((epoch + 1) % monitor_every == 0 or last) and world.is_main:
            values = monitor(method)
            method.train()  # the monitor measures in eval mode
            history[-1] |= {f"online_{name}": value for name, value in values.items()}
            if on_monitor is not None:
                on_monitor({"step": history[-1]["step"], **values})
        if on_method_metrics is not None and (scalars := method.epoch_metrics()):
            on_method_metrics({"step": len(history) - 1, **scalars})
        diagnose = cfg.diagnostics_every and ((epoch + 1) % cfg.diagnostics_every == 0 or last)
        if method.memory is not None and class_counts is not None and diagnose:
            now = current_keys(method, dataset, augment, cfg.batch_size, runtime)
            record = {"epoch": epoch, "step": len(history) - 1, **memory_diagnostics(method.memory, class_counts, now)}
            diagnostics.append(record)
            if on_epoch is not None:
                on_epoch(record)
        if epoch + 1 in snapshot_epochs:
            assert method.memory is not None
            features = unaugmented_keys(method, dataset, display, augment, cfg.batch_size, runtime)
            where = (dataset.indices[display], dataset.labels[display])
            recorder.record(method.memory, features, where, len(history) - 1, epoch + 1, num_classes)
        if (epoch + 1) % cfg.checkpoint_every == 0 or last:
            rng = world.objects(rng_states())  # every rank takes part; rank 0 writes
            if world.is_main:
                if before_checkpoint is not None:
                    before_checkpoint()
                save_torch(
                    checkpoint,
                    {
                        "model": method.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "order": order.get_state(),
                        "rng": rng,
                        "epoch": epoch + 1,
                        "history": history,
                        "diagnostics": diagnostics,
                        "snapshots": recorder.state_dict(),
                        "config": config,
                    },
                )
    if method.memory is not None:
        method.memory.on_push = None
    return history, diagnostics


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a data-parallel rank's own RNG streams (augmentation)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _shared_state(method: SSLMethod) -> dict[str, torch.Tensor]:
    """What every rank must hold identically beyond the weights: the memory and per-sample state."""
    state = dict(method.sample_state())
    if method.memory is not None:
        state |= {"memory keys": method.memory.keys, "memory slots": method.memory.indices}
    return state
