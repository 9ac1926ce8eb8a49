"""Random-replacement ablation of DUEL-MoCo: a full memory overwrites a uniformly random slot."""

from duel.methods.moco import MoCo


class RMoCo(MoCo):
    memory_policy = "random"
