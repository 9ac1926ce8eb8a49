"""`python -m pipeline launch` against `dvc repro`: the default study's wall time, and the schedule of a
paper-scale study simulated on 1, 8 and 32 GPUs.

    python benchmarks/launch.py study                   # dvc repro, then launch, each in a fresh clone of HEAD
    python benchmarks/launch.py schedule                # launch --simulate of two paper profiles' graphs

`study` runs the default study twice, back to back, each in its own clone of this checkout's HEAD with this
environment's Python and an empty source cache: once with `dvc repro`, once with `python -m pipeline
launch` (a local Ray instance on this machine's cores). It prints each one's wall time, its compute (the
training loops' `train_seconds` and the probes' `probe_seconds`, from the metrics), wall / compute, the ratio
of the two walls, and whether the tables agree apart from their timing columns.

`schedule` applies a profile (cifar10_lt_reference, cifar100_lt) in a clone and runs `launch --simulate` on
a Ray cluster of this machine's processes that declares the GPUs: each stage instance holds the resources
it would ask for (a pretrain or probe on CUDA: a GPU) for its estimated GPU cost in minutes times a scale
(SCALES: seconds per minute), and runs nothing. It compares the makespan (first submission to last end)
with one instance at a time (`dvc repro`: the sum), with the ideal, max(critical path, GPU work / GPUs),
and with the same order scheduled with no overhead at all ("list"); "ramp" is the time until every GPU
has started its first instance and "gaps" a GPU's mean idle time between instances after that. The
estimates (minutes on one GPU) are set out beside PRETRAIN_MINUTES below and in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("train_seconds", "probe_seconds", "images_per_s", "train_time_vs_moco")
# Minutes of one GPU per instance at a reference profile's settings (ResNet-18, CIFAR-10-LT r = 100: 12,406
# images; 200 epochs): an image pass costs one forward and a backward (3 forwards) per view, MoCo's key
# encoder one forward more per view, SDCLR's pruned branch a second encoder; at 4,000 training forward-
# backward images per second (a V100-class GPU, ResNet-18 at 32 px, mixed precision) SimCLR's 2 x 12,406
# image passes an epoch take 6.2 s, 200 epochs 21 minutes. CIFAR-100-LT (r = 100: 10,847 images) costs 0.87x.
PRETRAIN_MINUTES = {"simclr": 21, "simclr_ts": 21, "bcl": 21, "gh": 22, "dsimclr": 22, "sdclr": 36}
MEMORY_MINUTES = {"moco": 28, "moco_ts": 28, "dmoco": 30, "dmoco_ts": 30}  # 4 forwards an image: 28 min
PROBE_MINUTES = 2.0  # features of 60,000 images and the C grid and heads on cached features
CPU_MINUTES = {"prepare": 0.5, "report": 1.0}
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray's nodes and the launcher on 127.0.0.1


def clone(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(path)], check=True)
    return path


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | {"PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "PYTHONUNBUFFERED": "1"}


def run_study(command: list[str]) -> tuple[Path, float, float]:
    """The default study in a fresh clone: its folder, wall seconds and compute seconds."""
    path = clone("duel-launch-")
    params, default = path / "params.yaml", "cache_dir: ~/.cache/duel"
    assert default in params.read_text(), f"params.yaml no longer sets {default!r}: update this benchmark"
    params.write_text(params.read_text().replace(default, f"cache_dir: {path / '.source-cache'}"))
    tic = time.perf_counter()
    proc = subprocess.run(command, cwd=path, env=environment(), capture_output=True, text=True)
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed in {path}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")

    def total(stage: str, key: str) -> float:
        return sum(json.loads(p.read_text())[key] for p in path.glob(f"outputs/{stage}/*/metrics.json"))

    return path, wall, total("pretrain", "train_seconds") + total("probe", "probe_seconds")


def tables_agree(a: Path, b: Path) -> list[str]:
    """The report tables that differ outside their timing columns."""
    differ = []
    for table in sorted((a / "reports").glob("*.csv")):
        if table.stem in TIMING:  # a table of timings alone
            continue
        x, y = pd.read_csv(table), pd.read_csv(b / "reports" / table.name)
        keep = [c for c in x.columns if c not in TIMING]
        if not x[keep].equals(y[keep]):
            differ.append(table.name)
    return differ


def study() -> None:
    repro_dir, repro_wall, repro_compute = run_study([sys.executable, "-m", "dvc", "repro"])
    launch_dir, launch_wall, launch_compute = run_study([sys.executable, "-m", "pipeline", "launch"])
    print(f"{'':>8} {'wall s':>8} {'compute s':>9} {'wall / compute':>14}")
    print(f"{'repro':>8} {repro_wall:>8.1f} {repro_compute:>9.1f} {repro_wall / repro_compute:>14.2f}")
    print(f"{'launch':>8} {launch_wall:>8.1f} {launch_compute:>9.1f} {launch_wall / launch_compute:>14.2f}")
    differ = tables_agree(repro_dir, launch_dir)
    print(
        f"summary: launch wall / repro wall = {launch_wall / repro_wall:.2f}; "
        f"tables {'differ: ' + ', '.join(differ) if differ else 'equal apart from timing columns'}"
    )
    for path in (repro_dir, launch_dir):
        shutil.rmtree(path, ignore_errors=True)


def minutes(name: str, profile: str) -> float:
    """An instance's estimated minutes on one GPU (CPU stages: on the node's CPUs)."""
    stage, _, item = name.partition("@")
    if stage in CPU_MINUTES:
        return CPU_MINUTES[stage]
    if stage == "probe":
        return PROBE_MINUTES
    method = item.split("-")[0]
    scale = 0.87 if profile.startswith("cifar100") else 1.0
    return (PRETRAIN_MINUTES | MEMORY_MINUTES)[method] * scale


def critical_path(graph, cost: dict[str, float]) -> float:
    """The longest chain of costs through the stage graph (edges: stage -> a stage it depends on)."""
    longest: dict = {}

    def finish(stage) -> float:
        if stage not in longest:
            longest[stage] = cost[stage.name] + max((finish(up) for up in graph.successors(stage)), default=0)
        return longest[stage]

    return max(finish(stage) for stage in graph)


def list_schedule(order: list[str], ups: dict[str, list[str]], cost: dict[str, float], gpus: int) -> float:
    """The makespan of `order` with no overhead at all: each GPU instance, as soon as its upstream is done,
    takes a free GPU in that order (CPU stages never wait)."""
    done: set[str] = set()
    running: list[tuple[float, str, bool]] = []
    pending, now, free = list(order), 0.0, gpus
    while pending or running:
        for name in [n for n in pending if all(u in done for u in ups[n])]:
            gpu = name.split("@")[0] in ("pretrain", "probe")
            if gpu and not free:
                continue
            free -= gpu
            pending.remove(name)
            heapq.heappush(running, (now + cost[name], name, gpu))
        now, name, gpu = heapq.heappop(running)
        done.add(name)
        free += gpu
    return now


def simulate(profile: str, gpus_per_node: int, nodes: int, scale: float) -> dict[str, float]:
    """One simulated launch of `profile` on `nodes` x `gpus_per_node` declared GPUs."""
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro
    from ray.cluster_utils import Cluster

    path = clone("duel-schedule-")
    env = environment() | LOOPBACK
    subprocess.run([sys.executable, "-m", "pipeline", "use-profile", profile], cwd=path, env=env, check=True)
    with Repo(str(path)) as repo:
        graph = repo.index.graph
        cost = {stage.name: minutes(stage.name, profile) * scale for stage in graph}
        crit = critical_path(graph, cost)
        order = [s.name for s in plan_repro(get_active_graph(graph), collect_stages(repo, [str(path / "dvc.yaml")]))]
        ups = {s.name: [u.name for u in graph.successors(s)] for s in graph}
    gpus = gpus_per_node * nodes
    gpu_work = sum(v for k, v in cost.items() if k.split("@")[0] in ("pretrain", "probe"))
    costs = path / "costs.yaml"
    costs.write_text(yaml.safe_dump(cost))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    try:
        for _ in range(nodes):
            # a CPU per GPU instance (the profiles ask for one) and two for the CPU stages
            cluster.add_node(num_cpus=gpus_per_node + 2, num_gpus=gpus_per_node, node_ip_address="127.0.0.1")
        command = [sys.executable, "-m", "pipeline", "launch", "--simulate", str(costs), "--address", cluster.address]
        proc = subprocess.run(command, cwd=path, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"launch --simulate failed in {path}:\n{proc.stderr[-3000:]}")
    finally:
        cluster.shutdown()
    done = json.loads((path / "logs/launch/summary.json").read_text())["instances"]
    shutil.rmtree(path, ignore_errors=True)
    t0 = min(i["submitted"] for i in done)
    by_gpu: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for i in done:
        for device in i["devices"]:
            by_gpu.setdefault((i["node"], device), []).append((i["started"], i["ended"]))
    spans = [sorted(v) for v in by_gpu.values()]
    return {
        "instances": len(done),
        "serial": sum(cost.values()),
        "ideal": max(crit, gpu_work / gpus),
        "list": list_schedule(order, ups, cost, gpus),
        "makespan": max(i["ended"] for i in done) - t0,
        # until every GPU ran its first instance: Ray starting a worker process per GPU on this machine
        "ramp": max(s[0][0] for s in spans) - t0 if len(spans) == gpus else float("nan"),
        # a GPU waiting between one instance's end and the next one's start, on average per GPU
        "gaps": sum(b[0] - a[1] for s in spans for a, b in itertools.pairwise(s)) / gpus,
    }


# Seconds of simulation per GPU-minute: one GPU runs the whole study (minutes); 8 and 32 share it, and at
# a larger scale the start of Ray's worker processes on this machine weighs less against the schedule.
SCALES = {1: 0.25, 8: 1.0, 32: 1.0}


def schedule() -> None:
    head = " ".join(f"{c:>9}" for c in ("s/min", "one/time", "ideal", "list", "makespan", "/ ideal", "ramp", "gaps"))
    print(f"{'profile':>20} {'GPUs':>4} {'inst':>4} {head}")
    for profile in ("cifar10_lt_reference", "cifar100_lt"):
        for gpus, nodes in ((1, 1), (8, 1), (8, 4)):
            scale = SCALES[gpus * nodes]
            r = simulate(profile, gpus, nodes, scale)
            cells = [scale, r["serial"], r["ideal"], r["list"], r["makespan"], r["makespan"] / r["ideal"]]
            cells += [r["ramp"], r["gaps"]]
            print(f"{profile:>20} {gpus * nodes:>4} {r['instances']:>4} " + " ".join(f"{c:>9.2f}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    sub.add_parser("study", help="the default study: dvc repro against launch")
    sub.add_parser("schedule", help="paper profiles' graphs simulated on 1, 8 and 32 GPUs")
    args = parser.parse_args()
    if args.part == "study":
        study()
    else:
        os.environ.update(LOOPBACK)  # before Ray is imported: the simulated cluster on 127.0.0.1 alone
        schedule()


if __name__ == "__main__":
    main()
