"""DUEL-SimCLR (Choi et al. 2024): SimCLR whose negatives are the batch plus a DUEL memory
of detached projections."""

from __future__ import annotations

import torch

from duel.losses import nt_xent
from duel.methods.base import StepOutput, pair_mean
from duel.methods.simclr import SimCLR


class DSimCLR(SimCLR):
    memory_policy = "duel"

    def training_loss(self, views, batch):
        z1, z2 = self.embed(views[0]), self.embed(views[1])
        per_view = nt_xent(z1, z2, self.temperature, self.negatives(), reduction="none")
        return StepOutput(per_view.mean(), pair_mean(per_view), keys=torch.cat([z1, z2]).detach())
