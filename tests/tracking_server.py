"""An MLflow tracking server for tests: SQLite backend and artifacts in a folder, 127.0.0.1 on a free port,
its whole process group killed on exit."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.tracking import unreachable
from tests.project_copy import free_port


@contextlib.contextmanager
def tracking_server(folder: Path, start_within: float = 90.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yield the server's URI and process; `os.killpg(process.pid, ...)` stops it and its workers."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'server.db'}",
        "--artifacts-destination",
        str(folder / "server-artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # as `make server` runs it
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_within
        while unreachable(uri):
            assert server.poll() is None, f"mlflow server exited with {server.returncode}"
            assert time.monotonic() < deadline, f"mlflow server did not answer within {start_within} s"
            time.sleep(0.5)
        yield uri, server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
