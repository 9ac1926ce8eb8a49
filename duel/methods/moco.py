"""MoCo v2 (He et al. 2020; Chen et al. 2020): momentum key encoder, memory of keys, symmetric InfoNCE."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from duel.config import PretrainConfig
from duel.losses import info_nce
from duel.methods.base import DataInfo, SSLMethod, StepOutput, pair_mean


class MoCo(SSLMethod):
    memory_policy = "fifo"

    def __init__(self, cfg: PretrainConfig, data: DataInfo, params: Any = None) -> None:
        super().__init__(cfg, data, params)
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def momentum_pairs(self):
        return [(self.backbone, self.key_backbone), (self.projector, self.key_projector)]

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_projector(self.key_backbone(images)), dim=1)

    def memory_keys(self, views: torch.Tensor) -> torch.Tensor:
        return self.keys(views)

    def training_loss(self, views, batch):
        # The key encoder was updated after the previous step (`after_step`), as MoCo updates it
        # before computing this batch's keys.
        q1, q2 = self.embed(views[0]), self.embed(views[1])
        k1, k2 = self.keys(views[0]), self.keys(views[1])
        negatives, t = self.negatives(), self.cfg.temperature
        per_view = torch.cat([info_nce(q1, k2, negatives, t, "none"), info_nce(q2, k1, negatives, t, "none")])
        return StepOutput(per_view.mean(), pair_mean(per_view), keys=torch.cat([k1, k2]))
