"""DUEL-MoCo with a rolling refresh (a variant beside the paper's `dmoco` and the exact `dmoco_fresh`).

After every step the current key encoder re-encodes the images of the next ceil(K / max_staleness)
memory slots, a window that cycles over the memory, and their DUEL scores are updated incrementally
(O(window K d)). No key is then more than `max_staleness` steps old, while DUEL still decides which
images stay (a slot's residence age is untouched). Costs K / max_staleness key-encoder forward passes
per step, against K for `dmoco_fresh` (max_staleness 1) and 2 x batch_size for MoCo's own keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from duel.config import PretrainConfig
from duel.errors import ConfigError
from duel.methods.dmoco import DMoCo
from duel.methods.moco import MoCoParams


@dataclass(frozen=True)
class DMoCoRollParams(MoCoParams):
    # steps a key may go without re-encoding: the window is ceil(K / max_staleness) slots (128 at K 1024)
    max_staleness: int = 8


class DMoCoRoll(DMoCo):
    Params = DMoCoRollParams

    @classmethod
    def check_params(cls, params: DMoCoRollParams, key: str, cfg: PretrainConfig) -> None:
        super().check_params(params, key, cfg)
        bound, size = params.max_staleness, cfg.memory.size
        if not 1 <= bound <= size:
            raise ConfigError(f"{key}.max_staleness", bound, f"must be in [1, pretrain.memory.size={size}]")

    def refresh_size(self) -> int:
        return math.ceil(self.cfg.memory.size / self.params.max_staleness)
