"""The GPU figures in one call: every method's images/s at a paper profile's settings, lightly's MoCo
beside them, dmoco / moco at K = 65,536, a one-GPU torchrun (nccl) smoke and short moco, dmoco and
dmoco_roll runs at rho_max 0.9, printed as one Markdown table (and written to `--out`).

    python benchmarks/gpu_run.py --data /path/to/cifar10-jpg [--profile params/cifar10_dominant.yaml]
        [--compile] [--steps 10] [--run-steps 300] [--out gpu_run.md]
    python benchmarks/gpu_run.py --tiny --data DIR      # the same code paths on a CPU in seconds (CI)

Runs through the library alone (no DVC, no MLflow), so a GPU machine needs torch, torchvision, kornia
and (for the peer) lightly. Sections:

- `step`: `duel.train.training_step` of every registered method at the profile's backbone, batch, K,
  batch mode, precision and memory format (benchmarks/train_step.py: memories full, methods taking
  turns), lightly's MoCo when it is installed; images/s and the ratio to moco;
- `compile`: `--compile-methods` (moco and dmoco unless `--tiny` or `--compile`) eager and with
  `runtime.compile`, the compiled step's images/s as a ratio to its eager one;
- `K`: moco, dmoco (greedy) and dmoco (topk) at K = 65,536, and on CUDA dmoco (greedy) with its
  push replayed as a CUDA graph (`runtime.cuda_graphs`);
- `push`: one greedy DUEL push of 2B keys at the profile's K and at 65,536, eager against the CUDA
  graph replay (ms per push, median of `--steps`), and whether 3 pushes from the same memory write
  the same slots and keys (scores: the largest difference);
- `nccl`: `torch.distributed.run` with one process per GPU (at most 2) running 3 data-parallel dmoco
  steps on the nccl backend, the memories checked equal across ranks (gloo on a CPU);
- `run`: pretraining (`duel.engine.Trainer`) of moco, dmoco and dmoco_roll (`--run-methods`) on the
  `--data` image folder (train/<class>/, e.g. the JPEG copy of CIFAR-10) at rho_max 0.9, the profile's
  LT set, `--run-steps` steps each, seed 0: images/s, the late memory entropy against the stream's,
  the key staleness, the share of same-push evictions.

A GPU machine is lent for minutes, so one failure must not cost the other figures: a method whose
first step raises, or a section that raises, becomes a FAILED row naming the error (its traceback on
stderr) and the run goes on; the table is printed and `--out` rewritten after every section, and the
exit status is 1 when any row failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from train_step import lightly_moco, median_seconds, ours

from duel.callbacks import Checkpoint
from duel.callbacks.rank_check import shared_state
from duel.config import PretrainConfig, RuntimeConfig, StudyConfig, to_dict
from duel.data.augment import ssl_augmentation
from duel.data.datasets import Batch, IndexedImages
from duel.data.longtail import build_manifest, pretraining_indices
from duel.data.sources import load_source
from duel.distributed import World
from duel.engine import Trainer
from duel.memory import ActiveMemory, class_entropy
from duel.methods import METHODS, DataInfo, build_method
from duel.train import data_parallel, training_step
from duel.validation import parse_config

TINY = {"backbone": "small_cnn", "batch_size": 8, "memory": {"size": 64}, "proj_dim": 16}
Row = tuple[str, str, str]  # section, what, figure
FAILED = "FAILED"


def failure(error: BaseException) -> str:
    """A FAILED figure: the error's type and first line (the traceback goes to stderr)."""
    traceback.print_exception(error, file=sys.stderr)
    lines = str(error).strip().splitlines() or [""]
    return f"{FAILED}: {type(error).__name__}: {lines[0][:300]}"


def first_steps(steps: dict[str, Callable[[], object]], section: str) -> tuple[dict, list[Row]]:
    """Each step run once before any is timed: one that raises is left out of the timing, as a FAILED row."""
    working, failed = {}, []
    for name, step in steps.items():
        try:
            step()
            working[name] = step
        except Exception as error:  # the other methods' figures are still measured
            failed.append((section, name, failure(error)))
    return working, failed


def study(args: argparse.Namespace, device: str) -> StudyConfig:
    """The profile with this machine's runtime (its precision and memory format on CUDA, fp32 on a CPU)."""
    raw = yaml.safe_load(Path(args.profile).read_text())
    raw["data"] = {**raw.get("data", {}), "source": "imagefolder", "image_size": 32 if args.tiny else None}
    raw["runtime"] = {**raw.get("runtime", {}), "device": device, "data_root": str(args.data), "cache_dir": None}
    raw["runtime"].update(compile=args.compile, num_workers=0, download=False)
    if device == "cpu":
        raw["runtime"].update(precision="fp32", channels_last=False)
    if args.tiny:
        raw["pretrain"] = {**raw["pretrain"], **TINY, "memory": {**raw["pretrain"]["memory"], **TINY["memory"]}}
        raw["prepare"] = {**raw.get("prepare", {}), "n_max": 90}
    return parse_config(raw)


def step_rows(cfg: PretrainConfig, runtime: RuntimeConfig, args: argparse.Namespace, label: str) -> list[Row]:
    device = torch.device(runtime.device)
    size = 16 if args.tiny else 32
    images = torch.randint(0, 256, (cfg.batch_size, 3, size, size), dtype=torch.uint8, device=device)
    augment = ssl_augmentation(cfg.augment, size, 3, [0.5] * 3, [0.25] * 3).to(device)
    if label == "step":
        steps = {name: ours(name, cfg, runtime, images, augment) for name in METHODS}
        if not args.tiny:
            try:
                steps["lightly-moco"] = lightly_moco(cfg, runtime, images, augment)
            except ImportError:
                print("lightly is not installed: no peer row", file=sys.stderr)
    elif label == "compile":  # runtime.compile against eager, method by method
        compiled = replace(runtime, compile=True)
        steps = {}
        for name in args.compile_methods:
            steps[name] = ours(name, cfg, runtime, images, augment)
            steps[f"{name}, compiled"] = ours(name, cfg, compiled, images, augment)
    else:  # the memory's cost alone: moco against both of DUEL's batch modes
        steps = {"moco": ours("moco", cfg, runtime, images, augment)}
        for mode in ("greedy", "topk"):
            mine = replace(cfg, memory=replace(cfg.memory, batch_mode=mode))
            steps[f"dmoco ({mode})"] = ours("dmoco", mine, runtime, images, augment)
        if device.type == "cuda":
            graphs = replace(runtime, cuda_graphs=True)
            steps["dmoco (greedy, CUDA graph)"] = ours(
                "dmoco", replace(cfg, memory=replace(cfg.memory, batch_mode="greedy")), graphs, images, augment
            )
    setting = f"{cfg.backbone}, B {cfg.batch_size}, K {cfg.memory.size:,}"
    section = f"{label} ({setting}{f', {cfg.memory.batch_mode}' if label == 'step' else ''})"
    steps, failed = first_steps(steps, section)  # a compiled step compiles in its first call
    seconds = median_seconds(steps, device, args.warmup, args.steps)
    rows = []
    for name, s in seconds.items():
        reference = name.split(", compiled")[0] if label == "compile" else "moco"  # its eager self, or moco
        ratio = f", {s / seconds[reference]:.2f} x {reference}" if reference in seconds and name != reference else ""
        rows.append((section, name, f"{cfg.batch_size / s:,.0f} images/s{ratio}"))
    return failed + rows


def push_rows(cfg: PretrainConfig, args: argparse.Namespace, device: str) -> list[Row]:
    """Greedy pushes of 2B keys, eager and (on CUDA) replayed as a CUDA graph, from the same full memory."""
    rows = []
    for size in (64, 256) if args.tiny else (cfg.memory.size, 65536):
        torch.manual_seed(0)
        full = torch.randn(size, cfg.proj_dim, device=device)
        memories = {}
        for graphs in (False, True) if device == "cuda" else (False,):
            memory = ActiveMemory(size, cfg.proj_dim, "duel", cfg.memory.temperature).to(device)
            memory.push(full)
            memory.cuda_graphs = graphs
            memories["CUDA graph" if graphs else "eager"] = memory
        pushes = [torch.randn(2 * cfg.batch_size, cfg.proj_dim, device=device) for _ in range(3)]
        for memory in memories.values():
            for keys in pushes:
                memory.push(keys)
        what = f"greedy, K {size:,}, {2 * cfg.batch_size} keys"
        if "CUDA graph" in memories:
            eager, graph = memories.values()
            same = torch.equal(eager.keys, graph.keys) and torch.equal(eager.born, graph.born)
            diff = float((eager.scores - graph.scores).abs().max())
            rows.append(
                ("push", f"{what}: CUDA graph vs eager", f"same slots and keys: {same}; scores differ by {diff:.1e}")
            )
        keys = pushes[0]
        seconds = median_seconds(
            {n: lambda m=m, k=keys: m.push(k) for n, m in memories.items()}, torch.device(device), 1, args.steps
        )
        rows += [("push", f"{what}, {name}", f"{1000 * s:,.1f} ms per push") for name, s in seconds.items()]
    return rows


def nccl_rows(args: argparse.Namespace) -> list[Row]:
    """This script as `torch.distributed.run` ranks (`--rank-smoke`): one per GPU, at most 2."""
    nproc = max(1, min(2, torch.cuda.device_count())) if torch.cuda.is_available() else 2
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += [__file__, "--rank-smoke", "--data", str(args.data), "--profile", str(args.profile)]
    command += ["--tiny"] * args.tiny
    tic = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr, file=sys.stderr)
        return [("torchrun", f"{nproc} x {backend}", f"{FAILED}: exit {proc.returncode} (its output is on stderr)")]
    last = proc.stdout.strip().splitlines()[-1]
    return [("torchrun", f"{nproc} x {backend}", f"{last} in {time.perf_counter() - tic:.0f} s")]


def rank_smoke(args: argparse.Namespace) -> None:
    """One rank of `nccl_rows`: 3 data-parallel dmoco steps, then the ranks' memories compared."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    world = World.from_launcher(device)
    cfg = study(args, device)
    here = world.device(device)
    torch.manual_seed(0)
    batch_size = cfg.pretrain.batch_size
    method = build_method("dmoco", cfg.pretrain, DataInfo(3, batch_size * world.size)).to(here).train()
    loss_module = data_parallel(method, world, cfg.pretrain.sync_batchnorm)
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.01)
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, device=here)
    augment = ssl_augmentation(cfg.pretrain.augment, 32, 3, [0.5] * 3, [0.25] * 3).to(here)
    positions = torch.arange(batch_size, device=here) + world.rank * batch_size
    batch = Batch(images, positions, positions, positions)
    for step in range(3):
        training_step(method, augment, optimizer, batch, cfg.runtime, (step, 3), world, loss_module)
    world.check_same(shared_state(method), 2)
    if world.is_main:
        print(f"3 data-parallel dmoco steps, memories equal on {world.size} ranks ({method.memory.num_filled} keys)")
    world.close()


def run_rows(cfg: StudyConfig, args: argparse.Namespace) -> list[Row]:
    """`--run-steps` of pretraining per method in `--run-methods` on the rho_max 0.9 LT set, seed 0."""
    source = load_source(cfg.data, cfg.runtime)
    manifest = build_manifest(source, cfg.data, cfg.prepare, 0.9, 0)
    dataset = IndexedImages(source.train, pretraining_indices(manifest, "lt", source.train.labels))
    stream = class_entropy(dataset.labels, source.num_classes)
    pre = replace(cfg.pretrain, max_steps=args.run_steps, diagnostics_every=0)
    mean, std = source.channel_stats()
    augment = ssl_augmentation(pre.augment, source.image_size, source.channels, mean, std)
    rows = []
    for name in args.run_methods:
        torch.manual_seed(0)
        method = build_method(name, pre, DataInfo(source.channels, len(dataset), source.num_classes))
        tic = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = Checkpoint(Path(tmp) / "checkpoint.pt", to_dict(pre))
            history = Trainer(method, dataset, augment, pre, cfg.runtime, 0, callbacks=[checkpoint]).fit()
        seconds = time.perf_counter() - tic
        late = [r["memory_entropy"] for r in history[-max(1, len(history) // 3) :]]
        memory = method.memory
        staleness = float((memory.pushes - memory.encoded[: memory.num_filled]).float().mean())
        same_push = 100 * int(memory.evicted_fresh) / max(1, int(memory.evicted.sum()))
        what = f"{name}, rho_max 0.9, {len(dataset):,} images, {len(history)} steps"
        figure = f"{len(history) * pre.batch_size / seconds:,.0f} images/s over {seconds:.0f} s; late memory "
        figure += f"entropy {sum(late) / len(late):.3f} (stream {stream:.3f}); key staleness {staleness:.1f}; "
        figure += f"same-push evictions {same_push:.0f} %"
        rows.append(("run", what, figure))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="an image folder with train/<class>/")
    parser.add_argument("--profile", type=Path, default=Path(__file__).parents[1] / "params/cifar10_dominant.yaml")
    parser.add_argument("--compile", action="store_true", help="runtime.compile in every section")
    parser.add_argument(
        "--compile-methods", nargs="*", default=None, choices=list(METHODS),
        help="timed again with runtime.compile beside eager (default moco dmoco; none with --tiny or --compile)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=10, help="timed rounds per step figure")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--run-steps", type=int, default=300)
    parser.add_argument("--run-methods", nargs="+", default=["moco", "dmoco", "dmoco_roll"], choices=list(METHODS))
    parser.add_argument("--tiny", action="store_true", help="CPU-sized everything (what CI runs)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rank-smoke", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (args.data / "train").is_dir():  # found out now, not after the sections before `run`
        parser.error(f"--data {args.data} has no train/ folder; pass an image folder with train/<class>/ images")
    if args.rank_smoke:
        return rank_smoke(args)
    if args.compile_methods is None:  # compiling costs about a minute per method
        args.compile_methods = [] if args.tiny or args.compile else ["moco", "dmoco"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = study(args, device)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    header = (
        f"{name}, torch {torch.__version__}, {os.cpu_count()} CPU cores; profile {args.profile.name}: "
        f"{cfg.runtime.precision}, channels_last {cfg.runtime.channels_last}, compile {cfg.runtime.compile}"
    )
    print(header, flush=True)  # before the work: a failing section still names the machine
    big = replace(cfg.pretrain, memory=replace(cfg.pretrain.memory, size=256 if args.tiny else 65536))
    sections: dict[str, Callable[[], list[Row]]] = {"step": lambda: step_rows(cfg.pretrain, cfg.runtime, args, "step")}
    if args.compile_methods:
        sections["compile"] = lambda: step_rows(cfg.pretrain, cfg.runtime, args, "compile")
    sections |= {
        "K": lambda: step_rows(big, cfg.runtime, args, "K"),
        "push": lambda: push_rows(cfg.pretrain, args, device),
        "torchrun": lambda: nccl_rows(args),
        "run": lambda: run_rows(cfg, args),
    }
    rows = run_sections(sections, header, args.out)
    sys.exit(int(any(figure.startswith(FAILED) for *_, figure in rows)))


def run_sections(sections: dict[str, Callable[[], list[Row]]], header: str, out: Path | None) -> list[Row]:
    """Every section in turn, a raising one as a FAILED row; after each, its rows and its wall time are
    printed and `out` holds the table so far (what a call cut off at its time limit still brings back)."""
    rows: list[Row] = []
    columns = ["", "| section | what | figure |", "|---|---|---|"]
    print("\n".join(columns), flush=True)  # the rows below, as they come, make one Markdown table
    for name, section in sections.items():
        tic = time.perf_counter()
        try:
            new = section()
        except Exception as error:  # the later sections' figures are still measured
            new = [(name, "(the whole section)", failure(error))]
        rows += new
        print("\n".join(f"| {a} | {b} | {c} |" for a, b, c in new), flush=True)
        print(f"{name}: {time.perf_counter() - tic:.0f} s", file=sys.stderr, flush=True)
        if out is not None:
            out.write_text("\n".join([header, *columns] + [f"| {a} | {b} | {c} |" for a, b, c in rows]) + "\n")
    return rows


if __name__ == "__main__":
    main()
