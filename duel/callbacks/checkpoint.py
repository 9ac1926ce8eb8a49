"""Resumable checkpoints: the whole run every `pretrain.checkpoint_every` epochs and after the last."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from duel.callbacks.base import Callback
from duel.config import flatten
from duel.errors import DuelError
from duel.utils import rng_states, save_torch

if TYPE_CHECKING:
    from duel.engine import Trainer


class Checkpoint(Callback):
    """Writes `path` (rank 0, atomically) and, with `resume`, restores the run from it when it exists.

    `config` is the resolved config saved in every checkpoint; a checkpoint of another config is refused
    (machine settings are not part of it, so a run resumes on another device). A checkpoint holds
    everything the rest of the run depends on (the trainer's state, every callback's by name, every rank's
    RNG states), so a resumed run ends bit-identical to an uninterrupted one on a CPU. Before writing it
    calls every callback's `on_save_checkpoint` (a logger flushes there, so a run killed afterwards loses
    no step that its resumption will not recompute).
    """

    order: ClassVar[int] = 1  # last: it saves what the other callbacks did in the same epoch

    def __init__(self, path: Path, config: dict[str, Any], resume: bool = False) -> None:
        self.path, self.config, self.resume = path, config, resume

    def on_fit_start(self, trainer: Trainer) -> None:
        if not self.resume or not self.path.exists() or (state := self.load()) is None:
            return
        if len(state["rng"]) != trainer.world.size:
            raise DuelError(
                f"checkpoint {self.path} was written by {len(state['rng'])} ranks, not {trainer.world.size}; "
                "resume with as many ranks, or delete it"
            )
        trainer.load_state_dict(state)

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        if not trainer.epoch_due(trainer.cfg.checkpoint_every):
            return
        rng = trainer.world.objects(rng_states())  # every rank takes part; rank 0 writes
        if not trainer.world.is_main:
            return
        state = trainer.state_dict() | {"rng": rng, "config": self.config}
        for callback in trainer.callbacks:
            callback.on_save_checkpoint(trainer, state)
        save_torch(self.path, state)

    def load(self) -> dict[str, Any] | None:
        """The checkpoint to resume from; None when it is damaged: it is then set aside (`*.damaged`, with a
        warning) and the run starts over, which loses nothing the damaged file still held."""
        path = self.path
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or "model" not in state or "config" not in state:
                raise ValueError("not a pretraining checkpoint")
        except Exception as exc:  # truncated, not a zip or pickle, a foreign object: whatever torch raises
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            aside = path.with_name(f"{path.name}.damaged")
            path.replace(aside)
            print(
                f"warning: checkpoint {path} is damaged ({reason}); moved to {aside}, training starts over",
                file=sys.stderr,
            )
            return None
        if "callbacks" not in state:  # before the engine: diagnostics and snapshots beside the run
            raise DuelError(
                f"checkpoint {path} was written by an earlier version of this code; delete it or run without --resume"
            )
        if state["config"] != self.config:
            saved, now = flatten(state["config"]), flatten(self.config)
            key = next(k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k))
            raise DuelError(
                f"checkpoint {path} was written with {key}={saved.get(key)!r}, not {now.get(key)!r}; "
                "delete it or run without --resume"
            )
        return state
