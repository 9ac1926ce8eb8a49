"""`python -m pipeline <stage>`: one typer app, one command per DVC stage."""

from __future__ import annotations

import importlib
import signal
import sys

import typer

from duel.errors import DuelError
from pipeline.tracking import StageKilled

STAGES = ("prepare", "pretrain", "probe", "report")
COMMANDS = {**{stage: f"pipeline.{stage}" for stage in STAGES}, "use-profile": "pipeline.profiles", "ui": "pipeline.ui"}


def build_app(only: str | None = None) -> typer.Typer:
    """The app with every command, or just `only`: a stage run then skips the other stages'
    imports (matplotlib, scikit-learn's estimators), about a second off each of the study's many stage starts."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)
    # A callback keeps the stage name a sub-command even when only one stage is registered.
    app.callback()(lambda: None)
    for command, module in COMMANDS.items():
        if only in (None, command):
            app.command(command)(getattr(importlib.import_module(module), command.replace("-", "_")))
    return app


def _terminate(signum: int, frame: object) -> None:
    # A killed `dvc repro` or a scheduler's SIGTERM unwinds the stage: temp outputs are removed
    # and the MLflow run is marked KILLED instead of staying RUNNING forever.
    raise StageKilled(signal.Signals(signum).name)


def main() -> None:
    previous = {signum: signal.signal(signum, _terminate) for signum in (signal.SIGTERM, signal.SIGINT)}
    only = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in COMMANDS else None
    try:
        build_app(only)()
    except DuelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except StageKilled as exc:
        print(f"error: stopped by {exc}; rerun the stage (pretrain: with --resume) to continue", file=sys.stderr)
        sys.exit(130)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
