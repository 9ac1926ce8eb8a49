"""The memory over training (duel.snapshots, the paper's Figure 5): recorded without changing training,
kept through a kill and resume, written by the pretrain stage and drawn by the report."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from duel.callbacks import MemorySnapshotting
from duel.config import RuntimeConfig
from duel.errors import ConfigError
from duel.snapshots import MemorySnapshots
from duel.train import unaugmented_keys
from duel.validation import validate_pretrain
from pipeline.report import plot_memory_snapshots
from tests.test_cli import project, run_stage, set_params  # noqa: F401 (project: a fixture)
from tests.test_train import Interrupt, train_tiny

# 60 images, batches of 8: 7 steps (56 pushes) an epoch; a memory of 80 holds its last 10 steps' keys, so
# the last pushes at an epoch's end reach back into the epoch before (and across a checkpoint).
SIZE = 80


def snapshot_config(cfg, epochs: list[int]):
    pre = cfg.pretrain
    return dataclasses.replace(pre, memory=dataclasses.replace(pre.memory, size=SIZE, snapshot_epochs=epochs))


def train(source, cfg, checkpoint, epochs=(1, 2, 3), method="dmoco", resume=False, stop_at_step=None):
    snapshots = MemorySnapshots(display_images=25)
    pre = snapshot_config(cfg, list(epochs))
    watch = [MemorySnapshotting(snapshots)]
    model, history, data = train_tiny(source, pre, checkpoint, method, resume, stop_at_step, callbacks=watch)
    return model, history, snapshots, data


@pytest.mark.parametrize("method", ["moco", "dmoco"])
def test_snapshots_leave_training_bit_identical(tiny_source, tiny_config, tmp_path, method):
    on, on_history, snapshots, (dataset, augment) = train(tiny_source, tiny_config, tmp_path / "on.pt", method=method)
    off, off_history, none, _ = train(tiny_source, tiny_config, tmp_path / "off.pt", epochs=(), method=method)
    assert [r["loss"] for r in on_history] == [r["loss"] for r in off_history]
    assert on.state_dict().keys() == off.state_dict().keys()
    for name, value in off.state_dict().items():
        assert torch.equal(on.state_dict()[name], value), name
    assert none.points == [] and none.arrays()["step"].size == 0

    # One point at each chosen epoch's last step; the last is the final memory and the final encoder.
    arrays = snapshots.arrays()
    assert arrays["step"].tolist() == [6, 13, 20] and arrays["epoch"].tolist() == [1, 2, 3]
    memory = on.memory
    last = arrays["memory_point"] == 2
    assert np.array_equal(arrays["memory_keys"][last], memory.valid_keys().numpy())
    assert np.array_equal(arrays["memory_indices"][last], memory.indices.numpy())
    assert arrays["memory_entropy"][-1] == memory.class_entropy(3)
    positions = dataset.positions(torch.as_tensor(arrays["display_indices"]))
    assert len(positions) == 25 and np.array_equal(arrays["display_labels"], dataset.labels[positions].numpy())
    now = unaugmented_keys(on, dataset, positions, augment, 8, RuntimeConfig())
    assert np.array_equal(arrays["display_features"][-1], now.numpy())
    # The last K pushes, in push order: a FIFO memory holds exactly them; a DUEL memory kept older keys.
    recent = arrays["recent_indices"][arrays["recent_point"] == 2]
    assert len(recent) == SIZE
    held = sorted(recent.tolist()) == sorted(memory.indices.tolist())
    assert held if method == "moco" else not held


def test_a_killed_run_resumes_to_the_same_snapshots(tiny_source, tiny_config, tmp_path):
    *_, full, _ = train(tiny_source, tiny_config, tmp_path / "full.pt")
    with pytest.raises(Interrupt):  # in epoch 2, after epoch 1's point and checkpoint
        train(tiny_source, tiny_config, tmp_path / "cut.pt", stop_at_step=10)
    *_, resumed, _ = train(tiny_source, tiny_config, tmp_path / "cut.pt", resume=True)
    expected, got = full.arrays(), resumed.arrays()
    assert got["step"].tolist() == [6, 13, 20]  # none twice, none lost
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert np.array_equal(got[name], value), name


def test_snapshot_epochs_are_checked(tiny_config):
    for bad in ([0], [2, 1], [1, 1]):
        with pytest.raises(ConfigError, match=r"pretrain.memory.snapshot_epochs=.*increasing epochs counted from 1"):
            validate_pretrain(snapshot_config(tiny_config, bad), RuntimeConfig(), "pretrain")
    validate_pretrain(snapshot_config(tiny_config, [1, 3, 20]), RuntimeConfig(), "pretrain")  # 20 of 3: never comes
    assert tiny_config.pretrain.memory.snapshot_epochs == []


def test_an_epoch_past_the_last_never_comes(tiny_source, tiny_config, tmp_path):
    *_, snapshots, _ = train(tiny_source, tiny_config, tmp_path / "ck.pt", epochs=(2, 20), method="moco")
    assert snapshots.arrays()["epoch"].tolist() == [2]


def test_the_stage_writes_the_snapshots_and_the_report_draws_them(project, monkeypatch, capsys):  # noqa: F811
    set_params(project, "prepare", n_max=20)
    set_params(project, "pretrain", epochs=2, batch_size=16, memory={"size": 32, "snapshot_epochs": [1, 2]})
    assert run_stage(["prepare", "--imbalance", "10"], monkeypatch, capsys)[0] == 0
    written = {}
    for method in ("moco", "simclr"):  # simclr: no memory, a file with no point
        assert run_stage(["pretrain", "--method", method, "--imbalance", "10"], monkeypatch, capsys)[0] == 0
        written[method] = dict(np.load(project / f"outputs/pretrain/{method}-imb10-lt-d0-s0/memory_snapshots.npz"))
    assert written["simclr"]["step"].size == 0 and written["simclr"]["memory_keys"].size == 0
    moco = written["moco"]
    assert moco["epoch"].tolist() == [1, 2] and moco["display_features"].shape[:2] == (2, len(moco["display_labels"]))
    assert np.bincount(moco["memory_point"]).tolist() == [32, 32]

    figure = project / "memory_snapshots.png"
    plot_memory_snapshots({"moco": moco}, 10, 30.0, "test", figure)
    assert figure.stat().st_size > 0
