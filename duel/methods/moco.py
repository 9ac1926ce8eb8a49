"""MoCo v2 (He et al. 2020; Chen et al. 2020): momentum key encoder, memory of keys, InfoNCE.

facebookresearch/moco colab/moco_cifar10_demo.ipynb `ModelMoCo.forward`: asymmetric (its default), view 1
is the query and view 2 the key, and the B keys of view 2 enter the queue; symmetric, both directions
and both views' 2B keys. The demo sums the two directions; here they are averaged (`symmetric: true`,
this project's default: the same gradient as the demo's sum at half the learning rate, weight decay
aside), so a per-image loss reads on one scale in both forms.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from duel.backbones import split_batchnorm
from duel.config import PretrainConfig
from duel.distributed import shuffled_apply, world_size
from duel.losses import info_nce
from duel.method_params import MoCoParams
from duel.methods.base import DataInfo, SSLMethod, StepOutput, pair_mean


class MoCo(SSLMethod):
    Params = MoCoParams
    memory_policy = "fifo"

    def __init__(self, cfg: PretrainConfig, data: DataInfo, params: Any = None) -> None:
        super().__init__(cfg, data, params)
        local = self.params.bn_splits // world_size()  # this process's BatchNorm groups
        if local > 1:
            split_batchnorm(self.backbone, local)
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def momentum_pairs(self):
        return [(self.backbone, self.key_backbone), (self.projector, self.key_projector)]

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> torch.Tensor:
        if self.params.bn_splits == 1 or not self.training:
            return F.normalize(self.key_projector(self.key_backbone(images)), dim=1)
        return shuffled_apply(lambda x: F.normalize(self.key_projector(self.key_backbone(x)), dim=1), images)

    def memory_keys(self, views: torch.Tensor) -> torch.Tensor:
        return self.keys(views)

    def training_loss(self, views, batch):
        # The key encoder was updated after the previous step (`after_step`), as MoCo updates it
        # before computing this batch's keys.
        negatives, t = self.negatives(), self.temperature
        if not self.params.symmetric:
            q1, k2 = self.embed(views[0]), self.keys(views[1])
            per_image = info_nce(q1, k2, negatives, t, "none")
            return StepOutput(per_image.mean(), per_image.detach(), keys=k2)
        q1, q2 = self.embed(views[0]), self.embed(views[1])
        k1, k2 = self.keys(views[0]), self.keys(views[1])
        per_view = torch.cat([info_nce(q1, k2, negatives, t, "none"), info_nce(q2, k1, negatives, t, "none")])
        return StepOutput(per_view.mean(), pair_mean(per_view), keys=torch.cat([k1, k2]))
