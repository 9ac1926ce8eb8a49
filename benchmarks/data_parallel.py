"""What data-parallel pretraining costs per step on CPU: N gloo ranks against one process on the same
global batch, and the time of the memory's gather + update inside a step (issue 9).

    python benchmarks/data_parallel.py [--method dmoco] [--backbone small_cnn] [--batch 128] [--size 32]
                                       [--memory 4096] [--batch-mode greedy] [--nproc 2] [--steps 20] [--warmup 3]

The script runs itself twice on the same cores: as one process with every core on the global batch,
then under `torch.distributed.run --standalone --nproc-per-node N` (what `pretrain.nproc_per_node: N`
starts) with batch / N images and cores / N threads per rank. Both time the step `pretrain` takes
(`duel.train.training_step`: views, loss, backward with DDP's gradient all-reduce, SGD, then the
gathers of keys and per-sample values and the method's after-step update, the memory push), on a
full memory so that every push evicts. Inside the step it times the gathers (which also wait for the
slowest rank) and the after-step update. Medians over `--steps` after `--warmup` untimed steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from duel.config import PretrainConfig, RuntimeConfig
from duel.data.augment import ssl_augmentation
from duel.data.datasets import Batch
from duel.distributed import World
from duel.methods import METHODS, DataInfo, build_method
from duel.train import data_parallel, training_step

GATHER_SECONDS: list[float] = []  # this step's gathers, appended by TimedWorld


@dataclass(frozen=True)
class TimedWorld(World):
    """The launcher's world, timing each gather (the collectives `training_step` adds for the memory)."""

    def gather(self, x: torch.Tensor, parts: int = 1) -> torch.Tensor:
        return timed(super().gather, GATHER_SECONDS)(x, parts)


def timed(fn: Callable[..., Any], seconds: list[float]) -> Callable[..., Any]:
    """`fn`, appending the seconds of each call to `seconds`."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tic = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds.append(time.perf_counter() - tic)
        return out

    return wrapper


def worker(args: argparse.Namespace) -> None:
    """One run (one process, or one rank under the launcher); rank 0 writes the medians to args.worker."""
    world = TimedWorld.from_launcher("cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.size))
    per_rank = args.batch // world.size
    base = PretrainConfig(backbone=args.backbone, batch_size=per_rank, proj_dim=128)
    cfg = replace(base, memory=replace(base.memory, size=args.memory, batch_mode=args.batch_mode))
    torch.manual_seed(0)  # the same weights, images and memory on every rank
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    method = build_method(args.method, cfg, DataInfo(3, args.batch)).train()
    if method.memory is not None:
        method.memory.push(torch.randn(method.memory.size, method.memory.dim))
    loss_module = data_parallel(method, world)
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.01, momentum=0.9)
    augment = ssl_augmentation(cfg.augment, args.size, 3, [0.5] * 3, [0.25] * 3)
    positions = world.shard(torch.arange(args.batch), per_rank)
    batch = Batch(images[positions], positions % 10, positions, positions)

    updates: list[float] = []
    method.after_step = timed(method.after_step, updates)
    steps, gathers = [], []
    for i in range(args.warmup + args.steps):
        GATHER_SECONDS.clear()
        tic = time.perf_counter()
        training_step(
            method, augment, optimizer, batch, RuntimeConfig(), (i, args.warmup + args.steps), world, loss_module
        )
        if i >= args.warmup:
            steps.append(time.perf_counter() - tic)
            gathers.append(sum(GATHER_SECONDS))
    if world.is_main:
        medians = {name: statistics.median(v) for name, v in (("step", steps), ("gather", gathers))}
        medians["update"] = statistics.median(updates[args.warmup :])
        args.worker.write_text(json.dumps({**medians, "threads": torch.get_num_threads()}))
    world.close()


def measure(args: argparse.Namespace, nproc: int, out: Path) -> dict[str, float]:
    me = [str(Path(__file__).resolve()), "--worker", str(out), *sys.argv[1:]]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    subprocess.run([sys.executable, *launcher, *me], check=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="dmoco", choices=sorted(METHODS))
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--batch", type=int, default=128, help="global batch (every rank takes batch / nproc)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--memory", type=int, default=4096)
    parser.add_argument("--batch-mode", default="greedy", choices=["greedy", "topk"])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # set when the script runs itself
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.batch % args.nproc:
        parser.error(f"--batch {args.batch} is not divisible by --nproc {args.nproc}")

    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: measure(args, n, Path(tmp) / f"{n}.json") for n in (1, args.nproc)}
    print(
        f"method={args.method} backbone={args.backbone} global batch={args.batch} {args.size}px K={args.memory} "
        f"batch_mode={args.batch_mode} cpu cores={os.cpu_count()} steps={args.steps}"
    )
    print(f"{'':>10} {'threads':>7} {'ms/step':>8} {'gather ms':>9} {'update ms':>9} {'images/s':>8}")
    for n, r in runs.items():
        name = "1 process" if n == 1 else f"{n} ranks"
        print(
            f"{name:>10} {r['threads']:>7} {1000 * r['step']:>8.1f} {1000 * r['gather']:>9.1f} "
            f"{1000 * r['update']:>9.1f} {args.batch / r['step']:>8.0f}"
        )
    one, many = runs[1], runs[args.nproc]
    print(
        f"summary: {args.nproc} ranks / 1 process per step {many['step'] / one['step']:.2f}; "
        f"gather + update {100 * (many['gather'] + many['update']) / many['step']:.1f} % of a {args.nproc}-rank step "
        f"(update alone {100 * one['update'] / one['step']:.1f} % of a 1-process step); "
        f"update {args.nproc} ranks / 1 process {many['update'] / one['update']:.2f}"
    )


if __name__ == "__main__":
    main()
