"""Each method's own hyper-parameters (`pretrain.method_kwargs.<name>`): a frozen dataclass per method and
its checks, torch-free so that a params file is checked in full before a stage imports torch.

A method's class names its dataclass as `Params` (duel.methods); `METHOD_PARAMS` holds every registered
method's, in the registry's order (tests/test_startup.py holds the two equal). `check` raises a
`ConfigError` for a bound the types alone do not say; a dataclass that extends or mixes in another
calls `super().check` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from duel.config import PretrainConfig, build_config
from duel.errors import ConfigError

P = TypeVar("P", bound="NoParams")


@dataclass(frozen=True)
class NoParams:
    """A method without hyper-parameters of its own; the base of every `Params`."""

    def check(self, key: str, cfg: PretrainConfig, world_size: int) -> None:
        """`key`: where the values are written; `cfg`: the method's pretrain section; `world_size`: the
        processes of the running launcher (1 before a launch: `cfg.nproc_per_node` counts them there)."""


@dataclass(frozen=True)
class MoCoParams(NoParams):
    # MoCo's shuffle-BN: BatchNorm statistics over this many groups of the global batch in both
    # encoders, and the key batch shuffled before the key encoder, so a query and its key never share
    # statistics. One process: interleaved sub-batches, as facebookresearch/moco's CIFAR-10 demo
    # (bn_splits 8 there). N processes: each holds bn_splits / N groups and the key batch is shuffled
    # across the processes, as its main_moco.py (bn_splits N: one group per process). 1: plain BatchNorm.
    bn_splits: int = 1
    # Both directions (q1 against k2 and q2 against k1, both views' keys pushed) or the original MoCo
    # loss (q1 against k2, view 2's keys pushed): the demo's --symmetric flag, false by default there.
    symmetric: bool = True

    def check(self, key: str, cfg: PretrainConfig, world_size: int) -> None:
        # Checked before the launch (nproc_per_node) and again in each process (torchrun's world size).
        splits, nproc = self.bn_splits, max(cfg.nproc_per_node, world_size)
        batch = cfg.batch_size
        if nproc == 1 and (splits < 1 or batch % splits):
            raise ConfigError(f"{key}.bn_splits", splits, f"must be >= 1 and divide pretrain.batch_size={batch}")
        if nproc > 1 and splits != 1 and (splits < 1 or splits % nproc or batch % (splits // nproc)):
            allowed = f"must be 1 or a multiple of the {nproc} processes, each share dividing "
            allowed += f"pretrain.batch_size={batch}"
            raise ConfigError(f"{key}.bn_splits", splits, allowed)
        if splits > 1 and cfg.sync_batchnorm:
            allowed = "1 with pretrain.sync_batchnorm: true (statistics of the whole global batch: nothing to shuffle)"
            raise ConfigError(f"{key}.bn_splits", splits, allowed)


@dataclass(frozen=True)
class DMoCoRollParams(MoCoParams):
    # steps a key may go without re-encoding: the window is ceil(K / max_staleness) slots (128 at K 1024)
    max_staleness: int = 8

    def check(self, key: str, cfg: PretrainConfig, world_size: int) -> None:
        super().check(key, cfg, world_size)
        bound, size = self.max_staleness, cfg.memory.size
        if not 1 <= bound <= size:
            raise ConfigError(f"{key}.max_staleness", bound, f"must be in [1, pretrain.memory.size={size}]")


@dataclass(frozen=True)
class SDCLRParams(NoParams):
    prune_ratio: float = 0.9  # [SDCLR] README / camera_ready.sh: --prune_percent 0.9 on CIFAR

    def check(self, key: str, cfg: PretrainConfig, world_size: int) -> None:
        if not 0 <= self.prune_ratio < 1:
            raise ConfigError(f"{key}.prune_ratio", self.prune_ratio, "must be in [0, 1)")


@dataclass(frozen=True)
class BCLParams(NoParams):
    beta: float = 0.97  # [BCL] train.py --momentum_loss_beta
    ops: int = 1  # [BCL] --rand_k: RandAugment operations per view (1: BCL-I; 2 or more: BCL-D's magnitude)
    strength: float = 30.0  # [BCL] --rand_strength: the magnitude at weight 1 (RandAugment's 0..30 scale)
    # [BCL] data/memoboosted_cifar100.py `min_strength` when --rand_k == 1: the magnitude at weight 0
    min_strength_one_op: float = 10.0
    min_strength_multi_op: float = 5.0  # [BCL] `min_strength` when --rand_k >= 2: the magnitude at weight 0

    def check(self, key: str, cfg: PretrainConfig, world_size: int) -> None:
        if not 0 <= self.beta < 1:
            raise ConfigError(f"{key}.beta", self.beta, "must be in [0, 1)")
        if self.ops < 1:
            raise ConfigError(f"{key}.ops", self.ops, "must be >= 1")
        if not 0 <= self.strength <= 30:
            raise ConfigError(f"{key}.strength", self.strength, "must be in [0, 30] (RandAugment's scale)")
        for name in ("min_strength_one_op", "min_strength_multi_op"):
            value = getattr(self, name)
            if not 0 <= value <= self.strength:
                raise ConfigError(f"{key}.{name}", value, f"must be in [0, strength={self.strength}]")


@dataclass(frozen=True)
class GHParams(NoParams):
    # [GH] --target_dim 100 (K), at most pretrain.proj_dim (the ETF lives in R^proj_dim); 0: min(100, proj_dim),
    # so the default fits every projection width
    num_targets: int = 0
    w_gh: float = 1.0  # [GH] the ramp ends at weight 1
    warmup: float = 0.5  # fraction of the epochs before GH switches on ([GH] README: --warm_up 500 of 1000)
    ramp: float = 0.01  # fraction of the epochs over which its weight rises ([GH] GH_warm_up 10 of 1000)
    prior_every: float = 0.02  # fraction of the epochs between prior re-estimates ([GH] every 20 of 1000)
    sinkhorn_epsilon: float = 0.05  # [GH] GHLoss(0.05, ...)
    sinkhorn_iterations: int = 300  # [GH] --sinkhorn_iter
    temperature: float = 0.1  # [GH] GHLoss gamma: softmax temperature of the predictions
    ema_warmup: float = 0.9  # [GH] score EMA momentum per visit during the warm-up ...
    ema: float = 0.999  # [GH] --beta: ... and after it, at the reference's length (see `momenta`)
    # [GH] --epochs 1000: the run length the two momenta belong to; a run of other length gets them raised
    # to (reference visits / own visits) per phase (`momenta`); 0: the momenta as given, per visit
    reference_epochs: int = 1000
    seed: int = 0  # draws the ETF

    def check(self, key: str, cfg: PretrainConfig, world_size: int) -> None:
        if not 2 <= target_count(self, cfg) <= cfg.proj_dim:
            allowed = f"0 or in [2, pretrain.proj_dim={cfg.proj_dim}]: the targets are a simplex ETF in R^proj_dim"
            raise ConfigError(f"{key}.num_targets", self.num_targets, allowed)
        for name in ("w_gh", "sinkhorn_epsilon", "temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{key}.{name}", getattr(self, name), "must be > 0")
        for name in ("warmup", "ramp", "prior_every", "ema_warmup", "ema"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name}", getattr(self, name), "must be in [0, 1)")
        if self.sinkhorn_iterations < 1:
            raise ConfigError(f"{key}.sinkhorn_iterations", self.sinkhorn_iterations, "must be >= 1")
        if self.reference_epochs < 0:
            raise ConfigError(f"{key}.reference_epochs", self.reference_epochs, "must be >= 0 (0: momenta unscaled)")


def target_count(params: GHParams, cfg: PretrainConfig) -> int:
    """K: `num_targets`, or min(100, proj_dim) where it is 0."""
    return params.num_targets or min(100, cfg.proj_dim)


@dataclass(frozen=True)
class CosineTemperatureParams(NoParams):
    # the lowest temperature, in the t_max-th epoch (Annusha/temperature_schedules README --temperature_min 0.1)
    tau_min: float = 0.1
    # the highest, in the (2 t_max)-th epoch; the first epoch's is just below it (README --temperature_max
    # 1.0; train_simCLR.py's argparse default is 0.5)
    tau_max: float = 1.0
    # epochs from tau_max down to tau_min: a cosine of period 2 t_max, no restart (README --t_max 200); not
    # scaled to the run's length, so a run shorter than t_max sees only the start of the first descent
    t_max: int = 200

    def check(self, key: str, cfg: PretrainConfig, world_size: int) -> None:
        super().check(key, cfg, world_size)
        if self.tau_min <= 0:
            raise ConfigError(f"{key}.tau_min", self.tau_min, "must be > 0")
        if self.tau_max < self.tau_min:
            raise ConfigError(f"{key}.tau_max", self.tau_max, f"must be >= tau_min={self.tau_min}")
        if self.t_max < 1:
            raise ConfigError(f"{key}.t_max", self.t_max, "must be >= 1 (epochs from tau_max to tau_min)")


@dataclass(frozen=True)
class MoCoTSParams(CosineTemperatureParams, MoCoParams):
    """MoCo's hyper-parameters, then the schedule's."""


METHOD_PARAMS: dict[str, type[NoParams]] = {
    "moco": MoCoParams,
    "dmoco": MoCoParams,
    "dmoco_fresh": MoCoParams,
    "dmoco_roll": DMoCoRollParams,
    "rmoco": MoCoParams,
    "simclr": NoParams,
    "dsimclr": NoParams,
    "rsimclr": NoParams,
    "sdclr": SDCLRParams,
    "bcl": BCLParams,
    "gh": GHParams,
    "simclr_ts": CosineTemperatureParams,
    "moco_ts": MoCoTSParams,
    "dmoco_ts": MoCoTSParams,
}


def parse_method_params(
    cls: type[P], values: dict[str, Any] | None, key: str, cfg: PretrainConfig, world_size: int = 1
) -> P:
    """`cls` from the mapping at params key `key`, types and values checked."""
    params = build_config(cls, values, key)
    params.check(key, cfg, world_size)
    return params
