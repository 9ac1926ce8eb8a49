"""SimCLR (Chen et al. 2020): NT-Xent with the other views of the batch as negatives."""

from __future__ import annotations

from duel.losses import nt_xent
from duel.methods.base import SSLMethod, StepOutput, pair_mean


class SimCLR(SSLMethod):
    def training_loss(self, views, batch):
        per_view = nt_xent(self.embed(views[0]), self.embed(views[1]), self.temperature, reduction="none")
        return StepOutput(per_view.mean(), pair_mean(per_view))
