"""Memory diagnostics over training (`pretrain.diagnostics_every`): duel.diagnostics on the live memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from duel.callbacks.base import Callback
from duel.diagnostics import memory_diagnostics, summary_metrics
from duel.train import current_keys

if TYPE_CHECKING:
    from duel.engine import Trainer


class MemoryDiagnostics(Callback):
    """One record (`records`) every `pretrain.diagnostics_every` epochs and after the last, for methods with
    a memory; its summary is logged (section "memory"). `class_counts` are the training images per class,
    the LT set's for both training sets: a balanced run's diagnostics then name the same head and tail
    classes as the LT run it is compared with. The current keys are measured unaugmented, in eval mode and
    with the RNG restored (`duel.train.unaugmented_keys`), so training is the same with them."""

    def __init__(self, class_counts: list[int]) -> None:
        self.class_counts = class_counts
        self.records: list[dict[str, Any]] = []

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        every, memory = trainer.cfg.diagnostics_every, trainer.method.memory
        if memory is None or not every or not trainer.epoch_due(every):
            return
        now = current_keys(trainer.method, trainer.dataset, trainer.augment, trainer.cfg.batch_size, trainer.runtime)
        step = trainer.global_step - 1
        record = {"epoch": trainer.epoch, "step": step, **memory_diagnostics(memory, self.class_counts, now)}
        self.records.append(record)
        trainer.log({"step": step, **summary_metrics(record)}, "memory")

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = list(state["records"])
