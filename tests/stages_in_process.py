"""Run every stage of the project in the current directory in one Python process: DVC's stages, in DVC's
order, with the commands DVC expands from dvc.yaml and params.yaml, each checked to write the outputs
dvc.yaml declares for it.

The profile smoke tests run this instead of `dvc repro`: a stage process spends about 8 s starting
(torch, torchvision, MLflow) for well under a second of smoke-sized work, and a profile's study has 6 to
11 stages. `dvc repro` itself, with its lock, cache, reruns and remote, is tested on a tiny digits study
(test_pipeline_e2e.py).

Usage: `python -m tests.stages_in_process` from the project root.
"""

from __future__ import annotations

import shlex
import sys
from graphlib import TopologicalSorter
from pathlib import Path

from dvc.repo import Repo

from pipeline.cli import build_app


def stages_in_order(root: Path) -> list:
    """The expanded stages, each after the stages it depends on."""
    with Repo(str(root)) as repo:
        graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
        return list(TopologicalSorter({stage: set(graph.successors(stage)) for stage in graph}).static_order())


def run_stages(root: Path) -> None:
    app = build_app()
    for stage in stages_in_order(root):
        args = shlex.split(stage.cmd)
        if args[:3] != ["python", "-m", "pipeline"]:
            sys.exit(f"stage {stage.addressing}: {stage.cmd!r} is not a `python -m pipeline` command")
        print(f"stage {stage.addressing}: {stage.cmd}", flush=True)
        app(args[3:], standalone_mode=False)
        missing = [out.def_path for out in stage.outs if not (root / out.def_path).exists()]
        if missing:
            sys.exit(f"stage {stage.addressing} did not write {missing}")


if __name__ == "__main__":
    run_stages(Path.cwd())
