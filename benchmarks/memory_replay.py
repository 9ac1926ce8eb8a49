"""Frozen-encoder replay: how close to uniform over classes can each policy keep the memory when the
encoder is held still, and is what remains the policy's doing or the features'?

    python benchmarks/memory_replay.py outputs/pretrain/moco-imb0.9-lt-d0-s0 [--epochs 5] [--reference 4]
        [--out reports/memory_replay.md]

Run in a study checkout after its pretrain stage. The run's encoder (model.pt) is held still and its
long-tailed training set is streamed in shuffled batches of pretrain.batch_size through memories of size
K under fifo, random and duel (greedy and topk), for `--epochs` passes, with the keys computed

- `eval`: in eval mode (BatchNorm running statistics), one key per image, as a fixed stream;
- `train`: in training mode on each push's batch (BatchNorm statistics of that batch, as in training);
- `split`: in training mode with split BatchNorm over `--splits` sub-batches (MoCo's shuffle-BN);
- `backbone`: the backbone's features (what the probes read) instead of the projected keys, eval mode.

Printed per space and policy: the memory's class entropy averaged over the last `--last` epochs, the
share of evictions that hit a key of the same push and the mean key age at the end, next to the
stream's own entropy and the most uniform memory of K distinct images. Per space, how class-shaped its
density is: the neighbourhood purity (the share of each image's 10 nearest neighbours of its class) and
the mean cosine similarity to keys of the same and of other classes.

`--reference E` adds a diagnostic encoder trained WITH LABELS for E epochs on the balanced pool of the
manifest (never the validation or test images): the same small network as a supervised classifier,
its backbone features replayed like the others. Labels build this reference only; it says how much
DUEL could do with features whose density follows the classes. Its validation accuracy is printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from duel.backbones import build_backbone, split_batchnorm
from duel.config import StudyConfig
from duel.data.augment import normalizer, ssl_augmentation, to_unit
from duel.data.datasets import IndexedImages
from duel.data.longtail import pretraining_indices
from duel.data.sources import SourceData
from duel.diagnostics import replay_stream
from duel.memory import ActiveMemory
from duel.methods import DataInfo, build_method
from pipeline.common import load_data, read_params

CPU = torch.device("cpu")
POLICIES = (("fifo", "greedy"), ("random", "greedy"), ("duel", "greedy"), ("duel", "topk"))


def entropy(counts: list[float]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c) / math.log(len(counts))


def most_uniform(counts: list[int], size: int) -> float:
    """Entropy of the most uniform class histogram of `size` distinct images (water-filling the counts)."""
    level, left = 0, size
    for i, n in enumerate(sorted(counts)):
        share = left / (len(counts) - i)
        if n >= share:
            level = share
            break
        left -= n
    return entropy([min(n, level) if level else n for n in counts])


def class_structure(features: torch.Tensor, labels: torch.Tensor, k: int = 10) -> tuple[float, float, float]:
    """Neighbourhood purity (share of the k nearest neighbours of the same class) and the mean cosine
    similarity to same-class and to other-class images."""
    x = F.normalize(features, dim=1)
    sims = x @ x.T
    sims.fill_diagonal_(-2.0)
    purity = (labels[sims.topk(k, dim=1).indices] == labels[:, None]).float().mean()
    same = labels[:, None] == labels[None]
    not_self = ~torch.eye(len(x), dtype=torch.bool)
    sims.fill_diagonal_(0.0)
    return float(purity), float(sims[same & not_self].mean()), float(sims[~same].mean())


def replay(
    keys: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    size: int,
    dim: int,
    batch: int,
    epochs: int,
    last: int,
    tau: float,
) -> dict[str, dict[str, float]]:
    """Each policy's memory entropy (mean of the last epochs), same-push eviction share and key age."""
    out = {}
    classes = int(labels.max()) + 1
    for policy, mode in POLICIES:
        memory = ActiveMemory(size, dim, policy, tau, mode, classes)
        curve = replay_stream(keys, labels, memory, batch, epochs)
        evictions = int(memory.evicted.sum())
        out[policy if policy != "duel" else f"duel {mode}"] = {
            "entropy": sum(curve[-last:]) / len(curve[-last:]),
            "same_push": int(memory.evicted_fresh) / evictions if evictions else float("nan"),
            "age": float((memory.pushes - memory.born).float().mean()),
        }
    return out


def train_reference(
    cfg: StudyConfig, source: SourceData, manifest: dict, epochs: int, mean: list[float], std: list[float]
) -> tuple[nn.Module, float]:
    """A backbone trained with labels on the balanced pool (cross-entropy, SGD, cosine schedule, the
    study's augmentation), and its validation accuracy."""
    backbone, dim = build_backbone(cfg.pretrain.backbone, source.channels)
    model = nn.Sequential(backbone, nn.Linear(dim, source.num_classes))
    pool = IndexedImages(source.train, manifest["balanced_indices"])
    size = source.train.subset([0]).images.shape[-1]
    augment = ssl_augmentation(cfg.pretrain.augment, size, source.channels, mean, std)
    normalize = augment[-1]
    steps = epochs * (len(pool) // cfg.pretrain.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    order = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model.train()
    for _ in range(epochs):
        for b in pool.batches(torch.randperm(len(pool), generator=order), cfg.pretrain.batch_size, CPU, drop_last=True):
            loss = F.cross_entropy(model(augment(to_unit(b.images))), b.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    val = IndexedImages(source.train, manifest["val_indices"])
    with torch.no_grad():
        right = sum(
            int((model(normalize(to_unit(b.images))).argmax(1) == b.labels).sum())
            for b in val.batches(torch.arange(len(val)), 512, CPU)
        )
    return backbone, right / len(val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a pretrain output folder (model.pt)")
    parser.add_argument("--tau", type=float, default=None, help="tau_d (default: pretrain.memory.temperature)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--last", type=int, default=3, help="epochs the memory entropy is averaged over")
    parser.add_argument("--splits", type=int, default=4)
    parser.add_argument("--reference", type=int, default=0, help="epochs of the labelled reference encoder (0: none)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this Markdown file")
    args = parser.parse_args()

    saved = torch.load(args.run / "model.pt", map_location="cpu", weights_only=False)
    run = saved["config"]
    cfg = read_params(args.params)  # a tool beside the stages: native kernels, whatever runtime.portable says
    source, manifest = load_data(cfg, run["imbalance"], run["draw"])
    idx = torch.as_tensor(pretraining_indices(manifest, run["train_set"], source.train.labels))
    data = DataInfo(saved["in_channels"], len(idx), source.num_classes)
    method = build_method(run["method"], cfg.pretrain, data)
    method.load_state_dict(saved["method_state_dict"], strict=False)  # no memory: it is in memory.pt
    mean, std = saved["normalize"]["mean"], saved["normalize"]["std"]
    normalize = normalizer(mean, std)
    labels = torch.as_tensor(source.train.labels)[idx]
    images = normalize(to_unit(source.train.subset(idx.numpy()).images))
    size, batch = cfg.pretrain.memory.size, cfg.pretrain.batch_size
    tau = args.tau or cfg.pretrain.memory.temperature

    def in_mode(model: nn.Module, embed: Callable[[nn.Module, torch.Tensor], torch.Tensor], train: bool):
        model = copy.deepcopy(model).train(train)  # training-mode BatchNorm updates statistics: a copy
        return torch.no_grad()(lambda chunk: embed(model, images[chunk]))

    def keys_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model.memory_keys(x)

    def features_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(model.backbone(x), dim=1)

    def at_once(encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return torch.cat([encode(c) for c in torch.arange(len(idx)).split(512)])

    split = split_batchnorm(copy.deepcopy(method), args.splits)
    spaces: dict[str, Callable | torch.Tensor] = {
        "keys, eval": at_once(in_mode(method, keys_of, False)),
        "keys, train BN per push": in_mode(method, keys_of, True),
        f"keys, split BN x{args.splits} per push": in_mode(split, keys_of, True),
        "backbone, eval": at_once(in_mode(method, features_of, False)),
    }
    lines = []
    if args.reference:
        reference, accuracy = train_reference(cfg, source, manifest, args.reference, mean, std)
        with torch.no_grad():
            ref = at_once(lambda chunk: F.normalize(reference.eval()(images[chunk]), dim=1))
        spaces["labelled reference backbone, eval"] = ref
        lines.append(
            f"Labelled reference encoder: {args.reference} epochs of cross-entropy on the balanced pool "
            f"({len(manifest['balanced_indices'])} images), validation accuracy {100 * accuracy:.1f} %."
        )

    counts = torch.bincount(labels, minlength=source.num_classes).tolist()
    header = {"run": str(args.run), "K": size, "batch": batch, "epochs": args.epochs, "tau_d": tau}
    fits = "the whole set fits in K" if sum(counts) <= size else f"{most_uniform(counts, size):.3f}"
    lines += [
        f"`{json.dumps(header)}`",
        "",
        f"Stream entropy {entropy(counts):.3f}; most uniform memory of K distinct images: {fits}.",
        "",
        f"| space | policy | memory entropy (last {args.last} epochs) | same-push evictions | key age (pushes) |",
        "|---|---|---|---|---|",
    ]
    structure = [
        "",
        "| space | neighbourhood purity (10-NN) | cos same class | cos other classes |",
        "|---|---|---|---|",
    ]
    for name, keys in spaces.items():
        probe = keys if torch.is_tensor(keys) else at_once(keys)
        for policy, r in replay(keys, labels, size, probe.shape[1], batch, args.epochs, args.last, tau).items():
            lines.append(f"| {name} | {policy} | {r['entropy']:.3f} | {100 * r['same_push']:.0f} % | {r['age']:.1f} |")
        purity, same, other = class_structure(probe, labels)
        structure.append(f"| {name} | {purity:.3f} | {same:.3f} | {other:.3f} |")
    text = "\n".join(lines + structure) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
