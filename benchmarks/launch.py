"""`python -m pipeline launch` against `dvc repro`: the default study's wall time, and the schedule of a
paper-scale study simulated on 1, 8 and 32 GPUs.

    python benchmarks/launch.py study                   # dvc repro, then launch, each in a fresh clone of HEAD
    python benchmarks/launch.py schedule [--scale 0.5]  # launch --simulate of two paper profiles' graphs

`study` runs the default study twice, back to back, each in its own clone of this checkout's HEAD with this
environment's Python and an empty source cache: once with `dvc repro`, once with `python -m pipeline
launch` (a local Ray instance on this machine's cores). It prints each one's wall time, its compute (the
training loops' `train_seconds` and the probes' `probe_seconds`, from the metrics), wall / compute, the ratio
of the two walls, and whether the tables agree apart from their timing columns.

`schedule` applies a profile (cifar10_lt_reference, cifar100_lt) in a clone and runs `launch --simulate` on
a Ray cluster of this machine's processes that declares the GPUs: each stage instance holds the resources
it would ask for (a pretrain or probe on CUDA: a GPU) for its estimated GPU cost in minutes times
`--scale` seconds, and runs nothing. It compares the makespan (first submission to last end) with the
ideal, max(critical path, GPU work / GPUs), and with one instance at a time (`dvc repro`: the sum).
The estimates (COSTS, minutes on one GPU) are set out in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
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
            longest[stage] = cost[stage.addressing] + max((finish(up) for up in graph.successors(stage)), default=0)
        return longest[stage]

    return max(finish(stage) for stage in graph)


def simulate(profile: str, gpus_per_node: int, nodes: int, scale: float) -> dict[str, float]:
    """One simulated launch of `profile` on `nodes` x `gpus_per_node` declared GPUs."""
    from dvc.repo import Repo
    from ray.cluster_utils import Cluster

    path = clone("duel-schedule-")
    env = environment() | LOOPBACK
    subprocess.run([sys.executable, "-m", "pipeline", "use-profile", profile], cwd=path, env=env, check=True)
    with Repo(str(path)) as repo:
        graph = repo.index.graph
        cost = {stage.addressing: minutes(stage.addressing, profile) * scale for stage in graph}
        crit = critical_path(graph, cost)
    gpu_work = sum(v for k, v in cost.items() if k.split("@")[0] in ("pretrain", "probe"))
    costs = path / "costs.yaml"
    costs.write_text(yaml.safe_dump(cost))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=8 * gpus_per_node, num_gpus=gpus_per_node, node_ip_address="127.0.0.1")
        command = [sys.executable, "-m", "pipeline", "launch", "--simulate", str(costs), "--address", cluster.address]
        proc = subprocess.run(command, cwd=path, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"launch --simulate failed in {path}:\n{proc.stderr[-3000:]}")
    finally:
        cluster.shutdown()
    done = json.loads((path / "logs/launch/summary.json").read_text())["instances"]
    makespan = max(i["ended"] for i in done) - min(i["submitted"] for i in done)
    shutil.rmtree(path, ignore_errors=True)
    gpus = gpus_per_node * nodes
    return {
        "instances": len(done),
        "serial": sum(cost.values()),
        "ideal": max(crit, gpu_work / gpus),
        "critical": crit,
        "makespan": makespan,
    }


def schedule(scale: float) -> None:
    print(f"one GPU-minute = {scale:g} s of simulation")
    head = f"{'GPUs':>5} {'instances':>9} {'one at a time':>13} {'ideal':>7} {'makespan':>8} {'/ ideal':>7}"
    print(f"{'profile':>20} {head}")
    for profile in ("cifar10_lt_reference", "cifar100_lt"):
        for gpus, nodes in ((1, 1), (8, 1), (8, 4)):
            r = simulate(profile, gpus, nodes, scale)
            print(
                f"{profile:>20} {gpus * nodes:>5} {r['instances']:>9} {r['serial']:>12.1f}s {r['ideal']:>6.1f}s "
                f"{r['makespan']:>7.1f}s {r['makespan'] / r['ideal']:>7.3f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    sub.add_parser("study", help="the default study: dvc repro against launch")
    sim = sub.add_parser("schedule", help="paper profiles' graphs simulated on 1, 8 and 32 GPUs")
    sim.add_argument("--scale", type=float, default=0.25, help="seconds of simulation per GPU-minute")
    args = parser.parse_args()
    if args.part == "study":
        study()
    else:
        os.environ.update(LOOPBACK)  # before Ray is imported: the simulated cluster on 127.0.0.1 alone
        schedule(args.scale)


if __name__ == "__main__":
    main()
