"""Host syncs and aten ops of one training step per method, counted on the CPU, beside moco.

    python benchmarks/host_syncs.py [--backbone resnet18_cifar] [--batch 512] [--memory 65536]
                                    [--batch-mode greedy] [--precision bf16] [--channels-last]
                                    [--methods moco dmoco ...] [--push]

On a GPU every aten op is a kernel launch of a few microseconds, and every read of a tensor value on
the host waits for all queued work: `.item()` / `int(t)` / `bool(t)` (aten `_local_scalar_dense`),
ops whose output size depends on the data (`nonzero`, boolean-mask indexing, `masked_select`,
`unique`), and `.tolist()` / `.numpy()` / `.cpu()` (counted by wrapping them). Both can be counted on
a CPU: a `TorchDispatchMode` sees every aten op the step runs, whatever the device. The step is
`duel.train.training_step` (benchmarks/train_step.py builds it: full memory, so every push evicts),
with the re-encoding of dmoco_fresh / dmoco_roll; `--push` counts one `ActiveMemory.push` of 2B keys
instead. Counts depend on B and on the batch mode (greedy DUEL loops over the keys), not on timing.
Each sync is printed at its call site: the innermost frame outside torch (`kornia/...`, `duel/...`).
"""

from __future__ import annotations

import argparse
import contextlib
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from train_step import ours, step_options

from duel.config import AugmentConfig, PretrainConfig, RuntimeConfig
from duel.data.augment import ssl_augmentation
from duel.memory import ActiveMemory

# aten ops that read a device value on the host, or size their output by the data (a sync on CUDA)
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_consecutive", "unique_dim"}
HOST_READS = ("tolist", "numpy", "cpu")  # Tensor methods that copy to the host, not dispatched on a CPU tensor


TORCH = str(Path(torch.__file__).parent)


def call_site() -> str:
    """Where a sync came from: the innermost frame outside torch and this file, as `package/file.py`
    for an installed package (`kornia/...`) or the path in this repository (`duel/memory.py`)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not frame.filename.startswith(TORCH) and frame.filename != __file__:
            parts = Path(frame.filename).parts
            root = next((i for i, part in enumerate(parts) if part in ("site-packages", "duel", "benchmarks")), -1)
            start = root + 1 if parts[root] == "site-packages" else root
            return "/".join(parts[start:]) if root >= 0 else frame.filename
    return "?"


class Counting(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.sites: Counter[str] = Counter()  # syncs by call site

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if name in SYNC_OPS:
            self.sites[call_site()] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counted() -> Iterator[tuple[Counting, Counter[str]]]:
    """Every aten op inside, and the host reads (`tolist`, `numpy`, `cpu`) by method name; the mode's
    `sites` counts both kinds of sync by call site."""
    reads: Counter[str] = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}
    mode = Counting()

    def wrap(name: str):
        def read(self, *args, **kwargs):
            reads[name] += 1
            mode.sites[call_site()] += 1
            return originals[name](self, *args, **kwargs)

        return read

    for name in HOST_READS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        with mode:
            yield mode, reads
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def row(name: str, mode: Counting, reads: Counter[str]) -> tuple[str, int, int, str]:
    syncs = sum(mode.ops[op] for op in SYNC_OPS) + sum(reads.values())
    sites = ", ".join(f"`{site}` {n}" for site, n in sorted(mode.sites.items()))
    return name, sum(mode.ops.values()), syncs, sites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_options(parser)
    parser.set_defaults(batch=512, memory=65536)  # the paper's settings
    parser.add_argument("--push", action="store_true", help="one ActiveMemory.push of 2B keys per policy instead")
    args = parser.parse_args()
    print(
        f"backbone={args.backbone} B={args.batch} {args.size}px K={args.memory} batch_mode={args.batch_mode} "
        f"precision={args.precision} channels_last={args.channels_last} cropping_mode={args.cropping_mode}\n"
    )
    rows = []
    if args.push:
        for policy, mode in (("fifo", "greedy"), ("random", "greedy"), ("duel", "topk"), ("duel", "greedy")):
            memory = ActiveMemory(args.memory, 128, policy, 0.1, mode)
            memory.push(torch.nn.functional.normalize(torch.randn(args.memory, 128), dim=1))
            keys = torch.nn.functional.normalize(torch.randn(2 * args.batch, 128), dim=1)
            with counted() as (counts, reads):
                memory.push(keys)
            rows.append(row(f"{policy}, {mode}", counts, reads))
    else:
        crop = AugmentConfig(cropping_mode=args.cropping_mode)
        base = PretrainConfig(backbone=args.backbone, batch_size=args.batch, proj_dim=128, augment=crop)
        cfg = replace(base, memory=replace(base.memory, size=args.memory, batch_mode=args.batch_mode))
        runtime = RuntimeConfig(precision=args.precision, channels_last=args.channels_last)
        images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
        augment = ssl_augmentation(cfg.augment, args.size, 3, [0.5] * 3, [0.25] * 3)
        for name in dict.fromkeys(["moco", *args.methods]):
            step = ours(name, cfg, runtime, images, augment)
            step()  # first-call work (lazy buffers) is not the steady step
            with counted() as (counts, reads):
                step()
            rows.append(row(name, counts, reads))
    print("| step | aten ops | host syncs | where |")
    print("|---|---|---|---|")
    for name, ops, syncs, parts in rows:
        print(f"| {name} | {ops:,} | {syncs:,} | {parts} |")


if __name__ == "__main__":
    main()
