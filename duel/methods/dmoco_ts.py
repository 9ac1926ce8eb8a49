"""DUEL-MoCo with the cosine temperature schedule of Kukleva et al., ICLR 2023 (`moco_ts` with the duel
policy).

The schedule sets the loss's temperature only. The duplication temperature tau_d
(`pretrain.memory.temperature`) stays fixed: it measures how alike two memory keys are, not how sharp
the loss is. Each key's DUEL score, its summed duplication with every other key, is updated
incrementally at each push (duel.memory), so a tau_d changed every epoch would leave one score adding
up terms of two scales.
"""

from duel.methods.moco_ts import MoCoTS


class DMoCoTS(MoCoTS):
    memory_policy = "duel"
