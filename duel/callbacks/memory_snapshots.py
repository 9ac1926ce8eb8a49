"""The memory over training (`pretrain.memory.snapshot_epochs`): duel.snapshots' points at epochs' ends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from duel.callbacks.base import Callback
from duel.snapshots import MemorySnapshots, display_positions
from duel.train import unaugmented_keys

if TYPE_CHECKING:
    from duel.engine import Trainer


class MemorySnapshotting(Callback):
    """A point of `recorder` after each epoch in `pretrain.memory.snapshot_epochs` (rank 0, methods with a
    memory): the memory, its last K pushes and the current features of a fixed display subset, measured
    like the diagnostics, so training is the same with them. The recorder is checkpointed whether or not a
    point is due, so a resumed run has every point."""

    def __init__(self, recorder: MemorySnapshots | None = None) -> None:
        self.recorder = recorder if recorder is not None else MemorySnapshots()
        self.display = torch.zeros(0, dtype=torch.long)

    def epochs(self, trainer: Trainer) -> list[int]:
        return trainer.cfg.memory.snapshot_epochs if trainer.method.memory is not None and trainer.world.is_main else []

    def on_train_start(self, trainer: Trainer) -> None:
        if self.epochs(trainer):
            assert trainer.method.memory is not None
            self.recorder.watch(trainer.method.memory)  # after the random initial keys: no push of the stream
            self.display = display_positions(len(trainer.dataset), trainer.seed, self.recorder.display_images)

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        if trainer.epoch + 1 not in self.epochs(trainer):
            return
        memory, dataset, cfg = trainer.method.memory, trainer.dataset, trainer.cfg
        assert memory is not None
        features = unaugmented_keys(
            trainer.method, dataset, self.display, trainer.augment, cfg.batch_size, trainer.runtime
        )
        where = (dataset.indices[self.display], dataset.labels[self.display])
        classes = trainer.method.data.num_classes
        self.recorder.record(memory, features, where, trainer.global_step - 1, trainer.epoch + 1, classes)

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.method.memory is not None:
            trainer.method.memory.on_push = None

    def state_dict(self) -> dict[str, Any]:
        return self.recorder.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recorder.load_state_dict(state)
