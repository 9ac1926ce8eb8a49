"""`python -m pipeline <command>`: one typer app, one command per DVC stage, plus use-profile and ui.

A stage's command checks its command line and params here, then imports its stage's module
(`pipeline/<stage>.py`) to run it: `--help` and a refused value import no stage, and each stage
process imports only what its own stage uses.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from duel.errors import DuelError
from pipeline.common import (
    PARAMS,
    DrawOption,
    ImbalanceOption,
    MethodOption,
    ParamsOption,
    RunKey,
    SeedOption,
    TrainSetOption,
    check_imbalance,
    check_method,
    check_train_set,
    read_params,
)
from pipeline.profiles import use_profile
from pipeline.tracking import StageKilled
from pipeline.ui import ui

if TYPE_CHECKING:
    from duel.config import StudyConfig


def stage(name: str) -> ModuleType:
    """The stage's module, imported once its command line and params are checked."""
    return importlib.import_module(f"pipeline.{name}")


def run_key(cfg: StudyConfig, method: str, imbalance: float, train_set: str, draw: int, seed: int) -> RunKey:
    """The run's key, its method, imbalance and training set checked against the params."""
    check_method(method)
    check_imbalance(cfg, imbalance)
    check_train_set(train_set)
    return RunKey(method, imbalance, train_set, draw, seed)


def prepare(imbalance: ImbalanceOption, draw: DrawOption = 0, params: ParamsOption = PARAMS) -> None:
    """Build the manifest (validation split, pool, LT subset, its balanced match, counts, source fingerprint)."""
    cfg = read_params(params)
    check_imbalance(cfg, imbalance)
    stage("prepare").prepare(cfg, imbalance, draw)


def pretrain(
    method: MethodOption,
    imbalance: ImbalanceOption,
    train_set: TrainSetOption = "lt",
    draw: DrawOption = 0,
    seed: SeedOption = 0,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run from its last checkpoint")] = False,
    params: ParamsOption = PARAMS,
) -> None:
    """Pretrain one encoder; writes model.pt, memory.pt, metrics.json, train_log.csv and memory_diagnostics.json."""
    cfg = read_params(params)
    key = run_key(cfg, method, imbalance, train_set, draw, seed)  # checked before the stage imports torch
    stage("pretrain").pretrain(cfg, key, resume)


def probe(
    method: MethodOption,
    imbalance: ImbalanceOption,
    train_set: TrainSetOption = "lt",
    draw: DrawOption = 0,
    seed: SeedOption = 0,
    params: ParamsOption = PARAMS,
) -> None:
    """Linear probe (C chosen on validation), kNN and the LT-aware heads of probe.heads; overall / many /
    medium / few top-1 on test. The protocol is the same whatever set the encoder pretrained on: groups
    by the draw's LT counts, heads trained on its LT set."""
    cfg = read_params(params)
    key = run_key(cfg, method, imbalance, train_set, draw, seed)
    stage("probe").probe(cfg, key)


def report(params: ParamsOption = PARAMS) -> None:
    """Aggregate every run into reports/: Markdown + CSV tables, plots, t-SNE maps."""
    stage("report").report(read_params(params), params)


def launch(
    targets: Annotated[
        list[str] | None, typer.Argument(help="stages or outputs to bring up to date, as `dvc repro` takes them")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="a running Ray cluster (host:port of its head, or auto); default: a local instance"),
    ] = None,
    simulate: Annotated[
        Path | None,
        typer.Option(
            help="a YAML file of seconds per stage (pretrain: 30) or per pattern of instance names "
            "(pretrain@sdclr-*: 45, the first match wins): each instance holds its resources that long, "
            "and nothing runs or is recorded (a dry run of the schedule)"
        ),
    ] = None,
) -> None:
    """Run every stale stage instance of dvc.yaml as Ray tasks, in parallel where the graph and the cluster's
    CPUs and GPUs allow, each recorded in dvc.lock by DVC as it finishes (docs/cluster.md)."""
    try:
        stage("launch").launch(targets or [], address, simulate)
    except StageKilled as exc:
        raise DuelError(
            f"launch stopped by {exc}; the stages it recorded are kept: run it again to finish the rest"
        ) from None


def provenance(
    strict: Annotated[
        bool, typer.Option(help="exit 1 when a study is not current (stale, incomplete, not recorded)")
    ] = False,
) -> None:
    """Name each committed study under reports/ current or stale: the code its stages depended on (its
    provenance.json, from dvc.lock) against the files now, hashed as DVC does."""
    from pipeline.provenance import check

    check(Path.cwd(), strict)


COMMANDS: dict[str, Callable[..., Any]] = {
    "prepare": prepare,
    "pretrain": pretrain,
    "probe": probe,
    "report": report,
    "launch": launch,
    "provenance": provenance,
    "use-profile": use_profile,
    "ui": ui,
}


def build_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)
    for name, command in COMMANDS.items():
        app.command(name)(command)
    return app


def _terminate(signum: int, frame: object) -> None:
    # A killed `dvc repro` or a scheduler's SIGTERM unwinds the stage: temp outputs are removed
    # and the MLflow run is marked KILLED instead of staying RUNNING forever.
    raise StageKilled(signal.Signals(signum).name)


def main() -> None:
    previous = {signum: signal.signal(signum, _terminate) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        build_app()()
    except DuelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except StageKilled as exc:
        print(f"error: stopped by {exc}; rerun the stage (pretrain: with --resume) to continue", file=sys.stderr)
        sys.exit(130)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
