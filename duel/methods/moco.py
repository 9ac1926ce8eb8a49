"""MoCo v2 (He et al. 2020; Chen et al. 2020): momentum key encoder, memory of keys, symmetric InfoNCE."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from duel.backbones import split_batchnorm
from duel.config import PretrainConfig
from duel.errors import ConfigError
from duel.losses import info_nce
from duel.methods.base import DataInfo, SSLMethod, StepOutput, pair_mean


@dataclass(frozen=True)
class MoCoParams:
    # MoCo's shuffle-BN on one device, as in facebookresearch/moco's CIFAR-10 demo (bn_splits 8 there):
    # BatchNorm statistics over this many sub-batches in both encoders, and the key batch shuffled
    # before the key encoder, so a query and its key never share statistics. 1: plain BatchNorm.
    bn_splits: int = 1


class MoCo(SSLMethod):
    Params = MoCoParams
    memory_policy = "fifo"

    def __init__(self, cfg: PretrainConfig, data: DataInfo, params: Any = None) -> None:
        super().__init__(cfg, data, params)
        if self.params.bn_splits > 1:
            split_batchnorm(self.backbone, self.params.bn_splits)
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)

    @classmethod
    def check_params(cls, params: MoCoParams, key: str, cfg: PretrainConfig) -> None:
        splits = params.bn_splits
        if splits < 1 or cfg.batch_size % splits:
            allowed = f"must be >= 1 and divide pretrain.batch_size={cfg.batch_size}"
            raise ConfigError(f"{key}.bn_splits", splits, allowed)
        if splits > 1 and cfg.nproc_per_node > 1:
            allowed = "1 under data-parallel training: split statistics across processes are not implemented"
            raise ConfigError(f"{key}.bn_splits", splits, allowed)

    def momentum_pairs(self):
        return [(self.backbone, self.key_backbone), (self.projector, self.key_projector)]

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> torch.Tensor:
        if self.params.bn_splits == 1 or not self.training:
            return F.normalize(self.key_projector(self.key_backbone(images)), dim=1)
        order = torch.randperm(len(images), device=images.device)  # shuffle-BN
        keys = F.normalize(self.key_projector(self.key_backbone(images[order])), dim=1)
        return keys[order.argsort()]

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
