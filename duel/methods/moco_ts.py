"""MoCo v2 with the cosine temperature schedule of Kukleva et al., ICLR 2023 (duel.methods.temperature),
on the symmetric and the asymmetric InfoNCE alike."""

from duel.method_params import MoCoTSParams
from duel.methods.moco import MoCo
from duel.methods.temperature import CosineTemperature


class MoCoTS(CosineTemperature, MoCo):
    Params = MoCoTSParams
