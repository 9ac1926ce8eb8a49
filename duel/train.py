"""One training step and what it is made of: the loss module (data-parallel, compiled), the
learning-rate schedule, and the measuring passes of the current encoder that leave training unchanged.
The loop that runs the steps is `duel.engine.Trainer`."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn

from duel.config import RuntimeConfig
from duel.data.augment import to_unit
from duel.data.datasets import Batch, IndexedImages
from duel.distributed import ONE_PROCESS, World
from duel.methods import SSLMethod, StepOutput


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
    by construction (`duel.callbacks.RankAgreement` checks it), and each rank keeps its BatchNorm statistics
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
    at: tuple[int, int],
    world: World = ONE_PROCESS,
    loss_module: nn.Module | None = None,
) -> torch.Tensor:
    """Step `at` = (step, total steps) on a uint8 batch already on the device: the method's views and
    loss, backward, optimizer step, the method's after-step updates. Returns the loss (not synchronised).

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
    method.after_step(output, batch, *at)
    return world.mean(output.loss.detach())


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


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a data-parallel rank's own RNG streams (augmentation)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
