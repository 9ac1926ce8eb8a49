"""SimCLR (Chen et al. 2020): NT-Xent with the other views of the batch as negatives."""

from __future__ import annotations

from duel.losses import nt_xent
from duel.methods.base import SSLMethod


class SimCLR(SSLMethod):
    def training_loss(self, view1, view2, labels, indices):
        return nt_xent(self.embed(view1), self.embed(view2), self.cfg.temperature)
