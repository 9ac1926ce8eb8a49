"""Many / medium / few accuracies, with classes grouped by their LT training count.

`thirds` sorts the classes by count and cuts them into thirds (DESIGN §4);
`shots` uses ImageNet-LT's fixed thresholds (Liu et al. 2019): many > 100,
medium 20..100, few < 20 training images.
"""

from __future__ import annotations

import numpy as np

GROUPS = ("many", "medium", "few")


def class_groups(
    train_counts: list[int], mode: str = "thirds", thresholds: tuple[int, int] = (20, 100)
) -> dict[str, list[int]]:
    """Class indices of each group (a `shots` group may be empty)."""
    if mode == "shots":
        few_below, many_above = thresholds
        many = [c for c, n in enumerate(train_counts) if n > many_above]
        few = [c for c, n in enumerate(train_counts) if n < few_below]
        medium = [c for c in range(len(train_counts)) if c not in many and c not in few]
        return {"many": many, "medium": medium, "few": few}
    order = sorted(range(len(train_counts)), key=lambda c: (-train_counts[c], c))
    return dict(zip(GROUPS, (g.tolist() for g in np.array_split(np.asarray(order), 3)), strict=True))


def group_accuracies(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    train_counts: list[int],
    mode: str = "thirds",
    thresholds: tuple[int, int] = (20, 100),
) -> dict[str, float]:
    """Top-1 overall and per group (NaN for an empty group), and the std of the group accuracies."""
    correct = y_true == y_pred
    out = {"top1": float(correct.mean())}
    for name, classes in class_groups(train_counts, mode, thresholds).items():
        mask = np.isin(y_true, classes)
        out[name] = float(correct[mask].mean()) if mask.any() else float("nan")
    present = [out[g] for g in GROUPS if not np.isnan(out[g])]
    out["group_std"] = float(np.std(present))
    return out
