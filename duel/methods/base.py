"""The shared base of every SSL method: encoder, projector, momentum pairs, memory."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from duel.backbones import build_backbone
from duel.config import PretrainConfig
from duel.memory import ActiveMemory


class SSLMethod(nn.Module):
    """An encoder trained by a contrastive loss on two views of each image.

    Subclasses implement `training_loss`; a method with an active memory sets
    `default_policy` (the policy `pretrain.memory.policy: auto` resolves to)
    and may set `refresh_memory_every`.
    """

    default_policy: ClassVar[str | None] = None
    # Re-encode the memory's images with the current encoder every this many steps (0: never); see
    # `memory_keys` and `duel.train.refresh_memory`.
    refresh_memory_every: ClassVar[int] = 0

    def __init__(self, in_channels: int, cfg: PretrainConfig, num_classes: int = 0) -> None:
        """`num_classes` sizes the memory's per-class diagnostics counters (0: none)."""
        super().__init__()
        self.cfg = cfg
        self.backbone, self.feature_dim = build_backbone(cfg.backbone, in_channels)
        self.projector = nn.Sequential(
            nn.Linear(self.feature_dim, self.feature_dim),
            nn.ReLU(inplace=True),
            nn.Linear(self.feature_dim, cfg.proj_dim),
        )
        self.memory: ActiveMemory | None = None
        if self.default_policy is not None:
            mem = cfg.memory
            policy = self.default_policy if mem.policy == "auto" else mem.policy
            self.memory = ActiveMemory(mem.size, cfg.proj_dim, policy, mem.temperature, mem.batch_mode, num_classes)

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
        m = self.cfg.key_momentum
        for online, target in self.momentum_pairs():
            for p_o, p_t in zip(online.parameters(), target.parameters(), strict=True):
                p_t.mul_(m).add_(p_o.detach(), alpha=1 - m)

    def negatives(self) -> torch.Tensor:
        # A copy: the memory is updated in place before backward runs.
        assert self.memory is not None
        return self.memory.valid_keys().clone()

    @torch.no_grad()
    def memory_keys(self, views: torch.Tensor) -> torch.Tensor:
        """The memory entries of `views` as this method pushes them (here: detached projections)."""
        return self.embed(views)

    def push(self, keys: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        """Enqueue the keys of both views; labels and indices only feed diagnostics."""
        assert self.memory is not None
        self.memory.push(keys, labels.repeat(2), indices.repeat(2))

    def training_loss(
        self, view1: torch.Tensor, view2: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> torch.Tensor:
        """The loss of one batch; methods with a memory also push this batch's keys."""
        raise NotImplementedError
