"""Accuracy over training (duel.eval.online): the probe stage's kNN on the current encoder, measured without
changing training, kept through a resume."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from duel.callbacks import OnlineEval
from duel.config import OnlineEvalConfig
from duel.data.augment import normalizer
from duel.data.datasets import IndexedImages
from duel.errors import DuelError
from duel.eval.features import extract_features
from duel.eval.groups import group_accuracies
from duel.eval.knn import knn_predict
from duel.eval.online import OnlineKNN, bank_indices, curve_summary
from pipeline.pretrain import online_eval
from tests.test_train import Interrupt, Logged, train_tiny


def online_knn(source) -> OnlineKNN:
    bank = IndexedImages(source.train, bank_indices(list(range(60, 120)), 30, seed=0))
    return OnlineKNN(bank, IndexedImages(source.test, list(range(30))), 3, [40, 20, 5], k=5, batch_size=16)


def train(source, cfg, checkpoint, monitor=True, resume=False, stop_at_step=None, every=1):
    normalize = normalizer([0.5], [0.25])  # the augmentation's last step
    pre = replace(cfg.pretrain, online_eval=OnlineEvalConfig(every=every))
    logged = Logged()
    watch = [OnlineEval(online_knn(source), normalize), logged] if monitor else [logged]
    method, history, (_, augment) = train_tiny(source, pre, checkpoint, "dmoco", resume, stop_at_step, callbacks=watch)
    return method, history, logged.section("online"), augment


def test_the_monitor_leaves_training_bit_identical(tiny_source, tiny_config, tmp_path):
    on, on_history, logged, _ = train(tiny_source, tiny_config, tmp_path / "on.pt")
    off, off_history, _, _ = train(tiny_source, tiny_config, tmp_path / "off.pt", monitor=False)
    assert [r["loss"] for r in on_history] == [r["loss"] for r in off_history]
    for name, value in off.state_dict().items():
        assert torch.equal(on.state_dict()[name], value), name
    # One measurement per epoch, at the epoch's last step, in the history and to the logger.
    assert [r["step"] for r in logged] == [6, 13, 20]
    measured = [r for r in on_history if "online_knn_top1" in r]
    assert [r["step"] for r in measured] == [6, 13, 20]
    assert all(0 <= r["online_knn_top1"] <= 1 for r in measured)
    assert set(logged[0]) == {"step", "knn_top1", "knn_many", "knn_medium", "knn_few", "knn_group_std"}


def test_the_online_knn_is_the_probe_stages_knn_on_the_same_encoder_and_bank(tiny_source, tiny_config, tmp_path):
    method, history, logged, augment = train(tiny_source, tiny_config, tmp_path / "ck.pt")
    online = online_knn(tiny_source)
    bank = extract_features(method.backbone, augment[-1], online.bank, 64, "cpu")
    queries = extract_features(method.backbone, augment[-1], online.queries, 64, "cpu")
    labels = online.queries.labels.numpy()
    pred = knn_predict(bank, online.bank.labels.numpy(), queries, 3, k=5, temperature=0.1)
    expected = group_accuracies(labels, pred, [40, 20, 5])
    assert logged[-1]["knn_top1"] == pytest.approx(expected["top1"])
    assert logged[-1]["knn_few"] == pytest.approx(expected["few"])
    assert history[-1]["online_knn_top1"] == logged[-1]["knn_top1"]


def test_the_measurements_survive_a_kill_and_resume(tiny_source, tiny_config, tmp_path):
    _, full, _, _ = train(tiny_source, tiny_config, tmp_path / "full.pt")
    with pytest.raises(Interrupt):
        train(tiny_source, tiny_config, tmp_path / "cut.pt", stop_at_step=10)  # in epoch 2, after epoch 1's checkpoint
    _, resumed, logged, _ = train(tiny_source, tiny_config, tmp_path / "cut.pt", resume=True)
    keys = [(r["step"], r.get("online_knn_top1")) for r in resumed if "online_knn_top1" in r]
    assert keys == [(r["step"], r["online_knn_top1"]) for r in full if "online_knn_top1" in r]  # none twice, none lost
    assert [r["step"] for r in logged] == [13, 20]  # the resumed run measures only the epochs it trains


def test_every_n_epochs_and_the_last(tiny_source, tiny_config, tmp_path):
    _, _, logged, _ = train(tiny_source, tiny_config, tmp_path / "ck.pt", every=2)
    assert [r["step"] for r in logged] == [13, 20]  # after epoch 2 of 3, and after the last


def test_the_bank_is_a_seeded_subset_of_the_pool():
    pool = list(range(100, 200))
    bank = bank_indices(pool, 30, seed=0)
    assert bank == sorted(bank) and len(set(bank)) == 30 and set(bank) <= set(pool)
    assert bank == bank_indices(list(reversed(pool)), 30, seed=0)  # the pool's order does not matter
    assert bank != bank_indices(pool, 30, seed=1)
    assert bank_indices(pool, 500, seed=0) == pool


def test_the_curve_summary_is_the_final_value_the_drop_from_the_best_and_the_trapezoidal_mean():
    summary = curve_summary([10, 20, 40], [0.5, 0.7, 0.6])
    # area: (0.5 + 0.7) / 2 x 10 + (0.7 + 0.6) / 2 x 20 = 6 + 13 = 19 over a span of 30
    assert summary == pytest.approx({"final": 0.6, "drop": 0.1, "auc": 19 / 30})
    assert curve_summary([5], [0.4]) == {"final": 0.4, "drop": 0.0, "auc": 0.4}


def test_the_stage_refuses_an_online_eval_without_a_validation_split(tiny_source, tiny_config):
    cfg = replace(tiny_config, pretrain=replace(tiny_config.pretrain, online_eval=OnlineEvalConfig(every=1)))
    manifest = {"val_indices": [], "balanced_indices": [0, 1], "class_counts": [2, 1, 1]}
    with pytest.raises(DuelError, match=r"set data\.val_fraction > 0 or pretrain\.online_eval\.every: 0"):
        online_eval(cfg, manifest, tiny_source, nn.Identity())
    off = replace(cfg, pretrain=replace(cfg.pretrain, online_eval=OnlineEvalConfig(every=0)))
    assert online_eval(off, manifest, tiny_source, nn.Identity()) == []
