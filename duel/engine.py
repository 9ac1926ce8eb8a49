"""The training engine: one run's state and the loop over its epochs and steps, nothing else.

`Trainer` owns what a run is made of (the method, its optimizer and learning-rate schedule, the data
order, the step history, the world of data-parallel ranks, the step and the epoch) and runs the loop;
what watches the run (the step log, online evaluation, memory diagnostics and snapshots, the ranks'
agreement, checkpoints, a tracking logger) is a callback (`duel.callbacks`), and what changes training
is the method's lifecycle (`duel.methods.base`). A new monitor is one `Callback` subclass and one entry
in the list the trainer is given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from duel.callbacks import Callback, RankAgreement, StepLog
from duel.config import PretrainConfig, RuntimeConfig
from duel.data.datasets import Batch, IndexedImages
from duel.distributed import ONE_PROCESS, World
from duel.errors import DuelError
from duel.methods import SSLMethod
from duel.train import compile_step, data_parallel, lr_factor, rank_seed, training_step
from duel.utils import progress, seed_everything, set_rng_states


class Trainer:
    """Trains `method` in place on `runtime`'s device under the pretrain section `cfg`, from `seed`.

    `callbacks` watch the run; the step log and the ranks' agreement check are always there (`StepLog`
    fills `history`: loss, lr, memory entropy and images/s of every step). Data-parallel (`world` of
    several ranks, every rank building the same trainer): each step takes a global batch of
    `cfg.batch_size` images per rank (`cfg.lr` times the world size with `cfg.lr_scaling: linear`) and
    each rank draws its own augmentations.
    """

    def __init__(
        self,
        method: SSLMethod,
        dataset: IndexedImages,
        augment: nn.Module,
        cfg: PretrainConfig,
        runtime: RuntimeConfig,
        seed: int,
        world: World = ONE_PROCESS,
        callbacks: Iterable[Callback] = (),
    ) -> None:
        self.method, self.dataset, self.augment, self.cfg, self.runtime = method, dataset, augment, cfg, runtime
        self.seed, self.world = seed, world
        self.callbacks = sorted([StepLog(), RankAgreement(), *callbacks], key=lambda c: c.order)
        self.device = world.device(runtime.device)
        self._place()
        self.global_batch = cfg.batch_size * world.size
        # A method with `drop_last` False also trains on each epoch's last, smaller batch, in one process only:
        # data-parallel ranks take whole global batches (world.shard), a partial one need not split evenly.
        self.keep_last = not method.drop_last and not world.distributed
        n = len(dataset)
        self.steps_per_epoch = math.ceil(n / self.global_batch) if self.keep_last else n // self.global_batch
        if self.steps_per_epoch == 0:
            raise DuelError(
                f"the training set has {n} images, fewer than pretrain.batch_size={cfg.batch_size} "
                f"x {world.size} process(es); lower pretrain.batch_size or raise prepare.n_max"
            )
        every_epoch = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(every_epoch, cfg.max_steps or every_epoch)
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        lr = cfg.lr * (world.size if cfg.lr_scaling == "linear" else 1)
        self.optimizer = torch.optim.SGD(
            method.param_groups(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        warmup, total = cfg.warmup_epochs * self.steps_per_epoch, self.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, total, warmup))
        self.order = torch.Generator().manual_seed(seed)  # the data order, the same on every rank
        if method.memory is not None:
            method.memory.seed(seed)  # random eviction and a random start: the same draws on every rank
            if cfg.memory.init == "random":
                method.memory.fill_random()
        if world.distributed:  # each rank its own augmentations (rank 0's weights are broadcast by DDP)
            seed_everything(rank_seed(seed, world.rank), runtime.device)
        self.epoch = 0  # the epoch running, or the next to run
        self.global_step = 0  # steps done
        self.lr = lr  # the learning rate of the last step
        self.history: list[dict[str, Any]] = []
        self.loss_module: nn.Module = method

    def _place(self) -> None:
        """The method, the augmentation and (small in-memory images on CUDA, by default) the data on the device."""
        method, runtime, device = self.method, self.runtime, self.device
        method.to(device)
        self.augment.to(device)
        if runtime.channels_last:
            method.to(memory_format=torch.channels_last)
        if method.memory is not None:
            method.memory.cuda_graphs = runtime.cuda_graphs
        images = self.dataset.images
        if images.in_memory and device.type != "cpu":
            small = images.shape[-1] <= 96
            if runtime.data_on_device or (runtime.data_on_device is None and small):
                self.dataset.to(device)

    def fit(self) -> list[dict[str, Any]]:
        """Run the remaining epochs (all of them, unless a callback restored a checkpoint); the history."""
        self.call("on_fit_start")
        self.loss_module = data_parallel(self.method, self.world, self.cfg.sync_batchnorm)
        if self.runtime.compile:
            self.loss_module = compile_step(self.method, self.loss_module)
        self.call("on_train_start")
        self.method.train()
        remaining = range(self.epoch, self.epochs)
        for epoch in progress(remaining, "pretrain", total=len(remaining)) if self.world.is_main else remaining:
            self.epoch = epoch
            self.method.on_epoch_start(epoch, self.epochs)
            self.call("on_train_epoch_start")
            for batch in self._batches():
                if self.global_step == self.total_steps:
                    break
                self.call("on_train_batch_end", self._step(batch))
            self.call("on_train_epoch_end")
        self.call("on_train_end")
        return self.history

    def _batches(self) -> Iterator[Batch]:
        """This epoch's batches of this rank, in the order drawn from `order`."""
        epoch_order = torch.randperm(len(self.dataset), generator=self.order)
        mine = epoch_order if self.keep_last else self.world.shard(epoch_order, self.cfg.batch_size)
        yield from self.dataset.batches(
            mine, self.cfg.batch_size, self.device, self.runtime.num_workers, drop_last=not self.keep_last
        )

    def _step(self, batch: Batch) -> torch.Tensor:
        self.lr = self.scheduler.get_last_lr()[0]
        at = (self.global_step, self.total_steps)
        loss = training_step(
            self.method, self.augment, self.optimizer, batch, self.runtime, at, self.world, self.loss_module
        )
        self.scheduler.step()
        self.method.on_train_batch_end(self)
        self.global_step += 1
        return loss

    def call(self, hook: str, *args: Any) -> None:
        """Every callback's `hook`, in order."""
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def log(self, record: dict[str, float], section: str) -> None:
        """Hand a record (with its "step") to every callback's `on_log`: what a tracking logger sends on."""
        self.call("on_log", record, section)

    def epoch_due(self, every: int) -> bool:
        """Whether something done every `every` epochs is due at this epoch's end: it is after the last."""
        return (self.epoch + 1) % every == 0 or self.epoch + 1 == self.epochs

    def state_dict(self) -> dict[str, Any]:
        """The run at this epoch's end, every callback's state by its `state_key` (RNG states: the checkpoint's)."""
        return {
            "model": self.method.state_dict(),  # weights, memory and per-sample state
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "order": self.order.get_state(),
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "history": self.history,
            "callbacks": {callback.state_key: callback.state_dict() for callback in self.callbacks},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (`state_dict` plus "rng", every rank's RNG states) as the run would have."""
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.order.set_state(state["order"])
        set_rng_states(state["rng"][self.world.rank])
        self.epoch, self.global_step, self.history = state["epoch"], state["step"], state["history"]
        for callback in self.callbacks:
            if callback.state_key in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][callback.state_key])
