"""The one config system: typed dataclasses mirroring `params.yaml`, and their parsing.

Parsing checks types and unknown keys; `duel.validation` checks values against
the registries. Values are never silently rewritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from duel.errors import ConfigError

T = TypeVar("T")

PROFILES = ("exp", "step", "dominant", "balanced", "balanced_matched", "natural", "file")
# Profiles whose imbalance value only labels the setting: the LT set is given, not drawn.
GIVEN_PROFILES = ("natural", "file")
TRAIN_SETS = ("lt", "balanced")  # sweep.train_sets: D_i and D_b
CROPPING_MODES = ("slice", "resample")  # pretrain.augment.cropping_mode: kornia's RandomResizedCrop
INTERPOLATIONS = ("bilinear", "bicubic")  # pretrain.augment.crop_interpolation
PROJECTION_HEADS = ("mlp", "mlp_bn", "mlp3_bn", "linear")  # pretrain.head (duel.methods.base.projection_head)
MEMORY_INITS = ("empty", "random")  # pretrain.memory.init
BATCH_MODES = ("greedy", "topk")  # pretrain.memory.batch_mode (duel.memory.ActiveMemory)
# The registries' names, so params are checked without importing torch; tests/test_startup.py holds each
# equal to its registry.
SOURCE_NAMES = ("digits", "cifar10", "cifar100", "stl10", "imagefolder")  # duel.data.sources.SOURCES
BACKBONE_NAMES = ("small_cnn", "resnet18_cifar", "resnet18", "resnet50")  # duel.backbones.BACKBONES
HEAD_NAMES = ("ce", "focal", "cb", "ldam", "ldam_drw", "logit_adjusted")  # duel.eval.heads.HEADS
# pretrain keys a per-method recipe may not set: they are per method already, or shape the whole study.
NOT_IN_RECIPES = ("recipes", "method_kwargs", "backbone", "epochs", "max_steps", "nproc_per_node", "online_eval")


@dataclass(frozen=True)
class SweepConfig:
    """The axes dvc.yaml expands with `matrix`."""

    methods: list[str] = field(default_factory=lambda: ["moco", "dmoco", "simclr", "dsimclr"])  # registered methods
    # r >= 1 for exp / step / balanced / balanced_matched, rho_max in (0, 1) for dominant.
    imbalance: list[float] = field(default_factory=lambda: [1, 10, 100])
    # What each encoder pretrains on: lt, the long-tailed subset (D_i), or balanced, a class-balanced
    # subset of the same size from the same pool (D_b): the comparison that motivates the field.
    train_sets: list[str] = field(default_factory=lambda: ["lt"])
    # Random draws of the LT subset (and of the class order when head_order is shuffled); the
    # validation split and the balanced pool stay the same across draws.
    draws: list[int] = field(default_factory=lambda: [0])
    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds (weights, augmentation, data order)


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "duel"  # the MLflow experiment every stage logs its run to


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"  # where the images live on this machine: runtime.data_root
    unlabeled: bool = False  # stl10: add the 100k unlabeled images to pretraining
    image_size: int | None = None  # resize on load (shorter side + centre crop for files); None keeps it
    lazy: bool = False  # imagefolder: decode images on access (large images) instead of holding them
    train_list: str | None = None  # imagefolder: `relative/path label` files (ImageNet-LT), relative to root
    val_list: str | None = None  # an official validation list replaces the carved validation split
    test_list: str | None = None  # an official test list (ImageNet-LT), else root/test/ or the carved split
    test_fraction: float = 0.25  # only for sources without an official test split
    val_fraction: float = 0.15  # carved per class from the training split before the LT draw
    split_seed: int = 0  # of the carved test and validation splits


@dataclass(frozen=True)
class PrepareConfig:
    profile: str = "exp"  # how the long-tailed set is drawn (docs: datasets and profiles)
    n_max: int = 100  # size of the largest (head) class
    head_order: str = "index"  # index | shuffled
    seed: int = 0  # of draw 0; draw k > 0 draws with [seed, k]
    match_profile: str = "exp"  # the LT profile whose total size balanced_matched copies
    # profile `file`: a .npy of indices into the source's training split (SDCLR/BCL split files);
    # `{imbalance}` and `{draw}` in the path name the setting, e.g. splits/r{imbalance}/split{draw}_D_i.npy.
    index_file: str | None = None
    val_index_file: str | None = None  # a .npy validation split (e.g. SDCLR's valIdxList.npy)


@dataclass(frozen=True)
class MemoryConfig:
    size: int = 256  # the replacement policy is the method's (moco: fifo, dmoco: duel, rmoco: random)
    temperature: float = 0.1  # tau_d of the duplication probability
    batch_mode: str = "greedy"  # greedy | topk
    # empty: the first steps fill it (no negatives at step 0); random: K random unit vectors, as
    # facebookresearch/moco's builder and CIFAR-10 demo start their queue (fifo and random policies only:
    # random keys are the least duplicated, so a duel memory would keep them)
    init: str = "empty"
    # epochs (from 1, increasing) after which rank 0 records the memory's keys, its last K pushes and the
    # current features of a fixed subset of the training images (memory_snapshots.npz, the report's
    # memory_snapshots.png: the paper's Figure 5); []: off. One past the run's last epoch never comes (a
    # study shortened for a smoke test keeps the list).
    snapshot_epochs: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class AugmentConfig:
    crop_min_scale: float = 0.5  # random resized crop: the smallest area kept
    crop_interpolation: str = "bilinear"  # of the crop's resize: bilinear | bicubic (SDCLR, BCL: bicubic)
    rotation: float = 15.0  # degrees
    jitter: float = 0.4  # brightness / contrast (and saturation for RGB)
    hflip: bool = False  # random horizontal flips (off for digits: not mirror-symmetric)
    grayscale_p: float = 0.2  # RGB only
    # kornia's RandomResizedCrop: "slice" crops and resizes image by image (kernels grow with the batch),
    # "resample" warps the whole batch at once (a fixed number of kernels, no host read: the GPU profiles)
    cropping_mode: str = "slice"


@dataclass(frozen=True)
class OnlineEvalConfig:
    """Accuracy over training (the DUEL paper's Figure 4 form; duel.eval.online): the probe stage's kNN
    (probe.knn_k, knn_temperature, groups) of the current backbone, a seeded bank of the probe pool voting
    for the validation split (never the test split). It changes no training byte."""

    every: int = 0  # epochs between measurements, and after the last; 0: off
    bank_size: int = 1000  # labelled images of the balanced probe pool (all when it holds fewer), drawn per study


@dataclass(frozen=True)
class PretrainConfig:
    backbone: str = "small_cnn"  # the encoder (duel/backbones.py)
    epochs: int = 20  # passes over the pretraining set
    batch_size: int = 64  # images per step (per process under data-parallel training)
    lr: float = 0.06  # SGD learning rate: linear warm-up, then a cosine to 0 over the remaining steps
    # epochs of the linear warm-up from 0 (per step: lr * step / warm-up steps); the cosine then runs over
    # the steps after it, as SDCLR train_simCLR.py `cosine_annealing` (10 epochs in SDCLR, BCL and GH)
    warmup_epochs: int = 0
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # SGD weight decay
    temperature: float = 0.2  # of the contrastive loss (InfoNCE, NT-Xent)
    proj_dim: int = 64  # output of the projection head: the dimension of the memory's keys
    # mlp: Linear-ReLU-Linear; mlp_bn: Linear-BN-ReLU-Linear(no bias)-BN (BCL models/simclr.py); mlp3_bn: a
    # third such layer (SDCLR models/resnet_prune_multibn.py); linear: one Linear (MoCo's CIFAR-10 demo)
    head: str = "mlp"
    key_momentum: float = 0.99  # EMA of MoCo's key encoder
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Hyper-parameters of individual methods, by method name (e.g. sdclr: {prune_ratio: 0.9}); each
    # method declares and checks its own (`SSLMethod.Params`); a method not named here takes its defaults.
    method_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A method's own values of this section's keys (e.g. bcl: {weight_decay: 5e-4}), applied over the
    # section for that method's runs only (`for_method`): each method's reference recipe in one study.
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_steps: int | None = None  # stop (and end the cosine schedule) after this many steps
    checkpoint_every: int = 5  # epochs
    # Data-parallel pretraining (duel.distributed): the stage launches itself through torch's elastic
    # launcher with this many processes (gloo on CPU, nccl on CUDA); batch_size is per process, so the
    # global batch is batch_size x processes.
    nproc_per_node: int = 1
    lr_scaling: str = "none"  # none, or linear: lr x processes
    sync_batchnorm: bool = False  # BatchNorm statistics over the global batch (torch's SyncBatchNorm, CUDA only)
    diagnostics_every: int = 1  # epochs between memory diagnostics (duel.diagnostics; O(K^2 d) each); 0: off
    online_eval: OnlineEvalConfig = field(default_factory=OnlineEvalConfig)


@dataclass(frozen=True)
class ProbeConfig:
    train_set: str = "balanced"  # balanced | lt | kshot
    shots: int = 10  # kshot: images per class, drawn from the balanced pool
    splits: int = 1  # kshot: random draws, reported as mean +- std
    split_seed: int = 0  # kshot: seed of the splits, [split_seed, i] for split i
    groups: str = "thirds"  # thirds (of the classes by LT count) | shots (ImageNet-LT thresholds) | head
    shot_thresholds: list[int] = field(default_factory=lambda: [20, 100])  # few < 20 <= medium <= 100 < many
    # inverse L2 strengths of the linear probe's logistic regression, one chosen on validation
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    knn_k: int = 200  # neighbours of the kNN classifier (cosine similarity)
    knn_temperature: float = 0.1  # kNN votes weighted by exp(similarity / temperature)
    # LT-aware linear heads (duel.eval.heads) trained on the features of the long-tailed training set,
    # their hyper-parameter and post-hoc logit-adjustment tau chosen on validation: ce | focal | cb |
    # ldam | ldam_drw (LDAM with deferred re-weighting from half-way) | logit_adjusted
    heads: list[str] = field(default_factory=list)
    head_epochs: int = 100  # full-batch epochs of each LT-aware head
    posthoc_taus: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5])  # 0: no adjustment
    batch_size: int = 256  # of feature extraction


@dataclass(frozen=True)
class RuntimeConfig:
    """Machine settings. No stage hashes this section and checkpoints do not record it, so a study
    moves to another machine or data folder, or resumes on another device, without re-running."""

    data_root: str | None = None  # dataset folder for sources that live on disk
    download: bool = False  # torchvision sources: fetch into data_root when missing (needs internet)
    # torchvision sources: check each file's md5 against the official archive; false accepts a copy you
    # built yourself (the manifest's source fingerprint still ties every result to the exact images)
    verify_checksums: bool = True
    device: str = "cpu"  # training and feature extraction
    num_workers: int = 0  # DataLoader workers decoding lazy image folders
    precision: str = "fp32"  # fp32 | bf16 (autocast; the memory and its scores stay fp32)
    channels_last: bool = False  # channels-last memory format (faster convolutions on GPUs)
    compile: bool = False  # torch.compile each step's loss module (backbones, heads, loss) and the backbones
    # CUDA: replay greedy DUEL's push as one captured CUDA graph instead of about 20 kernel launches per key
    cuda_graphs: bool = False
    data_on_device: bool | None = None  # hold the uint8 training set on the device; null: when CUDA and <= 96 px
    cache_dir: str | None = "~/.cache/duel"  # decoded sources the stages share (duel/data/cache.py); null: off
    threads: int | None = None  # CPU threads of torch's kernels; null: torch's default (one per core)
    # the same bytes on any x86-64 CPU: baseline kernels (no AVX) and `threads` (1 when null), set before
    # torch is imported (pipeline/portable.py); slower, see docs/reproducibility.md
    portable: bool = False
    # steps between host reads of the step metrics (loss, memory entropy): each read waits for the
    # device, so a GPU profile reads every 50 steps; every step is still logged, and an epoch's end
    # reads all that is left
    log_every: int = 1


@dataclass(frozen=True)
class ReportConfig:
    tsne_perplexity: float = 30.0  # of the t-SNE maps
    tsne_max_points: int = 2000  # points per t-SNE map (a seeded random subset of more)


@dataclass(frozen=True)
class StudyConfig:
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


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
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, "expected a mapping")
        _, inner = typing.get_args(hint)
        return {k: v if inner is Any else _convert(v, inner, f"{key}.{k}") for k, v in value.items()}
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


def build_config(cls: type[T], values: dict[str, Any] | None, prefix: str = "") -> T:
    """A config dataclass from a mapping: types checked, unknown keys refused, defaults filled in."""
    return _build(cls, values or {}, prefix)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override`'s values, nested mappings merged key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def for_method(cfg: PretrainConfig, method: str) -> PretrainConfig:
    """The pretrain section as `method`'s runs use it: `cfg.recipes[method]` applied over it, and no
    recipes left (a run records the values it trained with, not the other methods' recipes)."""
    recipe = cfg.recipes.get(method, {})
    key = f"pretrain.recipes.{method}"
    refused = sorted(set(recipe) & set(NOT_IN_RECIPES))
    if refused:
        raise ConfigError(f"{key}.{refused[0]}", recipe[refused[0]], "not per method; set it in pretrain itself")
    build_config(PretrainConfig, recipe, key)  # types and unknown keys, named where they are written
    return build_config(PretrainConfig, merge(to_dict(cfg), recipe) | {"recipes": {}}, "pretrain")
