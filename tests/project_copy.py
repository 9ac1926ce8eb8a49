"""A committed copy of the project in a temporary folder, for study runs that leave this checkout alone."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a server or rendezvous a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sh(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 1200) -> str:
    """Run a command to its end, at most `timeout` seconds: a hung command fails its test, not the suite."""
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def dvc(cwd: Path, env: dict[str, str], *args: str) -> str:
    return sh([sys.executable, "-m", "dvc", *args], cwd, env)


def run_stages(cwd: Path, env: dict[str, str]) -> str:
    """Every stage of the copy's study in one process (tests/stages_in_process.py), instead of `dvc repro`."""
    return sh([sys.executable, "-m", "tests.stages_in_process"], cwd, env)


def copy_project(root: Path) -> dict[str, str]:
    """Copy the tracked and untracked-but-not-ignored files (not the study's results) into `root`;
    return the environment commands in it must run with."""
    tracked = sh(["git", "ls-files", "-co", "--exclude-standard"], ROOT, dict(os.environ)).split("\n")
    for rel in filter(None, tracked):
        if rel == "dvc.lock" or rel.startswith(("outputs/", "reports/")) or not (ROOT / rel).is_file():
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, root / rel)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "PYTHONPATH": str(root)}
    return env


def commit_all(root: Path, env: dict[str, str], message: str) -> None:
    sh(["git", "init", "-q"], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], root, env)
