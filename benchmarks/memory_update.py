"""Time per pushed batch of the active-memory policies (issue: paper-scale studies, benchmark 1).

    python benchmarks/memory_update.py [--sizes 4096 16384 65536] [--dim 128] [--batch 256] [--device cpu]

Policies: fifo, random, duel greedy (B sequential evictions), duel topk (one block, two
matmuls), duel graph (greedy replayed as a CUDA graph; CUDA only) and, as the baseline DUEL's
incremental scores avoid, a naive duel that recomputes all K^2 scores before every eviction.
Each figure is the median of `--repeats` pushes into a full memory; the last line summarises
duel's cost against fifo.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from duel.memory import ActiveMemory


def naive_duel_push(mem: ActiveMemory, keys: torch.Tensor) -> None:
    """Greedy DUEL with a full O(K^2 d) recompute per inserted key (what incremental scores avoid)."""
    for key in F.normalize(keys, dim=1):
        j = int(mem.full_scores().argmax())
        mem.keys[j] = key


def graphed(mem: ActiveMemory) -> ActiveMemory:
    """Greedy DUEL replayed as one CUDA graph per push (`runtime.cuda_graphs`)."""
    mem.cuda_graphs = True
    return mem


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_push(mem: ActiveMemory, push: Callable, dim: int, batch: int, repeats: int, device: str) -> float:
    mem = mem.to(device)
    size = mem.size
    mem.push(F.normalize(torch.randn(size, dim, device=device), dim=1))  # fill it: every push then evicts
    times = []
    for _ in range(repeats):
        keys = torch.randn(batch, dim, device=device)
        sync(device)
        tic = time.perf_counter()
        push(mem, keys)
        sync(device)
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive-max-size", type=int, default=4096, help="skip the naive baseline above this K")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)

    variants = {
        "fifo": lambda k: ActiveMemory(k, args.dim, "fifo"),
        "random": lambda k: ActiveMemory(k, args.dim, "random"),
        "duel greedy": lambda k: ActiveMemory(k, args.dim, "duel", batch_mode="greedy"),
        "duel topk": lambda k: ActiveMemory(k, args.dim, "duel", batch_mode="topk"),
        "duel graph": lambda k: graphed(ActiveMemory(k, args.dim, "duel", batch_mode="greedy")),
        "duel naive": lambda k: ActiveMemory(k, args.dim, "duel"),
    }
    print(f"device={args.device} d={args.dim} B={args.batch} threads={torch.get_num_threads()}")
    print(f"{'K':>7} " + " ".join(f"{name:>13}" for name in variants) + "   (ms per pushed batch)")
    results: dict[tuple[int, str], float] = {}
    for size in args.sizes:
        row = []
        for name, make in variants.items():
            if (name == "duel naive" and size > args.naive_max_size) or (name == "duel graph" and args.device == "cpu"):
                row.append(f"{'skipped':>13}")
                continue
            push = naive_duel_push if name == "duel naive" else ActiveMemory.push
            repeats = 1 if name == "duel naive" else args.repeats
            results[size, name] = time_push(make(size), push, args.dim, args.batch, repeats, args.device)
            row.append(f"{1000 * results[size, name]:>13.2f}")
        print(f"{size:>7} " + " ".join(row))
    k = max(args.sizes)
    greedy, topk, fifo = (1000 * results[k, name] for name in ("duel greedy", "duel topk", "fifo"))
    print(f"summary: K={k}: duel greedy {greedy:.1f} ms, duel topk {topk:.1f} ms, fifo {fifo:.2f} ms per batch")


if __name__ == "__main__":
    main()
