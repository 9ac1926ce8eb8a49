"""`runtime.portable`: the same bytes on CPUs with other vector units. Two x86-64 CPUs are emulated on
this one by capping the instruction sets torch's kernels may use (AVX2 against SSE4 only), and by
choosing OpenBLAS's kernels for another CPU (Haswell's against Nehalem's)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import yaml

from duel.config import RuntimeConfig
from duel.errors import ConfigError, DuelError
from duel.utils import configure_cpu
from duel.validation import parse_config
from pipeline.portable import PORTABLE_ENV, THREAD_ENV, apply, params_path
from tests.project_copy import ROOT

# What another CPU gives torch: the kernels (ATen), MKL's and oneDNN's code paths it dispatches to.
CPUS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "sse4": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
BEFORE = {name: os.environ.get(name) for name in (*PORTABLE_ENV, *THREAD_ENV)}  # this worker's, at import
TINY = {
    "prepare": {"n_max": 40},
    "pretrain": {"epochs": 2, "batch_size": 32, "memory": {"size": 64}},
    "runtime": {"threads": 1},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("portable")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section] |= values
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", *PORTABLE_ENV)}
    env |= {"PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    stage(root, env, "prepare", "--imbalance", "10")
    return root, env


def stage(root, env, *args):
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def model_digest(project, cpu: str, portable: bool) -> str:
    root, env = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["runtime"]["portable"] = portable
    (root / f"{cpu}-{portable}.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pretrain = ["pretrain", "--method", "dmoco", "--imbalance", "10", "--params", f"{cpu}-{portable}.yaml"]
    stage(root, {**env, **CPUS[cpu]}, *pretrain)
    return hashlib.sha256((root / "outputs/pretrain/dmoco-imb10-lt-d0-s0/model.pt").read_bytes()).hexdigest()


@pytest.mark.slow
def test_other_vector_units_write_other_bytes_unless_the_run_is_portable(project):
    assert model_digest(project, "avx2", False) != model_digest(project, "sse4", False)
    assert model_digest(project, "avx2", True) == model_digest(project, "sse4", True)


# The probe's fit (duel/eval/linear.py) in a process that sets the portable environment first, as
# `python -m pipeline` does, then imports numpy: the digest of its coefficients.
PROBE_FIT = """
import hashlib, sys
from pipeline.portable import apply
apply(["probe", "--params", sys.argv[1]])
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
rng = np.random.default_rng(0)
x = rng.normal(size=(600, 64))
y = (x[:, :10] @ rng.normal(size=(10, 5))).argmax(1)
model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(x, y)
print(hashlib.sha256(model[-1].coef_.tobytes()).hexdigest())
"""


def probe_digest(tmp_path, coretype: str, portable: bool) -> str:
    params = tmp_path / f"{coretype}-{portable}.yaml"
    params.write_text(yaml.safe_dump({"runtime": {"portable": portable, "threads": 2}}))
    env = {k: v for k, v in os.environ.items() if k not in (*PORTABLE_ENV, *THREAD_ENV)}
    env |= {"PYTHONPATH": str(ROOT), "OPENBLAS_CORETYPE": coretype}
    command = [sys.executable, "-c", PROBE_FIT, str(params)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_the_probe_fit_writes_other_bytes_on_other_blas_kernels_unless_the_run_is_portable(tmp_path):
    assert probe_digest(tmp_path, "Haswell", False) != probe_digest(tmp_path, "Nehalem", False)
    assert probe_digest(tmp_path, "Haswell", True) == probe_digest(tmp_path, "Nehalem", True)


def test_the_params_file_of_the_stage_decides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in (*PORTABLE_ENV, *THREAD_ENV):  # set, then deleted: undone at teardown, whatever apply() sets
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    assert params_path(["pretrain", "--params", "a.yaml"]).name == "a.yaml"
    assert params_path(["pretrain", "--params=b.yaml"]).name == "b.yaml"
    (tmp_path / "params.yaml").write_text("runtime: {portable: false}\n")
    apply(["pretrain"])
    assert "ATEN_CPU_CAPABILITY" not in os.environ
    (tmp_path / "broken.yaml").write_text("runtime: [")
    apply(["pretrain", "--params", "broken.yaml"])  # the stage reports a broken file itself
    (tmp_path / "p.yaml").write_text("runtime: {portable: true, threads: 3}\n")
    apply(["pretrain", "--params", "p.yaml"])
    assert {k: os.environ[k] for k in PORTABLE_ENV} == PORTABLE_ENV and os.environ["OMP_NUM_THREADS"] == "3"


def test_the_portable_environment_does_not_outlive_the_test_above():
    """The test worker goes on running torch.compile and stages: the baseline-kernel variables set by
    apply() there must be back to what they were (inductor reads ATEN_CPU_CAPABILITY when it generates
    code; a machine may set OPENBLAS_CORETYPE itself)."""
    assert {name: os.environ.get(name) for name in (*PORTABLE_ENV, *THREAD_ENV)} == BEFORE


def test_portable_is_refused_where_it_cannot_hold():
    with pytest.raises(ConfigError, match=r"runtime.portable=True is not allowed: CPU runs only"):
        parse_config({"runtime": {"portable": True, "device": "cuda"}})
    with pytest.raises(ConfigError, match=r"runtime.threads=0 is not allowed: must be >= 1 or null"):
        parse_config({"runtime": {"threads": 0}})
    # This test process imported torch with its native kernels: the setting cannot take effect any more.
    with pytest.raises(DuelError, match=r"runtime.portable: torch was imported before the setting"):
        configure_cpu(RuntimeConfig(portable=True))
