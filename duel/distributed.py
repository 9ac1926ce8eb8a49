"""Data-parallel training on torch.distributed: the process group, this rank's shard, collectives.

A run launched by torch's elastic launcher (`torchrun`, or `pretrain.nproc_per_node > 1`) has one
process per device. Every rank holds the same model and the same memory: the optimizer step is the
same everywhere (DDP averages the gradients) and every rank pushes the same keys, gathered from all
ranks in rank order, so the memory's deterministic updates agree. Outside a launcher, `World()` is
one process and every collective here is the identity.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from duel.errors import DuelError


def launched() -> bool:
    """Whether this process was started by torch's elastic launcher."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_launcher(cls, device: str) -> World:
        """Join the launcher's process group (gloo on CPU, nccl on CUDA); one process outside a launcher."""
        if not launched() or int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend, timeout=timedelta(minutes=10))
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes outputs and checkpoints."""
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """This rank's device: `cuda` means the launcher's local rank's GPU."""
        device = torch.device(name)
        if device.type == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return device

    def shard(self, order: torch.Tensor, batch_size: int) -> torch.Tensor:
        """This rank's part of each global batch of `batch_size` x world size images in `order`: global
        batch s is rank 0's batch s, then rank 1's, ..., as one process would take it (incomplete
        global batches dropped)."""
        steps = len(order) // (batch_size * self.size)
        return order[: steps * batch_size * self.size].view(steps, self.size, batch_size)[:, self.rank].reshape(-1)

    @torch.no_grad()
    def gather(self, x: torch.Tensor, parts: int = 1) -> torch.Tensor:
        """Every rank's `x` (no gradient). `x` stacks `parts` equal blocks along dim 0 (e.g. view 1's
        keys, then view 2's); the result stacks block p of every rank, in rank order, before block p + 1:
        the layout one process would have for the global batch."""
        if not self.distributed:
            return x
        pieces = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(pieces, x.contiguous())
        blocks = [piece.chunk(parts) for piece in pieces]
        return torch.cat([blocks[rank][p] for p in range(parts) for rank in range(self.size)])

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over the ranks."""
        if not self.distributed:
            return x
        x = x.detach().clone()
        dist.all_reduce(x)
        return x / self.size

    def objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def check_same(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        """Stop the run in one line if any rank's `tensors` differ from rank 0's: a cheap checksum of
        each (position-weighted sums in float64, so a permutation shows too)."""
        if not self.distributed:
            return
        sums = {}
        for name, t in tensors.items():
            flat = t.detach().double().flatten()
            sums[name] = (float(flat.sum()), float((flat * torch.arange(1, len(flat) + 1, device=flat.device)).sum()))
        for rank, theirs in enumerate(self.objects(sums)):
            for name, value in theirs.items():
                if value != sums[name]:
                    raise DuelError(
                        f"{name} differs between rank {self.rank} and rank {rank} at step {step}: the ranks' "
                        "states diverged (a non-deterministic update); report it with the run's params"
                    )

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


ONE_PROCESS = World()


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's `x` in rank order, differentiable (the backward sums each rank's gradient into the
    rank that owns the rows), and the row of this rank's first element; `(x, 0)` outside a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x)), dist.get_rank() * len(x)


def world_size() -> int:
    """Processes in the default process group; 1 outside one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def shuffled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`fn` of `x`'s rows, computed on a random permutation of the global batch and returned in `x`'s
    order: MoCo's shuffle-BN (facebookresearch/moco `_batch_shuffle_ddp` / `_batch_unshuffle_ddp`), so
    the BatchNorm statistics a key sees come from other images than its query's. Data-parallel: the
    ranks' batches (equal sizes) are gathered, rank 0's permutation is shared, each rank computes `fn`
    on its block of the permuted batch and takes back its own rows' results. One process: a
    permutation of `x` alone."""
    size = world_size()
    order = torch.randperm(len(x) * size, device=x.device)
    if size == 1:
        return fn(x[order])[order.argsort()]
    dist.broadcast(order, 0)
    pieces = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(pieces, x.contiguous())
    rank = dist.get_rank()
    out = fn(torch.cat(pieces)[order.view(size, -1)[rank]]).contiguous()
    gathered = [torch.empty_like(out) for _ in range(size)]
    dist.all_gather(gathered, out)
    return torch.cat(gathered)[order.argsort()].view(size, len(x), *out.shape[1:])[rank]
