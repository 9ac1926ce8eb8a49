"""Data-parallel runs: the ranks' memories and per-sample state checked equal as training goes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from duel.callbacks.base import Callback
from duel.methods import SSLMethod

if TYPE_CHECKING:
    from duel.engine import Trainer

CHECK_EVERY = 50  # steps between the cross-rank checksums


class RankAgreement(Callback):
    """Every `every` steps and after the last, stop the run in one line if any rank's memory or per-sample
    state differs from rank 0's (`World.check_same`): they agree by construction, so a difference is a
    non-deterministic update. Nothing to do in one process."""

    def __init__(self, every: int = CHECK_EVERY) -> None:
        self.every = every

    def on_train_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        step = trainer.global_step
        if trainer.world.distributed and (step % self.every == 0 or step == trainer.total_steps):
            trainer.world.check_same(shared_state(trainer.method), step - 1)


def shared_state(method: SSLMethod) -> dict[str, torch.Tensor]:
    """What every rank must hold identically beyond the weights: the memory and per-sample state."""
    state = dict(method.sample_state())
    if method.memory is not None:
        state |= {"memory keys": method.memory.keys, "memory slots": method.memory.indices}
    return state
