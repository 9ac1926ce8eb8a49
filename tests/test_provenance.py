"""What made a committed study (pipeline/provenance.py): the record the report writes, the staleness check."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import yaml
from dvc.repo import Repo

from pipeline.provenance import PROVENANCE, Hasher, check, locked_inputs, remake_command, status, status_note
from tests.project_copy import ROOT


def test_the_default_study_records_what_dvc_lock_holds():
    """reports/provenance.json holds every code dependency and param of the default study's prepare,
    pretrain and probe instances as the committed dvc.lock records them."""
    record = json.loads((ROOT / "reports" / PROVENANCE).read_text())
    code, params, unrecorded = locked_inputs(ROOT)
    assert record["code"] == code and record["params"] == params
    assert not unrecorded and not record["unrecorded_stages"]
    assert {"duel/memory.py", "duel/methods", "pipeline/pretrain.py", "pipeline/probe.py"} <= set(code)
    assert not any(path.startswith("outputs/") for path in code)  # data the stages made is not code
    assert params["pretrain.epochs"] == yaml.safe_load((ROOT / "params.yaml").read_text())["pretrain"]["epochs"]
    assert record["remake"] == "dvc repro" and record["platform"]["torch"].startswith("2.")
    assert "Remake: `dvc repro`" in (ROOT / "reports/results.md").read_text().split("###")[0]


@pytest.fixture()
def project(tmp_path):
    """A DVC project with one code file and two committed studies, one recorded against it."""
    Repo.init(str(tmp_path), no_scm=True).close()
    (tmp_path / "code.py").write_text("x = 1\n")
    for study in ("reports/a", "reports/b"):
        (tmp_path / study).mkdir(parents=True)
        (tmp_path / study / "results.md").write_text("# Results\n")
    md5 = hashlib.md5(b"x = 1\n").hexdigest()
    record = {"commit": "0123456789abcdef", "date": "2026-12-07", "unrecorded_stages": [], "code": {"code.py": [md5]}}
    (tmp_path / "reports/a" / PROVENANCE).write_text(json.dumps(record))
    return tmp_path


def test_a_study_turns_stale_when_a_file_it_depended_on_changes(project, capsys):
    hasher = Hasher(project)
    try:
        assert status(project / "reports/a", hasher).current
        assert status(project / "reports/b", hasher).provenance is None  # made before records: never current
    finally:
        hasher.close()
    check(project, strict=False)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("reports/a") and "current: made by 0123456789 on 2026-12-07" in out[0]
    assert out[1].startswith("reports/b") and "not recorded" in out[1]
    with pytest.raises(SystemExit):
        check(project, strict=True)
    capsys.readouterr()

    (project / "code.py").write_text("x = 2\n")
    check(project, strict=False)
    assert "stale: made by 0123456789 on 2026-12-07; changed since: code.py" in capsys.readouterr().out
    (project / "code.py").unlink()
    check(project, strict=False)
    assert "changed since: code.py" in capsys.readouterr().out  # a removed file counts as changed


def test_a_table_joined_from_several_studies_shows_each_ones_status(project):
    joined = project / "reports/a/summary.md"
    joined.write_text("| method |\n|---|\n\nRuns from: reports/a, reports/b\n")
    other = project / "reports/a/replay.md"  # a script's table beside the report: not covered by its record
    other.write_text("| method |\n")
    hasher = Hasher(project)
    try:
        note = status_note(joined, project, hasher).splitlines()
        single = status_note(project / "reports/a/results.md", project, hasher)
        beside = status_note(other, project, hasher)
    finally:
        hasher.close()
    assert note[1].startswith("> - `reports/a`: current") and note[2].startswith("> - `reports/b`: not recorded")
    assert single.startswith("> **Study status**") and "current: made by" in single
    assert "not recorded: written by its own script, not by the report of `reports/a` (current" in beside


def test_a_damaged_record_is_named_in_one_line(project):
    (project / "reports/a" / PROVENANCE).write_text("{")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "provenance"],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "reports/a/provenance.json is not a provenance record" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_remake_command_is_the_use_profile_line_that_wrote_params(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "# Written by `python -m pipeline use-profile cifar10_exp --set runtime.data_root=/d` from params/x.yaml; "
        "edit that file instead.\nsweep: {}\n"
    )
    made = "python -m pipeline use-profile cifar10_exp --set runtime.data_root=/d"
    assert remake_command(params) == f"{made} && dvc repro"
    params.write_text("# Embedded default study\nsweep: {}\n")
    assert remake_command(params) == "dvc repro"
