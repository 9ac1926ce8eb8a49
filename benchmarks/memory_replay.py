"""Frozen-feature replay: how close to uniform over classes can each policy keep the memory when the
encoder is held still?

    python benchmarks/memory_replay.py outputs/pretrain/moco-imb0.9-lt-d0-s0 [--taus 0.1 0.05 0.02] [--epochs 3]

Run in a study checkout after its pretrain stage. The run's encoder (model.pt) embeds its long-tailed
training set once, without augmentation, in two spaces: the memory's key space (the method's projected
keys, what DUEL scores) and the backbone space (what the probes read). The keys are then streamed in
shuffled batches of pretrain.batch_size through memories of size K under fifo, random and duel, and the
normalised class entropy of each memory after the last epoch is printed, next to the stream's own entropy
and, for reference, the most uniform memory of K distinct images (as many tail images as fit; a memory can
exceed it only by holding one image's key twice). The tail risk of the whole set
(duel.diagnostics.tail_risk) says how strongly the densest keys are head keys in each space.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from duel.data.augment import normalizer, to_unit
from duel.data.longtail import pretraining_indices
from duel.diagnostics import head_classes, replay_stream, tail_risk
from duel.memory import ActiveMemory
from duel.methods import DataInfo, build_method
from pipeline.common import load_data, load_params


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a pretrain output folder (model.pt)")
    parser.add_argument("--taus", type=float, nargs="+", default=[0.1, 0.05, 0.02])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    saved = torch.load(args.run / "model.pt", map_location="cpu", weights_only=False)
    run = saved["config"]
    cfg = load_params(args.params)
    source, manifest = load_data(cfg, run["imbalance"], run["draw"])
    idx = torch.as_tensor(pretraining_indices(manifest, run["train_set"], source.train.labels))
    data = DataInfo(saved["in_channels"], len(idx), source.num_classes)
    method = build_method(run["method"], cfg.pretrain, data)
    method.load_state_dict(saved["method_state_dict"], strict=False)  # no memory: it is in memory.pt
    method.eval()
    normalize = normalizer(saved["normalize"]["mean"], saved["normalize"]["std"])
    labels = torch.as_tensor(source.train.labels)[idx]
    images = source.train.subset(idx.numpy()).images
    with torch.no_grad():
        views = [normalize(to_unit(x)) for x in images.split(512)]
        spaces = {
            "key space": torch.cat([method.memory_keys(v) for v in views]),
            "backbone space": F.normalize(torch.cat([method.backbone(v) for v in views]), dim=1),
        }

    counts = torch.bincount(labels, minlength=source.num_classes).tolist()  # of the set the run trained on
    size, batch = cfg.pretrain.memory.size, cfg.pretrain.batch_size
    print(json.dumps({"run": str(args.run), "K": size, "batch": batch, "epochs": args.epochs}))
    fits = "the whole set fits in K" if sum(counts) <= size else f"{most_uniform(counts, size):.3f}"
    print(f"stream entropy {entropy(counts):.3f}; most uniform memory of K distinct images: {fits}")
    tail = ~head_classes(manifest["class_counts"])  # the LT set's tail, also for a run on its balanced match
    print("| space | tau_d | tail risk | fifo | random | duel |")
    print("|---|---|---|---|---|---|")
    for name, keys in spaces.items():
        risk = tail_risk(keys, labels, tail, taus=args.taus)
        for tau in args.taus:
            final = {
                policy: replay_stream(keys, labels, ActiveMemory(size, keys.shape[1], policy, tau), batch, args.epochs)[
                    -1
                ]
                for policy in ("fifo", "random", "duel")
            }
            cells = " | ".join(f"{final[p]:.3f}" for p in ("fifo", "random", "duel"))
            print(f"| {name} | {tau:g} | {risk[tau]:.2f} | {cells} |")


if __name__ == "__main__":
    main()
