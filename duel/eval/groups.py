"""Many / medium / few accuracies, with classes grouped by their LT training count.

`thirds` sorts the classes by count and cuts them into thirds (DESIGN §4);
`shots` uses ImageNet-LT's fixed thresholds (Liu et al. 2019): many > 100,
medium 20..100, few < 20 training images; `head` sets the classes of the
largest count (a `dominant` profile's head) against the rest, medium empty.
A group is a set of counts: `thirds` refuses to cut between two classes of
equal count (the cut would be by class index), except on a balanced set,
where every class is tied and the thirds are by class index (`tied`).
"""

from __future__ import annotations

import itertools

import numpy as np

from duel.errors import DuelError

GROUPS = ("many", "medium", "few")
GROUP_MODES = ("thirds", "shots", "head")


def class_groups(
    train_counts: list[int], mode: str = "thirds", thresholds: tuple[int, int] = (20, 100)
) -> dict[str, list[int]]:
    """Class indices of each group (a `shots` or `head` group may be empty)."""
    classes = range(len(train_counts))
    if mode == "shots":
        few_below, many_above = thresholds
        many = [c for c in classes if train_counts[c] > many_above]
        few = [c for c in classes if train_counts[c] < few_below]
        medium = [c for c in classes if c not in many and c not in few]
        return {"many": many, "medium": medium, "few": few}
    if mode == "head":
        top = max(train_counts)
        return {
            "many": [c for c in classes if train_counts[c] == top],
            "medium": [],
            "few": [c for c in classes if train_counts[c] < top],
        }
    order = sorted(classes, key=lambda c: (-train_counts[c], c))
    groups = dict(zip(GROUPS, (g.tolist() for g in np.array_split(np.asarray(order), 3)), strict=True))
    if not tied(train_counts):
        for upper, lower in itertools.pairwise(GROUPS):
            if groups[upper] and groups[lower] and train_counts[groups[upper][-1]] == train_counts[groups[lower][0]]:
                n = train_counts[groups[lower][0]]
                raise DuelError(
                    f"probe.groups thirds cuts between classes of equal LT count ({n} images: classes "
                    f"{[c for c in classes if train_counts[c] == n]} fall in both {upper} and {lower}); "
                    "set probe.groups: head (the largest classes against the rest, e.g. profile dominant) or shots"
                )
    return groups


def tied(train_counts: list[int]) -> bool:
    """Every class has the same count: groups by count are by class index."""
    return len(set(train_counts)) == 1


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
