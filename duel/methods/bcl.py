"""BCL (Zhou et al., ICML 2022), BCL-I: SimCLR whose augmentation strength follows each sample's memorization.

Per sample, an exponential moving average of its contrastive loss over epochs (beta 0.97) is the
memorization score: hard-to-memorise samples (the tail, in their analysis) keep high losses. At
every epoch start the scores become weights w in [0, 1] (z-score, divided by the largest |z|,
mapped to [0, 1]; w = 0 in the first epoch), and both views get BCL's RandAugment after the SimCLR
augmentation: `ops` operations, each applied with probability w at magnitude strength * w * u,
u ~ U(0, 1) drawn once per image (MediaBrain-SJTU/BCL train.py and data/memoboosted_cifar100.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from duel.config import PretrainConfig
from duel.data.augment import rand_augment_prob
from duel.errors import ConfigError
from duel.methods.base import DataInfo
from duel.methods.simclr import SimCLR


@dataclass(frozen=True)
class BCLParams:
    beta: float = 0.97  # [BCL] train.py --momentum_loss_beta
    ops: int = 1  # [BCL] --rand_k
    strength: float = 30.0  # [BCL] --rand_strength (RandAugment's 0..30 magnitude scale)


class BCL(SimCLR):
    Params = BCLParams

    def __init__(self, cfg: PretrainConfig, data: DataInfo, params: Any = None) -> None:
        super().__init__(cfg, data, params)
        # The moving average of each sample's loss (NaN until the sample is first seen) and its
        # normalised score, the sample's augmentation probability and strength.
        self.register_sample_state("memo_loss", fill=float("nan"))
        self.register_sample_state("memo_weight")

    @classmethod
    def check_params(cls, params: BCLParams, key: str, cfg: PretrainConfig) -> None:
        if not 0 <= params.beta < 1:
            raise ConfigError(f"{key}.beta", params.beta, "must be in [0, 1)")
        if params.ops < 1:
            raise ConfigError(f"{key}.ops", params.ops, "must be >= 1")
        if not 0 <= params.strength <= 30:
            raise ConfigError(f"{key}.strength", params.strength, "must be in [0, 30] (RandAugment's scale)")

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        seen = ~self.memo_loss.isnan()
        if not seen.any():  # the first epoch: plain SimCLR views
            self.memo_weight.zero_()
            return
        loss = self.memo_loss[seen]
        z = (loss - loss.mean()) / loss.std().nan_to_num(0).clamp_min(1e-12)
        self.memo_weight.fill_(0.5)  # a sample not seen yet (dropped last batch) counts as average
        self.memo_weight[seen] = z / z.abs().max().clamp_min(1e-12) / 2 + 0.5

    def views(self, batch, augment: nn.Sequential) -> list[torch.Tensor]:
        *ssl_steps, normalize = augment  # BCL's operations act on [0, 1] images, before normalisation
        ssl = nn.Sequential(*ssl_steps)
        weight = self.memo_weight[batch.positions]
        magnitude = self.params.strength * weight * torch.rand(len(weight), device=weight.device)
        return [normalize(rand_augment_prob(ssl(batch.images), magnitude, weight, self.params.ops)) for _ in range(2)]

    @torch.no_grad()
    def after_step(self, output, batch, step, total_steps) -> None:
        super().after_step(output, batch, step, total_steps)
        previous, loss = self.memo_loss[batch.positions], output.per_sample.float()
        average = self.params.beta * previous + (1 - self.params.beta) * loss
        self.memo_loss[batch.positions] = torch.where(previous.isnan(), loss, average)

    def epoch_metrics(self) -> dict[str, float]:
        return {"memo_weight_mean": float(self.memo_weight.mean()), "memo_loss_mean": float(self.memo_loss.nanmean())}
