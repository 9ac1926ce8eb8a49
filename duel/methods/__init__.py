"""Method registry: adding a method is one file plus one line here, and its `Params` line in duel.method_params."""

from duel.config import PretrainConfig
from duel.methods.base import DataInfo, SSLMethod, StepOutput
from duel.methods.bcl import BCL
from duel.methods.dmoco import DMoCo
from duel.methods.dmoco_fresh import DMoCoFresh
from duel.methods.dmoco_roll import DMoCoRoll
from duel.methods.dmoco_ts import DMoCoTS
from duel.methods.dsimclr import DSimCLR
from duel.methods.gh import GH
from duel.methods.moco import MoCo
from duel.methods.moco_ts import MoCoTS
from duel.methods.rmoco import RMoCo
from duel.methods.rsimclr import RSimCLR
from duel.methods.sdclr import SDCLR
from duel.methods.simclr import SimCLR
from duel.methods.simclr_ts import SimCLRTS

METHODS: dict[str, type[SSLMethod]] = {
    "moco": MoCo,
    "dmoco": DMoCo,
    "dmoco_fresh": DMoCoFresh,
    "dmoco_roll": DMoCoRoll,
    "rmoco": RMoCo,
    "simclr": SimCLR,
    "dsimclr": DSimCLR,
    "rsimclr": RSimCLR,
    "sdclr": SDCLR,
    "bcl": BCL,
    "gh": GH,
    "simclr_ts": SimCLRTS,
    "moco_ts": MoCoTS,
    "dmoco_ts": DMoCoTS,
}


def build_method(name: str, cfg: PretrainConfig, data: DataInfo) -> SSLMethod:
    """The method registered as `name`, with its hyper-parameters from `pretrain.method_kwargs.<name>`."""
    cls = METHODS[name]
    return cls(cfg, data, cls.parse_params(cfg.method_kwargs.get(name), f"pretrain.method_kwargs.{name}", cfg))


__all__ = ["METHODS", "DataInfo", "SSLMethod", "StepOutput", "build_method"]
