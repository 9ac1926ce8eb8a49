"""MoCo v2 (He et al. 2020; Chen et al. 2020): momentum key encoder, memory of keys, symmetric InfoNCE."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from duel.config import PretrainConfig
from duel.losses import info_nce
from duel.methods.base import SSLMethod


class MoCo(SSLMethod):
    default_policy = "fifo"

    def __init__(self, in_channels: int, cfg: PretrainConfig, num_classes: int = 0) -> None:
        super().__init__(in_channels, cfg, num_classes)
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def momentum_pairs(self):
        return [(self.backbone, self.key_backbone), (self.projector, self.key_projector)]

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_projector(self.key_backbone(images)), dim=1)

    def memory_keys(self, views: torch.Tensor) -> torch.Tensor:
        return self.keys(views)

    def training_loss(self, view1, view2, labels, indices):
        q1, q2 = self.embed(view1), self.embed(view2)
        self.momentum_update()
        k1, k2 = self.keys(view1), self.keys(view2)
        negatives, t = self.negatives(), self.cfg.temperature
        loss = 0.5 * (info_nce(q1, k2, negatives, t) + info_nce(q2, k1, negatives, t))
        self.push(torch.cat([k1, k2]), labels, indices)
        return loss
