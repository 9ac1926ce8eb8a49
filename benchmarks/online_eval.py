"""The cost of the accuracy over training (`pretrain.online_eval`): one pretrain run of a study with the
online kNN off and on, in one process.

    python benchmarks/online_eval.py [--params params.yaml] [--method dmoco] [--imbalance 1] [--repeats 2]

Runs the prepare and pretrain stages in a temporary folder (outputs and MLflow store there) on the given
params with `pretrain.online_eval.every` 0 and the params' own value (1 when it is 0), alternately, and
prints each run's `train_seconds` (the training loop, which holds the measurements) and, for the runs
with it on, the seconds spent in the measurements themselves (timed around each call). The share of
those seconds in the run is the cost; the on / off ratio of whole runs is printed beside it, but on
short runs it is within their run-to-run noise. Both settings train the same bytes
(tests/test_online_eval.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from pipeline import portable

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--method", default="dmoco")
    parser.add_argument("--imbalance", default="1")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    params = yaml.safe_load(args.params.read_text())
    every = params["pretrain"].get("online_eval", {}).get("every") or 1
    folder = Path(tempfile.mkdtemp(prefix="duel-online-"))
    os.chdir(folder)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the folder's own mlflow.db
    for name, value in (("off", 0), ("on", every)):
        online = {**params["pretrain"].get("online_eval", {}), "every": value}
        settings = {**params, "pretrain": {**params["pretrain"], "online_eval": online}}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    portable.apply(["--params", "off.yaml"])  # as `python -m pipeline` does, before torch loads
    from duel.eval.online import OnlineKNN
    from pipeline.cli import build_app

    measured: list[float] = []  # seconds of each measurement
    knn = OnlineKNN.__call__

    def timed(self: OnlineKNN, *knn_args: Any) -> dict[str, float]:
        tic = time.perf_counter()
        values = knn(self, *knn_args)
        measured.append(time.perf_counter() - tic)
        return values

    OnlineKNN.__call__ = timed  # type: ignore[method-assign]
    app = build_app()
    app(["prepare", "--imbalance", args.imbalance, "--params", "off.yaml"], standalone_mode=False)
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    shares = []
    for repeat in range(args.repeats):
        for name in ("off", "on"):
            measured.clear()
            command = ["pretrain", "--method", args.method, "--imbalance", args.imbalance, "--params", f"{name}.yaml"]
            app(command, standalone_mode=False)
            run = next((folder / "outputs/pretrain").glob(f"{args.method}-*"))
            metrics = json.loads((run / "metrics.json").read_text())
            seconds[name].append(metrics["train_seconds"])
            line = f"repeat {repeat} online_eval {name:>3}: train_seconds {metrics['train_seconds']:.2f}"
            if measured:
                shares.append(sum(measured) / metrics["train_seconds"])
                line += (
                    f", {len(measured)} measurements, {sum(measured):.2f} s in them "
                    f"({statistics.mean(measured):.3f} s each, {100 * shares[-1]:.1f} % of the run)"
                )
            print(line, flush=True)
    off, on = statistics.mean(seconds["off"]), statistics.mean(seconds["on"])
    print(
        f"{args.params.name} {args.method} imbalance {args.imbalance}, every {every} epoch(s): the measurements take "
        f"{100 * statistics.mean(shares):.1f} % of a run; whole runs off {off:.2f} s, on {on:.2f} s (on / off "
        f"{on / off:.3f})"
    )
    print(f"folder: {folder}")


if __name__ == "__main__":
    main()
