"""The fidelity page of the documentation, generated from the code and the profiles so it cannot drift.

For each method, each recipe component its reference implementation sets: the reference's value and
where it is written (repository, file, flag or function), this project's default, and the values of the
two CIFAR-10-LT profiles (`cifar10_lt_common`: every method under one recipe; `cifar10_lt_reference`:
each method under its own). Our values are read from the config dataclasses, the method registry and
the profile files; a remaining difference from the reference profile must carry its reason (a test
fails otherwise). Then the numbers the references publish, with the command that would reproduce each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from duel.config import PretrainConfig, for_method
from duel.methods import METHODS
from duel.validation import parse_config

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"common": "cifar10_lt_common", "reference": "cifar10_lt_reference"}
BUDGET = "200 epochs for every method in both profiles (GPU budget); the rest of the recipe is the reference's"


@dataclass(frozen=True)
class Component:
    what: str
    reference: Any  # in this project's terms (None: the reference sets no value)
    source: str  # file and flag or function in the reference repository
    key: str | None = None  # pretrain key, `method_kwargs.<method>.<field>` or `class.<attribute>`; None: no option
    ours: str = ""  # for a component without a key: what this project does
    reason: str = ""  # why the reference profile still differs from the reference


def simclr_recipe(source: dict[str, str]) -> list[Component]:
    """SDCLR's SimCLR recipe, which BCL and GH reuse with the changes in `source`'s files."""
    return [
        Component("backbone", "resnet18_cifar", source["backbone"], "backbone"),
        Component("epochs", source["epochs_value"], source["epochs"], "epochs", reason=BUDGET),
        Component("batch size", 512, source["batch"], "batch_size"),
        Component("learning rate (SGD)", 0.5, source["lr"], "lr"),
        Component("SGD momentum", 0.9, source["optimizer"], "momentum"),
        Component("weight decay", source["wd_value"], source["wd"], "weight_decay"),
        Component("warm-up epochs (linear from 0, per step)", 10, source["warmup"], "warmup_epochs"),
        Component("temperature", 0.2, source["temperature"], "temperature"),
        Component("projection head", source["head_value"], source["head"], "head"),
        Component("projection output", 128, source["proj"], "proj_dim"),
        Component("crop scale, smallest", 0.1, source["crop"], "augment.crop_min_scale"),
        Component("crop interpolation", source["interpolation_value"], source["crop"], "augment.crop_interpolation"),
        Component("colour jitter (p 0.8)", 0.4, source["crop"], "augment.jitter"),
        Component("grayscale p", 0.2, source["crop"], "augment.grayscale_p"),
        Component("horizontal flip", True, source["crop"], "augment.hflip"),
        Component("rotation", 0.0, source["crop"], "augment.rotation"),
        Component(
            "input normalisation",
            "ImageNet mean / std",
            source["backbone"],
            ours="the training set's channel mean / std",
            reason="a fixed affine map of the input, absorbed by the first convolution and BatchNorm",
        ),
    ]


SDCLR_FILES = {
    "backbone": "models/resnet.py (imagenet=False: 3x3 stem, no max-pool)",
    "epochs_value": 2000,
    "epochs": "cmds/shell_scrips/cifar-10-LT.sh pretrain_epochs",
    "batch": "cifar-10-LT.sh batch_size",
    "lr": "cifar-10-LT.sh pretrain_lr",
    "optimizer": "train_simCLR.py torch.optim.SGD",
    "wd_value": 1e-4,
    "wd": "train_simCLR.py SGD(weight_decay=1e-4)",
    "warmup": "train_simCLR.py warm_up_iters, cosine_annealing",
    "temperature": "cifar-10-LT.sh pretrain_temp",
    "head_value": "mlp_bn",
    "head": "models/utils.py proj_head",
    "proj": "train_simCLR.py --output_ch 128",
    "crop": "train_simCLR.py tfs_train (resizeLower 0.1, interpolation=3)",
    "interpolation_value": "bicubic",
}
LR_FLOOR = Component(
    "learning-rate floor",
    "1e-6",
    "train_simCLR.py cosine_annealing(..., 1e-6 / args.lr)",
    ours="0",
    reason="2e-6 of the base rate",
)
BCL_FILES = SDCLR_FILES | {
    "backbone": "models/resnet.py",
    "epochs": "README (train.py --epochs 2000)",
    "batch": "README --batch_size 512",
    "lr": "README --lr 0.5",
    "optimizer": "train.py torch.optim.SGD",
    "wd_value": 5e-4,
    "wd": "README BCL_I --weight_decay 5e-4",
    "warmup": "train.py, utils.py cosine_annealing",
    "temperature": "README --temperature 0.2",
    "head": "models/simclr.py proj_head",
    "proj": "models/simclr.py proj_head(512, 128)",
    "crop": "data/memoboosted_cifar100.py, data/augmentations.py",
}
GH_FILES = SDCLR_FILES | {
    "backbone": "resnet.py (3x3 stem, no max-pool)",
    "epochs_value": 1000,
    "epochs": "train_cifar.py --epochs 1000",
    "batch": "train_cifar.py --batch_size 512",
    "lr": "train_cifar.py --lr 0.5",
    "optimizer": "train_cifar.py torch.optim.SGD",
    "wd_value": 5e-4,
    "wd": "train_cifar.py --weight_decay 5e-4",
    "warmup": "utils.py lr_scheduler_warm",
    "temperature": "train_cifar.py nt_xent(t=0.2)",
    "head": "models.py proj_head",
    "proj": "models.py proj_head(512, False, 128)",
    "crop": "utils.py cifar_strong_aug (RandomResizedCrop(32, scale=(0.1, 1)), bilinear)",
    "interpolation_value": "bilinear",
}
TS_FILES = SDCLR_FILES | {
    "backbone": "models/resnet.py resnet18(imagenet=False)",
    "epochs": "README --epochs 2000",
    "batch": "README --batch_size 512",
    "lr": "README --lr 0.5",
    "optimizer": "train_simCLR.py torch.optim.SGD (README --optimizer sgd)",
    "wd": "train_simCLR.py SGD(weight_decay=1e-4)",
    "warmup": "train_simCLR.py warm_up_iters = 10 * len(train_loader), cosine_annealing",
    "head": "train_simCLR.py proj_head (SDCLR's models/utils.py)",
    "proj": "README --output_ch 128",
    "crop": "train_simCLR.py tfs_train (resizeLower 0.1, interpolation=3)",
}
MOCO_DEMO = "colab/moco_cifar10_demo.ipynb"


def moco_recipe(memory_init: Component) -> list[Component]:
    return [
        Component("backbone", "resnet18_cifar", f"{MOCO_DEMO} ModelBase (3x3 stem, no max-pool)", "backbone"),
        Component("epochs", 200, f"{MOCO_DEMO} args.epochs", "epochs"),
        Component("batch size", 512, f"{MOCO_DEMO} --batch-size", "batch_size"),
        Component("learning rate (SGD)", 0.06, f"{MOCO_DEMO} --lr", "lr"),
        Component("SGD momentum", 0.9, f"{MOCO_DEMO} torch.optim.SGD", "momentum"),
        Component("weight decay", 5e-4, f"{MOCO_DEMO} --wd", "weight_decay"),
        Component("warm-up epochs", 0, f"{MOCO_DEMO} adjust_learning_rate", "warmup_epochs"),
        Component(
            "learning-rate schedule",
            "cosine, per epoch",
            f"{MOCO_DEMO} adjust_learning_rate",
            ours="cosine, per step",
            reason="the same curve sampled at every update instead of every epoch",
        ),
        Component("temperature", 0.1, f"{MOCO_DEMO} --moco-t", "temperature"),
        Component("key-encoder momentum", 0.99, f"{MOCO_DEMO} --moco-m", "key_momentum"),
        Component("queue size K", 4096, f"{MOCO_DEMO} --moco-k", "memory.size"),
        memory_init,
        Component("projection head", "linear", f"{MOCO_DEMO} ModelBase (the ResNet's fc)", "head"),
        Component("projection output", 128, f"{MOCO_DEMO} --moco-dim", "proj_dim"),
        Component("symmetric loss", False, f"{MOCO_DEMO} args.symmetric", "method_kwargs.{m}.symmetric"),
        Component("shuffle-BN groups", 8, f"{MOCO_DEMO} --bn-splits", "method_kwargs.{m}.bn_splits"),
        Component("crop scale, smallest", 0.08, f"{MOCO_DEMO} RandomResizedCrop(32)", "augment.crop_min_scale"),
        Component("crop interpolation", "bilinear", f"{MOCO_DEMO} RandomResizedCrop(32)", "augment.crop_interpolation"),
        Component("colour jitter (p 0.8)", 0.4, f"{MOCO_DEMO} train_transform", "augment.jitter"),
        Component("grayscale p", 0.2, f"{MOCO_DEMO} train_transform", "augment.grayscale_p"),
        Component("horizontal flip", True, f"{MOCO_DEMO} train_transform", "augment.hflip"),
    ]


# method -> (reference repository, its components)
REFERENCES: dict[str, tuple[str, list[Component]]] = {
    "simclr": ("VITA-Group/SDCLR (SimCLR as SDCLR runs it)", [*simclr_recipe(SDCLR_FILES), LR_FLOOR]),
    "simclr_ts": (
        "Annusha/temperature_schedules (SimCLR with a cosine temperature schedule)",
        [
            *(c for c in simclr_recipe(TS_FILES) if c.key != "temperature"),  # its loss follows the schedule
            LR_FLOOR,
            Component("temperature, lowest", 0.1, "README --temperature_min 0.1", "method_kwargs.simclr_ts.tau_min"),
            Component("temperature, highest", 1.0, "README --temperature_max 1.0", "method_kwargs.simclr_ts.tau_max"),
            Component(
                "epochs from highest to lowest",
                200,
                "README --t_max 200",
                "method_kwargs.simclr_ts.t_max",
                reason="the reference's 2000 epochs hold five cycles of 400; a 200-epoch run sees the first descent "
                "(1.0 to 0.1); t_max 20 would fit five cycles",
            ),
            Component(
                "temperature schedule",
                "cosine of the 1-based epoch, constant within an epoch, no restart",
                "train_simCLR.py train (--adj_tau cos)",
                ours="the same at epoch index + 1, set in on_epoch_start",
            ),
        ],
    ),
    "sdclr": (
        "VITA-Group/SDCLR",
        [
            *(
                c
                for c in simclr_recipe(SDCLR_FILES)
                if c.key != "head"  # the pruned model's head is the dual-BN one below
            ),
            LR_FLOOR,
            Component("projection head", "mlp3_bn", "models/resnet_prune_multibn.py proj_head", "head"),
            Component(
                "prune ratio",
                0.9,
                "README, cmds/execute_hist/camera_ready.sh --prune_percent",
                "method_kwargs.sdclr.prune_ratio",
            ),
            Component(
                "re-pruning",
                "every epoch",
                "prune/prune_simCLR.py train_prune",
                ours="every epoch (on_epoch_start)",
            ),
            Component(
                "pruned branch's BatchNorm",
                "its own (dual BN)",
                "models/resnet_prune_multibn.py batch_norm_multiple",
                ours="its own, in backbone and head (pruned_norms)",
            ),
            Component(
                "backward passes",
                "two: dense with the pruned output detached, then pruned with the dense output detached",
                "prune/prune_simCLR.py train_prune",
                ours="one through both branches: the same gradient (their sum)",
                reason="the same gradient; the pruned branch's statistics update once a step, not twice",
            ),
        ],
    ),
    "bcl": (
        "MediaBrain-SJTU/BCL (BCL-I)",
        [
            *simclr_recipe(BCL_FILES),
            Component("loss moving average", 0.97, "train.py --momentum_loss_beta", "method_kwargs.bcl.beta"),
            Component("RandAugment operations", 1, "README --rand_k 1 (BCL-I)", "method_kwargs.bcl.ops"),
            Component("magnitude at weight 1", 30.0, "train.py --rand_strength", "method_kwargs.bcl.strength"),
            Component(
                "magnitude at weight 0, one operation",
                10.0,
                "data/memoboosted_cifar100.py min_strength",
                "method_kwargs.bcl.min_strength_one_op",
            ),
            Component(
                "magnitude at weight 0, several (BCL-D)",
                5.0,
                "data/memoboosted_cifar100.py min_strength",
                "method_kwargs.bcl.min_strength_multi_op",
            ),
            Component("drops the last, smaller batch", False, "train.py DataLoader (no drop_last)", "class.drop_last"),
            Component(
                "intensity operations",
                "PIL on uint8 images",
                "data/randaug.py",
                ours="torchvision's tensor operations on float images",
                reason="posterize, solarize round otherwise (4-bit posterize of 255: 240/255 there, 15/16 here)",
            ),
            Component(
                "BCL-D's base method",
                "SDCLR (train_sdclr.py)",
                "README BCL_D",
                ours="SimCLR (ops >= 2 gives BCL-D's augmentation)",
                reason="BCL-D on SDCLR is not a registered method",
            ),
        ],
    ),
    "gh": (
        "MediaBrain-SJTU/Geometric-Harmonization",
        [
            *simclr_recipe(GH_FILES),
            Component(
                "learning-rate schedule",
                "per epoch: cosine 0.5 -> 0.3 until GH starts, then 0.3 -> 1e-6",
                "utils.py lr_scheduler_warm",
                ours="per step: one cosine to 0 after the warm-up",
                reason="GH's two-stage schedule is not an option yet",
            ),
            Component("targets", 100, "README --target_dim 100 (CIFAR-100)", "method_kwargs.gh.num_targets"),
            Component(
                "GH off for (fraction of the run)", 0.5, "README --warm_up 500 of 1000", "method_kwargs.gh.warmup"
            ),
            Component("weight ramp (fraction)", 0.01, "train_cifar.py --GH_warm_up 10", "method_kwargs.gh.ramp"),
            Component(
                "prior re-estimated every (fraction)",
                0.02,
                "train_cifar.py (epoch + 1) % 20",
                "method_kwargs.gh.prior_every",
            ),
            Component("Sinkhorn epsilon", 0.05, "utils.py GHLoss(0.05, ...)", "method_kwargs.gh.sinkhorn_epsilon"),
            Component(
                "Sinkhorn iterations", 300, "train_cifar.py --sinkhorn_iter", "method_kwargs.gh.sinkhorn_iterations"
            ),
            Component("prediction temperature", 0.1, "utils.py GHLoss gamma", "method_kwargs.gh.temperature"),
            Component("score EMA momentum, warm-up", 0.9, "train_cifar.py beta = 0.9", "method_kwargs.gh.ema_warmup"),
            Component("score EMA momentum, after", 0.999, "train_cifar.py --beta 0.999", "method_kwargs.gh.ema"),
            Component(
                "the reference's epochs (EMA decay per phase)",
                1000,
                "train_cifar.py --epochs",
                "method_kwargs.gh.reference_epochs",
            ),
        ],
    ),
    "moco": (
        "facebookresearch/moco (branch colab-notebook)",
        moco_recipe(Component("queue at the start", "random", f"{MOCO_DEMO} ModelMoCo.__init__", "memory.init")),
    ),
    "dmoco": (
        "facebookresearch/moco for MoCo's recipe; DUEL (Choi et al., AAAI 2024) has no public code",
        [
            *moco_recipe(
                Component(
                    "queue at the start",
                    "random",
                    f"{MOCO_DEMO} ModelMoCo.__init__",
                    "memory.init",
                    reason="random keys are the least duplicated: a DUEL memory keeps them (996 of 1,024 after 16 x K "
                    "pushes), so it starts empty",
                )
            ),
            Component("replacement", "duel", "DUEL paper, Algorithm 1", "class.memory_policy"),
            Component(
                "duplication temperature tau_d",
                None,
                "DUEL paper (no value given)",
                "memory.temperature",
                reason="this project's choice",
            ),
        ],
    ),
}


@dataclass(frozen=True)
class Published:
    method: str
    setting: str
    measure: str
    value: str
    source: str
    command: str  # what reruns it here (on a GPU)
    note: str = ""  # where the rerun differs from the publication


REPRODUCE = "python -m pipeline use-profile cifar10_lt_reference"
PUBLISHED: list[Published] = [
    Published(
        "moco",
        "CIFAR-10 (balanced, 50,000 images), ResNet-18, 200 epochs, asymmetric",
        "kNN top-1 (k 200, t 0.1), test set",
        "82.6 (800 epochs: 88.7; symmetric, 200 epochs: 85.3)",
        f"facebookresearch/moco {MOCO_DEMO} (results table, log 82.58)",
        f"{REPRODUCE} --set sweep.methods=[moco] --set prepare.profile=exp --set sweep.imbalance=[1] "
        "--set sweep.draws=[0] --set prepare.index_file=null --set prepare.val_index_file=null",
        "45,000 training images: 5,000 are held out for validation",
    ),
    Published(
        "simclr, sdclr, bcl",
        "CIFAR-100-LT (BCL's cifar100_split1_D_i), ResNet-18, 2000 epochs",
        "linear probe top-1: full-shot / 100-shot / 50-shot",
        "SimCLR 50.7 / 46.3 / 42.4; SDCLR 55.0 / 49.7 / 45.6; BCL-I 55.7 / 50.1 / 45.8; BCL-D 58.7 / 52.6 / 48.7",
        "MediaBrain-SJTU/BCL README",
        f"{REPRODUCE} --set sweep.methods=[simclr,sdclr,bcl] --set data.source=cifar100 --set sweep.draws=[1] "
        "--set prepare.index_file=splits/cifar100/cifar100_split{draw}_D_i.npy "
        "--set prepare.val_index_file=splits/cifar100/cifar100_valIdxList.npy --set pretrain.epochs=2000",
        "BCL-D: add --set pretrain.method_kwargs.bcl.ops=2; it runs on SimCLR here, on SDCLR there",
    ),
    Published(
        "simclr, sdclr",
        "CIFAR-10-LT (SDCLR's split1-5_D_i, r = 100), ResNet-18, 2000 epochs",
        "linear probe top-1 (full-shot), many / medium / few, mean +- std over the 5 splits",
        "SimCLR 78.18 +- 4.18 / 76.23 +- 5.33 / 71.37 +- 7.07; SDCLR 86.44 +- 3.12 / 81.84 +- 4.78 / 76.23 +- 6.29",
        "the paper's Table 4 (arXiv:2106.02990) as a user transcribed it in the repository's thread "
        '"About the results in Table 4" (https://github.com/VITA-Group/SDCLR/issues/2), which the first author '
        "answered without correcting them: a transcription; a number read from the paper itself supersedes it",
        f"{REPRODUCE} --set sweep.methods=[simclr,sdclr] --set pretrain.epochs=2000",
        "groups: thirds of the classes by LT count (4 / 3 / 3), as SDCLR's exp_analyse.py",
    ),
    Published(
        "simclr_ts",
        "CIFAR-10-LT (SDCLR's split1_D_i), ResNet-18, 2000 epochs",
        "kNN top-1 (k 1); linear SVM on the LT set; linear SVM on a balanced subset of it",
        "61.21; 62.92; 71.49",
        "Annusha/temperature_schedules notebooks/simclr_tau_cifar10.ipynb (outputs of the released checkpoint)",
        f"{REPRODUCE} --set sweep.methods=[simclr_ts] --set sweep.draws=[1] --set pretrain.epochs=2000",
        "the probes here are kNN (k 200) and a logistic regression, not their SVMs",
    ),
    Published(
        "gh",
        "CIFAR-100-LT (exp r = 100, Cao et al.), ResNet-18, 1000 epochs",
        "linear probe top-1, many / medium / few",
        "in the paper (arXiv:2310.17622); not transcribed: the repository has no results table",
        "MediaBrain-SJTU/Geometric-Harmonization README (commands), paper",
        f"{REPRODUCE} --set sweep.methods=[gh] --set data.source=cifar100 --set prepare.profile=exp "
        "--set prepare.n_max=450 --set sweep.draws=[0] --set prepare.index_file=null "
        "--set prepare.val_index_file=null --set pretrain.epochs=1000",
        "head class 450 images, not 500: 50 per class are held out for validation",
    ),
]


def profile_config(name: str) -> PretrainConfig:
    return parse_config(yaml.safe_load((ROOT / "params" / f"{name}.yaml").read_text())).pretrain


def value(pre: PretrainConfig, method: str, key: str) -> Any:
    """The value `method`'s runs use for `key` under the pretrain section `pre`."""
    if key.startswith("class."):
        return getattr(METHODS[method], key.removeprefix("class."))
    resolved = for_method(pre, method)
    if key.startswith("method_kwargs."):
        owner, field = key.split(".")[1:]
        params = METHODS[owner].parse_params(
            resolved.method_kwargs.get(owner), f"pretrain.method_kwargs.{owner}", resolved
        )
        return getattr(params, field)
    out: Any = resolved
    for part in key.split("."):
        out = getattr(out, part)
    return out


def cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def rows(method: str) -> list[dict[str, str]]:
    """One row per component of `method`: the reference's value, ours under the default config and the two
    profiles, and what differs in the reference profile with its reason."""
    configs = {"default": PretrainConfig(), **{k: profile_config(p) for k, p in PROFILES.items()}}
    out = []
    for c in REFERENCES[method][1]:
        key = c.key.replace("{m}", method) if c.key else None
        ours = {name: cell(value(pre, method, key)) if key else c.ours for name, pre in configs.items()}
        differs = c.reference is not None and key is not None and ours["reference"] != cell(c.reference)
        out.append(
            {
                "component": c.what if key is None else f"{c.what} (`{key}`)",
                "published": f"{cell(c.reference)} ({c.source})",
                **ours,
                "differs": differs,
                "reason": c.reason,
            }
        )
    return out


def render() -> str:
    lines = [
        "<!-- Generated by `python tools/sync_docs.py` from pipeline/fidelity.py, duel/ and params/. -->",
        "",
        "# Fidelity to the reference implementations",
        "",
        "Each method is meant to be the method its authors ran. For every recipe component the reference code",
        "sets, the table gives the reference's value and where it is written, this project's default, and the",
        "values of the two CIFAR-10-LT profiles: `cifar10_lt_common` runs every method under one recipe (SDCLR's",
        "SimCLR recipe: a controlled comparison), `cifar10_lt_reference` runs each method under its own",
        "(`pretrain.recipes`). The last column says why the reference profile still differs where it does.",
        "Defaults are this project's: the small-CNN digits study, not a reference setting.",
        "",
    ]
    for method, (repo, _) in REFERENCES.items():
        lines += [f"## {method}", "", f"Reference: {repo}.", ""]
        lines += [
            "| component | reference (source) | default | common profile | reference profile | difference |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows(method):
            note = f"**differs**: {r['reason']}" if r["differs"] else r["reason"]
            cells = [r["component"], r["published"], r["default"], r["common"], r["reference"], note]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Published numbers",
        "",
        "What the references publish for their own settings, with the command that would rerun each here.",
        "None has been run with this project yet: each is 200 to 2000 epochs of ResNet-18 on a GPU, and its",
        "time there is not measured yet.",
        "",
        "| method | setting | measure | published | source | here |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {p.method} | {p.setting} | {p.measure} | {p.value} | {p.source} | not yet run |" for p in PUBLISHED]
    lines += ["", "To rerun one, add `--set runtime.data_root=<folder>` to its command, then run `dvc repro`:", ""]
    for p in PUBLISHED:
        note = f" ({p.note})" if p.note else ""
        lines += [f"- {p.method}, {p.setting}{note}:", "", "    ```bash", f"    {p.command}", "    ```", ""]
    return "\n".join(lines) + "\n"
