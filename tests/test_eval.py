import subprocess
import sys

import numpy as np
import pytest

from duel.data.longtail import class_counts
from duel.errors import DuelError
from duel.eval.groups import class_groups, group_accuracies, tied
from duel.eval.knn import knn_predict
from duel.eval.linear import linear_probe
from duel.eval.tsne import tsne_embed
from tests.project_copy import ROOT


def test_groups_are_thirds_by_descending_training_count():
    counts = [5, 50, 20, 100, 10, 1]
    assert class_groups(counts) == {"many": [3, 1], "medium": [2, 4], "few": [0, 5]}


def test_group_accuracies_hand_example():
    counts = [100, 50, 10]  # many = class 0, medium = class 1, few = class 2
    y_true = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 0, 2, 0, 0, 0])
    out = group_accuracies(y_true, y_pred, counts)
    assert out["top1"] == pytest.approx(4 / 8)
    assert (out["many"], out["medium"], out["few"]) == (1.0, 0.5, 0.25)
    assert out["group_std"] == pytest.approx(np.std([1.0, 0.5, 0.25]))


def test_knn_weighted_vote_hand_example():
    bank = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array([0, 0, 1])
    queries = np.array([[1.0, 0.05], [0.1, 1.0]])
    assert knn_predict(bank, labels, queries, 2, k=2, temperature=0.1).tolist() == [0, 1]
    # k = all: the two class-0 neighbours at cosine ~0.7 outvote one class-1 neighbour at 1.0 only
    # when the temperature flattens the weights.
    q = np.array([[0.7, 0.7]])
    b2 = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert knn_predict(b2, np.array([0, 1, 1]), q, 2, k=3, temperature=10).tolist() == [1]
    assert knn_predict(b2, np.array([1, 0, 0]), q, 2, k=3, temperature=10).tolist() == [0]


def test_linear_probe_selects_c_on_validation():
    rng = np.random.default_rng(0)

    def three_classes(n):  # the class is a band of the first feature; the rest is noise
        x = rng.normal(size=(n, 5))
        return x, np.digitize(x[:, 0], [-0.4, 0.4])

    train, val, (test_x, test_y) = three_classes(300), three_classes(100), three_classes(100)
    result = linear_probe(train, val, test_x, [1e-4, 1e-2, 1.0])
    # Strong regularisation cannot carve the middle band: it loses on validation.
    assert result.val_accuracy[1.0] > 0.9 > result.val_accuracy[1e-4]
    assert result.best_c == max(result.val_accuracy, key=result.val_accuracy.get) == 1.0
    assert (result.test_predictions == test_y).mean() > 0.9


def test_tsne_subsamples_and_keeps_labels_aligned():
    x = np.concatenate([np.zeros((30, 4)), np.ones((30, 4)) * 10]) + np.random.default_rng(0).normal(size=(60, 4))
    labels = np.repeat([0, 1], 30)
    coords, kept = tsne_embed(x, labels, perplexity=30, max_points=40)
    assert coords.shape == (40, 2) and len(kept) == 40
    centre0, centre1 = coords[kept == 0].mean(0), coords[kept == 1].mean(0)
    spread = coords[kept == 0].std(0).max()
    assert np.linalg.norm(centre0 - centre1) > 2 * spread  # the two clusters stay apart


def test_shot_groups_use_the_imagenet_lt_thresholds():
    counts = [500, 101, 100, 20, 19, 5]
    assert class_groups(counts, "shots", (20, 100)) == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
    y_true = np.array([0, 1, 2, 3])
    out = group_accuracies(y_true, np.array([0, 1, 0, 3]), [500, 300, 50, 60], "shots", (20, 100))
    assert out["many"] == 1.0 and out["medium"] == 0.5 and np.isnan(out["few"])
    assert out["group_std"] == pytest.approx(0.25)  # over the non-empty groups


def test_the_dominant_profile_groups_its_head_against_the_rest():
    counts = class_counts("dominant", 2000, 10, 0.9)  # 2000 + 9 x 24
    groups = class_groups(counts, "head")
    assert groups == {"many": [0], "medium": [], "few": list(range(1, 10))}
    out = group_accuracies(np.arange(10), np.array([0, 1, 2, 0, 0, 0, 0, 0, 0, 0]), counts, "head")
    assert out["many"] == 1.0 and out["few"] == pytest.approx(2 / 9) and np.isnan(out["medium"])


@pytest.mark.parametrize("profile", ["dominant", "step"])
def test_thirds_refuse_to_cut_between_classes_of_equal_count(profile):
    counts = class_counts(profile, 2000, 10, 0.9 if profile == "dominant" else 10)
    with pytest.raises(DuelError, match=r"probe.groups thirds cuts between classes of equal LT count .* head"):
        class_groups(counts, "thirds")


def test_thirds_keep_ties_inside_a_group_and_name_a_balanced_set():
    assert class_groups([9, 8, 5, 5, 1, 1]) == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
    counts = [100, 59, 35, 21, 12, 7, 4, 2, 1, 1]  # digits' r=100: the tie sits inside few
    assert class_groups(counts)["few"] == [7, 8, 9]
    assert tied([100] * 10) and not tied(counts)
    assert class_groups([100] * 6) == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}  # r=1: by index


def test_the_probe_stage_imports_its_libraries_before_the_timed_probe():
    """`probe_seconds` (the probe's compute in benchmarks/repro.py) must not hold imports: scikit-learn, SciPy,
    pandas and torch._dynamo (which torch.optim imports) load with the stage, not inside `probe_encoder`; and a
    stage that only validates its config (every stage does) does not import scikit-learn at all."""
    code = """
import sys
import numpy as np, torch
from duel.backbones import build_backbone
from duel.data.augment import normalizer
from duel.data.sources import ImageSet, SourceData
from duel.validation import parse_config

cfg = parse_config({"probe": {"knn_k": 5, "heads": ["ce"], "head_epochs": 2}})
print("sklearn" in sys.modules)
from pipeline.probe import probe_encoder

def split(n):
    images = torch.randint(0, 256, (3 * n, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    return ImageSet(np.repeat(np.arange(3), n), images=images)

manifest = {  # classes of 20 training images: an LT set of 12 / 4 / 2, 3 for validation, 5 balanced
    "train_indices": [*range(12), *range(20, 24), 40, 41],
    "val_indices": [12, 13, 14, 24, 25, 26, 42, 43, 44],
    "balanced_indices": [*range(15, 20), *range(27, 32), *range(45, 50)],
    "class_counts": [12, 4, 2],
}
encoder, _ = build_backbone("small_cnn", 1)
source = SourceData("tiny", ["a", "b", "c"], split(20), split(5))
before = set(sys.modules)
probe_encoder(encoder, normalizer([0.5], [0.25]), source, manifest, cfg)
packages = {"torch._dynamo" if m.startswith("torch._dynamo") else m.split(".")[0] for m in set(sys.modules) - before}
print(sorted(packages & {"sklearn", "scipy", "pandas", "torch._dynamo"}))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.split("\n")[:2] == ["False", "[]"], proc.stdout[-2000:] + proc.stderr[-2000:]
