"""The one config system: typed dataclasses built from `params.yaml`, validated up front.

Every stage builds the whole `StudyConfig`, so a bad value anywhere stops any
stage before it writes or trains, with a one-line `ConfigError` that names the
key, the bad value and what is allowed. Values are never silently rewritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any


class DuelError(Exception):
    """An error the user can fix; the pipeline prints it as one line and exits non-zero."""


class ConfigError(DuelError):
    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"params: {key}={value!r} is not allowed: {allowed}")


PROFILES = ("exp", "step", "dominant", "balanced", "balanced_matched")


@dataclass(frozen=True)
class SweepConfig:
    """The axes dvc.yaml expands with `matrix`."""

    methods: list[str] = field(default_factory=lambda: ["moco", "dmoco", "simclr", "dsimclr"])
    # r >= 1 for exp / step / balanced / balanced_matched, rho_max in (0, 1) for dominant.
    imbalance: list[float] = field(default_factory=lambda: [1, 10, 100])
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "duel"


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"
    root: str | None = None  # dataset folder for sources that live on disk
    image_size: int | None = None  # resize on load; None keeps the native size
    test_fraction: float = 0.25  # only for sources without an official test split
    val_fraction: float = 0.15  # carved per class from the training split before the LT draw
    split_seed: int = 0


@dataclass(frozen=True)
class PrepareConfig:
    profile: str = "exp"
    n_max: int = 100  # size of the largest (head) class
    head_order: str = "index"  # index | shuffled
    seed: int = 0
    match_profile: str = "exp"  # the LT profile whose total size balanced_matched copies


@dataclass(frozen=True)
class MemoryConfig:
    size: int = 256
    policy: str = "auto"  # auto = the method's own (fifo for moco, duel for dmoco/dsimclr)
    temperature: float = 0.1  # tau_d of the duplication probability
    batch_mode: str = "greedy"  # greedy | topk


@dataclass(frozen=True)
class AugmentConfig:
    crop_min_scale: float = 0.5
    rotation: float = 15.0  # degrees
    jitter: float = 0.4  # brightness / contrast (and saturation for RGB)
    hflip: bool = False
    grayscale_p: float = 0.2  # RGB only


@dataclass(frozen=True)
class PretrainConfig:
    backbone: str = "small_cnn"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.06
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = 0.2
    proj_dim: int = 64
    key_momentum: float = 0.99
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    checkpoint_every: int = 5  # epochs
    num_workers: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class ProbeConfig:
    train_set: str = "balanced"  # balanced | lt
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    knn_k: int = 200
    knn_temperature: float = 0.1
    batch_size: int = 256
    device: str = "cpu"


@dataclass(frozen=True)
class ReportConfig:
    tsne_perplexity: float = 30.0
    tsne_max_points: int = 2000


@dataclass(frozen=True)
class StudyConfig:
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_hash(cfg: Any) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------- parsing
def _convert(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(key, value, "expected a mapping")
        return _build(hint, value, key)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, value, "expected a list")
        (inner,) = typing.get_args(hint)
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    raise ConfigError(key, value, f"expected {getattr(hint, '__name__', hint)}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(key, values[unknown[0]], f"unknown key; allowed: {', '.join(hints)}")
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in values.items()}
    return cls(**kwargs)


def parse_config(values: dict[str, Any]) -> StudyConfig:
    """Build and validate the study config from the parsed params.yaml mapping."""
    cfg = _build(StudyConfig, values or {}, "")
    validate(cfg)
    return cfg


# ------------------------------------------------------------------ validation
def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def validate_imbalance(prepare: PrepareConfig, value: float, key: str = "sweep.imbalance") -> None:
    """r >= 1, or rho_max in (0, 1) for dominant; balanced_matched takes its reference profile's value."""
    profile = prepare.match_profile if prepare.profile == "balanced_matched" else prepare.profile
    if profile == "dominant":
        _require(0 < value < 1, key, value, "rho_max of the dominant profile must be in (0, 1)")
    else:
        _require(value >= 1, key, value, f"the imbalance ratio r of profile {profile!r} must be >= 1")


def validate(cfg: StudyConfig) -> None:
    # Imported here: the registries import this module for the config types.
    from duel.backbones import BACKBONES
    from duel.data.sources import SOURCES
    from duel.memory import BATCH_MODES, POLICIES
    from duel.methods import METHODS

    s, d, p, t, m, pr = cfg.sweep, cfg.data, cfg.prepare, cfg.pretrain, cfg.pretrain.memory, cfg.probe
    for name in s.methods:
        _require(name in METHODS, "sweep.methods", name, f"known methods: {', '.join(METHODS)}")
    _require(bool(s.methods and s.imbalance and s.seeds), "sweep", to_dict(s), "every axis needs a value")
    _require(d.source in SOURCES, "data.source", d.source, f"known sources: {', '.join(SOURCES)}")
    _require(0 < d.test_fraction < 1, "data.test_fraction", d.test_fraction, "must be in (0, 1)")
    _require(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction, "must be in (0, 1)")
    _require(d.image_size is None or d.image_size >= 8, "data.image_size", d.image_size, "null or >= 8")
    _require(p.profile in PROFILES, "prepare.profile", p.profile, f"known profiles: {', '.join(PROFILES)}")
    _require(
        p.match_profile in ("exp", "step", "dominant"),
        "prepare.match_profile",
        p.match_profile,
        "exp, step or dominant",
    )
    _require(p.n_max >= 1, "prepare.n_max", p.n_max, "must be >= 1")
    _require(p.head_order in ("index", "shuffled"), "prepare.head_order", p.head_order, "index or shuffled")
    for value in s.imbalance:
        validate_imbalance(p, value)
    _require(t.backbone in BACKBONES, "pretrain.backbone", t.backbone, f"known backbones: {', '.join(BACKBONES)}")
    _require(t.epochs > 0, "pretrain.epochs", t.epochs, "must be > 0")
    _require(t.batch_size >= 2, "pretrain.batch_size", t.batch_size, "must be >= 2")
    _require(t.lr > 0, "pretrain.lr", t.lr, "must be > 0")
    _require(t.temperature > 0, "pretrain.temperature", t.temperature, "must be > 0")
    _require(0 <= t.key_momentum < 1, "pretrain.key_momentum", t.key_momentum, "must be in [0, 1)")
    _require(t.checkpoint_every >= 1, "pretrain.checkpoint_every", t.checkpoint_every, "must be >= 1")
    _require(t.num_workers >= 0, "pretrain.num_workers", t.num_workers, "must be >= 0")
    _require(
        m.size >= t.batch_size,
        "pretrain.memory.size",
        m.size,
        f"the memory must hold at least one batch (pretrain.batch_size={t.batch_size})",
    )
    _require(m.policy in ("auto", *POLICIES), "pretrain.memory.policy", m.policy, f"auto, {', '.join(POLICIES)}")
    _require(m.batch_mode in BATCH_MODES, "pretrain.memory.batch_mode", m.batch_mode, ", ".join(BATCH_MODES))
    _require(m.temperature > 0, "pretrain.memory.temperature", m.temperature, "must be > 0")
    a = t.augment
    _require(0 < a.crop_min_scale <= 1, "pretrain.augment.crop_min_scale", a.crop_min_scale, "must be in (0, 1]")
    _require(pr.train_set in ("balanced", "lt"), "probe.train_set", pr.train_set, "balanced or lt")
    _require(bool(pr.c_grid) and min(pr.c_grid) > 0, "probe.c_grid", pr.c_grid, "a non-empty list of C > 0")
    _require(pr.knn_k >= 1, "probe.knn_k", pr.knn_k, "must be >= 1")
    _require(pr.knn_temperature > 0, "probe.knn_temperature", pr.knn_temperature, "must be > 0")
