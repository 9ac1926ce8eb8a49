"""Stage 4: tables (paper layout), plots and t-SNE maps over every run of the sweep."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import torch

from duel.config import StudyConfig, to_dict
from duel.diagnostics import GROUPS, RELATIONS, SIMILARITY_BINS, TAU_GRID
from duel.eval.groups import GROUPS as ACCURACY_GROUPS
from duel.eval.groups import tied
from duel.eval.tsne import tsne_embed
from duel.files import atomic_path, write_json
from duel.memory import ActiveMemory
from duel.utils import configure_cpu
from pipeline import provenance
from pipeline.common import (
    REPORTS,
    RunKey,
    manifest_path,
    read_json,
    read_output,
    setting,
    stage_name,
)
from pipeline.tracking import StageRun

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# Table name -> (metric column, scale, decimals, caption)
TABLES = {
    "linear_top1": ("linear_top1", 100, 1, "Linear-probe top-1 (%)"),
    "knn_top1": ("knn_top1", 100, 1, "kNN top-1 (%)"),
    "linear_few": ("linear_few", 100, 1, "Linear-probe top-1 on the few group (%)"),
    "memory_entropy": ("memory_entropy", 1, 3, "Normalised class entropy of the final memory"),
    "memory_entropy_late": (
        "memory_entropy_late",
        1,
        3,
        "Normalised class entropy of the memory, mean over the last third of the training steps",
    ),
    "stream_entropy": ("stream_entropy", 1, 3, "Normalised class entropy of the training set (the stream)"),
    "memory_head_keys": (
        "memory_head_keys",
        1,
        0,
        "Head-class keys in the final memory (head: classes with at least half the largest class's images)",
    ),
    "fresh_eviction_share": ("fresh_eviction_share", 100, 0, "Evictions that hit a key of the same push (%)"),
    "key_staleness": ("key_staleness", 1, 1, "Mean key staleness of the final memory (pushes since encoded)"),
    "train_time_vs_moco": ("train_time_vs_moco", 1, 2, "Training time relative to moco's run of the same setting"),
    "online_knn_drop": (
        "online_knn_drop",
        100,
        1,
        "Degradation during training: online kNN top-1 (validation) at its best minus at the end (points)",
    ),
    "online_knn_auc": (
        "online_knn_auc",
        100,
        1,
        "Online kNN top-1 (validation) over training: area under the curve over the measured steps / their span (%)",
    ),
}
# Accuracy over training (pretrain.online_eval): the columns drawn, and their panel titles
CURVES = {"knn_top1": "all classes", "knn_few": "few group"}


def row_label(method: str, train_set: str) -> str:
    """A table row: the method, marked when it pretrained on the balanced match of the LT set."""
    return method if train_set == "lt" else f"{method} ({train_set})"


def run_keys(cfg: StudyConfig) -> list[RunKey]:
    s = cfg.sweep
    return [RunKey(*point) for point in itertools.product(s.methods, s.imbalance, s.train_sets, s.draws, s.seeds)]


def collect(cfg: StudyConfig) -> pd.DataFrame:
    """One row per run of the sweep: its coordinates, pretrain and probe metrics."""
    rows = []
    for key in run_keys(cfg):
        pre = read_json(key.pretrain_dir / "metrics.json", key.stage("pretrain"))
        probe = read_json(key.probe_dir / "metrics.json", key.stage("probe"))
        rows.append({**key.config(), "row": row_label(key.method, key.train_set), **pre, **probe})
    runs = pd.DataFrame(rows)
    if "moco" in cfg.sweep.methods:  # each run's training time over moco's on the same set and seed
        setting_of = ["imbalance", "train_set", "draw", "seed"]
        moco = runs[runs.method == "moco"].set_index(setting_of)["train_seconds"]
        runs["train_time_vs_moco"] = runs["train_seconds"] / moco.reindex(runs.set_index(setting_of).index).to_numpy()
    return runs


def table_rows(cfg: StudyConfig) -> list[str]:
    return [row_label(m, t) for m in cfg.sweep.methods for t in cfg.sweep.train_sets]


def paper_table(runs: pd.DataFrame, cfg: StudyConfig, column: str, scale: float, decimals: int) -> pd.DataFrame:
    """Rows methods (and their balanced-set runs), columns imbalance settings, cells 'mean ± std' over LT
    draws and seeds (one run: ± the std over k-shot splits where there are several, else just the value)."""
    table = pd.DataFrame(index=table_rows(cfg), columns=[setting(v) for v in cfg.sweep.imbalance], dtype=object)
    if column not in runs:
        return table.fillna("-")
    for (row, imbalance), group in runs.groupby(["row", "imbalance"]):
        values = group[column].dropna() * scale
        split_std = f"{column}_split_std"  # k-shot probes: the std over random splits of one run
        if len(values) == 1 and split_std in group and group[split_std].notna().all():
            cell = f"{values.mean():.{decimals}f} ± {group[split_std].iloc[0] * scale:.{decimals}f}"
        else:
            cell = mean_std(values, decimals)
        table.loc[row, setting(imbalance)] = cell
    return table.fillna("-")


def mean_std(values: pd.Series, decimals: int) -> str:
    """'mean ± std' over seeds ('mean' for one value, '-' for none)."""
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.mean():.{decimals}f}"
    return f"{values.mean():.{decimals}f} ± {values.std():.{decimals}f}"


PLAIN_AND_POSTHOC = (("", ""), (" + post-hoc", "_posthoc"))  # each head as trained and post-hoc adjusted
GROUP_COLUMNS = [*ACCURACY_GROUPS, "all"]


def group_cells(runs: pd.DataFrame, prefix: str) -> list[str]:
    """Many / medium / few / all top-1 (%) of one head over `runs`, 'mean ± std' over them."""
    columns = [f"{prefix}_{g}" for g in (*ACCURACY_GROUPS, "top1")]
    return [mean_std(runs[c].dropna() * 100, 1) if c in runs else "-" for c in columns]


def heads_table(runs: pd.DataFrame, cfg: StudyConfig, imbalance: float) -> pd.DataFrame:
    """The LT-aware heads of every method at one setting: rows 'method / head', columns many / medium /
    few / all top-1 (%), mean ± std over draws and seeds; the balanced linear probe first for reference,
    then each head as trained and after post-hoc logit adjustment."""
    at = runs[runs.imbalance == imbalance]
    heads = [(f"{h}{suffix}", f"head_{h}{key}") for h in cfg.probe.heads for suffix, key in PLAIN_AND_POSTHOC]
    rows = {}
    for row in table_rows(cfg):
        for head, prefix in [("linear probe", "linear"), *heads]:
            rows[f"{row} / {head}"] = group_cells(at[at.row == row], prefix)
    return pd.DataFrame.from_dict(rows, orient="index", columns=GROUP_COLUMNS)


# sweep.train_sets in the notation of Jiang et al. (SDCLR, ICML 2021), Table 1
TRAIN_SET_NAMES = {"balanced": "D_b (balanced)", "lt": "D_i (long-tailed)"}


def balanced_vs_lt_table(runs: pd.DataFrame, cfg: StudyConfig, imbalance: float) -> pd.DataFrame:
    """The table that motivates the field: each method pretrained on the balanced set D_b and on the LT
    set D_i of the same size, the same balanced probes, top-1 (%) per group (the LT draw's groups for
    both), mean ± std over LT draws and seeds. The linear probe is the published layout; kNN sits
    beside it because a linear probe on an easy source is saturated by any encoder (README)."""
    at = runs[runs.imbalance == imbalance]
    order = [t for t in TRAIN_SET_NAMES if t in cfg.sweep.train_sets]
    rows = {
        f"{method} / {TRAIN_SET_NAMES[t]} / {probe}": group_cells(at[(at.method == method) & (at.train_set == t)], key)
        for probe, key in (("linear", "linear"), ("kNN", "knn"))
        for method in cfg.sweep.methods
        for t in order
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=GROUP_COLUMNS)


def markdown(table: pd.DataFrame, caption: str, axis: str, index: str = "method") -> str:
    """A table with a caption; `axis` prefixes the column names (r=10, rho=0.9), '' keeps them."""
    header = f"| {index} | {' | '.join(f'{axis}={c}' if axis else str(c) for c in table.columns)} |"
    rule = "|---" * (len(table.columns) + 1) + "|"
    body = [f"| {m} | {' | '.join(str(v) for v in row)} |" for m, row in table.iterrows()]
    return "\n".join([f"### {caption}", "", header, rule, *body, ""])


def save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_accuracy(runs: pd.DataFrame, cfg: StudyConfig, axis: str, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    x = np.arange(len(cfg.sweep.imbalance))
    for ax, column, title in zip(axes, ("linear_top1", "knn_top1"), ("linear probe", "kNN"), strict=True):
        for row in table_rows(cfg):
            stats = runs[runs.row == row].groupby("imbalance")[column].agg(["mean", "std"])
            stats = stats.reindex(cfg.sweep.imbalance)
            ax.errorbar(x, 100 * stats["mean"], yerr=100 * stats["std"].fillna(0), marker="o", capsize=3, label=row)
        ax.set(title=title, xlabel=axis, xticks=x, xticklabels=[setting(v) for v in cfg.sweep.imbalance])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test top-1 (%)")
    axes[1].legend()
    save_figure(fig, path)


def read_online(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


def online_curves(cfg: StudyConfig) -> pd.DataFrame:
    """Accuracy over training of every run with pretrain.online_eval on, as mean and std over the LT draws
    and seeds of each method, setting and step: one row per (row, imbalance, step)."""
    frames = []
    for key in run_keys(cfg):
        curve = read_output(key.pretrain_dir / "online_eval.csv", key.stage("pretrain"), read_online)
        if "knn_top1" in curve:
            frames.append(curve.assign(row=row_label(key.method, key.train_set), imbalance=key.imbalance))
    if not frames:
        return pd.DataFrame()
    columns = [c for c in CURVES if c in frames[0]]
    stats = pd.concat(frames).groupby(["row", "imbalance", "step"])[columns].agg(["mean", "std", "count"])
    stats.columns = [f"{column}_{stat}" for column, stat in stats.columns]
    return stats.reset_index()


def plot_online(curves: pd.DataFrame, cfg: StudyConfig, axis: str, path: Path) -> None:
    """The DUEL paper's Figure 4 form: accuracy over the training steps per setting, a line per method,
    mean ± std over the LT draws and seeds as a band."""
    settings = cfg.sweep.imbalance
    rows = [c for c in CURVES if f"{c}_mean" in curves]
    size = (max(4 * len(settings), 6), 3.3 * len(rows) + 0.6)
    fig, axes = plt.subplots(len(rows), len(settings), figsize=size, squeeze=False, layout="constrained")
    for (i, column), (j, imbalance) in itertools.product(enumerate(rows), enumerate(settings)):
        ax = axes[i, j]
        for n, row in enumerate(table_rows(cfg)):
            at = curves[(curves.row == row) & (curves.imbalance == imbalance)]
            if at.empty:
                continue
            mean, std = 100 * at[f"{column}_mean"], 100 * at[f"{column}_std"].fillna(0)
            ax.plot(at["step"], mean, color=f"C{n}", label=row)
            ax.fill_between(at["step"], mean - std, mean + std, color=f"C{n}", alpha=0.2, lw=0)
        ax.set(title=f"{axis}={setting(imbalance)}, {CURVES[column]}", xlabel="training step")
        ax.grid(alpha=0.3)
        axes[i, 0].set_ylabel("online kNN top-1, validation (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=8)
    runs = len(cfg.sweep.draws) * len(cfg.sweep.seeds)
    fig.suptitle(f"Accuracy over training: mean ± std over {runs} runs (LT draws x seeds)" if runs > 1 else "")
    save_figure(fig, path)


def shown_run(cfg: StudyConfig, method: str, imbalance: float) -> RunKey:
    """The run a figure shows for a method and setting: the first training set, draw and seed of the sweep."""
    s = cfg.sweep
    return RunKey(method, imbalance, s.train_sets[0], s.draws[0], s.seeds[0])


def read_entropy_curve(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, usecols=["step", "memory_entropy"])


def plot_entropy(cfg: StudyConfig, axis: str, memory_methods: list[str], path: Path) -> None:
    settings = cfg.sweep.imbalance
    fig, axes = plt.subplots(1, len(settings), figsize=(4 * len(settings), 3.5), sharey=True, squeeze=False)
    for ax, imbalance in zip(axes[0], settings, strict=True):
        for method in memory_methods:
            key = shown_run(cfg, method, imbalance)
            log = read_output(key.pretrain_dir / "train_log.csv", key.stage("pretrain"), read_entropy_curve)
            ax.plot(log["step"], log["memory_entropy"], label=method)
        where = shown_run(cfg, cfg.sweep.methods[0], imbalance)
        title = f"{axis}={setting(imbalance)} ({where.train_set}, draw {where.draw}, seed {where.seed})"
        ax.set(title=title, xlabel="training step", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("memory class entropy")
    axes[0, -1].legend()
    save_figure(fig, path)


def scatter_grid(panels: dict[str, tuple[np.ndarray, np.ndarray]], classes: int, title: str, path: Path) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (name, (coords, labels)) in zip(axes[0], panels.items(), strict=True):
        sc = ax.scatter(coords[:, 0], coords[:, 1], c=labels, cmap="tab10", vmin=0, vmax=max(classes - 1, 1), s=6)
        ax.set(title=name, xticks=[], yticks=[])
    fig.colorbar(sc, ax=axes[0].tolist(), label="class")
    fig.suptitle(title)
    save_figure(fig, path)


def load_memory(key: RunKey) -> ActiveMemory:
    """The final memory of a pretrain run, restored into an ActiveMemory."""

    def load(path: Path) -> ActiveMemory:
        saved = torch.load(path, weights_only=False)
        state = saved["state_dict"]
        memory = ActiveMemory(*state["keys"].shape, policy=saved["policy"], num_classes=len(state["inserted"]))
        memory.load_state_dict(state)
        return memory

    return read_output(key.pretrain_dir / "memory.pt", key.stage("pretrain"), load)


def plot_memory_histograms(memories: dict[str, ActiveMemory], classes: int, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(len(memories), 1)
    for i, (name, memory) in enumerate(memories.items()):
        ax.bar(np.arange(classes) + i * width, memory.class_histogram(classes).numpy(), width, label=name)
    ax.set(xlabel="class (LT order: head first for head_order=index)", ylabel="keys in final memory", title=title)
    ax.legend()
    save_figure(fig, path)


def load_snapshots(key: RunKey) -> dict[str, np.ndarray]:
    """A pretrain run's memory snapshots (duel.snapshots `arrays`): no point when the run took none."""
    return read_output(key.pretrain_dir / "memory_snapshots.npz", key.stage("pretrain"), lambda p: dict(np.load(p)))


def plot_memory_snapshots(
    snapshots: dict[str, dict[str, np.ndarray]], classes: int, perplexity: float, title: str, path: Path
) -> None:
    """The paper's Figure 5 form: a row per method, a column per snapshot point; each panel one t-SNE over
    the display images' current features (faint), the memory's keys (filled) and its last K pushes
    (hollow), so what the stream brought and what the memory kept share one map. t-SNE, as the paper
    draws it, from scikit-learn, which the project has already (UMAP would be one more dependency)."""
    columns = max(len(arrays["step"]) for arrays in snapshots.values())
    fig, axes = plt.subplots(len(snapshots), columns, figsize=(3.6 * columns, 3.6 * len(snapshots)), squeeze=False)
    colour = matplotlib.colors.Normalize(0, max(classes - 1, 1))
    cmap = plt.get_cmap("tab10")

    def colours(labels: np.ndarray) -> np.ndarray:
        return np.where((labels >= 0)[:, None], cmap(colour(labels)), (0.6, 0.6, 0.6, 1.0))  # grey: no label

    for row, (method, arrays) in zip(axes, snapshots.items(), strict=True):
        for point, ax in enumerate(row):
            ax.set(xticks=[], yticks=[])
            if point >= len(arrays["step"]):
                ax.axis("off")
                continue
            memory, recent = arrays["memory_point"] == point, arrays["recent_point"] == point
            parts = (arrays["display_features"][point], arrays["memory_keys"][memory], arrays["recent_keys"][recent])
            labels = (arrays["display_labels"], arrays["memory_labels"][memory], arrays["recent_labels"][recent])
            # A key both in the memory and among the last pushes (all of them for FIFO) is embedded once.
            features, inverse = np.unique(np.concatenate(parts), axis=0, return_inverse=True)
            coords = tsne_embed(features, np.zeros(len(features)), perplexity, len(features))[0][inverse.reshape(-1)]
            display, kept, pushed = np.split(coords, np.cumsum([len(part) for part in parts[:2]]))
            ax.scatter(*display.T, color=colours(labels[0]), s=4, alpha=0.15, linewidths=0)
            ax.scatter(*pushed.T, facecolors="none", edgecolors=colours(labels[2]), s=24, linewidths=0.8)
            ax.scatter(*kept.T, color=colours(labels[1]), s=9, linewidths=0)
            entropy = arrays["memory_entropy"][point]
            ax.set_title(f"{method}, epoch {arrays['epoch'][point]}: memory entropy {entropy:.2f}", fontsize=9)
    kinds = (
        ("o", {"color": "grey", "alpha": 0.3, "markersize": 3}, "training images (current features)"),
        ("o", {"color": "grey", "markersize": 4}, "memory keys"),
        ("o", {"markerfacecolor": "none", "markeredgecolor": "grey", "markersize": 6}, "last K pushes"),
    )
    handles = [plt.Line2D([], [], marker=m, linestyle="none", label=label, **style) for m, style, label in kinds]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title)
    save_figure(fig, path)


def load_diagnostics(key: RunKey) -> list[dict]:
    return read_json(key.pretrain_dir / "memory_diagnostics.json", key.stage("pretrain"))


def plot_flows(diagnostics: dict[str, list[dict]], title: str, path: Path) -> None:
    """Per epoch: the head classes' share of the keys inserted, of the keys evicted, and of the memory."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    panels = (
        ("inserted", "inserted in the epoch"),
        ("evicted", "evicted in the epoch"),
        ("histogram", "held in memory"),
    )
    for ax, (key, what) in zip(axes, panels, strict=True):
        for method, records in diagnostics.items():
            head = records[0]["head_classes"]
            counts = np.array([r[key] for r in records], dtype=float)
            if key != "histogram":  # cumulative counters -> per epoch
                counts = np.diff(counts, axis=0, prepend=0)
            total = counts.sum(1)
            share = np.divide(counts[:, head].sum(1), total, out=np.full(len(total), np.nan), where=total > 0)
            ax.plot([r["epoch"] + 1 for r in records], 100 * share, marker=".", label=method)
        ax.set(title=f"keys {what}", xlabel="epoch", ylim=(0, 101))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("head classes' share (%)")
    axes[-1].legend()
    fig.suptitle(title)
    save_figure(fig, path)


def plot_score_parts(diagnostics: dict[str, list[dict]], title: str, path: Path) -> None:
    """Final DUEL score of head and tail keys, stacked by where the duplicates are."""
    fig, ax = plt.subplots(figsize=(1.6 * len(diagnostics) + 3, 3.8))
    bars = [(f"{m}\n{g}", records[-1], g) for m, records in diagnostics.items() for g in GROUPS]
    bottom = np.zeros(len(bars))
    for relation in RELATIONS:
        values = np.array([np.nan_to_num(r[f"score/{g}/{relation}"]) for _, r, g in bars])
        ax.bar(range(len(bars)), values, bottom=bottom, label=relation.replace("_", " "))
        bottom += values
    ax.set(xticks=range(len(bars)), ylabel="mean duplication score of a key", title=title)
    ax.set_xticklabels([name for name, *_ in bars], fontsize=8)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_tail_risk(diagnostics: dict[str, list[dict]], title: str, path: Path) -> None:
    """Final memory: how much more (> 1) or less (< 1) often than chance a DUEL eviction at tau_d hits the tail."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, records in diagnostics.items():
        ax.plot(TAU_GRID, [records[-1][f"tail_risk/{tau:g}"] for tau in TAU_GRID], marker="o", label=method)
    ax.axhline(1, color="grey", lw=1, ls=":")
    ax.set(xscale="log", xlabel="tau_d", ylabel="tail share of top-10 % scores / tail share", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_similarities(diagnostics: dict[str, list[dict]], title: str, path: Path) -> None:
    """Final pairwise key similarities by relation, seen from head keys (solid) and tail keys (dashed)."""
    fig, axes = plt.subplots(1, len(diagnostics), figsize=(4.5 * len(diagnostics), 3.5), squeeze=False, sharey=True)
    edges = np.linspace(-1, 1, SIMILARITY_BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    for ax, (method, records) in zip(axes[0], diagnostics.items(), strict=True):
        for i, relation in enumerate(RELATIONS):
            for group, style in (("head", "-"), ("tail", "--")):
                counts = np.array(records[-1][f"similarity/{group}/{relation}"], dtype=float)
                if counts.sum():
                    density = counts / counts.sum() / np.diff(edges)
                    ax.plot(centres, density, style, color=f"C{i}", label=f"{group}, {relation.replace('_', ' ')}")
        ax.set(title=method, xlabel="cosine similarity of two keys")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("density")
    axes[0, -1].legend(fontsize=7)
    fig.suptitle(title)
    save_figure(fig, path)


def summary_key(method: str, train_set: str, where: str, column: str) -> str:
    """summary.json / MLflow metric names (no brackets or parentheses allowed there)."""
    return f"{method}/{where}/{column}" if train_set == "lt" else f"{method}/{train_set}/{where}/{column}"


def report(cfg: StudyConfig, params_file: Path) -> None:
    """Every run's outputs aggregated into reports/, with what made them, and logged."""
    configure_cpu(cfg.runtime)
    runs = collect(cfg)  # a missing or damaged output fails here, before any run
    made_by = provenance.record(Path.cwd(), params_file, cfg.runtime)
    config = {"sweep": to_dict(cfg.sweep), "report": to_dict(cfg.report)}
    # The MLflow run spans the stage's work, so the runs table's durations are the stage's.
    with StageRun("report", "report", config, cfg.tracking.experiment) as run:
        run.log_metrics(build_report(cfg, runs, made_by))
        figures = REPORTS / "figures"
        for path in sorted(REPORTS.glob("*.*")) + sorted(figures.glob("*.png")):
            run.log_artifact(path, "figures" if path.parent == figures else None)


def group_note(cfg: StudyConfig, axis: str) -> str:
    """What many / medium / few hold in this study's tables (the first LT draw's counts)."""
    pc, draw = cfg.probe, cfg.sweep.draws[0]
    counts = {
        imbalance: read_json(manifest_path(imbalance, draw), stage_name("prepare", setting(imbalance), draw))
        for imbalance in cfg.sweep.imbalance
    }
    if pc.groups == "shots":
        few, many = pc.shot_thresholds
        return f"Groups: many > {many}, medium {few}..{many}, few < {few} LT training images per class."
    if pc.groups == "head":
        note = "Groups: many is the class of the largest LT count, few every other class; medium is empty."
    else:
        note = "Groups: many / medium / few are thirds of the classes sorted by LT training count."
    balanced = [f"{axis}={setting(i)}" for i, manifest in counts.items() if tied(manifest["class_counts"])]
    if balanced:
        note += f" At {', '.join(balanced)} every class has the same count: " + (
            "all are many." if pc.groups == "head" else "the thirds are by class index."
        )
    return note


def build_report(cfg: StudyConfig, runs: pd.DataFrame, made_by: dict[str, Any]) -> dict[str, float]:
    """Write every table, figure, summary.json and provenance.json of reports/ from the runs table and
    the provenance record; returns the summary (one mean per cell)."""
    axis = "rho" if cfg.prepare.profile == "dominant" else "r"
    worst = max(cfg.sweep.imbalance)  # the most imbalanced setting, for r and rho alike
    with_memory = set(runs.dropna(subset=["memory_entropy"]).method) if "memory_entropy" in runs else set()
    memory_methods = [m for m in cfg.sweep.methods if m in with_memory]
    first_draw = cfg.sweep.draws[0]
    manifest = read_json(manifest_path(worst, first_draw), stage_name("prepare", setting(worst), first_draw))
    num_classes = len(manifest["classes"])
    runs_per_cell = len(cfg.sweep.draws) * len(cfg.sweep.seeds)

    figures = REPORTS / "figures"
    s = cfg.sweep
    md = [f"# Results: {cfg.data.source}, profile {cfg.prepare.profile}, LT draws {s.draws}, seeds {s.seeds}", ""]
    md += [provenance.summary_line(made_by), "", group_note(cfg, axis), ""]
    summary: dict[str, float] = {}
    for name, (column, scale, decimals, caption) in TABLES.items():
        table = paper_table(runs, cfg, column, scale, decimals)
        md.append(markdown(table, caption, axis))
        with atomic_path(REPORTS / f"{name}.csv") as tmp:
            table.to_csv(tmp, index_label="method")
    means = runs.groupby(["method", "train_set", "imbalance"])[[c for c, *_ in TABLES.values() if c in runs]].mean()
    for (method, train_set, imbalance), row in means.iterrows():
        for column, value in row.dropna().items():
            summary[summary_key(method, train_set, f"{axis}{setting(imbalance)}", column)] = float(value)
    spread = f"mean ± std over {runs_per_cell} runs (LT draws x seeds)" if runs_per_cell > 1 else "one run"
    balanced = balanced_vs_lt_table(runs, cfg, worst)
    caption = (
        f"Pretrained on a balanced set (D_b) or the LT set (D_i) of the same size, {axis}={setting(worst)}: "
        f"balanced linear probe and kNN, top-1 (%) per group of the LT draw, {spread}"
    )
    md.append(markdown(balanced, caption, "", index="method / pretraining set / probe"))
    with atomic_path(REPORTS / "balanced_vs_lt.csv") as tmp:
        balanced.to_csv(tmp, index_label="method / pretraining set / probe")
    heads = heads_table(runs, cfg, worst)
    caption = f"Linear probe and LT-aware heads at {axis}={setting(worst)}: top-1 (%) per group, {spread}"
    md.append(markdown(heads, caption, "", index="method / head"))
    with atomic_path(REPORTS / "lt_heads.csv") as tmp:
        heads.to_csv(tmp, index_label="method / head")
    with atomic_path(REPORTS / "results.md") as tmp:
        tmp.write_text("\n".join(md))
    with atomic_path(REPORTS / "runs.csv") as tmp:
        runs.to_csv(tmp, index=False)
    with atomic_path(REPORTS / "accuracy_vs_imbalance.csv") as tmp:
        coordinates = ["method", "imbalance", "train_set", "draw", "seed"]
        runs[[*coordinates, "linear_top1", "knn_top1"]].to_csv(tmp, index=False)

    plot_accuracy(runs, cfg, axis, figures / "accuracy_vs_imbalance.png")
    curves = online_curves(cfg)
    with atomic_path(REPORTS / "accuracy_over_training.csv") as tmp:  # the header alone without online_eval
        (curves if len(curves) else pd.DataFrame(columns=["row", "imbalance", "step"])).to_csv(tmp, index=False)
    if len(curves):
        plot_online(curves, cfg, axis, figures / "accuracy_over_training.png")
    if memory_methods:
        plot_entropy(cfg, axis, memory_methods, figures / "memory_entropy.png")
    rc = cfg.report
    feature_maps = {}
    for method in cfg.sweep.methods:
        key = shown_run(cfg, method, worst)
        data = read_output(key.probe_dir / "test_features.npz", key.stage("probe"), lambda p: dict(np.load(p)))
        feature_maps[method] = tsne_embed(data["features"], data["labels"], rc.tsne_perplexity, rc.tsne_max_points)
    shown = shown_run(cfg, cfg.sweep.methods[0], worst)
    where = f"{axis}={setting(worst)}, {shown.train_set}, draw {shown.draw}, seed {shown.seed}"
    scatter_grid(feature_maps, num_classes, f"t-SNE of test features ({where})", figures / "tsne_features.png")
    with_maps = [m for m in ("moco", "dmoco") if m in memory_methods] or memory_methods
    if with_maps:
        memories = {m: load_memory(shown_run(cfg, m, worst)) for m in with_maps}
        maps = {
            m: tsne_embed(
                mem.valid_keys().numpy(), mem.labels[: mem.num_filled].numpy(), rc.tsne_perplexity, rc.tsne_max_points
            )
            for m, mem in memories.items()
        }
        scatter_grid(maps, num_classes, f"t-SNE of the final memory ({where})", figures / "tsne_memory.png")
        plot_memory_histograms(memories, num_classes, f"final memory ({where})", figures / "memory_histogram.png")
        snapshots = {m: load_snapshots(shown_run(cfg, m, worst)) for m in with_maps}
        snapshots = {m: arrays for m, arrays in snapshots.items() if len(arrays["step"])}
        if snapshots:
            title = f"t-SNE of the memory over training, colours classes ({where})"
            plot_memory_snapshots(snapshots, num_classes, rc.tsne_perplexity, title, figures / "memory_snapshots.png")
        diagnostics = {m: load_diagnostics(shown_run(cfg, m, worst)) for m in memory_methods}
        diagnostics = {m: records for m, records in diagnostics.items() if records}
        if diagnostics:
            plot_flows(diagnostics, f"memory flows ({where})", figures / "memory_flows.png")
            plot_score_parts(diagnostics, f"DUEL score parts, final memory ({where})", figures / "score_parts.png")
            plot_similarities(diagnostics, f"key similarities, final memory ({where})", figures / "key_similarity.png")
            plot_tail_risk(diagnostics, f"tail risk, final memory ({where})", figures / "tail_risk.png")

    write_json(REPORTS / "summary.json", summary)
    provenance.write(REPORTS, made_by)
    return summary
