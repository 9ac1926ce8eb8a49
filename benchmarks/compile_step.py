"""What `torch.compile` buys a training step: eager, the backbones alone compiled, and `runtime.compile`
(`duel.train.compile_step`: the whole loss module compiled, backbones, heads and the loss with its
memory negatives, its backward through AOTAutograd), side by side in one process.

    python benchmarks/compile_step.py [--backbone small_cnn] [--batch 64] [--size 8] [--memory 256]
                                      [--methods moco dmoco] [--steps 10] [--warmup 3]

Each variant runs `duel.train.training_step` (augmentation, loss, backward, SGD, push) on its own copy
of the method from the same seed; variants and methods take turns, one step each per round, and the
median over `--steps` rounds follows `--warmup` untimed ones (which include the compilation).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from train_step import median_seconds

from duel.config import PretrainConfig, RuntimeConfig
from duel.data.augment import ssl_augmentation
from duel.data.datasets import Batch
from duel.methods import METHODS, DataInfo, build_method
from duel.train import TrainingLoss, compile_step, training_step

VARIANTS = ("eager", "backbones compiled", "runtime.compile")


def variant_step(name: str, variant: str, cfg: PretrainConfig, images: torch.Tensor, augment: torch.nn.Module):
    torch.manual_seed(0)
    method = build_method(name, cfg, DataInfo(3, len(images))).train()
    if method.memory is not None:  # full: every timed push evicts
        method.memory.push(torch.randn(method.memory.size, method.memory.dim))
    loss_module: torch.nn.Module = TrainingLoss(method)
    if variant == "backbones compiled":
        method.compile_backbones()
    elif variant == "runtime.compile":
        loss_module = compile_step(method, loss_module)
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.01, momentum=0.9)
    positions = torch.arange(len(images))
    batch = Batch(images, torch.zeros_like(positions), positions, positions)
    return lambda: training_step(method, augment, optimizer, batch, RuntimeConfig(), (0, 1), loss_module=loss_module)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--memory", type=int, default=256)
    parser.add_argument("--methods", nargs="+", default=["moco", "dmoco"], choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    cfg = PretrainConfig(backbone=args.backbone, batch_size=args.batch)
    cfg = replace(cfg, memory=replace(cfg.memory, size=args.memory))
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    augment = ssl_augmentation(cfg.augment, args.size, 3, [0.5] * 3, [0.25] * 3)
    steps = {
        (name, variant): variant_step(name, variant, cfg, images, augment)
        for name in args.methods
        for variant in VARIANTS
    }
    seconds = median_seconds(steps, torch.device("cpu"), args.warmup, args.steps)
    print(f"{args.backbone}, B {args.batch}, {args.size} px, K {args.memory}, {torch.get_num_threads()} threads")
    print("| method | variant | ms per step | vs eager |")
    print("|---|---|---|---|")
    for (name, variant), s in seconds.items():
        print(f"| {name} | {variant} | {1000 * s:.1f} | {s / seconds[name, 'eager']:.2f} x |")


if __name__ == "__main__":
    main()
