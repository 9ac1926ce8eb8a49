"""MoCo v2 with the cosine temperature schedule of Kukleva et al., ICLR 2023 (duel.methods.temperature),
on the symmetric and the asymmetric InfoNCE alike."""

from dataclasses import dataclass

from duel.methods.moco import MoCo, MoCoParams
from duel.methods.temperature import CosineTemperature, CosineTemperatureParams


@dataclass(frozen=True)
class MoCoTSParams(CosineTemperatureParams, MoCoParams):
    """MoCo's hyper-parameters, then the schedule's."""


class MoCoTS(CosineTemperature, MoCo):
    Params = MoCoTSParams
