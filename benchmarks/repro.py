"""End-to-end wall time of the default `dvc repro`, its overhead ratio, and where the overhead goes.

    python benchmarks/repro.py [--keep]

Clones this checkout's HEAD into a temporary folder and runs `dvc repro` there with this
environment's Python (so the install is not timed). Each stage's wall time runs from the
moment DVC announces it to the next announcement (or the end): its process start-up
(imports, loading the data), its work, its logging and DVC's bookkeeping after it. The
compute is what the study needs whatever runs it: the training loops (`train_seconds` of the
pretrain metrics) and the probes (`probe_seconds`: features, linear probe, kNN, heads). The
overhead ratio is wall / compute (target: at most 2); the per-instance overhead is a stage's
wall minus its compute.
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
    # An empty source cache, as on a fresh machine: the first stage decodes the data (runtime keys are no stage's deps).
    params, default = clone / "params.yaml", "cache_dir: ~/.cache/duel"
    assert default in params.read_text(), f"params.yaml no longer sets {default!r}: update this benchmark"
    params.write_text(params.read_text().replace(default, f"cache_dir: {clone / '.source-cache'}"))

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

    def compute(stage: str, key: str) -> float:
        return sum(json.loads(p.read_text())[key] for p in clone.glob(f"outputs/{stage}/*/metrics.json"))

    spent = {"pretrain": compute("pretrain", "train_seconds"), "probe": compute("probe", "probe_seconds")}
    print(f"{'stage':>10} {'instances':>9} {'wall s':>8} {'compute s':>9} {'overhead s':>10}  (per instance)")
    for stage, values in seconds.items():
        n, work = len(values), spent.get(stage, 0.0)
        print(f"{stage:>10} {n:>9} {sum(values):>8.1f} {work:>9.1f} {(sum(values) - work) / n:>10.1f}")
    print(f"{'(dvc)':>10} {'':>9} {marks[0][0] - tic:>8.1f}  before the first stage")
    total = sum(spent.values())
    print(
        f"summary: default dvc repro {wall:.0f} s wall ({wall / 60:.1f} min); compute {total:.0f} s "
        f"(training {spent['pretrain']:.0f} s, probes {spent['probe']:.0f} s); overhead ratio {wall / total:.2f}"
    )
    if args.keep:
        print(f"clone kept at {clone}")
    else:
        shutil.rmtree(clone, ignore_errors=True)


if __name__ == "__main__":
    main()
