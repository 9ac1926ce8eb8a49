"""DUEL-MoCo (Choi et al. 2024): MoCo v2 whose memory evicts the most duplicated key."""

from duel.methods.moco import MoCo


class DMoCo(MoCo):
    memory_policy = "duel"
