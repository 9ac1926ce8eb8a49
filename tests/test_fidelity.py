"""docs/fidelity.md: generated from the code and the profiles, and every remaining difference explained."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from pipeline import fidelity
from tests.project_copy import ROOT


def test_the_fidelity_page_is_the_generated_one():
    page = (ROOT / "docs" / "fidelity.md").read_text()
    assert page == fidelity.render(), "docs/fidelity.md is out of step: run `python tools/sync_docs.py`"


@pytest.mark.parametrize("method", list(fidelity.REFERENCES))
def test_the_reference_profile_differs_from_a_reference_only_with_a_reason(method):
    unexplained = [r["component"] for r in fidelity.rows(method) if r["differs"] and not r["reason"]]
    assert not unexplained, f"{method}: the reference profile differs without a reason: {unexplained}"


def test_every_method_of_the_reference_profile_has_its_reference():
    profile = fidelity.profile_config(fidelity.PROFILES["reference"])
    assert set(profile.recipes) <= set(fidelity.REFERENCES)
    assert set(fidelity.REFERENCES) >= {"simclr", "sdclr", "bcl", "gh", "moco", "dmoco"}


@pytest.mark.parametrize("published", fidelity.PUBLISHED, ids=lambda p: p.method)
def test_every_command_that_would_rerun_a_published_number_is_a_valid_study(published, tmp_path):
    args = shlex.split(published.command)
    assert args[:3] == ["python", "-m", "pipeline"]
    out = tmp_path / "params.yaml"
    command = [sys.executable, *args[1:], "--set", "runtime.data_root=/data", "--output", str(out)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
