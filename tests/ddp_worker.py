"""One data-parallel rank of the tests in test_distributed.py, started by torchrun (or alone: one process).

    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py train dmoco OUT [--die-at N] [--resume]
        [--diverge-at N]
    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py steps simclr OUT
    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py shuffle - OUT

train: `duel.engine.Trainer` on 128 digits, 8 images per rank and step, 3 epochs, a checkpoint per
epoch; every rank writes the hash of its memory and per-sample state after every step and its final
state. steps: three `training_step`s on fixed global batches of 16 with fixed views (view 2 = view 1
flipped) and BatchNorm in eval mode, so one process and two ranks see the same global computation.
shuffle: `shuffled_apply` on 6 rows per rank (row values tell their rank and position) of a row-wise
function and of one that tags each row with the rank that computed it. `--bn-splits N`: the method's
shuffle-BN over N groups of the global batch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
from pathlib import Path

import torch
from torch import nn

from duel.callbacks import Callback, Checkpoint
from duel.callbacks.rank_check import shared_state
from duel.config import DataConfig, RuntimeConfig, to_dict
from duel.data.augment import ssl_augmentation
from duel.data.datasets import IndexedImages
from duel.data.sources import load_digits
from duel.distributed import World, shuffled_apply
from duel.engine import Trainer
from duel.methods import DataInfo, build_method
from duel.train import data_parallel, training_step
from duel.utils import seed_everything
from duel.validation import parse_config

PRETRAIN = {"epochs": 3, "batch_size": 8, "proj_dim": 16, "memory": {"size": 32}, "checkpoint_every": 1}


class FlipSecond(nn.Module):
    """Deterministic views: the images, then the images flipped (a method calls augment once per view)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x if self.calls % 2 else x.flip(-1)


def digest(tensors: dict[str, torch.Tensor]) -> str:
    return hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes() for t in tensors.values())).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "steps", "shuffle"])
    parser.add_argument("method")
    parser.add_argument("out", type=Path)
    parser.add_argument("--die-at", type=int, default=-1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--bn-splits", type=int, default=1)
    parser.add_argument("--diverge-at", type=int, default=-1)
    args = parser.parse_args()
    world = World.from_launcher("cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mode == "shuffle":
        rows = torch.arange(6.0).unsqueeze(1) + 100 * world.rank
        torch.manual_seed(world.rank)  # the ranks' own random states differ; rank 0's permutation is used
        rowwise = shuffled_apply(lambda x: 2 * x, rows)
        computed_by = shuffled_apply(lambda x: torch.full_like(x, world.rank), rows)
        result = {"rows": rows.tolist(), "rowwise": rowwise.tolist(), "computed_by": computed_by.tolist()}
        (args.out / f"rank{world.rank}.json").write_text(json.dumps(result))
        world.close()
        return
    kwargs = {args.method: {"bn_splits": args.bn_splits}} if args.bn_splits > 1 else {}
    cfg = parse_config({"pretrain": {**PRETRAIN, "method_kwargs": kwargs}}).pretrain
    source = load_digits(DataConfig(), RuntimeConfig())
    seed_everything(0)
    dataset = IndexedImages(source.train, list(range(128)))
    method = build_method(args.method, cfg, DataInfo(1, len(dataset), 10))

    if args.mode == "train":
        hashes = []

        class Watch(Callback):  # every step's shared state, and the faults this test injects
            def on_log(self, trainer: Trainer, record: dict[str, float], section: str) -> None:
                if section != "train":
                    return
                hashes.append(digest(shared_state(method)))
                if world.rank == 1 and record["step"] == args.die_at:
                    os.kill(os.getpid(), signal.SIGKILL)  # a rank dies mid-epoch, after a checkpoint
                if world.rank == 1 and record["step"] == args.diverge_at:
                    method.memory.keys.add_(1e-3)  # a non-deterministic update on one rank

        augment = ssl_augmentation(cfg.augment, 8, 1, [0.5], [0.25])
        config = {"pretrain": to_dict(cfg), "world_size": world.size}
        callbacks = [Checkpoint(args.out / "last.pt", config, args.resume), Watch()]
        history = Trainer(method, dataset, augment, cfg, RuntimeConfig(), 0, world, callbacks).fit()
        # BatchNorm statistics stay each rank's own (no SyncBatchNorm on CPU): the weights and shared state agree.
        final = digest({**dict(method.named_parameters()), **shared_state(method)})
        result = {"hashes": hashes, "losses": [r["loss"] for r in history], "final": final}
        torch.save(method.state_dict(), args.out / f"state{world.rank}.pt")
    else:
        method.train()
        for module in method.modules():
            if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                module.eval()  # torch's SyncBatchNorm runs on CUDA only: fixed statistics instead
        optimizer = torch.optim.SGD(method.param_groups(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        loss_module = data_parallel(method, world)
        per_rank = 16 // world.size
        mine = world.shard(torch.arange(48), per_rank)
        losses, runtime, augment = [], RuntimeConfig(), FlipSecond()
        for step, batch in enumerate(dataset.batches(mine, per_rank, torch.device("cpu"))):
            losses.append(
                training_step(method, augment, optimizer, batch, runtime, (step, 3), world, loss_module).item()
            )
        result = {"losses": losses}
        torch.save(method.state_dict(), args.out / f"state{world.rank}.pt")
    (args.out / f"rank{world.rank}.json").write_text(json.dumps(result))
    world.close()


if __name__ == "__main__":
    main()
