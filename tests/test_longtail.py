import numpy as np
import pytest

from duel.config import DataConfig, PrepareConfig
from duel.data.longtail import build_manifest, check_manifest, class_counts, kshot_subsets, pretraining_indices
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


def test_draws_resample_the_lt_set_and_keep_validation_and_pool(tiny_source):
    data, prep = DataConfig(val_fraction=0.25), PrepareConfig(n_max=20, head_order="shuffled", seed=3)
    draws = [build_manifest(tiny_source, data, prep, 4.0, draw) for draw in range(4)]
    assert draws[0] == build_manifest(tiny_source, data, prep, 4.0)  # draw 0 is the study's usual draw
    for m in draws[1:]:
        assert m["val_indices"] == draws[0]["val_indices"] and m["balanced_indices"] == draws[0]["balanced_indices"]
        assert sorted(m["class_counts"], reverse=True) == [20, 10, 5] and m["draw"] > 0
    assert len({tuple(m["train_indices"]) for m in draws}) == 4
    assert len({tuple(m["class_order"]) for m in draws}) > 1  # shuffled: each draw its own head class


def test_matched_set_is_balanced_the_lt_size_and_from_the_pool(tiny_source):
    for draw in (0, 1):
        m = build_manifest(tiny_source, DataConfig(val_fraction=0.25), PrepareConfig(n_max=20), 4.0, draw)
        counts = np.bincount(tiny_source.train.labels[m["matched_indices"]], minlength=3).tolist()
        assert counts == [12, 12, 11] and sum(counts) == m["num_train"] == 35
        assert set(m["matched_indices"]) <= set(m["balanced_indices"])
        assert len(set(m["matched_indices"])) == 35


def test_a_pool_too_small_for_the_balanced_match_fails_only_the_runs_that_ask_for_it(tiny_source, tmp_path):
    val = np.array([0, 40, *range(85, 120)])  # class c keeps 5 pool images: less than 35 / 3
    np.save(tmp_path / "val.npy", val)
    m = build_manifest(
        tiny_source, DataConfig(), PrepareConfig(n_max=20, val_index_file=str(tmp_path / "val.npy")), 4.0
    )
    assert m["matched_indices"] is None and m["class_counts"] == [20, 10, 5]
    assert pretraining_indices(m, "lt", tiny_source.train.labels) == m["train_indices"]
    with pytest.raises(DataError, match=r"\(35 images\) needs 12 per class but class 'c' has 5 in its pool"):
        pretraining_indices(m, "balanced", tiny_source.train.labels)


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


def test_file_profile_imports_an_npy_split_per_setting(tiny_source, tmp_path):
    """SDCLR/BCL publish LT subsets as .npy indices into the training split."""
    lt = np.array([0, 1, 2, 3, 4, 5, 40, 41, 80])  # 6 / 2 / 1 images of classes a / b / c
    np.save(tmp_path / "r100_D_i.npy", lt)
    cfg = PrepareConfig(profile="file", index_file=str(tmp_path / "r{imbalance}_D_i.npy"))
    m = build_manifest(tiny_source, DataConfig(val_fraction=0.25), cfg, 100)
    assert m["train_indices"] == lt.tolist() and m["class_counts"] == [6, 2, 1]
    assert not set(m["val_indices"]) & set(lt.tolist())
    assert len(m["val_indices"]) == 30 and set(m["balanced_indices"]) >= set(lt.tolist())
    with pytest.raises(DataError, match=r"r10_D_i\.npy"):
        build_manifest(tiny_source, DataConfig(), cfg, 10)
    np.save(tmp_path / "split2_D_i.npy", lt[[0, 1, 6, 8]])
    by_draw = PrepareConfig(profile="file", index_file=str(tmp_path / "split{draw}_D_i.npy"))
    assert build_manifest(tiny_source, DataConfig(val_fraction=0.25), by_draw, 100, 2)["class_counts"] == [2, 1, 1]
    np.save(tmp_path / "r1_D_i.npy", np.array([0, 0, 500]))
    with pytest.raises(DataError, match=r"distinct indices in \[0, 120\)"):
        build_manifest(tiny_source, DataConfig(), cfg, 1)


def test_val_index_file_and_official_val_split_replace_the_carved_one(tiny_source, tmp_path):
    val = np.array([10, 11, 50, 51, 90, 91])
    np.save(tmp_path / "val.npy", val)
    m = build_manifest(tiny_source, DataConfig(), PrepareConfig(n_max=5, val_index_file=str(tmp_path / "val.npy")), 1)
    assert m["val_indices"] == val.tolist() and not set(m["balanced_indices"]) & set(val.tolist())
    tiny_source.val_indices = val
    natural = build_manifest(tiny_source, DataConfig(), PrepareConfig(profile="natural"), 1)
    assert natural["val_indices"] == val.tolist() and natural["class_counts"] == [38, 38, 38]
    assert natural["train_indices"] == natural["balanced_indices"]


def test_kshot_subsets_are_balanced_seeded_and_differ_between_splits(tiny_source):
    pool = list(range(0, 120, 2))  # 20 per class
    draws = kshot_subsets(pool, tiny_source.train.labels, tiny_source.classes, shots=3, splits=4, seed=7)
    assert len(draws) == 4 and all(np.bincount(tiny_source.train.labels[d]).tolist() == [3, 3, 3] for d in draws)
    assert all(set(d.tolist()) <= set(pool) for d in draws)
    assert len({tuple(d) for d in draws}) == 4
    again = kshot_subsets(pool, tiny_source.train.labels, tiny_source.classes, shots=3, splits=4, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(draws, again, strict=True))
    with pytest.raises(DataError, match=r"probe\.shots=21 but class 'a' has 20 images"):
        kshot_subsets(pool, tiny_source.train.labels, tiny_source.classes, shots=21, splits=1, seed=0)
