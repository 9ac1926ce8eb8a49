"""The accuracy over training (`pretrain.online_eval`): a kNN of the current backbone, every few epochs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from duel.callbacks.base import Callback
from duel.eval.online import OnlineKNN

if TYPE_CHECKING:
    from duel.engine import Trainer


class OnlineEval(Callback):
    """`knn` of the backbone after every `pretrain.online_eval.every` epochs and the last (rank 0). It
    measures in eval mode and changes nothing; the values join the epoch's last history record as
    `online_<name>` (so checkpoints keep them) and are logged (section "online")."""

    def __init__(self, knn: OnlineKNN, normalize: nn.Module) -> None:
        self.knn, self.normalize = knn, normalize

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        if not trainer.world.is_main or not trainer.epoch_due(trainer.cfg.online_eval.every):
            return
        values = self.knn(trainer.method.backbone, self.normalize, str(trainer.device))
        trainer.method.train()
        trainer.history[-1] |= {f"online_{name}": value for name, value in values.items()}
        trainer.log({"step": trainer.history[-1]["step"], **values}, "online")
