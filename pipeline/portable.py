"""`runtime.portable`: pin the CPU kernels' instruction set and the thread count before torch loads.

torch picks its vector kernels (ATen's CPU capability, MKL's and oneDNN's code paths) and its thread
count when it is imported, from the CPU it finds; so does OpenBLAS, numpy's and scipy's BLAS, under
the probe's logistic regression. Two x86-64 CPUs with other vector units, or two
thread counts, sum floats in another order and write other bytes. With `runtime.portable: true` every
stage process sets the variables below first, so any x86-64 CPU runs the same baseline kernels on the
same number of threads. Read with yaml alone: nothing here may import torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

# Baseline kernels: ATen's scalar-or-SSE "default" path, MKL's conditional numerical reproducibility
# mode, oneDNN capped at SSE4.1 (every x86-64 CPU of the last 15 years has it), OpenBLAS's SSE3 kernels
# (left to itself it picks the CPU's: Haswell's and SkylakeX's fits of the probe choose other Cs).
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "OPENBLAS_CORETYPE": "Prescott",
}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def params_path(argv: list[str]) -> Path:
    """The stage's `--params` file (params.yaml when not given)."""
    for i, arg in enumerate(argv):
        if arg == "--params" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--params="):
            return Path(arg.split("=", 1)[1])
    return Path("params.yaml")


def environment(argv: list[str]) -> dict[str, str]:
    """The variables the stage's params ask for (none without `runtime.portable: true`). A missing or
    broken file asks for none here: the stage itself reports it in one line."""
    try:
        runtime = (yaml.safe_load(params_path(argv).read_text()) or {}).get("runtime") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    if runtime.get("portable") is not True:
        return {}
    threads = runtime.get("threads")
    return PORTABLE_ENV | dict.fromkeys(THREAD_ENV, str(threads if isinstance(threads, int) and threads > 0 else 1))


def apply(argv: list[str]) -> None:
    """Set the portable environment in this process when the stage's params ask for it."""
    os.environ.update(environment(argv))
