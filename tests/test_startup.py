"""Start-up: `--help`, a refused value and the params checks import none of the stages' heavy libraries (a
stage imports its own when it runs), and the names and method params the checks use are the registries'."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from duel import config
from duel.method_params import METHOD_PARAMS
from pipeline.cli import COMMANDS
from tests.project_copy import ROOT

HEAVY = ("torch", "sklearn", "mlflow", "matplotlib")
# Runs `python -m pipeline <args>` as __main__ does, then prints the heavy packages it imported.
MAIN = f"""
import json, runpy, sys
sys.argv, code = ["pipeline", *sys.argv[1:]], 0
try:
    runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code or 0
print(json.dumps([code, sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))]))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("startup")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bad = {**params, "pretrain": {**params["pretrain"], "epochs": -1}}
    (root / "bad.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    return root


def imported(project, *args: str) -> tuple[int, list[str], str]:
    """The exit code of `python -m pipeline <args>`, the heavy packages it imported, and its stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", MAIN, *args], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]  # the command's own exit code is in the last line
    code, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    return code, heavy, proc.stderr


@pytest.mark.parametrize("args", [["--help"], *([command, "--help"] for command in COMMANDS)], ids=" ".join)
def test_help_imports_no_heavy_library(project, args):
    assert imported(project, *args)[:2] == (0, [])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pretrain", "--method", "nope", "--imbalance", "100"], "--method='nope' is not allowed"),
        (["probe", "--method", "moco", "--imbalance", "0"], "--imbalance=0.0 is not allowed"),
        (["prepare", "--imbalance", "10", "--params", "bad.yaml"], "pretrain.epochs=-1 is not allowed"),
    ],
)
def test_a_refused_value_imports_no_heavy_library(project, args, message):
    code, heavy, err = imported(project, *args)
    assert (code, heavy) == (2, []) and message in err


def test_checking_every_profile_imports_no_heavy_library():
    check = "import glob, sys, yaml\nfrom duel.validation import parse_config\n"
    check += "for path in ['params.yaml', *glob.glob('params/*.yaml')]:\n    parse_config(yaml.safe_load(open(path)))\n"
    check += f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_the_names_and_params_the_checks_use_are_the_registries():
    from duel.backbones import BACKBONES
    from duel.data.sources import SOURCES
    from duel.eval.heads import HEADS
    from duel.methods import METHODS

    assert tuple(SOURCES) == config.SOURCE_NAMES
    assert tuple(BACKBONES) == config.BACKBONE_NAMES
    assert tuple(HEADS) == config.HEAD_NAMES
    assert list(METHOD_PARAMS.items()) == [(name, method.Params) for name, method in METHODS.items()]
