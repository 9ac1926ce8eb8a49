"""The memory and accuracy tables over the runs of several related studies (each a `reports/runs.csv`),
mean ± std over seeds.

    python notebooks/study_summary.py --out reports/cifar10_dominant_cpu/summary.md \
        "main=reports/cifar10_dominant_cpu/runs.csv" "max_staleness 2=reports/cifar10_dominant_cpu/staleness2/runs.csv"

Each argument is `label=path`: the runs of one `dvc repro` (the label names the variant that study ran,
e.g. a method hyper-parameter; `main` keeps the method names alone). Rows are method (+ variant); three
tables hold the memory's class entropy (with the stream's own), its keys, and the accuracy.
`vs dmoco, same seed` is the mean ± std over seeds of each run's late memory entropy (linear, kNN top-1)
minus dmoco's of the same seed in the main study (`--baseline`: another method, on its LT set): the seed
fixes the initial weights and the data order, so the paired difference is what the policy changed.
A run whose runs.csv has no column for a metric (a report written before it was recorded) shows `-`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml

from pipeline.provenance import PROVENANCE, RUNS_FROM

# Three tables, so that each fits a page's width: column -> (header, scale, decimals)
ENTROPY = {
    "stream_entropy": ("stream", 1, 3),
    "memory_entropy_late": ("memory, last third of training", 1, 3),
    "memory_entropy": ("final memory", 1, 3),
}
KEYS = {
    "memory_head_keys": ("head-class keys / K", 1, 0),
    "fresh_eviction_share": ("same-push evictions (%)", 100, 0),
    "memory_age": ("key age (pushes)", 1, 1),
    "key_staleness": ("key staleness (pushes)", 1, 1),
}
ACCURACY = {
    "linear_top1": ("linear (%)", 100, 1),
    "knn_top1": ("kNN (%)", 100, 1),
    "linear_few": ("few, linear (%)", 100, 1),
}
# pretrain.online_eval's summary of the accuracy over training (a table only where some run has it)
OVER_TRAINING = {
    "online_knn_auc": ("kNN over training, AUC (%)", 100, 1),
    "online_knn_drop": ("drop, best to final (points)", 100, 1),
    "online_knn_final": ("final (%)", 100, 1),
}
TABLES = {
    "Memory class entropy": ENTROPY,
    "Memory keys": KEYS,
    "Accuracy": ACCURACY,
    "Accuracy over training (kNN on the validation split)": OVER_TRAINING,
}
COLUMNS = ENTROPY | KEYS | ACCURACY | OVER_TRAINING
# each run minus the baseline's of the same seed, in the table of its metric: column -> header
PAIRED = {
    "memory_entropy_late": "late entropy",
    "linear_top1": "linear (points)",
    "knn_top1": "kNN (points)",
    "online_knn_auc": "AUC (points)",
}


def cell(values: pd.Series, scale: float, decimals: int) -> str:
    values = values.dropna() * scale
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.{decimals}f}"
    return f"{values.mean():.{decimals}f} ± {values.std():.{decimals}f}"


def summary(studies: list[tuple[str, pd.DataFrame]], baseline: str = "dmoco") -> str:
    runs = pd.concat([df.assign(variant=label) for label, df in studies], ignore_index=True)
    runs["pairable"] = runs.get("pairable", pd.Series(True, index=runs.index)).fillna(True).astype(bool)
    # The report's row label (the method, marked when it pretrained on the balanced set), plus the variant.
    rows = runs.get("row", runs.method)
    runs["row"] = [r if v == "main" else f"{r} ({v})" for r, v in zip(rows, runs.variant, strict=True)]
    main = runs[runs.variant == "main"]
    reference = main[(main.method == baseline) & (main.get("train_set", "lt") == "lt")].set_index("seed")
    for column in (c for c in PAIRED if c in runs):
        # a run pairs with the baseline's only when the same code made both (main() sets `pairable`)
        runs[f"{column} paired"] = (runs[column] - runs["seed"].map(reference[column])).where(runs.pairable)
    lines = [
        f"Mean ± std over the seeds of each row (a single value: one seed). The columns `vs {baseline}, same seed`"
        f" are each run minus {baseline}'s run of the same seed; `-`: not recorded for those runs.",
    ]
    for title, columns in TABLES.items():
        if columns is OVER_TRAINING and not any(c in runs for c in columns):
            continue
        paired = [c for c in PAIRED if c in columns and c in runs]
        header = [
            "method",
            "seeds",
            *(columns[c][0] for c in columns),
            *(f"{PAIRED[c]} vs {baseline}, same seed" for c in paired),
        ]
        lines += ["", f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row, group in runs.groupby("row", sort=False):
            cells = [cell(group[c], s, d) if c in group else "-" for c, (_, s, d) in columns.items()]
            cells += [cell(group[f"{c} paired"], COLUMNS[c][1], COLUMNS[c][2]) for c in paired]
            seeds = ", ".join(str(int(s)) for s in sorted(group.seed))
            lines.append(f"| {row} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def made_by(runs_csv: Path) -> dict | None:
    """The code hashes the study's provenance.json records (None: made before reports recorded them)."""
    record = runs_csv.parent / PROVENANCE
    return json.loads(record.read_text())["code"] if record.is_file() else None


def grouping(runs_csv: Path) -> str | None:
    """The study's `probe.groups`, from the params.yaml its report folder keeps (None: not kept)."""
    params = runs_csv.parent / "params.yaml"
    return yaml.safe_load(params.read_text())["probe"]["groups"] if params.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", help="label=path/to/runs.csv; main (one or more): the methods as named")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--baseline", default="dmoco", help="the main study's method the paired columns subtract")
    args = parser.parse_args()
    specs = [spec.split("=", 1) for spec in args.studies]
    studies = [(label, pd.read_csv(path)) for label, path in specs]
    if "main" not in {label for label, _ in studies}:
        parser.error("one study must be labelled main")
    groups = [grouping(Path(path)) for _, path in specs]
    main_groups = next(g for (label, _), g in zip(studies, groups, strict=True) if label == "main")
    other = sorted({label for (label, df), g in zip(studies, groups, strict=True) if g != main_groups})
    for (_, df), g in zip(studies, groups, strict=True):
        if g != main_groups:  # another grouping's few group is another set of classes: not in one column
            df["linear_few"] = float("nan")
    codes = [made_by(Path(path)) for _, path in specs]
    reference = next(
        c for (label, df), c in zip(studies, codes, strict=True) if label == "main" and args.baseline in set(df.method)
    )
    unpaired = sorted({label for (label, _), c in zip(studies, codes, strict=True) if c != reference})
    for (_, df), c in zip(studies, codes, strict=True):
        df["pairable"] = c == reference
    folders = dict.fromkeys(Path(path).parent.as_posix() for _, path in specs)
    text = summary(studies, args.baseline)
    if unpaired:
        text += f"\nPaired columns `-` for {', '.join(unpaired)}: made by other code than {args.baseline}'s runs.\n"
    if other:
        text += f"\nfew `-` for {', '.join(other)}: grouped by another `probe.groups` than main ({main_groups}).\n"
    text += f"\n{RUNS_FROM}{', '.join(folders)}\n"  # whose status the docs show
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
