"""Seeding, torch checkpoints written atomically, and progress bars."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from duel.config import RuntimeConfig
from duel.errors import DuelError
from duel.files import atomic_path

T = TypeVar("T")


def seed_everything(seed: int, device: str = "cpu") -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device == "cpu":
        torch.use_deterministic_algorithms(True)


def configure_cpu(runtime: RuntimeConfig) -> None:
    """torch's thread count from `runtime.threads`, and under `runtime.portable` a check that the
    baseline kernels are in use: their variables only work when set before torch is imported."""
    if runtime.portable and torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        raise DuelError(
            "runtime.portable: torch was imported before the setting could pin its kernels; run the stage as "
            "`python -m pipeline ...`, or set ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE "
            "ONEDNN_MAX_CPU_ISA=SSE41 OPENBLAS_CORETYPE=Prescott OMP_NUM_THREADS=<threads> before starting Python"
        )
    threads = runtime.threads or (1 if runtime.portable else None)
    if threads:
        torch.set_num_threads(threads)


def rng_states() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def save_torch(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterable[T]:
    """A rich progress bar on a terminal; the plain iterable otherwise (logs, CI, DVC pipes)."""
    from rich.console import Console
    from rich.progress import track

    console = Console(stderr=True)
    if not console.is_terminal:
        return items
    return track(items, description=description, total=total, console=console, transient=True)
