"""End-to-end wall time of the default `dvc repro`, and where it goes (issue: paper-scale studies, benchmark 3).

    python benchmarks/repro.py [--keep]

Clones this checkout's HEAD into a temporary folder and runs `dvc repro` there with this
environment's Python (so the install is not timed). Each stage's wall time runs from the
moment DVC announces it to the next announcement (or the end): its process start-up
(imports), its work and DVC's bookkeeping after it. The pretrain rows also give the time
spent in the training loop (`train_seconds` of the stage's metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANNOUNCE = re.compile(r"Running stage '([^'@]+)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the clone and print its path")
    args = parser.parse_args()
    clone = Path(tempfile.mkdtemp(prefix="duel-repro-"))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "PYTHONUNBUFFERED": "1"}
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)

    marks: list[tuple[float, str]] = []  # (time, stage) of each announcement
    log = []
    tic = time.perf_counter()
    with subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            if match := ANNOUNCE.search(line):
                marks.append((time.perf_counter(), match.group(1)))
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        sys.exit(f"dvc repro failed in {clone}:\n{''.join(log[-40:])}")

    seconds: dict[str, list[float]] = defaultdict(list)
    for (start, stage), (end, _) in zip(marks, [*marks[1:], (tic + wall, "")], strict=True):
        seconds[stage].append(end - start)
    training = sum(json.loads(p.read_text())["train_seconds"] for p in clone.glob("outputs/pretrain/*/metrics.json"))
    print(f"{'stage':>10} {'instances':>9} {'wall s':>8} {'mean s':>7}")
    for stage, values in seconds.items():
        print(f"{stage:>10} {len(values):>9} {sum(values):>8.1f} {sum(values) / len(values):>7.1f}")
    print(f"{'(training)':>10} {len(seconds['pretrain']):>9} {training:>8.1f}  inside the pretrain stages")
    print(f"{'(dvc)':>10} {'':>9} {marks[0][0] - tic:>8.1f}  before the first stage")
    print(f"summary: default dvc repro {wall:.0f} s wall ({wall / 60:.1f} min), of which {training:.0f} s training")
    if args.keep:
        print(f"clone kept at {clone}")
    else:
        shutil.rmtree(clone, ignore_errors=True)


if __name__ == "__main__":
    main()
