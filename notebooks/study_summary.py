"""One table over the runs of several related studies (each a `reports/runs.csv`), mean ± std over seeds.

    python notebooks/study_summary.py --out reports/cifar10_dominant_cpu/summary.md \
        "main=reports/cifar10_dominant_cpu/runs.csv" "max_staleness 2=reports/cifar10_dominant_cpu/staleness2/runs.csv"

Each argument is `label=path`: the runs of one `dvc repro` (the label names the variant that study ran,
e.g. a method hyper-parameter; `main` keeps the method names alone). Rows are method (+ variant), columns
the memory and accuracy metrics. `vs dmoco, same seed` is the mean ± std over seeds of each run's late
memory entropy minus dmoco's of the same seed in the main study: the seed fixes the initial weights and the
data order, so the paired difference is what the policy changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

COLUMNS = {  # column -> (header, scale, decimals)
    "memory_entropy_late": ("memory entropy, last third", 1, 3),
    "memory_entropy": ("final memory entropy", 1, 3),
    "memory_head_keys": ("head-class keys / K", 1, 0),
    "fresh_eviction_share": ("same-push evictions (%)", 100, 0),
    "memory_age": ("key age (pushes)", 1, 1),
    "key_staleness": ("key staleness (pushes)", 1, 1),
    "linear_top1": ("linear (%)", 100, 1),
    "knn_top1": ("kNN (%)", 100, 1),
    "linear_few": ("few, linear (%)", 100, 1),
}


def cell(values: pd.Series, scale: float, decimals: int) -> str:
    values = values.dropna() * scale
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.{decimals}f}"
    return f"{values.mean():.{decimals}f} ± {values.std():.{decimals}f}"


def summary(studies: dict[str, pd.DataFrame]) -> str:
    runs = pd.concat([df.assign(variant=label) for label, df in studies.items()], ignore_index=True)
    runs["row"] = [m if v == "main" else f"{m} ({v})" for m, v in zip(runs.method, runs.variant, strict=True)]
    main = studies["main"]
    dmoco = main[main.method == "dmoco"].set_index("seed")["memory_entropy_late"]
    runs["paired"] = runs["memory_entropy_late"] - runs["seed"].map(dmoco)
    streams = sorted({round(v, 3) for v in runs.get("stream_entropy", pd.Series(dtype=float)).dropna()})
    stream = f"; stream entropy {', '.join(map(str, streams))}" if streams else ""
    header = ["method", "seeds", *(h for h, _, _ in COLUMNS.values()), "late entropy vs dmoco, same seed"]
    lines = [
        f"Mean ± std over the seeds of each row{stream}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row, group in runs.groupby("row", sort=False):
        cells = [cell(group[c], s, d) if c in group else "-" for c, (_, s, d) in COLUMNS.items()]
        seeds = ", ".join(str(int(s)) for s in sorted(group.seed))
        lines.append(f"| {row} | {seeds} | " + " | ".join(cells) + f" | {cell(group['paired'], 1, 3)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", help="label=path/to/runs.csv; one labelled main")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    studies = {}
    for spec in args.studies:
        label, path = spec.split("=", 1)
        studies[label] = pd.read_csv(path)
    if "main" not in studies:
        parser.error("one study must be labelled main")
    text = summary(studies)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
