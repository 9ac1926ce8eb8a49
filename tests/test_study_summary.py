"""notebooks/study_summary.py: tables joined from several studies pair and group only like with like."""

import json
import subprocess
import sys

import pandas as pd
import yaml

from tests.project_copy import ROOT


def write_study(folder, runs, groups, code):
    folder.mkdir(parents=True)
    pd.DataFrame(runs).to_csv(folder / "runs.csv", index=False)
    (folder / "params.yaml").write_text(yaml.safe_dump({"probe": {"groups": groups}}))
    if code is not None:
        (folder / "provenance.json").write_text(json.dumps({"code": code}))


def run(method, seed, linear):
    return {"method": method, "seed": seed, "linear_top1": linear, "knn_top1": 0.4, "linear_few": 0.5}


def summarise(tmp_path, *specs):
    out = tmp_path / "summary.md"
    subprocess.run(
        [sys.executable, str(ROOT / "notebooks/study_summary.py"), *specs, "--out", str(out)],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out.read_text()


def test_runs_of_other_code_or_another_grouping_are_not_paired_or_grouped_with_main(tmp_path):
    main = [run("dmoco", 0, 0.50), run("dmoco", 1, 0.52), run("moco", 0, 0.53), run("moco", 1, 0.56)]
    write_study(tmp_path / "main", main, "head", {"duel/memory.py": ["a"]})
    write_study(
        tmp_path / "same", [run("dmoco_roll", 0, 0.51), run("dmoco_roll", 1, 0.54)], "head", {"duel/memory.py": ["a"]}
    )
    write_study(tmp_path / "old", [run("dmoco_roll", 0, 0.60), run("dmoco_roll", 1, 0.62)], "thirds", None)
    text = summarise(tmp_path, "main=main/runs.csv", "v=same/runs.csv", "old=old/runs.csv")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["moco"].endswith("| 3.5 ± 0.7 | 0.0 ± 0.0 |")  # linear and kNN minus dmoco's, same seed
    assert rows["dmoco_roll (v)"].endswith("| 50.0 ± 0.0 | 1.5 ± 0.7 | 0.0 ± 0.0 |")
    assert rows["dmoco_roll (old)"].endswith("| - | - | - |")  # no few group (thirds), no pairing (no record)
    assert "Paired columns `-` for old: made by other code" in text and "few `-` for old" in text
    assert text.rstrip().endswith("Runs from: main, same, old")
