"""`python -m pipeline launch`: a tiny digits study on a Ray cluster of three nodes on this machine, against a
serial `dvc repro` of the same study; a node lost mid-pretrain, the driver killed, a failing stage, the GPU
assignment, and each refused input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from duel.errors import DuelError
from pipeline.launch import Demand, check_cluster, demand
from pipeline.worker import in_process_args
from tests.project_copy import commit_all, copy_project, dvc, free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("launch")]  # one cluster for the module's tests

TINY = {
    "sweep": {"methods": ["moco", "dmoco"], "imbalance": [10], "seeds": [0]},
    "tracking": {"experiment": "launch"},
    "prepare": {"n_max": 30},
    "pretrain": {"epochs": 3, "batch_size": 16, "memory": {"size": 64}, "checkpoint_every": 1},
    "probe": {"knn_k": 20, "c_grid": [0.1, 1.0], "heads": ["ce"]},
    "report": {"tsne_perplexity": 5.0},
    "runtime": {"threads": 1},
}
# Ray's nodes, the launcher and the test on the loopback address (Ray's switch for a cluster on one machine).
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
TIMING = {"train_seconds", "probe_seconds", "images_per_s", "train_time_vs_moco"}
INTERRUPTED = "pretrain@dmoco-10-lt-0-0"


def make_study(root: Path, changes: dict | None = None) -> dict[str, str]:
    """A committed copy of the project running TINY (and `changes`); the environment to run in it."""
    root.mkdir(parents=True, exist_ok=True)
    env = copy_project(root) | LOOPBACK
    params = yaml.safe_load((root / "params.yaml").read_text())
    for tiny in (TINY, changes or {}):
        for section, values in tiny.items():
            for key, value in values.items():
                params[section][key] = {**params[section][key], **value} if isinstance(value, dict) else value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    commit_all(root, env, "launch study")
    return env


def launch(root: Path, env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline", "launch", *args]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def summary(root: Path) -> dict[str, dict]:
    return {i["stage"]: i for i in json.loads((root / "logs/launch/summary.json").read_text())["instances"]}


def runs(root: Path) -> tuple[mlflow.MlflowClient, list]:
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("launch")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPU (tasks go to the nodes, which can be removed) and three nodes of 2 CPUs and 2
    declared GPUs each, on 127.0.0.1."""
    os.environ.update(LOOPBACK)
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=2, num_gpus=2, node_ip_address="127.0.0.1")
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The study by `dvc repro`, one instance at a time."""
    root = tmp_path_factory.mktemp("serial")
    env = make_study(root)
    dvc(root, env, "repro")
    return root


def remove_node_running(cluster, root: Path, within: float = 600) -> str:
    """Wait until the INTERRUPTED run has written its first checkpoint, then remove the node it runs on;
    that node's label."""
    status = root / "logs/launch" / f"{INTERRUPTED}.json"
    checkpoint = root / "checkpoints/dmoco-imb10-lt-d0-s0/last.pt"
    deadline = time.monotonic() + within
    while not (status.exists() and checkpoint.exists()):
        assert time.monotonic() < deadline, f"{INTERRUPTED} wrote no checkpoint in {within} s"
        time.sleep(0.1)
    node = json.loads(status.read_text())["node"]
    victim = next(n for n in cluster.worker_nodes if node.endswith(n.node_id[:8]))
    cluster.remove_node(victim)
    return node


@pytest.fixture(scope="module")
def launched(tmp_path_factory, cluster):
    """The study by `launch` on the cluster; the node running the dmoco pretrain removed after its first
    checkpoint. Returns the copy, its environment, the launcher's output and the removed node."""
    root = tmp_path_factory.mktemp("launched")
    env = make_study(root)
    command = [sys.executable, "-m", "pipeline", "launch", "--address", cluster.address]
    out = root.parent / "launch.out"
    with out.open("w") as log, subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=log) as p:
        try:
            removed = remove_node_running(cluster, root)
            p.wait(timeout=900)
        finally:
            p.kill()
    output = out.read_text()
    assert p.returncode == 0, output[-4000:]
    cluster.add_node(num_cpus=2, num_gpus=2, node_ip_address="127.0.0.1")  # three nodes again for the next tests
    return root, env, output, removed


def test_every_instance_runs_and_dvc_records_it(launched):
    root, env, _, _ = launched
    done = summary(root)
    assert set(done) == {
        "prepare@10-0",
        "report",
        *(f"{s}@{m}-10-lt-0-0" for s in ("pretrain", "probe") for m in ("moco", "dmoco")),
    }
    assert {i["outcome"] for i in done.values()} == {"ran"}, done
    assert "Data and pipelines are up to date" in dvc(root, env, "status")
    assert "Running stage" not in dvc(root, env, "repro")  # DVC agrees nothing is stale


def test_tables_and_models_equal_a_serial_repro(launched, serial):
    root = launched[0]
    for table in sorted((serial / "reports").glob("*.csv")):
        if table.stem in TIMING:
            continue
        ours, theirs = pd.read_csv(root / "reports" / table.name), pd.read_csv(table)
        keep = [c for c in theirs.columns if c not in TIMING]
        pd.testing.assert_frame_equal(ours[keep], theirs[keep], obj=table.name)
    models = sorted(serial.glob("outputs/pretrain/*/*.pt"))
    assert len(models) == 4
    for model in models:
        assert (root / model.relative_to(serial)).read_bytes() == model.read_bytes(), model.relative_to(serial)


def test_a_lost_node_reruns_its_pretrain_from_the_checkpoint_into_the_same_mlflow_run(launched):
    root, _, output, removed = launched
    done = summary(root)
    assert done[INTERRUPTED]["attempts"] == 2, done[INTERRUPTED]
    assert done[INTERRUPTED]["node"] != removed
    log = (root / "logs/launch" / f"{INTERRUPTED}.log").read_text()
    assert log.count(f"--- {INTERRUPTED}: attempt") == 2, log
    client, found = runs(root)
    names = sorted(r.info.run_name for r in found)
    assert names == sorted(done), names  # one MLflow run per instance
    assert {r.info.status for r in found} == {"FINISHED"}
    run = next(r for r in found if r.info.run_name == INTERRUPTED)
    assert run.data.tags["launch_attempt"] == "2" and run.data.tags["launch_node"] == done[INTERRUPTED]["node"]
    for key in ("train/loss", "online/knn_top1"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps and len(steps) == len(set(steps)), (key, steps)  # every step point once
    assert "pretrain" in output and "attempts" in output  # the closing table


def test_a_failed_stage_skips_its_downstream_and_the_rest_finishes(tmp_path, cluster):
    env = make_study(tmp_path)
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    stages["stages"] |= {
        "broken": {"cmd": "python -m pipeline probe --method nope --imbalance 10", "outs": ["broken.txt"]},
        "after_broken": {"cmd": "python -c \"open('after.txt', 'w')\"", "deps": ["broken.txt"], "outs": ["after.txt"]},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    commit_all(tmp_path, env, "a broken stage")
    proc = launch(tmp_path, env, "after_broken", "prepare@10-0", "--address", cluster.address)
    assert proc.returncode != 0
    error = proc.stderr.strip().splitlines()[-1]
    assert "broken (exit 2; log: logs/launch/broken.log)" in error, error
    assert "1 skipped" in error, error
    assert "--method='nope'" in (tmp_path / "logs/launch/broken.log").read_text()
    done = summary(tmp_path)
    assert (done["broken"]["outcome"], done["after_broken"]["outcome"], done["prepare@10-0"]["outcome"]) == (
        "failed",
        "skipped",
        "ran",
    )
    assert set(yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]) == {"prepare@10-0"}


def test_a_killed_driver_started_again_finishes_without_rerunning_recorded_stages(tmp_path, cluster):
    env = make_study(tmp_path)
    command = [sys.executable, "-m", "pipeline", "launch", "--address", cluster.address]
    lock = tmp_path / "dvc.lock"
    with subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as p:
        deadline = time.monotonic() + 600
        while not (lock.exists() and "pretrain@" in lock.read_text()):
            assert p.poll() is None and time.monotonic() < deadline, "no pretrain recorded"
            time.sleep(0.2)
        p.send_signal(signal.SIGKILL)
    recorded = set(yaml.safe_load(lock.read_text())["stages"])
    assert "report" not in recorded
    proc = launch(tmp_path, env, "--address", cluster.address)
    assert proc.returncode == 0, proc.stderr[-4000:]
    done = summary(tmp_path)
    assert {s for s, i in done.items() if i["outcome"] == "up to date"} == recorded
    assert done["report"]["outcome"] == "ran"
    _, found = runs(tmp_path)
    names = [r.info.run_name for r in found if r.info.status == "FINISHED"]
    assert sorted(names) == sorted(done), names  # each instance finished once, the recorded ones not again


def test_gpus_go_to_one_instance_at_a_time(tmp_path, cluster):
    """Six CUDA pretrains (simulated: each holds its GPU for 3 s) on 3 nodes of 2 declared GPUs: the
    instances that overlap on a node hold different GPUs, and each sees only its own."""
    cuda = {"device": "cuda", "portable": False}  # portable pins CPU kernels only
    env = make_study(tmp_path, {"sweep": {"seeds": [0, 1, 2]}, "runtime": cuda})
    costs = tmp_path / "costs.yaml"
    costs.write_text("prepare: 0.1\npretrain: 3\nprobe: 0.1\nreport: 0.1\n")
    proc = launch(tmp_path, env, "--simulate", str(costs), "--address", cluster.address)
    assert proc.returncode == 0, proc.stderr[-4000:]
    done = [i for i in summary(tmp_path).values() if i["stage"].startswith("pretrain@")]
    assert len(done) == 6
    for inst in done:
        assert len(inst["devices"]) == 1 and inst["devices"] == inst["visible"].split(","), inst
    overlapping = 0
    for a in done:
        for b in done:
            same_time = a["started"] < b["ended"] and b["started"] < a["ended"]
            if a is not b and a["node"] == b["node"] and same_time:
                overlapping += 1
                assert a["devices"] != b["devices"], (a, b)
    assert overlapping, "no two instances shared a node at once: the test saw no assignment"
    assert not (tmp_path / "dvc.lock").exists()  # a simulation records nothing


def test_refusals_are_one_line_and_write_nothing(tmp_path):
    env = make_study(tmp_path)

    def refused(*args: str, within: float = 120, extra: dict | None = None) -> str:
        tic = time.monotonic()
        proc = launch(tmp_path, {**env, **(extra or {})}, *args, timeout=within)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert time.monotonic() - tic < within
        assert not (tmp_path / "logs").exists() and not (tmp_path / "dvc.lock").exists()
        return lines[0]

    assert "nope@1 is not a stage of dvc.yaml" in refused("nope@1")
    assert "no Ray cluster answers at" in refused("--address", f"127.0.0.1:{free_port()}", within=30)
    shim = tmp_path.parent / "no_ray"
    (shim / "ray").mkdir(parents=True)
    (shim / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    assert "make setup" in refused(extra={"PYTHONPATH": f"{shim}:{tmp_path}"})
    from dvc.repo import Repo

    with Repo(str(tmp_path)) as repo, repo.lock:  # a launch or dvc repro already running here
        assert "holds this repository's lock" in refused()
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["runtime"] |= {"device": "cuda", "portable": False}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "needs 1 CPU and 1 GPU on one node" in refused()  # this machine's local instance has no GPU


class FakeRay:
    def __init__(self, *nodes: tuple[str, float, float]) -> None:
        self.list = [{"Alive": True, "NodeManagerAddress": a, "Resources": {"CPU": c, "GPU": g}} for a, c, g in nodes]

    def nodes(self) -> list[dict]:
        return self.list


class FakeInstance:
    def __init__(self, name: str, need: Demand) -> None:
        self.name, self.demand = name, need


def test_the_cluster_check_refuses_sqlite_across_machines_and_what_no_node_has(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = [FakeInstance("pretrain@x", Demand(2, 1))]
    check_cluster(FakeRay(("host-a", 8, 1), ("host-a", 4, 0)), run)  # one machine: SQLite is safe
    with pytest.raises(DuelError, match=r"spans 2 machines .* SQLite"):
        check_cluster(FakeRay(("host-a", 8, 1), ("host-b", 8, 1)), run)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://host-a:5000")
    check_cluster(FakeRay(("host-a", 8, 1), ("host-b", 8, 1)), run)
    with pytest.raises(DuelError, match="needs 2 CPU and 1 GPU on one node"):
        check_cluster(FakeRay(("host-a", 8, 0), ("host-b", 1, 4)), run)


def test_an_instance_asks_for_what_its_run_uses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("params.yaml").read_text())
    base["runtime"] |= {"device": "cuda", "threads": 4, "portable": False}
    base["pretrain"]["nproc_per_node"] = 2
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(base))
    pretrain = "python -m pipeline pretrain --method dmoco --imbalance 100 --params gpu.yaml --resume"
    assert demand(pretrain) == Demand(8, 2, subprocess_only=True)
    assert demand("python -m pipeline probe --method dmoco --imbalance 100 --params gpu.yaml") == Demand(4, 1)
    assert demand("python -m pipeline report --params gpu.yaml") == Demand(4, 0)
    base["runtime"]["device"] = "cpu"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base))
    assert demand("python -m pipeline pretrain --method moco --imbalance 10") == Demand(8, 0, subprocess_only=True)
    assert demand("python train.py") == Demand(1, 0, subprocess_only=True)
    assert in_process_args("python -m pipeline report --params p.yaml") == ["report", "--params", "p.yaml"]
    assert in_process_args("python -m pipeline use-profile digits") is None
