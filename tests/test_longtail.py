import numpy as np
import pytest

from duel.config import DataConfig, PrepareConfig
from duel.data.longtail import build_manifest, check_manifest, class_counts
from duel.data.sources import DataError


def test_cifar10_exp_profile_matches_cao_et_al():
    counts = class_counts("exp", 5000, 10, 100)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12406


def test_exp_with_ratio_one_is_balanced():
    assert class_counts("exp", 100, 10, 1) == [100] * 10


def test_step_profile():
    assert class_counts("step", 500, 5, 10) == [500, 500, 50, 50, 50]


def test_dominant_profile_head_holds_rho_max():
    counts = class_counts("dominant", 900, 10, 0.5)
    assert counts[0] == 900 and set(counts[1:]) == {100}
    assert counts[0] / sum(counts) == pytest.approx(0.5)
    assert class_counts("dominant", 100, 10, 0.1) == [100] * 10  # rho_max = 1/C is balanced


def test_balanced_matched_has_the_total_of_its_reference():
    counts = class_counts("balanced_matched", 5000, 10, 100, match_profile="exp")
    assert sum(counts) == 12406
    assert max(counts) - min(counts) <= 1


def test_manifest_is_deterministic_and_disjoint(tiny_source):
    data, prep = DataConfig(val_fraction=0.25), PrepareConfig(profile="exp", n_max=20, seed=3)
    a = build_manifest(tiny_source, data, prep, 4.0)
    b = build_manifest(tiny_source, data, prep, 4.0)
    assert a == b
    assert a["class_counts"] == [20, 10, 5]
    train, val, pool = (set(a[k]) for k in ("train_indices", "val_indices", "balanced_indices"))
    assert train <= pool and not pool & val
    assert len(val) == 30 and len(pool) == 90
    labels = tiny_source.train.labels[a["train_indices"]]
    assert np.bincount(labels).tolist() == [20, 10, 5]
    check_manifest(a, tiny_source)  # same data: no error


def test_shuffled_head_order_permutes_the_counts(tiny_source):
    data = DataConfig(val_fraction=0.25)
    m = build_manifest(tiny_source, data, PrepareConfig(n_max=20, head_order="shuffled", seed=1), 4.0)
    assert sorted(m["class_counts"], reverse=True) == [20, 10, 5]
    assert m["class_counts"] == [[20, 10, 5][m["class_order"].index(c)] for c in range(3)]


def test_manifest_rejects_more_images_than_the_pool(tiny_source):
    with pytest.raises(DataError, match=r"prepare\.n_max=31"):
        build_manifest(tiny_source, DataConfig(val_fraction=0.25), PrepareConfig(n_max=31), 1.0)


def test_manifest_detects_changed_source(tiny_source):
    m = build_manifest(tiny_source, DataConfig(val_fraction=0.25), PrepareConfig(n_max=10), 1.0)
    tiny_source.train.images[0] += 1
    with pytest.raises(DataError, match="rerun the prepare stage"):
        check_manifest(m, tiny_source)
