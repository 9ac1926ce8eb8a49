"""The callback protocol of the training engine (`duel.engine.Trainer`).

A callback watches a run: it reads the trainer's state at the loop's hooks and never changes training
(what changes training belongs to the method's lifecycle, `duel.methods.base`). Hook names follow
PyTorch Lightning's `Callback` where the meaning is the same; `on_log` is Hugging Face's
`TrainerCallback.on_log`. The trainer calls every callback at each hook, by ascending `order`, then in
the order given: the step log first (its records are what the others read), the checkpoint last (it
saves what the others did in the same epoch).

    on_fit_start                    before anything runs (a checkpoint restores the run here)
    on_train_start                  after the restore, before the first epoch
    per epoch:
        on_train_epoch_start
        per step: on_train_batch_end(loss)   the step's loss, still on the device
        on_train_epoch_end
    on_train_end
    on_save_checkpoint(checkpoint)  before a checkpoint is written (rank 0)
    on_log(record, section)         a record another callback logged (`Trainer.log`)

`state_dict` / `load_state_dict` carry a callback's own state through a checkpoint, saved under its
`state_key` (the class name), as Lightning's checkpoints do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from duel.engine import Trainer


class Callback:
    order: ClassVar[int] = 0  # the trainer calls callbacks by ascending order, then as listed

    @property
    def state_key(self) -> str:
        return type(self).__name__

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_train_start(self, trainer: Trainer) -> None:
        pass

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        pass

    def on_train_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        pass

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        pass

    def on_train_end(self, trainer: Trainer) -> None:
        pass

    def on_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        pass

    def on_log(self, trainer: Trainer, record: dict[str, float], section: str) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
