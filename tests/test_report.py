"""The committed tables against the per-run metrics they aggregate, recomputed here independently of
pipeline/report.py: every cell of every table of every committed study is the mean ± std (sample std)
over the LT draws and seeds of its runs, and the report code gives the same cells from runs.csv."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.common import RunKey, read_params, setting
from pipeline.report import TABLES, balanced_vs_lt_table, heads_table, paper_table, row_label
from tests.project_copy import ROOT

STUDIES = sorted(p.parent for p in (ROOT / "reports").rglob("results.md") if (p.parent / "runs.csv").exists())
GROUPS = ["many", "medium", "few", "top1"]  # the group tables' columns many / medium / few / all
TRAIN_SETS = {"D_b (balanced)": "balanced", "D_i (long-tailed)": "lt"}


def sections(markdown: str) -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """Caption -> (column names, row name -> cells) of every '### caption' table."""
    tables = {}
    for block in markdown.split("### ")[1:]:
        lines = block.strip().splitlines()
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:] if line.startswith("|")]
        header, *body = cells
        tables[lines[0]] = (header[1:], {row[0]: row[1:] for row in body if not row[0].startswith("---")})
    return tables


def expected(values: pd.Series, decimals: int, split_std: pd.Series | None = None) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    # numpy's left-to-right float64 sum: Python 3.12's sum() compensates its rounding, and a mean on a
    # rounding boundary (43.95) would then print differently from the same data summed plainly.
    array = values.to_numpy(dtype=float)
    mean = float(np.add.reduce(array)) / len(array)
    if len(values) == 1:
        if split_std is not None and split_std.notna().all():
            return f"{mean:.{decimals}f} ± {split_std.iloc[0]:.{decimals}f}"
        return f"{mean:.{decimals}f}"
    std = math.sqrt(float(np.add.reduce((array - mean) ** 2)) / (len(array) - 1))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def paper_entry(caption: str) -> tuple[str, str, float, int] | None:
    """The TABLES entry of a caption (captions of older studies may lack a later parenthesis)."""
    for name, (column, scale, decimals, full) in TABLES.items():
        if full == caption or full.startswith(caption + " ("):
            return name, column, scale, decimals
    return None


def study(path: Path):
    params = path / "params.yaml" if (path / "params.yaml").exists() else ROOT / "params.yaml"
    runs = pd.read_csv(path / "runs.csv").copy()  # one block: read_csv leaves a wide table fragmented
    # Studies made before the sweep had these axes, or before runs.csv had its table row (collect()'s label):
    runs = runs.assign(**{c: v for c, v in (("train_set", "lt"), ("draw", 0)) if c not in runs})
    if "row" not in runs:
        runs = runs.assign(row=[row_label(m, t) for m, t in zip(runs.method, runs.train_set, strict=True)])
    return read_params(params), runs


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_cell_is_the_mean_and_std_of_the_runs_it_aggregates(path):
    cfg, runs = study(path)
    worst = max(cfg.sweep.imbalance)
    checked = 0
    for caption, (columns, rows) in sections((path / "results.md").read_text()).items():
        if entry := paper_entry(caption):
            name, column, scale, decimals = entry
            code = paper_table(runs, cfg, column, scale, decimals)
            for row, cells in rows.items():
                for heading, cell in zip(columns, cells, strict=True):
                    imbalance = float(heading.split("=")[1])
                    at = runs[(runs.row == row) & (runs.imbalance == imbalance)]
                    values = at[column] * scale if column in runs else pd.Series(dtype=float)
                    split = f"{column}_split_std"
                    split_std = at[split] * scale if split in runs else None
                    assert cell == expected(values, decimals, split_std), (name, row, heading)
                    assert code.loc[row, setting(imbalance)] == cell, (name, row, heading)  # the code agrees
                    checked += 1
        elif caption.startswith(("Pretrained on a balanced set", "Linear probe and LT-aware heads")):
            balanced = caption.startswith("Pretrained")
            code = (balanced_vs_lt_table if balanced else heads_table)(runs, cfg, worst)
            at = runs[runs.imbalance == worst]
            for row, cells in rows.items():
                if balanced:
                    method, train_set, probe = row.split(" / ")
                    group = at[(at.method == method) & (at.train_set == TRAIN_SETS[train_set])]
                    prefix = {"linear": "linear", "kNN": "knn"}[probe]
                else:
                    label, head = row.split(" / ")
                    group = at[at.row == label]
                    name, posthoc, _ = head.partition(" + post-hoc")
                    prefix = "linear" if head == "linear probe" else f"head_{name}{'_posthoc' if posthoc else ''}"
                for g, cell in zip(GROUPS, cells, strict=True):
                    column = f"{prefix}_{g}"
                    values = group[column] * 100 if column in group else pd.Series(dtype=float)
                    assert cell == expected(values, 1), (caption[:40], row, g)
                    assert code.loc[row].tolist() == cells, (caption[:40], row)
                    checked += 1
    assert checked > 0


def test_the_default_studys_runs_table_holds_each_runs_own_metrics():
    """reports/runs.csv against the committed metrics.json of every pretrain and probe run."""
    runs = pd.read_csv(ROOT / "reports" / "runs.csv")
    assert len(runs) == len(read_params(ROOT / "params.yaml").sweep.methods) * 3
    for _, run in runs.iterrows():
        key = RunKey(run.method, run.imbalance, run.train_set, int(run.draw), int(run.seed))
        for folder in (key.pretrain_dir, key.probe_dir):
            for name, value in json.loads((ROOT / folder / "metrics.json").read_text()).items():
                if isinstance(value, int | float) and name in run:
                    assert run[name] == pytest.approx(value, rel=1e-12, nan_ok=True), (key.name, name)
