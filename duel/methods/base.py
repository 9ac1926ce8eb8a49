"""The shared base of every SSL method: encoder, projector, lifecycle hooks, per-sample state, memory.

The training engine (`duel.engine.Trainer`) drives a method through these hooks, in order:

    on_epoch_start(epoch, epochs)             the epoch's temperature, re-pruning, score normalisation, ...
    per step:
        views(batch, augment)                 the augmented views (a method may own its augmentation)
        training_loss(views, batch)           -> StepOutput; no side effects on the method's state
        (backward, optimizer step)
        after_step(output, batch, step, total_steps)   momentum encoders, memory push, per-sample updates
        (learning-rate schedule step)
        on_train_batch_end(trainer)           what needs the run's data, e.g. re-encoding the memory
    epoch_metrics()                           scalars logged once per epoch (e.g. per-sample state summaries)

The contrastive loss reads `self.temperature`, the method's own schedule (`temperature_at`): constant
`pretrain.temperature` unless a method overrides it (duel.methods.temperature). `param_groups()` gives
the optimizer its parameter groups. Per-sample state (`register_sample_state`) is a buffer with one row
per training sample, indexed by the sample's position in the pretraining set (`Batch.positions`), so it
is saved in checkpoints and restored exactly like the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from duel.backbones import build_backbone
from duel.config import PretrainConfig
from duel.data.datasets import Batch
from duel.distributed import world_size
from duel.errors import ConfigError
from duel.memory import ActiveMemory
from duel.method_params import NoParams, parse_method_params

if TYPE_CHECKING:
    from duel.engine import Trainer


@dataclass(frozen=True)
class DataInfo:
    """What a method needs to know about its training data."""

    channels: int
    num_samples: int  # rows of per-sample state: the size of the pretraining set
    num_classes: int = 0  # sizes the memory's per-class diagnostics counters (0: none); labels never train


@dataclass
class StepOutput:
    loss: torch.Tensor  # the scalar that is backpropagated
    per_sample: torch.Tensor  # (B,) detached loss of each image (the mean over its views)
    keys: torch.Tensor | None = None  # the memory entries of this batch, one block per view, pushed in after_step
    aux: dict[str, torch.Tensor] = field(default_factory=dict)  # detached values a method's after_step needs


class SSLMethod(nn.Module):
    """An encoder trained by a contrastive loss on augmented views of each image.

    Subclasses implement `training_loss` and override the hooks they need. A method with
    an active memory sets `memory_policy`; its own hyper-parameters are a frozen dataclass
    `Params` (filled from `pretrain.method_kwargs.<name>`), declared and checked in duel.method_params.
    """

    Params: ClassVar[type[NoParams]] = NoParams
    memory_policy: ClassVar[str | None] = None  # fifo | random | duel (duel.memory.POLICIES); None: no memory
    drop_last: ClassVar[bool] = True  # skip each epoch's last, smaller batch (False: train on it too)

    def __init__(self, cfg: PretrainConfig, data: DataInfo, params: Any = None) -> None:
        super().__init__()
        self.cfg, self.data = cfg, data
        self.params = params if params is not None else self.Params()
        # What every contrastive loss divides by, set for each epoch by `on_epoch_start`.
        self.temperature: float = self.temperature_at(0, cfg.epochs)
        self.backbone, self.feature_dim = build_backbone(cfg.backbone, data.channels)
        self.projector = projection_head(cfg.head, self.feature_dim, cfg.proj_dim)
        self.memory: ActiveMemory | None = None
        if self.memory_policy is not None:
            mem = cfg.memory
            self.memory = ActiveMemory(
                mem.size, cfg.proj_dim, self.memory_policy, mem.temperature, mem.batch_mode, data.num_classes
            )
            # Random keys are the least duplicated: a duel memory keeps them (996 of 1,024 after pushing 16 x K
            # clustered keys), and a re-encoded memory has no image behind them.
            if mem.init == "random" and (self.memory_policy == "duel" or self.refresh_size()):
                allowed = "empty for a DUEL memory (it would never evict the random keys) or one that re-encodes"
                raise ConfigError("pretrain.memory.init", mem.init, allowed)
        self._sample_state: list[str] = []

    # ------------------------------------------------------------ parameters
    @classmethod
    def parse_params(cls, values: dict[str, Any] | None, key: str, cfg: PretrainConfig) -> Any:
        """This method's `Params` from the mapping at params key `key`, types and values checked (against
        this process's world size once a launcher runs it)."""
        return parse_method_params(cls.Params, values, key, cfg, world_size())

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: by default every trainable parameter, one group."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    # ------------------------------------------------------- per-sample state
    def register_sample_state(self, name: str, *shape: int, fill: float = 0.0) -> None:
        """A float buffer `name` of shape (num_samples, *shape), one row per training sample."""
        self.register_buffer(name, torch.full((self.data.num_samples, *shape), fill))
        self._sample_state.append(name)

    def sample_state(self) -> dict[str, torch.Tensor]:
        """Every per-sample buffer by name (what the pretrain stage saves next to the run)."""
        return {name: getattr(self, name) for name in self._sample_state}

    # ---------------------------------------------------------------- hooks
    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called before the first step of every epoch (also the first epoch after a resume); sets the
        epoch's temperature, so an override calls it first."""
        self.temperature = self.temperature_at(epoch, epochs)

    def temperature_at(self, epoch: int, epochs: int) -> float:
        """The contrastive temperature of epoch `epoch` (0-based) of `epochs`: `pretrain.temperature`
        unless the method schedules it. A function of the epoch alone, so a resumed run restores it
        without checkpoint state."""
        return self.cfg.temperature

    def views(self, batch: Batch, augment: nn.Module) -> list[torch.Tensor]:
        """Two independently augmented views of the batch's images (float in [0, 1])."""
        return [augment(batch.images) for _ in range(2)]

    def training_loss(self, views: list[torch.Tensor], batch: Batch) -> StepOutput:
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, output: StepOutput, batch: Batch, step: int, total_steps: int) -> None:
        """After the optimizer step: momentum encoders follow, the batch's keys enter the memory."""
        self.momentum_update()
        if self.memory is not None and output.keys is not None:
            # Labels and indices only feed diagnostics; the keys are one block per view (one or two).
            views = len(output.keys) // len(batch.labels)
            self.memory.push(output.keys, batch.labels.repeat(views), batch.indices.repeat(views))

    def on_train_batch_end(self, trainer: Trainer) -> None:
        """After each step's updates and schedule step, with the run's data, augmentation and world at hand
        (`trainer`, read only): the re-encoding methods refresh their memory here (`dmoco_fresh`)."""

    def refresh_size(self) -> int:
        """How many memory slots to re-encode with the current encoder after every step (0: none; the
        memory's size or more: all of them); see `memory_keys` and `duel.methods.dmoco_fresh.refresh_memory`."""
        return 0

    def epoch_metrics(self) -> dict[str, float]:
        """Scalars logged once per epoch, e.g. summaries of per-sample state."""
        return {}

    # --------------------------------------------------------------- shared
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features: what evaluation uses."""
        return self.backbone(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(images)), dim=1)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) modules whose target follows the online one by EMA."""
        return []

    def compile_backbones(self) -> None:
        """torch.compile every backbone in place (state_dict keys are unchanged)."""
        self.backbone.compile()
        for online, target in self.momentum_pairs():
            if online is self.backbone:
                target.compile()

    @torch.no_grad()
    def momentum_update(self) -> None:
        """target = m * target + (1 - m) * online, as one multi-tensor kernel per operation on a GPU (a
        loop over the parameters would launch two per tensor); on a CPU the same per-tensor arithmetic."""
        m = self.cfg.key_momentum
        for online, target in self.momentum_pairs():
            targets, onlines = list(target.parameters()), [p.detach() for p in online.parameters()]
            assert len(targets) == len(onlines)
            torch._foreach_mul_(targets, m)
            torch._foreach_add_(targets, onlines, alpha=1 - m)

    def negatives(self) -> torch.Tensor:
        assert self.memory is not None
        return self.memory.valid_keys()

    @torch.no_grad()
    def memory_keys(self, views: torch.Tensor) -> torch.Tensor:
        """The memory entries of `views` as this method pushes them (here: detached projections)."""
        return self.embed(views)


def projection_head(kind: str, width: int, out: int) -> nn.Sequential:
    """The projection head `pretrain.head` names, from the backbone's `width` features to `out`."""
    if kind == "linear":  # facebookresearch/moco colab/moco_cifar10_demo.ipynb: the ResNet's fc, width -> 128
        return nn.Sequential(nn.Linear(width, out))
    if kind == "mlp":
        return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, out))
    # mlp_bn: SDCLR models/utils.py and BCL models/simclr.py `proj_head`, Linear-BN-ReLU-Linear(no bias)-BN;
    # mlp3_bn: SDCLR models/resnet_prune_multibn.py `proj_head` (its CIFAR runs), one more hidden layer
    layers: list[nn.Module] = [nn.Linear(width, width), nn.BatchNorm1d(width)]
    for _ in range(2 if kind == "mlp3_bn" else 1):
        layers += [nn.ReLU(inplace=True), nn.Linear(width, width, bias=False), nn.BatchNorm1d(width)]
    layers[-2:] = [nn.Linear(width, out, bias=False), nn.BatchNorm1d(out)]
    return nn.Sequential(*layers)


def pair_mean(per_view: torch.Tensor) -> torch.Tensor:
    """(2B,) per-view losses (view 1 then view 2) -> (B,) per-image means, detached."""
    return per_view.detach().view(2, -1).mean(0)
