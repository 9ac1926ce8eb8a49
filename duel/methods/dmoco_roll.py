"""DUEL-MoCo with a rolling refresh (a variant beside the paper's `dmoco` and the exact `dmoco_fresh`).

After every step the current key encoder re-encodes the images of the next ceil(K / max_staleness)
memory slots, a window that cycles over the memory, and their DUEL scores are updated incrementally
(O(window K d)). No key is then more than `max_staleness` steps old, while DUEL still decides which
images stay (a slot's residence age is untouched). Costs K / max_staleness key-encoder forward passes
per step, against K for `dmoco_fresh` (max_staleness 1) and 2 x batch_size for MoCo's own keys.
"""

from __future__ import annotations

import math

from duel.method_params import DMoCoRollParams
from duel.methods.dmoco_fresh import DMoCoFresh


class DMoCoRoll(DMoCoFresh):
    Params = DMoCoRollParams

    def refresh_size(self) -> int:
        return math.ceil(self.cfg.memory.size / self.params.max_staleness)
