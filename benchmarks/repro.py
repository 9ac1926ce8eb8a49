"""End-to-end wall time of the default `dvc repro`, and where it goes (issue: paper-scale studies, benchmark 3).

    python benchmarks/repro.py [--keep]

Clones this checkout's HEAD into a temporary folder, runs `dvc repro` there with this
environment's Python (so the install is not timed), then reads the clone's MLflow store:
one run per stage instance, whose start/end times give the time inside each stage. The
rest of the wall time is process start-up (imports) and DVC's own bookkeeping.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the clone and print its path")
    args = parser.parse_args()
    clone = Path(tempfile.mkdtemp(prefix="duel-repro-"))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=clone, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        sys.exit(f"dvc repro failed in {clone}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{clone / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    runs["seconds"] = (runs["end_time"] - runs["start_time"]).dt.total_seconds()
    stages = runs.groupby("tags.stage")["seconds"].agg(["count", "sum", "mean"])
    print(f"{'stage':>10} {'instances':>9} {'in stage s':>10} {'mean s':>7}")
    for stage in ("prepare", "pretrain", "probe", "report"):
        if stage in stages.index:
            row = stages.loc[stage]
            print(f"{stage:>10} {int(row['count']):>9} {row['sum']:>10.1f} {row['mean']:>7.1f}")
    inside = stages["sum"].sum()
    print(f"{'overhead':>10} {int(stages['count'].sum()):>9} {wall - inside:>10.1f} {'':>7}  (start-up + DVC)")
    print(f"summary: default dvc repro {wall:.0f} s wall ({wall / 60:.1f} min), {inside:.0f} s inside stages")
    if args.keep:
        print(f"clone kept at {clone}")
    else:
        shutil.rmtree(clone, ignore_errors=True)


if __name__ == "__main__":
    main()
