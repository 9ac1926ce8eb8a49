"""Images/s of one pretraining step per method, as ratios to moco in the same process, and lightly's
MoCo as a peer.

    python benchmarks/train_step.py [--backbone resnet18_cifar] [--batch 256] [--size 32] [--memory 4096]
                                    [--batch-mode topk] [--precision bf16] [--channels-last] [--compile]
                                    [--methods moco dmoco dmoco_roll]

Each method runs `duel.train.training_step`, the step `pretrain` runs: two kornia views of a
uint8 batch held on the device, the loss with memory negatives and push, backward, SGD, and, for the
methods that re-encode their memory (`dmoco_fresh`, `dmoco_roll`), the re-encoding that follows. The
peer is lightly's MoCo (`pip install lightly==1.6.0`, not a project dependency) written as its
examples do (MoCoProjectionHead, NTXentLoss with a memory bank, update_momentum), symmetrised
like ours, with the same backbone, views, batch and K. Memories start full, so every timed
push evicts. Methods take turns, one step each per round; the median over `--steps` rounds
follows `--warmup` untimed ones.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from duel.backbones import build_backbone
from duel.config import AugmentConfig, PretrainConfig, RuntimeConfig
from duel.data.augment import ssl_augmentation, to_unit
from duel.data.datasets import Batch, IndexedImages
from duel.data.sources import ImageSet
from duel.methods import METHODS, DataInfo, build_method
from duel.methods.dmoco_fresh import refresh_memory
from duel.train import TrainingLoss, compile_step, training_step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(
    steps: dict[str, Callable[[], torch.Tensor]], device: torch.device, warmup: int, rounds: int
) -> dict[str, float]:
    """Median step time per method; methods alternate within each round, so drift in the
    machine's speed (shared CPUs, GPU clocks) hits every method alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + rounds):
        for name, step in steps.items():
            sync(device)
            tic = time.perf_counter()
            step()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - tic)
    return {name: statistics.median(t) for name, t in times.items()}


def ours(
    name: str, cfg: PretrainConfig, runtime: RuntimeConfig, images: torch.Tensor, augment: nn.Module
) -> Callable[[], torch.Tensor]:
    torch.manual_seed(0)
    device = images.device
    method = build_method(name, cfg, DataInfo(3, len(images))).to(device).train()
    if runtime.channels_last:
        method.to(memory_format=torch.channels_last)
    loss_module = compile_step(method, TrainingLoss(method)) if runtime.compile else None
    if method.memory is not None:
        method.memory.cuda_graphs = runtime.cuda_graphs
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.01, momentum=0.9)
    positions = torch.arange(len(images), device=device)
    batch = Batch(images, torch.zeros_like(positions), positions, positions)
    if method.memory is not None:  # full, of keys whose images the re-encoding methods can find
        size = method.memory.size
        method.memory.push(torch.randn(size, method.memory.dim, device=device), indices=positions.repeat(size)[:size])
    # A second epoch after a first that filled the per-sample state: BCL's augmentation and GH's loss
    # are on, as in most of a run (in the first epoch they are off).
    for state in method.sample_state().values():
        state.copy_(torch.rand(state.shape, generator=torch.Generator().manual_seed(0)))
    method.on_epoch_start(1, 2)
    dataset = IndexedImages(ImageSet(torch.zeros(len(images)).long().numpy(), images.cpu()), range(len(images)))

    def step() -> torch.Tensor:
        loss = training_step(method, augment, optimizer, batch, runtime, (0, 1), loss_module=loss_module)
        if method.memory is not None and method.refresh_size():
            refresh_memory(method, dataset, augment, cfg.batch_size, runtime)
        return loss

    return step


def lightly_moco(
    cfg: PretrainConfig, runtime: RuntimeConfig, images: torch.Tensor, augment: nn.Module
) -> Callable[[], torch.Tensor]:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    torch.manual_seed(0)
    device = images.device
    backbone, dim = build_backbone(cfg.backbone, 3)
    head = MoCoProjectionHead(dim, dim, cfg.proj_dim)
    model = nn.ModuleDict({"backbone": backbone, "head": head}).to(device)
    momentum = copy.deepcopy(model)
    deactivate_requires_grad(momentum)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
        momentum.to(memory_format=torch.channels_last)
    criterion = NTXentLoss(cfg.temperature, memory_bank_size=(cfg.memory.size, cfg.proj_dim)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format

    def step() -> torch.Tensor:
        x = to_unit(images)
        with torch.no_grad():
            v1, v2 = (augment(x).contiguous(memory_format=fmt) for _ in range(2))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=runtime.precision == "bf16"):
            update_momentum(model, momentum, cfg.key_momentum)
            q1, q2 = (model["head"](model["backbone"](v)) for v in (v1, v2))
            with torch.no_grad():
                k1, k2 = (momentum["head"](momentum["backbone"](v)) for v in (v1, v2))
            loss = 0.5 * (criterion(q1, k2) + criterion(q2, k1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def step_options(parser: argparse.ArgumentParser) -> None:
    """The step's settings, shared with benchmarks/host_syncs.py."""
    parser.add_argument("--backbone", default="resnet18_cifar")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--memory", type=int, default=4096)
    parser.add_argument("--batch-mode", default="greedy", choices=["greedy", "topk"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--cropping-mode", default="slice", choices=["slice", "resample"], help="resample: GPU")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="moco first")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_options(parser)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true", help="skip lightly's MoCo")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    crop = AugmentConfig(cropping_mode=args.cropping_mode)
    base = PretrainConfig(backbone=args.backbone, batch_size=args.batch, proj_dim=128, augment=crop)
    runtime = RuntimeConfig(
        device=args.device, precision=args.precision, channels_last=args.channels_last, compile=args.compile
    )
    cfg = replace(base, memory=replace(base.memory, size=args.memory, batch_mode=args.batch_mode))
    device = torch.device(args.device)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, device=device)
    augment = ssl_augmentation(cfg.augment, args.size, 3, [0.5] * 3, [0.25] * 3).to(device)

    print(
        f"device={args.device} backbone={args.backbone} B={args.batch} {args.size}px K={args.memory} "
        f"batch_mode={args.batch_mode} precision={args.precision} channels_last={args.channels_last} "
        f"cropping_mode={args.cropping_mode} compile={args.compile} threads={torch.get_num_threads()} "
        f"steps={args.steps}"
    )
    steps = {name: ours(name, cfg, runtime, images, augment) for name in dict.fromkeys(["moco", *args.methods])}
    if not args.no_peer:
        steps["lightly-moco"] = lightly_moco(cfg, runtime, images, augment)
    seconds = median_seconds(steps, device, args.warmup, args.steps)
    print(f"{'method':>12} {'ms/step':>9} {'images/s':>9} {'vs moco':>8}")
    for name, s in seconds.items():
        print(f"{name:>12} {1000 * s:>9.1f} {args.batch / s:>9.1f} {s / seconds['moco']:>8.3f}")
    peer = f", lightly-moco/moco {seconds['lightly-moco'] / seconds['moco']:.3f}" if "lightly-moco" in seconds else ""
    ratios = ", ".join(
        f"{n}/moco {t / seconds['moco']:.3f}" for n, t in seconds.items() if n not in ("moco", "lightly-moco")
    )
    print(
        f"summary: {ratios}{peer}, "
        f"moco {args.batch / seconds['moco']:.0f} images/s ({args.backbone}, B={args.batch}, K={args.memory}, "
        f"{args.device})"
    )


if __name__ == "__main__":
    main()
