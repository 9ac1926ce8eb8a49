"""Stage commands on bad input: one line naming the problem, a non-zero exit, nothing written."""

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from pipeline import cli
from pipeline import pretrain as stage
from pipeline.common import CHECKPOINTS
from tests.project_copy import ROOT, free_port
from tests.tracking_server import tracking_server


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty working directory with the default params, not portable (these stages run in this
    process, whose torch is imported: tests/test_portable.py runs portable stages); MLflow pointed
    at a temp store."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["runtime"] |= {"portable": False, "threads": None}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    # A new file name each test: tmp_path is reused once a test passes (tmp_path_retention_policy), and
    # MLflow keeps an engine per URI open in this process, which would read the deleted store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / f'mlflow-{uuid.uuid4().hex[:8]}.db'}")
    return tmp_path


def set_params(project: Path, section: str, **values) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def run_stage(argv, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["pipeline", *argv])
    with pytest.raises(SystemExit) as info:
        cli.main()
    return info.value.code, capsys.readouterr().err


def written(project: Path) -> list[str]:
    return sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.name not in ("params.yaml",))


PRETRAIN = ["pretrain", "--method", "moco", "--imbalance", "10", "--seed", "0"]


@pytest.mark.parametrize(
    ("argv", "edit", "message"),
    [
        (["pretrain", "--method", "byol", "--imbalance", "10"], None, "--method='byol' is not allowed"),
        (["prepare", "--imbalance", "0.5"], None, "--imbalance=0.5 is not allowed: the imbalance ratio r"),
        ([*PRETRAIN, "--train-set", "test"], None, "--train-set='test' is not allowed: lt (the LT subset) or balanced"),
        (PRETRAIN, {"data": {"source": "cifar"}}, "data.source='cifar' is not allowed"),
        (PRETRAIN, {"pretrain": {"epochs": -1}}, "pretrain.epochs=-1 is not allowed: must be > 0"),
        (PRETRAIN, {"pretrain": {"batch_size": 512}}, "pretrain.memory.size=256 is not allowed"),
        (PRETRAIN, {"pretrain": {"nproc_per_node": 0}}, "pretrain.nproc_per_node=0 is not allowed: must be >= 1"),
        (PRETRAIN, {"pretrain": {"sync_batchnorm": True}}, "SyncBatchNorm runs on CUDA only, not runtime.device=cpu"),
        (["prepare", "--imbalance", "0.5"], {"prepare": {"profile": "dominant"}}, "sweep.imbalance=1.0"),
        (
            ["prepare", "--imbalance", "10"],
            {"data": {"source": "imagefolder"}, "runtime": {"data_root": "/nonexistent/cifar"}},
            "runtime.data_root='/nonexistent/cifar' has no train/ folder",
        ),
        (PRETRAIN, None, "outputs/prepare/imb10-d0/manifest.json is missing; run `dvc repro prepare@10-0` first"),
    ],
)
def test_bad_input_fails_in_one_line_before_any_output(project, monkeypatch, capsys, argv, edit, message):
    for section, values in (edit or {}).items():
        set_params(project, section, **values)
    code, err = run_stage(argv, monkeypatch, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert written(project) == []  # no outputs, not even an MLflow store


def test_unreachable_tracking_server_fails_fast(project, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    code, err = run_stage(["prepare", "--imbalance", "10"], monkeypatch, capsys)
    assert code == 2
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in err and "unset MLFLOW_TRACKING_URI" in err
    assert written(project) == []


def test_process_exit_code_and_stderr(project):
    """The real entry point, as DVC runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "prepare", "--imbalance", "0"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: params: --imbalance=0.0 is not allowed: the imbalance ratio r of profile 'exp' must be >= 1"
    ]


def test_a_rank_that_dies_ends_the_data_parallel_stage_in_one_line(project, monkeypatch, capsys):
    """The launcher's exit code (one rank died: torchrun stops the others) becomes the stage's one line."""
    set_params(project, "pretrain", nproc_per_node=2)
    launched = []

    def launcher(command, **kwargs):
        launched.append(command)
        return subprocess.CompletedProcess(command, returncode=1)

    monkeypatch.setattr(stage.subprocess, "run", launcher)
    code, err = run_stage(PRETRAIN, monkeypatch, capsys)
    assert "--nproc-per-node=2" in launched[0] and launched[0][-len(PRETRAIN) :] == PRETRAIN
    assert code == 2 and err.count("\n") == 1
    assert "data-parallel pretraining failed on one of its 2 processes (torchrun exit 1" in err
    assert "the last checkpoint is kept, so a rerun with --resume continues from it" in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])  # a scheduler's stop; Ctrl-C
def test_a_stopped_pretrain_leaves_nothing_and_resumes_into_the_same_run(project, monkeypatch, capsys, signum):
    set_params(project, "prepare", n_max=20)
    set_params(project, "pretrain", epochs=3, batch_size=16, checkpoint_every=1, memory={"size": 32})
    monkeypatch.setattr(sys, "argv", ["pipeline", "prepare", "--imbalance", "10"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 0

    logging = stage.MLflowLogging

    class KilledInEpochTwo(logging):
        def on_log(self, trainer, record, section):
            super().on_log(trainer, record, section)
            if section == "train" and record["step"] == 8:  # 4 steps per epoch: after the epoch-1 checkpoint
                os.kill(os.getpid(), signum)  # the stage's own handler unwinds it

    monkeypatch.setattr(stage, "MLflowLogging", KilledInEpochTwo)
    code, err = run_stage(PRETRAIN, monkeypatch, capsys)
    assert code == 130 and "--resume" in err
    assert not (project / "outputs/pretrain").exists()
    assert (project / "checkpoints/moco-imb10-lt-d0-s0/last.pt").exists()
    client = mlflow.MlflowClient()
    killed = client.search_runs([client.get_experiment_by_name("duel-digits").experiment_id], "tags.stage = 'pretrain'")
    assert [r.info.status for r in killed] == ["KILLED"]

    monkeypatch.setattr(stage, "MLflowLogging", logging)
    assert run_stage([*PRETRAIN, "--resume"], monkeypatch, capsys)[0] == 0
    assert {p.name for p in (project / "outputs/pretrain/moco-imb10-lt-d0-s0").iterdir()} == {
        "model.pt",
        "memory.pt",
        "metrics.json",
        "train_log.csv",
        "online_eval.csv",
        "memory_diagnostics.json",
        "memory_snapshots.npz",
    }
    assert not (project / "checkpoints/moco-imb10-lt-d0-s0").exists()

    runs = client.search_runs([client.get_experiment_by_name("duel-digits").experiment_id], "tags.stage = 'pretrain'")
    assert [r.info.status for r in runs] == ["FINISHED"]  # the killed run was reopened, not duplicated
    steps = sorted({m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")})
    assert steps == list(range(12))
    # Memory diagnostics: one point per epoch, the last at the last step, across the kill and the resume.
    ages = client.get_metric_history(runs[0].info.run_id, "memory/memory_age")
    assert max(m.step for m in ages) == 11 and len({m.step for m in ages}) == len(ages) > 1
    # Accuracy over training (online_eval in the default params): each epoch's last step, none repeated.
    online = client.get_metric_history(runs[0].info.run_id, "online/knn_top1")
    assert sorted(m.step for m in online) == [3, 7, 11]


# A stage process that SIGKILLs itself at one training step (no handler, no flush, no cleanup runs), or
# kills the tracking server's process group (KILL_GROUP) and goes on.
KILLED_AT_STEP = """
import os, signal, sys
from pipeline import cli, tracking, pretrain as stage
tracking.STEP_FLUSH = int(os.environ.get("STEP_FLUSH", tracking.STEP_FLUSH))
class Killed(stage.MLflowLogging):
    def on_log(self, trainer, record, section):
        super().on_log(trainer, record, section)
        if section == "train" and record["step"] == 9:  # 4 steps per epoch: two steps after the epoch-2 checkpoint
            if "KILL_GROUP" in os.environ:  # the tracking server goes away instead
                os.killpg(int(os.environ["KILL_GROUP"]), signal.SIGKILL)
            else:
                os.kill(os.getpid(), signal.SIGKILL)
stage.MLflowLogging = Killed
sys.argv = ["pipeline", *sys.argv[1:]]
cli.main()
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, flush_every",  # steps buffered at the kill / already sent past the checkpoint
    [("rmoco", 200), ("dmoco_roll", 1)],  # random draws of the memory's generator; the refresh window's pointer
)
def test_a_sigkilled_pretrain_resumes_to_the_uninterrupted_bytes_with_every_step_metric_once(
    project, tmp_path, method, flush_every
):
    set_params(project, "prepare", n_max=20)
    set_params(project, "pretrain", epochs=3, batch_size=16, checkpoint_every=1, memory={"size": 32})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STEP_FLUSH": str(flush_every)}
    argv = ["pretrain", "--method", method, "--imbalance", "10", "--seed", "0"]
    out = project / f"outputs/pretrain/{method}-imb10-lt-d0-s0"
    subprocess.run([sys.executable, "-m", "pipeline", "prepare", "--imbalance", "10"], env=env, check=True)
    elsewhere = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'uninterrupted.db'}"}
    subprocess.run([sys.executable, "-m", "pipeline", *argv], env=elsewhere, check=True)
    uninterrupted = {name: (out / name).read_bytes() for name in ("model.pt", "memory.pt")}
    shutil.rmtree(out)

    killed = subprocess.run([sys.executable, "-c", KILLED_AT_STEP, *argv], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()
    subprocess.run([sys.executable, "-m", "pipeline", *argv, "--resume"], env=env, check=True)
    for name, data in uninterrupted.items():
        assert (out / name).read_bytes() == data, name

    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("duel-digits").experiment_id], "tags.stage = 'pretrain'")
    assert [r.info.status for r in runs] == ["FINISHED"]
    for key, steps in (("train/loss", list(range(12))), ("memory/memory_age", [3, 7, 11])):
        logged = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, key))
        assert logged == steps, key  # none lost, none twice


@pytest.mark.slow
def test_a_damaged_output_stops_the_stage_reading_it_in_one_line(project, monkeypatch, capsys):
    set_params(project, "sweep", methods=["moco"], imbalance=[10])
    set_params(project, "prepare", n_max=20)
    set_params(project, "pretrain", epochs=1, batch_size=16, memory={"size": 32})
    set_params(project, "probe", heads=[], knn_k=5)
    probe = ["probe", "--method", "moco", "--imbalance", "10"]
    for argv in (["prepare", "--imbalance", "10"], PRETRAIN, probe, ["report"]):
        assert run_stage(argv, monkeypatch, capsys)[0] == 0
    pretrain, probed = "outputs/pretrain/moco-imb10-lt-d0-s0", "outputs/probe/moco-imb10-lt-d0-s0"
    for name, argv, rebuilt_by in [
        ("outputs/prepare/imb10-d0/manifest.json", probe, "prepare@10-0"),
        (f"{pretrain}/model.pt", probe, "pretrain@moco-10-lt-0-0"),
        (f"{pretrain}/memory.pt", ["report"], "pretrain@moco-10-lt-0-0"),
        (f"{pretrain}/metrics.json", ["report"], "pretrain@moco-10-lt-0-0"),
        (f"{pretrain}/train_log.csv", ["report"], "pretrain@moco-10-lt-0-0"),
        (f"{pretrain}/memory_diagnostics.json", ["report"], "pretrain@moco-10-lt-0-0"),
        (f"{probed}/metrics.json", ["report"], "probe@moco-10-lt-0-0"),
        (f"{probed}/test_features.npz", ["report"], "probe@moco-10-lt-0-0"),
    ]:
        path = project / name
        good = path.read_bytes()
        path.write_bytes(good[: len(good) // 3] if name.endswith((".pt", ".npz", ".json")) else b"\x00garbage\n")
        code, err = run_stage(argv, monkeypatch, capsys)
        assert code == 2 and err.count("\n") == 1, (name, err)
        assert f"error: {name} is damaged (" in err and f"delete it and run `dvc repro {rebuilt_by}`" in err, err
        path.write_bytes(good)
    assert run_stage(["report"], monkeypatch, capsys)[0] == 0


@pytest.mark.slow
def test_a_tracking_server_that_goes_away_mid_stage_fails_it_in_one_line_and_a_rerun_resumes(project, tmp_path):
    set_params(project, "prepare", n_max=20)
    set_params(project, "pretrain", epochs=3, batch_size=16, checkpoint_every=1, memory={"size": 32})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    with tracking_server(tmp_path) as (uri, server):
        env["MLFLOW_TRACKING_URI"] = uri
        subprocess.run([sys.executable, "-m", "pipeline", "prepare", "--imbalance", "10"], env=env, check=True)
        cut = subprocess.run(
            [sys.executable, "-c", KILLED_AT_STEP, *PRETRAIN],
            env={**env, "KILL_GROUP": str(server.pid)},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert cut.returncode == 2, cut.stderr
    assert cut.stderr.strip().splitlines()[-1].startswith(f"error: MLflow tracking server {uri} stopped answering")
    assert len(cut.stderr.strip().splitlines()) == 1 and "restart it and rerun" in cut.stderr
    assert (project / "checkpoints/moco-imb10-lt-d0-s0/last.pt").exists()

    with tracking_server(tmp_path) as (uri, _):  # the same store, restarted
        env["MLFLOW_TRACKING_URI"] = uri
        subprocess.run([sys.executable, "-m", "pipeline", *PRETRAIN, "--resume"], env=env, check=True, timeout=300)
        client = mlflow.MlflowClient(uri)
        runs = client.search_runs(
            [client.get_experiment_by_name("duel-digits").experiment_id], "tags.stage = 'pretrain'"
        )
        assert [r.info.status for r in runs] == ["FINISHED"]
        logged = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss"))
        assert logged == list(range(12))  # none lost to the outage, none twice
    assert (project / "outputs/pretrain/moco-imb10-lt-d0-s0/model.pt").exists()


@pytest.mark.slow
def test_pretrain_on_two_ranks_launched_by_the_stage_or_by_two_machines_logs_once_and_trains_alike(project):
    """`pretrain.nproc_per_node: 2`: the stage runs as 2 gloo ranks; rank 0 alone writes and logs. Then the same
    run as two machines start it."""
    set_params(project, "pretrain", nproc_per_node=2, epochs=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for argv in (["prepare", "--imbalance", "10"], ["pretrain", "--method", "dmoco", "--imbalance", "10"]):
        subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=project, env=env, check=True, timeout=300)
    metrics = yaml.safe_load((project / "outputs/pretrain/dmoco-imb10-lt-d0-s0/metrics.json").read_text())
    num_train = torch.load(project / "outputs/pretrain/dmoco-imb10-lt-d0-s0/model.pt")["config"]["num_train"]
    assert metrics["steps"] == num_train // 128  # global batch: 64 per process x 2
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("duel-digits").experiment_id])
    pretrain = [r for r in runs if r.data.tags["stage"] == "pretrain"]
    assert len(pretrain) == 1 and pretrain[0].info.status == "FINISHED"
    assert pretrain[0].data.params["world_size"] == "2" and pretrain[0].data.params["global_batch_size"] == "128"
    assert not list((project / CHECKPOINTS).glob("*/last.pt"))  # the finished run's checkpoint is gone

    # Several machines, as the README starts them: one launcher per node meeting at a c10d rendezvous
    # endpoint (two launchers on 127.0.0.1 here). The stage joins their process group instead of launching
    # its own, and trains the same bytes: the same 2 ranks, shards and per-rank augmentation streams.
    model = project / "outputs/pretrain/dmoco-imb10-lt-d0-s0/model.pt"
    one_launcher = model.read_bytes()
    port = free_port()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    launcher += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-machines"]
    command = [*launcher, "-m", "pipeline", "pretrain", "--method", "dmoco", "--imbalance", "10"]
    nodes = [
        subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in "ab"
    ]
    try:
        logs = [node.communicate(timeout=300)[0].decode()[-2000:] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], logs
    assert model.read_bytes() == one_launcher
    runs = client.search_runs([client.get_experiment_by_name("duel-digits").experiment_id])
    assert sorted(r.data.params.get("world_size") for r in runs if r.data.tags["stage"] == "pretrain") == ["2", "2"]
