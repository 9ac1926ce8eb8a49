"""Start-up of `python -m pipeline`: what a command costs before it does any work.

    python benchmarks/startup.py [--runs 5]

Times, as fresh processes in a temporary folder with the default params.yaml, `--help`, each
command's `--help`, and two refusals: a bad `--method` and a params.yaml with a bad value. Prints
the median and the minimum wall time of each over `--runs` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("prepare", "pretrain", "probe", "report", "use-profile", "ui")
BAD_PARAMS = "bad.yaml"  # the default params with pretrain.epochs: -1


def cases() -> dict[str, tuple[list[str], int]]:
    """Name -> (arguments, the exit code they must give)."""
    out = {"--help": (["--help"], 0)}
    out |= {f"{command} --help": ([command, "--help"], 0) for command in COMMANDS}
    out["refused --method"] = (["pretrain", "--method", "nope", "--imbalance", "100"], 2)
    out["refused params value"] = (["pretrain", "--method", "moco", "--imbalance", "100", "--params", BAD_PARAMS], 2)
    return out


def wall(cwd: Path, env: dict[str, str], args: list[str], code: int) -> float:
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - tic
    if proc.returncode != code:
        sys.exit(f"{' '.join(args)}: exit {proc.returncode}, not {code}: {proc.stderr.strip()[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        bad = {**params, "pretrain": {**params["pretrain"], "epochs": -1}}
        (root / BAD_PARAMS).write_text(yaml.safe_dump(bad, sort_keys=False))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
        times: dict[str, list[float]] = {name: [] for name in cases()}
        for _ in range(args.runs):  # interleaved: a change in the machine's load hits every case alike
            for name, (argv, code) in cases().items():
                times[name].append(wall(root, env, argv, code))
    width = max(map(len, times))
    print(f"{'command':<{width}}  median s  min s  ({args.runs} runs)")
    for name, values in times.items():
        print(f"{name:<{width}}  {statistics.median(values):8.2f}  {min(values):5.2f}")


if __name__ == "__main__":
    main()
