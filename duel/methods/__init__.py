"""Method registry: adding a method is one file plus one line here."""

from duel.config import PretrainConfig
from duel.methods.base import SSLMethod
from duel.methods.dmoco import DMoCo
from duel.methods.dmoco_fresh import DMoCoFresh
from duel.methods.dsimclr import DSimCLR
from duel.methods.moco import MoCo
from duel.methods.rmoco import RMoCo
from duel.methods.simclr import SimCLR

METHODS: dict[str, type[SSLMethod]] = {
    "moco": MoCo,
    "dmoco": DMoCo,
    "dmoco_fresh": DMoCoFresh,
    "rmoco": RMoCo,
    "simclr": SimCLR,
    "dsimclr": DSimCLR,
}


def build_method(name: str, in_channels: int, cfg: PretrainConfig, num_classes: int = 0) -> SSLMethod:
    return METHODS[name](in_channels, cfg, num_classes)


__all__ = ["METHODS", "SSLMethod", "build_method"]
