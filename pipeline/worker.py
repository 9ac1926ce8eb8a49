"""The Ray side of `python -m pipeline launch`: one stage instance per task, in a long-lived worker process.

A worker keeps what it imported (torch, MLflow, the stage modules) from one instance to the next, so an
instance costs its own work and not a Python start-up. What the launcher must fix before torch loads
(`runtime.portable`'s kernels and thread count) comes from the job's environment, set when the worker
starts; what a stage sets globally is set afresh for each instance (`fresh_process_state`). Every instance
appends to its log and writes a small status file beside it on the shared filesystem: the driver reads
them for its progress display, and a task Ray retries after a lost node counts its attempts there.

No DVC here: the driver alone runs it (pipeline/launch.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.tracking import TAG_ENV

# The stage commands a worker runs in its own process; any other command (a user's own stage, or a
# data-parallel pretrain that must be its own process group under torchrun) runs as a subprocess.
IN_PROCESS = ("prepare", "pretrain", "probe", "report")
NODE_ENV, ATTEMPT_ENV = TAG_ENV["launch_node"], TAG_ENV["launch_attempt"]  # the run's MLflow tags


def node_label() -> str:
    """This worker's node as the progress display and MLflow name it: its address and Ray node id."""
    import ray

    context = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{context.get_node_id()[:8]}"


def devices() -> list[str]:
    """The GPUs Ray gave this task (it also sets CUDA_VISIBLE_DEVICES to them)."""
    import ray

    return [str(g) for g in ray.get_gpu_ids()]


def start_attempt(status: Path, name: str) -> dict[str, Any]:
    """Count this start of the instance in its status file and say where it runs."""
    attempt = 1
    with contextlib.suppress(OSError, ValueError, KeyError):
        attempt = json.loads(status.read_text())["attempt"] + 1
    record = {
        "stage": name,
        "node": node_label(),
        "devices": devices(),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES", ""),  # what the stage's CUDA sees: the same
        "attempt": attempt,
        "started": time.time(),
    }
    status.parent.mkdir(parents=True, exist_ok=True)
    tmp = status.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(status)
    return record


@contextlib.contextmanager
def redirected(log: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (Python's and the C libraries') to the end of `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with log.open("ab", buffering=0) as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


@contextlib.contextmanager
def instance_context(root: Path, env: dict[str, str]) -> Iterator[None]:
    """The working directory and environment a stage command has under DVC, undone afterwards."""
    cwd, saved = Path.cwd(), {key: os.environ.get(key) for key in env}
    os.chdir(root)
    os.environ.update(env)
    try:
        yield
    finally:
        os.chdir(cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


INITIAL_THREADS: int | None = None


def fresh_process_state() -> None:
    """What a stage sets for its whole process, back to what a new `python -m pipeline` starts with: no
    active MLflow run, torch's thread count and non-deterministic default (seeds: every stage seeds itself)."""
    global INITIAL_THREADS
    if "mlflow" in sys.modules:
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run("KILLED")
    if "torch" in sys.modules:
        import torch

        INITIAL_THREADS = INITIAL_THREADS or torch.get_num_threads()
        torch.set_num_threads(INITIAL_THREADS)
        torch.use_deterministic_algorithms(False)


def run_in_process(args: list[str]) -> int:
    """`python -m pipeline ARGS` in this process; its exit status."""
    from pipeline.cli import main

    argv = sys.argv
    sys.argv = ["pipeline", *args]
    fresh_process_state()
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:  # an unexpected error: the traceback goes to the instance's log, as in a process of its own
        import traceback

        traceback.print_exc()
        return 1
    finally:
        sys.argv = argv
        fresh_process_state()
    return 0


def in_process_args(cmd: str) -> list[str] | None:
    """The arguments of a `python -m pipeline <stage>` command a worker runs itself; None for any other."""
    args = shlex.split(cmd)
    if args[:3] == ["python", "-m", "pipeline"] and len(args) > 3 and args[3] in IN_PROCESS:
        return args[3:]
    return None


def run_instance(root: str, name: str, cmd: str, log: str, status: str, subprocess_only: bool) -> dict[str, Any]:
    """Run one stage instance's command as DVC would (its cwd, DVC_ROOT and DVC_STAGE); its exit status,
    node, devices, attempt and seconds. The command's output goes to `log`."""
    record = start_attempt(Path(status), name)
    env = {"DVC_ROOT": root, "DVC_STAGE": name, NODE_ENV: record["node"], ATTEMPT_ENV: str(record["attempt"])}
    args = None if subprocess_only else in_process_args(cmd)
    tic = time.perf_counter()
    with redirected(Path(log)), instance_context(Path(root), env):
        print(f"--- {name}: attempt {record['attempt']} on {record['node']}: {cmd}", flush=True)
        if args is not None:
            code = run_in_process(args)
        else:
            # As DVC runs a command: through the shell, `python` the environment's interpreter.
            path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
            code = subprocess.run(cmd, shell=True, cwd=root, env={**os.environ, "PATH": path}).returncode
    return {**record, "code": code, "seconds": time.perf_counter() - tic, "ended": time.time()}


def simulate_instance(name: str, seconds: float, status: str) -> dict[str, Any]:
    """`launch --simulate`: hold the instance's resources for `seconds`, run nothing."""
    record = start_attempt(Path(status), name)
    tic = time.perf_counter()
    time.sleep(seconds)
    return {**record, "code": 0, "seconds": time.perf_counter() - tic, "ended": time.time()}
