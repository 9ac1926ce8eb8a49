"""Value checks of a parsed study config against the registries (methods, sources, backbones, memory).

Every stage builds and validates the whole `StudyConfig`, so a bad value anywhere
stops any stage before it writes or trains, with a one-line `ConfigError` that
names the key, the bad value and what is allowed.
"""

from __future__ import annotations

from typing import Any

from duel.config import (
    BACKBONE_NAMES,
    BATCH_MODES,
    CROPPING_MODES,
    GIVEN_PROFILES,
    HEAD_NAMES,
    INTERPOLATIONS,
    MEMORY_INITS,
    PROFILES,
    PROJECTION_HEADS,
    SOURCE_NAMES,
    TRAIN_SETS,
    PrepareConfig,
    PretrainConfig,
    RuntimeConfig,
    StudyConfig,
    build_config,
    for_method,
    to_dict,
)
from duel.errors import ConfigError
from duel.eval.groups import GROUP_MODES
from duel.method_params import METHOD_PARAMS, parse_method_params

# The keys whose values (a list's items) come from a fixed set; the params reference lists them.
CHOICES: dict[str, tuple[str, ...]] = {
    "sweep.methods": tuple(METHOD_PARAMS),
    "sweep.train_sets": TRAIN_SETS,
    "data.source": SOURCE_NAMES,
    "prepare.profile": PROFILES,
    "prepare.head_order": ("index", "shuffled"),
    "prepare.match_profile": ("exp", "step", "dominant"),
    "pretrain.backbone": BACKBONE_NAMES,
    "pretrain.lr_scaling": ("none", "linear"),
    "pretrain.head": PROJECTION_HEADS,
    "pretrain.memory.batch_mode": BATCH_MODES,
    "pretrain.memory.init": MEMORY_INITS,
    "pretrain.augment.cropping_mode": CROPPING_MODES,
    "pretrain.augment.crop_interpolation": INTERPOLATIONS,
    "probe.train_set": ("balanced", "lt", "kshot"),
    "probe.groups": GROUP_MODES,
    "probe.heads": HEAD_NAMES,
    "runtime.precision": ("fp32", "bf16"),
}


def parse_config(values: dict[str, Any] | None) -> StudyConfig:
    """Build and validate the study config from the parsed params.yaml mapping."""
    cfg = build_config(StudyConfig, values)
    validate(cfg)
    return cfg


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
    s, d, p, t, pr, rt = cfg.sweep, cfg.data, cfg.prepare, cfg.pretrain, cfg.probe, cfg.runtime
    for name in s.methods:
        _require(name in METHOD_PARAMS, "sweep.methods", name, f"known methods: {', '.join(METHOD_PARAMS)}")
    _require(all(bool(axis) for axis in to_dict(s).values()), "sweep", to_dict(s), "every axis needs a value")
    for name in s.train_sets:
        _require(name in TRAIN_SETS, "sweep.train_sets", name, "lt (the LT subset) or balanced (same size, balanced)")
    for draw in s.draws:
        _require(draw >= 0, "sweep.draws", draw, "LT draws are numbered from 0")
    for key, axis in to_dict(s).items():
        _require(len(set(axis)) == len(axis), f"sweep.{key}", axis, "distinct values (each names its own runs)")
    _require(d.source in SOURCE_NAMES, "data.source", d.source, f"known sources: {', '.join(SOURCE_NAMES)}")
    _require(0 < d.test_fraction < 1, "data.test_fraction", d.test_fraction, "must be in (0, 1)")
    _require(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction, "must be in (0, 1)")
    _require(d.image_size is None or d.image_size >= 8, "data.image_size", d.image_size, "null or >= 8")
    _require(
        d.source == "digits" or rt.data_root is not None,
        "runtime.data_root",
        rt.data_root,
        f"source {d.source} needs a folder",
    )
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
    for name in t.recipes:
        _require(name in METHOD_PARAMS, "pretrain.recipes", name, f"known methods: {', '.join(METHOD_PARAMS)}")
    validate_pretrain(t, rt, "pretrain")
    for name in dict.fromkeys([*s.methods, *t.method_kwargs]):  # every method that may run, defaults included
        resolved = for_method(t, name)
        if name in t.recipes:
            validate_pretrain(resolved, rt, f"pretrain.recipes.{name}")
        parse_method_params(METHOD_PARAMS[name], t.method_kwargs.get(name), f"pretrain.method_kwargs.{name}", resolved)
    _require(pr.train_set in ("balanced", "lt", "kshot"), "probe.train_set", pr.train_set, "balanced, lt or kshot")
    _require(pr.shots >= 1, "probe.shots", pr.shots, "must be >= 1")
    _require(pr.splits >= 1, "probe.splits", pr.splits, "must be >= 1")
    _require(pr.splits == 1 or pr.train_set == "kshot", "probe.splits", pr.splits, "several splits need kshot")
    _require(pr.groups in GROUP_MODES, "probe.groups", pr.groups, "thirds, shots or head")
    lo_hi = pr.shot_thresholds
    _require(len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1], "probe.shot_thresholds", lo_hi, "[few_below, many_above]")
    _require(bool(pr.c_grid) and min(pr.c_grid) > 0, "probe.c_grid", pr.c_grid, "a non-empty list of C > 0")
    _require(pr.knn_k >= 1, "probe.knn_k", pr.knn_k, "must be >= 1")
    _require(pr.knn_temperature > 0, "probe.knn_temperature", pr.knn_temperature, "must be > 0")
    _require(rt.precision in ("fp32", "bf16"), "runtime.precision", rt.precision, "fp32 or bf16")
    _require(not (d.lazy and rt.data_on_device), "runtime.data_on_device", True, "lazy images stay on the host")
    _require(rt.num_workers >= 0, "runtime.num_workers", rt.num_workers, "must be >= 0")
    _require(rt.threads is None or rt.threads >= 1, "runtime.threads", rt.threads, "must be >= 1 or null")
    cuda_only = f"CUDA graphs need runtime.device cuda, not {rt.device}; set it false"
    _require(not (rt.cuda_graphs and not rt.device.startswith("cuda")), "runtime.cuda_graphs", True, cuda_only)
    _require(rt.log_every >= 1, "runtime.log_every", rt.log_every, "must be >= 1")
    cpu_only = "CPU runs only: GPU kernels are not pinned (docs/reproducibility.md); set it false"
    _require(not (rt.portable and rt.device != "cpu"), "runtime.portable", rt.portable, cpu_only)
    for head in pr.heads:
        _require(head in HEAD_NAMES, "probe.heads", head, f"known heads: {', '.join(HEAD_NAMES)}")
    _require(pr.head_epochs >= 1, "probe.head_epochs", pr.head_epochs, "must be >= 1")
    taus = pr.posthoc_taus
    _require(bool(taus) and min(taus) >= 0, "probe.posthoc_taus", taus, "a non-empty list of tau >= 0 (0: none)")


def validate_pretrain(t: PretrainConfig, rt: RuntimeConfig, where: str) -> None:
    """The values of a pretrain section: the study's (`where` "pretrain") or one method's with its recipe
    applied (`where` "pretrain.recipes.<method>": the study's values passed already, so a bad value is
    the recipe's)."""
    m = t.memory
    backbones = ", ".join(BACKBONE_NAMES)
    _require(t.backbone in BACKBONE_NAMES, f"{where}.backbone", t.backbone, f"known backbones: {backbones}")
    _require(t.epochs > 0, f"{where}.epochs", t.epochs, "must be > 0")
    _require(t.batch_size >= 2, f"{where}.batch_size", t.batch_size, "must be >= 2")
    _require(t.lr > 0, f"{where}.lr", t.lr, "must be > 0")
    _require(t.temperature > 0, f"{where}.temperature", t.temperature, "must be > 0")
    _require(0 <= t.key_momentum < 1, f"{where}.key_momentum", t.key_momentum, "must be in [0, 1)")
    _require(t.max_steps is None or t.max_steps >= 1, f"{where}.max_steps", t.max_steps, "null or >= 1")
    _require(t.diagnostics_every >= 0, f"{where}.diagnostics_every", t.diagnostics_every, "must be >= 0 (0: off)")
    o = t.online_eval
    _require(o.every >= 0, f"{where}.online_eval.every", o.every, "must be >= 0 (0: off)")
    _require(o.bank_size >= 1, f"{where}.online_eval.bank_size", o.bank_size, "must be >= 1")
    for name in t.method_kwargs:
        _require(name in METHOD_PARAMS, f"{where}.method_kwargs", name, f"known methods: {', '.join(METHOD_PARAMS)}")
    _require(t.checkpoint_every >= 1, f"{where}.checkpoint_every", t.checkpoint_every, "must be >= 1")
    _require(t.nproc_per_node >= 1, f"{where}.nproc_per_node", t.nproc_per_node, "must be >= 1")
    _require(t.lr_scaling in ("none", "linear"), f"{where}.lr_scaling", t.lr_scaling, "none or linear")
    _require(
        not t.sync_batchnorm or rt.device.startswith("cuda"),
        f"{where}.sync_batchnorm",
        t.sync_batchnorm,
        f"torch's SyncBatchNorm runs on CUDA only, not runtime.device={rt.device}; set it false",
    )
    _require(
        m.size >= t.batch_size,
        f"{where}.memory.size",
        m.size,
        f"the memory must hold at least one batch (pretrain.batch_size={t.batch_size})",
    )
    _require(m.batch_mode in BATCH_MODES, f"{where}.memory.batch_mode", m.batch_mode, ", ".join(BATCH_MODES))
    _require(m.temperature > 0, f"{where}.memory.temperature", m.temperature, "must be > 0")
    a = t.augment
    _require(0 < a.crop_min_scale <= 1, f"{where}.augment.crop_min_scale", a.crop_min_scale, "must be in (0, 1]")
    _require(a.cropping_mode in CROPPING_MODES, f"{where}.augment.cropping_mode", a.cropping_mode, "slice or resample")
    _require(t.warmup_epochs >= 0, f"{where}.warmup_epochs", t.warmup_epochs, "must be >= 0 (0: none)")
    _require(t.warmup_epochs < t.epochs, f"{where}.warmup_epochs", t.warmup_epochs, f"must be < epochs ({t.epochs})")
    _require(t.head in PROJECTION_HEADS, f"{where}.head", t.head, ", ".join(PROJECTION_HEADS))
    _require(m.init in MEMORY_INITS, f"{where}.memory.init", m.init, ", ".join(MEMORY_INITS))
    snapshots = m.snapshot_epochs
    _require(
        all(e >= 1 for e in snapshots) and snapshots == sorted(set(snapshots)),
        f"{where}.memory.snapshot_epochs",
        snapshots,
        "increasing epochs counted from 1; [] for none",
    )
    interpolation = a.crop_interpolation
    _require(interpolation in INTERPOLATIONS, f"{where}.augment.crop_interpolation", interpolation, "bilinear, bicubic")
