"""The cosine temperature schedule of Kukleva et al., ICLR 2023, for any contrastive method.

"Temperature Schedules for self-supervised contrastive methods on long-tail data"; reference
Annusha/temperature_schedules ([TS] below), train_simCLR.py `--adj_tau cos`: every step of epoch
`epoch`, counted from 1 (`for epoch in range(start_epoch, args.epochs + 1)`, start_epoch 1), uses

    tau = min_tau + 0.5 * (max_tau - min_tau) * (1 + cos(pi * epoch / t_max))

for positives and negatives alike (utils.py `nt_xent`), with no restart: a period of 2 t_max epochs.
A large tau favours group-wise discrimination (the head classes), a small one instance discrimination
(the tail); the schedule keeps switching between the two.

A method takes it by listing `CosineTemperature` before its own class and mixing
`CosineTemperatureParams` into its `Params` (`simclr_ts.py`, `moco_ts.py`; duel.method_params).
"""

from __future__ import annotations

import math

from duel.method_params import CosineTemperatureParams
from duel.methods.base import SSLMethod


def cosine_temperature(epoch: int, p: CosineTemperatureParams) -> float:
    """The temperature of our 0-based `epoch`: [TS]'s formula at its epoch `epoch + 1`, in double precision
    (theirs takes the cosine of a float32 tensor: within 5e-7 of it)."""
    return p.tau_min + 0.5 * (p.tau_max - p.tau_min) * (1 + math.cos(math.pi * (epoch + 1) / p.t_max))


class CosineTemperature(SSLMethod):
    """The schedule as a method's own: `class SimCLRTS(CosineTemperature, SimCLR)`."""

    params: CosineTemperatureParams

    def temperature_at(self, epoch: int, epochs: int) -> float:
        return cosine_temperature(epoch, self.params)

    def epoch_metrics(self) -> dict[str, float]:
        return super().epoch_metrics() | {"temperature": self.temperature}
