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


PROFILES = ("exp", "step", "dominant", "balanced", "balanced_matched", "natural", "file")
# Profiles whose imbalance value only labels the setting: the LT set is given, not drawn.
GIVEN_PROFILES = ("natural", "file")


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
    download: bool = False  # torchvision sources: fetch into root when missing (needs internet)
    unlabeled: bool = False  # stl10: add the 100k unlabeled images to pretraining
    image_size: int | None = None  # resize on load (shorter side + centre crop for files); None keeps it
    lazy: bool = False  # imagefolder: decode images on access (large images) instead of holding them
    train_list: str | None = None  # imagefolder: `relative/path label` files (ImageNet-LT), relative to root
    val_list: str | None = None  # an official validation list replaces the carved validation split
    test_list: str | None = None
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
    # profile `file`: a .npy of indices into the source's training split (SDCLR/BCL split files);
    # `{imbalance}` in the path is replaced by the setting, e.g. splits/r{imbalance}_D_i.npy.
    index_file: str | None = None
    val_index_file: str | None = None  # a .npy validation split (e.g. SDCLR's valIdxList.npy)


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
    max_steps: int | None = None  # stop (and end the cosine schedule) after this many steps
    checkpoint_every: int = 5  # epochs
    diagnostics_every: int = 1  # epochs between memory diagnostics (duel.diagnostics; O(K^2 d) each); 0: off
    num_workers: int = 0  # DataLoader workers decoding lazy image folders
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 (autocast; the memory and its scores stay fp32)
    channels_last: bool = False
    compile: bool = False  # torch.compile the backbones
    data_on_device: bool | None = None  # hold the uint8 training set on the device; null: when CUDA and <= 96 px


@dataclass(frozen=True)
class ProbeConfig:
    train_set: str = "balanced"  # balanced | lt | kshot
    shots: int = 10  # kshot: images per class, drawn from the balanced pool
    splits: int = 1  # kshot: random draws, reported as mean +- std
    split_seed: int = 0
    groups: str = "thirds"  # thirds (of the classes by LT count) | shots (ImageNet-LT thresholds)
    shot_thresholds: list[int] = field(default_factory=lambda: [20, 100])  # few < 20 <= medium <= 100 < many
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
    if profile in GIVEN_PROFILES:
        _require(value > 0, key, value, f"profile {profile!r} takes the LT set as given; the value only names it")
    elif profile == "dominant":
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
    _require(d.source == "digits" or d.root is not None, "data.root", d.root, f"source {d.source} needs a folder")
    _require(not d.unlabeled or d.source == "stl10", "data.unlabeled", d.unlabeled, "only stl10 has unlabeled images")
    folder_only = {"lazy": d.lazy, "train_list": d.train_list, "val_list": d.val_list, "test_list": d.test_list}
    for key, value in folder_only.items():
        _require(d.source == "imagefolder" or not value, f"data.{key}", value, "only for source imagefolder")
    _require(not d.lazy or d.image_size is not None, "data.lazy", d.lazy, "lazy loading needs data.image_size")
    _require(p.profile in PROFILES, "prepare.profile", p.profile, f"known profiles: {', '.join(PROFILES)}")
    _require(
        p.match_profile in ("exp", "step", "dominant"),
        "prepare.match_profile",
        p.match_profile,
        "exp, step or dominant",
    )
    _require(p.n_max >= 1, "prepare.n_max", p.n_max, "must be >= 1")
    _require(
        (p.profile == "file") == (p.index_file is not None),
        "prepare.index_file",
        p.index_file,
        "set exactly when prepare.profile is file",
    )
    _require(p.head_order in ("index", "shuffled"), "prepare.head_order", p.head_order, "index or shuffled")
    for value in s.imbalance:
        validate_imbalance(p, value)
    _require(t.backbone in BACKBONES, "pretrain.backbone", t.backbone, f"known backbones: {', '.join(BACKBONES)}")
    _require(t.epochs > 0, "pretrain.epochs", t.epochs, "must be > 0")
    _require(t.batch_size >= 2, "pretrain.batch_size", t.batch_size, "must be >= 2")
    _require(t.lr > 0, "pretrain.lr", t.lr, "must be > 0")
    _require(t.temperature > 0, "pretrain.temperature", t.temperature, "must be > 0")
    _require(0 <= t.key_momentum < 1, "pretrain.key_momentum", t.key_momentum, "must be in [0, 1)")
    _require(t.max_steps is None or t.max_steps >= 1, "pretrain.max_steps", t.max_steps, "null or >= 1")
    _require(t.precision in ("fp32", "bf16"), "pretrain.precision", t.precision, "fp32 or bf16")
    _require(not (d.lazy and t.data_on_device), "pretrain.data_on_device", True, "lazy images stay on the host")
    _require(t.diagnostics_every >= 0, "pretrain.diagnostics_every", t.diagnostics_every, "must be >= 0 (0: off)")
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
    _require(pr.train_set in ("balanced", "lt", "kshot"), "probe.train_set", pr.train_set, "balanced, lt or kshot")
    _require(pr.shots >= 1, "probe.shots", pr.shots, "must be >= 1")
    _require(pr.splits >= 1, "probe.splits", pr.splits, "must be >= 1")
    _require(pr.splits == 1 or pr.train_set == "kshot", "probe.splits", pr.splits, "several splits need kshot")
    _require(pr.groups in ("thirds", "shots"), "probe.groups", pr.groups, "thirds or shots")
    lo_hi = pr.shot_thresholds
    _require(len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1], "probe.shot_thresholds", lo_hi, "[few_below, many_above]")
    _require(bool(pr.c_grid) and min(pr.c_grid) > 0, "probe.c_grid", pr.c_grid, "a non-empty list of C > 0")
    _require(pr.knn_k >= 1, "probe.knn_k", pr.knn_k, "must be >= 1")
    _require(pr.knn_temperature > 0, "probe.knn_temperature", pr.knn_temperature, "must be > 0")
