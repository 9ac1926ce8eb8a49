"""DUEL-SimCLR (Choi et al. 2024): SimCLR whose negatives are the batch plus a DUEL memory
of detached projections."""

from __future__ import annotations

import torch

from duel.losses import nt_xent
from duel.methods.simclr import SimCLR


class DSimCLR(SimCLR):
    default_policy = "duel"

    def training_loss(self, view1, view2, labels, indices):
        z1, z2 = self.embed(view1), self.embed(view2)
        loss = nt_xent(z1, z2, self.cfg.temperature, self.negatives())
        self.push(torch.cat([z1, z2]).detach(), labels, indices)
        return loss
