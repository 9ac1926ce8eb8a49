"""What `runtime.portable` costs: one pretrain and one probe stage of the default study, side by side,
native kernels against the portable baseline kernels, and the linear probe each gives.

    python benchmarks/portable.py [--method dmoco] [--imbalance 100]

Runs the stages in a temporary folder with this checkout's code and environment, with the default
params.yaml but for `runtime`. Prints each variant's stage wall times, their ratio to native with
torch's default threads, and a digest of its model.pt (equal digests: equal bytes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> runtime overrides
    "native, default threads": {},
    "native, 1 thread": {"threads": 1},
    "portable, 1 thread": {"portable": True, "threads": 1},
    "portable, 2 threads": {"portable": True, "threads": 2},
}


def stage(cwd: Path, env: dict[str, str], *args: str) -> float:
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1]}")
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="dmoco")
    parser.add_argument("--imbalance", default="100")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    run = ["--method", args.method, "--imbalance", args.imbalance]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        stage(root, env, "prepare", "--imbalance", args.imbalance)
        rows = []
        for name, runtime in VARIANTS.items():
            variant = {**params, "runtime": {**params["runtime"], **runtime}}
            (root / "params.yaml").write_text(yaml.safe_dump(variant, sort_keys=False))
            pretrain, probe = stage(root, env, "pretrain", *run), stage(root, env, "probe", *run)
            out = f"{args.method}-imb{args.imbalance}-lt-d0-s0"
            digest = hashlib.sha256((root / "outputs/pretrain" / out / "model.pt").read_bytes()).hexdigest()[:12]
            linear = json.loads((root / "outputs/probe" / out / "metrics.json").read_text())["linear_top1"]
            rows.append((name, pretrain, probe, digest, linear))
    base = rows[0][1] + rows[0][2]
    print(f"{args.method} at r={args.imbalance}, default study settings, {os.cpu_count()} cores\n")
    print("| runtime | pretrain (s) | probe (s) | both vs native | model.pt | linear top-1 (%) |")
    print("|---|---|---|---|---|---|")
    for name, pretrain, probe, digest, linear in rows:
        ratio = (pretrain + probe) / base
        print(f"| {name} | {pretrain:.1f} | {probe:.1f} | {ratio:.2f} x | {digest} | {100 * linear:.1f} |")


if __name__ == "__main__":
    main()
