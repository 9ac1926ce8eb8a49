"""Images/s of one pretraining step per method, as ratios to moco in the same process
(issue: paper-scale studies, benchmark 2).

    python benchmarks/train_step.py [--backbone resnet18_cifar] [--batch 256] [--size 32] [--memory 4096]

A step is what `duel.train.pretrain` does per batch: two augmented views on the device,
the method's loss (memory negatives and push included), backward, SGD step. Inputs are
random uint8 images, memories start full; the median over `--steps` timed steps follows
`--warmup` untimed ones.
lightly's MoCo as a peer is not included yet.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from duel.config import PretrainConfig
from duel.data.augment import ssl_augmentation, to_unit
from duel.methods import METHODS, build_method


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_seconds(name: str, cfg: PretrainConfig, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    method = build_method(name, 3, cfg).to(args.device).train()
    augment = ssl_augmentation(cfg.augment, args.size, 3, [0.5] * 3, [0.25] * 3).to(args.device)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    labels, indices = torch.zeros(args.batch, dtype=torch.long), torch.arange(args.batch)
    if method.memory is not None:  # full from the start: every timed push evicts, as in training
        method.memory.push(torch.randn(method.memory.size, method.memory.dim, device=args.device))
    times = []
    for i in range(args.warmup + args.steps):
        sync(args.device)
        tic = time.perf_counter()
        x = to_unit(images.to(args.device, non_blocking=True))
        with torch.no_grad():
            view1, view2 = augment(x), augment(x)
        loss = method.training_loss(view1, view2, labels.to(args.device), indices.to(args.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(args.device)
        if i >= args.warmup:
            times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18_cifar")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--memory", type=int, default=4096)
    parser.add_argument("--batch-mode", default="greedy", choices=["greedy", "topk"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    base = PretrainConfig(backbone=args.backbone, batch_size=args.batch, proj_dim=128)
    cfg = replace(base, memory=replace(base.memory, size=args.memory, batch_mode=args.batch_mode))

    print(
        f"device={args.device} backbone={args.backbone} B={args.batch} {args.size}px K={args.memory} "
        f"batch_mode={args.batch_mode} threads={torch.get_num_threads()}"
    )
    print(f"{'method':>8} {'ms/step':>9} {'images/s':>9} {'vs moco':>8}")
    seconds = {name: step_seconds(name, cfg, args) for name in METHODS}
    for name, s in seconds.items():
        print(f"{name:>8} {1000 * s:>9.1f} {args.batch / s:>9.1f} {s / seconds['moco']:>8.3f}")
    print(
        f"summary: dmoco/moco step-time ratio {seconds['dmoco'] / seconds['moco']:.3f} "
        f"({args.backbone}, B={args.batch}, K={args.memory}, {args.device})"
    )


if __name__ == "__main__":
    main()
