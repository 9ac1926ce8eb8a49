"""DUEL-MoCo scoring against the current encoder (a variant beside the paper's form, `dmoco`).

A greedy DUEL memory keeps its keys for as long as they look unique, so most of
them come from an old encoder state: on CIFAR-10 with one dominant class, the
mean key age grew linearly with training and most evictions hit a key the same
push had just inserted. Scores then compare stale keys with fresh ones rather
than images with images. Here the memory's images are re-encoded by the
current key encoder (one new augmented view each) after every step and the
scores recomputed, so the next push compares keys of one encoder state.
Costs one key-encoder forward pass over the K memory images per step: the exact
reference of `dmoco_roll`, which re-encodes a window of the memory per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from duel.config import RuntimeConfig
from duel.data.augment import to_unit
from duel.data.datasets import IndexedImages
from duel.distributed import ONE_PROCESS, World
from duel.methods.base import SSLMethod
from duel.methods.dmoco import DMoCo

if TYPE_CHECKING:
    from duel.engine import Trainer


class DMoCoFresh(DMoCo):
    def refresh_size(self) -> int:
        return self.cfg.memory.size

    def on_train_batch_end(self, trainer: Trainer) -> None:
        refresh_memory(self, trainer.dataset, trainer.augment, trainer.cfg.batch_size, trainer.runtime, trainer.world)


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
