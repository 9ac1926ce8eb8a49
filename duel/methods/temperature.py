"""The cosine temperature schedule of Kukleva et al., ICLR 2023, for any contrastive method.

"Temperature Schedules for self-supervised contrastive methods on long-tail data"; reference
Annusha/temperature_schedules ([TS] below), train_simCLR.py `--adj_tau cos`: every step of epoch
`epoch`, counted from 1 (`for epoch in range(start_epoch, args.epochs + 1)`, start_epoch 1), uses

    tau = min_tau + 0.5 * (max_tau - min_tau) * (1 + cos(pi * epoch / t_max))

for positives and negatives alike (utils.py `nt_xent`), with no restart: a period of 2 t_max epochs.
A large tau favours group-wise discrimination (the head classes), a small one instance discrimination
(the tail); the schedule keeps switching between the two.

A method takes it by listing `CosineTemperature` before its own class and mixing
`CosineTemperatureParams` into its `Params` (`simclr_ts.py`, `moco_ts.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from duel.config import PretrainConfig
from duel.errors import ConfigError
from duel.methods.base import SSLMethod


@dataclass(frozen=True)
class CosineTemperatureParams:
    # the lowest temperature, in the t_max-th epoch (Annusha/temperature_schedules README --temperature_min 0.1)
    tau_min: float = 0.1
    # the highest, in the (2 t_max)-th epoch; the first epoch's is just below it (README --temperature_max
    # 1.0; train_simCLR.py's argparse default is 0.5)
    tau_max: float = 1.0
    # epochs from tau_max down to tau_min: a cosine of period 2 t_max, no restart (README --t_max 200); not
    # scaled to the run's length, so a run shorter than t_max sees only the start of the first descent
    t_max: int = 200


def cosine_temperature(epoch: int, p: CosineTemperatureParams) -> float:
    """The temperature of our 0-based `epoch`: [TS]'s formula at its epoch `epoch + 1`, in double precision
    (theirs takes the cosine of a float32 tensor: within 5e-7 of it)."""
    return p.tau_min + 0.5 * (p.tau_max - p.tau_min) * (1 + math.cos(math.pi * (epoch + 1) / p.t_max))


class CosineTemperature(SSLMethod):
    """The schedule as a method's own: `class SimCLRTS(CosineTemperature, SimCLR)`."""

    params: CosineTemperatureParams

    @classmethod
    def check_params(cls, params: CosineTemperatureParams, key: str, cfg: PretrainConfig) -> None:
        super().check_params(params, key, cfg)
        if params.tau_min <= 0:
            raise ConfigError(f"{key}.tau_min", params.tau_min, "must be > 0")
        if params.tau_max < params.tau_min:
            raise ConfigError(f"{key}.tau_max", params.tau_max, f"must be >= tau_min={params.tau_min}")
        if params.t_max < 1:
            raise ConfigError(f"{key}.t_max", params.t_max, "must be >= 1 (epochs from tau_max to tau_min)")

    def temperature_at(self, epoch: int, epochs: int) -> float:
        return cosine_temperature(epoch, self.params)

    def epoch_metrics(self) -> dict[str, float]:
        return super().epoch_metrics() | {"temperature": self.temperature}
