"""The per-step history: loss, learning rate, memory label entropy and images/s of every step."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

import torch

from duel.callbacks.base import Callback

if TYPE_CHECKING:
    from duel.engine import Trainer


class StepLog(Callback):
    """Appends one record per step to `trainer.history` and logs it (section "train").

    The loss and the memory entropy stay on the device until `runtime.log_every` steps are pending or the
    epoch ends, then come to the host in one transfer: one sync per read instead of one per step, and every
    step's record is in the history before a checkpoint is written.
    """

    order: ClassVar[int] = -1  # first: the other callbacks read the epoch's last record

    def __init__(self) -> None:
        self.pending: list[tuple[int, int, float, list[torch.Tensor]]] = []
        self.tic = 0.0

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        self.tic = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        memory = trainer.method.memory
        entropy = [memory.label_entropy(trainer.method.data.num_classes)] if memory is not None else []
        self.pending.append((trainer.global_step - 1, trainer.epoch, trainer.lr, [loss, *entropy]))
        if len(self.pending) == trainer.runtime.log_every:
            self.read(trainer)

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        self.read(trainer)

    def read(self, trainer: Trainer) -> None:
        if not self.pending:
            return
        values = torch.stack([torch.stack([v.double() for v in tensors]) for *_, tensors in self.pending]).tolist()
        toc = time.perf_counter()  # after the sync above: the pending steps' work is done
        images_per_s = len(self.pending) * trainer.global_batch / (toc - self.tic)
        for (step, epoch, lr, _), (loss, *entropy) in zip(self.pending, values, strict=True):
            record = {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "images_per_s": images_per_s}
            if entropy:
                record["memory_entropy"] = entropy[0]
            trainer.history.append(record)
            trainer.log(record, "train")
        self.pending.clear()
        self.tic = toc
