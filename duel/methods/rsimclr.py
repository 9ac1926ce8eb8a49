"""Random-replacement ablation of DUEL-SimCLR: a full memory overwrites a uniformly random slot."""

from duel.methods.dsimclr import DSimCLR


class RSimCLR(DSimCLR):
    memory_policy = "random"
