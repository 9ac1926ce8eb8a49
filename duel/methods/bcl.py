"""BCL (Zhou et al., ICML 2022): SimCLR whose augmentation strength follows each sample's memorization.

Reference: MediaBrain-SJTU/BCL train.py, data/memoboosted_cifar100.py, data/randaug.py ([BCL] below).

- Score ([BCL] train.py `train`): per sample, a moving average of its contrastive loss (the mean over its
  two views, losses/nt_xent.py `loss_reshape`), `new_average = (1 - beta) * loss + beta * shadow[index]`
  (beta = --momentum_loss_beta 0.97), the loss itself in the first epoch. Every sample is visited once an
  epoch: the reference's DataLoader keeps the last, smaller batch (`drop_last` is left at False), so
  does this method (`drop_last`; data-parallel runs still drop it, see `duel.train.pretrain`).
- Weight ([BCL] memoboosted_cifar100.py `calculate_momentum_weight`, after each epoch): z-score of the
  averages (torch.std, unbiased), divided by the largest |z|, `/2 + 1/2`: w in [0, 1]; w = 0 in the
  first epoch (`self.momentum_weight[:] = 0`).
- Augmentation ([BCL] memoboosted_cifar100.py `__getitem__`): the SimCLR views, then
  `RandAugment_prob(rand_k, m, w)` with, for rand_k == 1 (BCL-I, the README's setting),
  `m = min_strength + (rand_strength - min_strength) * w` with `min_strength = 10` (no random factor),
  and otherwise (BCL-D's augmentation) `m = 5 + (rand_strength - 5) * w * np.random.rand(1)`. The
  transform is built once per `__getitem__`, so both views share m (and its random factor, one per
  image). `RandAugment_prob` ([BCL] data/randaug.py) draws rand_k operations with replacement
  (`random.choices`) and applies each with probability w (`random.uniform(0, 1) < self.p`) at value
  `m / 30 * (max - min) + min` (`duel.data.augment.rand_augment_prob`).

The reference runs BCL-D (--rand_k 2) on SDCLR (README: train_sdclr.py); here `ops >= 2` gives BCL-D's
augmentation on SimCLR.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from duel.config import PretrainConfig
from duel.data.augment import rand_augment_prob
from duel.method_params import BCLParams
from duel.methods.base import DataInfo
from duel.methods.simclr import SimCLR


class BCL(SimCLR):
    Params = BCLParams
    # [BCL] train.py: `DataLoader(train_datasets, num_workers=..., batch_size=..., shuffle=True,
    # pin_memory=True)`, drop_last at its default False: every sample's loss is averaged every epoch.
    drop_last: ClassVar[bool] = False

    def __init__(self, cfg: PretrainConfig, data: DataInfo, params: Any = None) -> None:
        super().__init__(cfg, data, params)
        # The moving average of each sample's loss (NaN until the sample is first seen) and its
        # normalised score, the sample's augmentation probability and strength.
        self.register_sample_state("memo_loss", fill=float("nan"))
        self.register_sample_state("memo_weight")

    def magnitude(self, weight: torch.Tensor) -> torch.Tensor:
        """Each image's RandAugment magnitude from its weight w ([BCL] memoboosted_cifar100.py): one
        operation, `min + (strength - min) * w`; several, `min + (strength - min) * w * u`, u ~ U[0, 1)
        once per image (shared by its two views)."""
        p = self.params
        if p.ops == 1:
            return p.min_strength_one_op + (p.strength - p.min_strength_one_op) * weight
        u = torch.rand(len(weight), device=weight.device)
        return p.min_strength_multi_op + (p.strength - p.min_strength_multi_op) * weight * u

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        super().on_epoch_start(epoch, epochs)
        seen = ~self.memo_loss.isnan()
        if not seen.any():  # the first epoch: plain SimCLR views
            self.memo_weight.zero_()
            return
        loss = self.memo_loss[seen]
        z = (loss - loss.mean()) / loss.std().nan_to_num(0).clamp_min(1e-12)
        # A sample not seen yet (only in data-parallel runs, which drop each epoch's last global batch)
        # counts as average.
        self.memo_weight.fill_(0.5)
        self.memo_weight[seen] = z / z.abs().max().clamp_min(1e-12) / 2 + 0.5

    def views(self, batch, augment: nn.Sequential) -> list[torch.Tensor]:
        *ssl_steps, normalize = augment  # BCL's operations act on [0, 1] images, before normalisation
        ssl = nn.Sequential(*ssl_steps)
        weight = self.memo_weight[batch.positions]
        magnitude = self.magnitude(weight)
        return [normalize(rand_augment_prob(ssl(batch.images), magnitude, weight, self.params.ops)) for _ in range(2)]

    @torch.no_grad()
    def after_step(self, output, batch, step, total_steps) -> None:
        super().after_step(output, batch, step, total_steps)
        previous, loss = self.memo_loss[batch.positions], output.per_sample.float()
        average = self.params.beta * previous + (1 - self.params.beta) * loss
        self.memo_loss[batch.positions] = torch.where(previous.isnan(), loss, average)

    def epoch_metrics(self) -> dict[str, float]:
        return {"memo_weight_mean": float(self.memo_weight.mean()), "memo_loss_mean": float(self.memo_loss.nanmean())}
