import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from duel.callbacks import Callback, Checkpoint, MemoryDiagnostics
from duel.config import MemoryConfig, PretrainConfig, RuntimeConfig, to_dict
from duel.data.augment import ssl_augmentation, to_unit
from duel.data.datasets import Batch, IndexedImages
from duel.engine import Trainer
from duel.errors import DuelError
from duel.methods import METHODS, DataInfo, build_method
from duel.train import TrainingLoss
from duel.utils import seed_everything


class Interrupt(Exception):
    pass


class StopAt(Callback):
    """Interrupts the run once step `step`'s record is logged (e.g. a kill in the middle of epoch 2, after
    the epoch-1 checkpoint)."""

    def __init__(self, step: int | None) -> None:
        self.step = step

    def on_log(self, trainer, record, section):
        if section == "train" and record["step"] == self.step:
            raise Interrupt


class Logged(Callback):
    """Every record the run logs, as (section, record)."""

    def __init__(self) -> None:
        self.records = []

    def on_log(self, trainer, record, section):
        self.records.append((section, record))

    def section(self, name):
        return [record for section, record in self.records if section == name]


def train_tiny(source, pre, checkpoint, name="dmoco", resume=False, stop_at_step=None, runtime=None, callbacks=()):
    """`name` trained from seed 0 on the tiny source's first 60 images under the pretrain section `pre`,
    killed (Interrupt) at `stop_at_step`, with a checkpoint and `callbacks`. The method, its history, and
    the dataset and augmentation it trained on."""
    seed_everything(0)
    dataset = IndexedImages(source.train, list(range(60)))
    method = build_method(name, pre, DataInfo(1, len(dataset), 3))
    augment = ssl_augmentation(pre.augment, 8, 1, [0.5], [0.25])
    watching = [Checkpoint(checkpoint, to_dict(pre), resume), StopAt(stop_at_step), *callbacks]
    history = Trainer(method, dataset, augment, pre, runtime or RuntimeConfig(), 0, callbacks=watching).fit()
    return method, history, (dataset, augment)


def run(tiny_source, cfg, checkpoint, resume=False, stop_at_step=None, name="dmoco", runtime=None):
    diagnostics = MemoryDiagnostics([40, 20, 0])
    method, history, _ = train_tiny(
        tiny_source, cfg.pretrain, checkpoint, name, resume, stop_at_step, runtime, [diagnostics]
    )
    method.diagnostics = diagnostics.records
    return method, history


@pytest.mark.parametrize("name", sorted(METHODS))
def test_resume_ends_identical_to_an_uninterrupted_run(tiny_source, tiny_config, tmp_path, name):
    """Every method: weights, memory (random eviction's generator included), SDCLR's mask and per-sample
    state (BCL's scores, GH's score averages) alike; dmoco_roll with its window's pointer and
    shuffle-BN's draws."""
    kwargs = {**tiny_config.pretrain.method_kwargs, "dmoco_roll": {"max_staleness": 3, "bn_splits": 2}}
    tiny_config = replace(tiny_config, pretrain=replace(tiny_config.pretrain, method_kwargs=kwargs))
    full, full_history = run(tiny_source, tiny_config, tmp_path / "full.pt", name=name)
    with pytest.raises(Interrupt):
        run(tiny_source, tiny_config, tmp_path / "cut.pt", stop_at_step=10, name=name)
    assert torch.load(tmp_path / "cut.pt", weights_only=False)["epoch"] == 1
    resumed, history = run(tiny_source, tiny_config, tmp_path / "cut.pt", resume=True, name=name)

    steps_per_epoch = -(-60 // 8) if not resumed.drop_last else 60 // 8  # BCL also trains on the last 4 images
    assert len(history) == len(full_history) == 3 * steps_per_epoch
    for a, b in zip(history, full_history, strict=True):
        assert a["loss"] == b["loss"] and a.get("memory_entropy") == b.get("memory_entropy")
    # One diagnostics record per epoch (methods with a memory), the checkpointed ones restored on resume.
    assert [d["epoch"] for d in resumed.diagnostics] == ([0, 1, 2] if resumed.memory is not None else [])
    assert json.dumps(resumed.diagnostics) == json.dumps(full.diagnostics)  # NaN-aware: no tail class here
    state, expected = resumed.state_dict(), full.state_dict()
    assert state.keys() == expected.keys()
    for key in expected:  # model, key encoder, every memory array, masks and per-sample state
        assert torch.equal(state[key], expected[key]) or (state[key].isnan() == expected[key].isnan()).all(), key
        assert torch.equal(state[key].nan_to_num(0), expected[key].nan_to_num(0)), key
    if name in ("bcl", "gh"):
        assert any(v.abs().nan_to_num(0).sum() > 0 for v in resumed.sample_state().values())


def test_memory_diagnostics_leave_training_unchanged(tiny_source, tiny_config, tmp_path):
    """The diagnostics re-encode the memory's images (key drift) without drawing a random number or
    updating BatchNorm statistics: a run with them ends bit-identical to one without."""
    with_records, _ = run(tiny_source, tiny_config, tmp_path / "a.pt", name="dmoco_roll")
    assert any("key_drift/0-1" in d for d in with_records.diagnostics)
    off = replace(tiny_config, pretrain=replace(tiny_config.pretrain, diagnostics_every=0))
    without, _ = run(tiny_source, off, tmp_path / "b.pt", name="dmoco_roll")
    assert without.diagnostics == []
    for key, value in without.state_dict().items():
        assert torch.equal(with_records.state_dict()[key], value), key


def test_a_checkpoint_resumes_under_other_machine_settings(tiny_source, tiny_config, tmp_path):
    """Runtime settings are not part of the checkpointed config: a run moves between machines, and ends
    where it would have ended without moving (the same bytes: these settings change no arithmetic)."""
    full, full_history = run(tiny_source, tiny_config, tmp_path / "full.pt")
    with pytest.raises(Interrupt):
        run(tiny_source, tiny_config, tmp_path / "cut.pt", stop_at_step=10)
    other = RuntimeConfig(num_workers=1, data_root="/elsewhere", cache_dir=None, log_every=4)
    resumed, history = run(tiny_source, tiny_config, tmp_path / "cut.pt", resume=True, runtime=other)
    assert [r["loss"] for r in history] == [r["loss"] for r in full_history]
    for key, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    # channels-last convolutions sum in another order: the same run within float tolerance
    with pytest.raises(Interrupt):
        run(tiny_source, tiny_config, tmp_path / "cut2.pt", stop_at_step=10)
    channels_last = RuntimeConfig(channels_last=True)
    moved, _ = run(tiny_source, tiny_config, tmp_path / "cut2.pt", resume=True, runtime=channels_last)
    for key, value in full.state_dict().items():
        torch.testing.assert_close(moved.state_dict()[key].float(), value.float(), rtol=1e-3, atol=1e-4, msg=key)


def test_step_metrics_are_read_at_the_logging_cadence_and_every_step_is_logged(tiny_source, tiny_config, tmp_path):
    """log_every 5 (7 steps an epoch): the loop reads the device twice an epoch (after 5 steps, at the
    epoch's end) instead of 7 times, and logs the same records of every step, in order."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from host_syncs import counted

    histories, reads = [], []
    for every in (1, 5):
        with counted() as (mode, _):
            _, history = run(tiny_source, tiny_config, tmp_path / f"{every}.pt", runtime=RuntimeConfig(log_every=every))
        histories.append([{k: v for k, v in r.items() if k != "images_per_s"} for r in history])
        reads.append(mode.sites["duel/callbacks/step_log.py"])
    assert histories[0] == histories[1] and len(histories[0]) == 3 * 7
    assert reads == [3 * 7, 3 * 2]


def test_resume_refuses_a_checkpoint_of_another_config(tiny_source, tiny_config, tmp_path):
    run(tiny_source, tiny_config, tmp_path / "ck.pt")
    other = replace(tiny_config, pretrain=replace(tiny_config.pretrain, lr=0.5))
    with pytest.raises(DuelError, match=r"lr=0.06, not 0.5"):
        run(tiny_source, other, tmp_path / "ck.pt", resume=True)


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),  # truncated by a crash
        lambda path: path.write_text("not a checkpoint"),
        lambda path: torch.save({"model": {}}, path),  # a torch file, but not a pretraining checkpoint
    ],
)
def test_a_damaged_checkpoint_is_set_aside_and_the_run_starts_over(tiny_source, tiny_config, tmp_path, capsys, damage):
    _, full_history = run(tiny_source, tiny_config, tmp_path / "full.pt")
    with pytest.raises(Interrupt):
        run(tiny_source, tiny_config, tmp_path / "cut.pt", stop_at_step=10)
    damage(tmp_path / "cut.pt")
    _, history = run(tiny_source, tiny_config, tmp_path / "cut.pt", resume=True)
    assert [r["loss"] for r in history] == [r["loss"] for r in full_history]  # started over, same result
    assert (tmp_path / "cut.pt.damaged").exists() and torch.load(tmp_path / "cut.pt", weights_only=False)["epoch"] == 3
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and f"checkpoint {tmp_path / 'cut.pt'} is damaged (" in warning[0]
    assert warning[0].endswith("moved to " + str(tmp_path / "cut.pt.damaged") + ", training starts over")


def test_too_small_training_set_is_a_clear_error(tiny_source, tiny_config, tmp_path):
    seed_everything(0)
    method = build_method("moco", tiny_config.pretrain, DataInfo(1, 3))
    augment = ssl_augmentation(tiny_config.pretrain.augment, 8, 1, [0.5], [0.25])
    with pytest.raises(DuelError, match=r"fewer than pretrain\.batch_size=8"):
        Trainer(method, IndexedImages(tiny_source.train, [0, 1, 2]), augment, tiny_config.pretrain, RuntimeConfig(), 0)


def test_max_steps_stops_early_and_ends_the_cosine_schedule(tiny_source, tiny_config, tmp_path):
    cfg = replace(tiny_config, pretrain=replace(tiny_config.pretrain, max_steps=4))
    _, history = run(tiny_source, cfg, tmp_path / "ck.pt")
    assert [r["step"] for r in history] == [0, 1, 2, 3]
    assert history[-1]["lr"] == pytest.approx(0.06 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert torch.load(tmp_path / "ck.pt", weights_only=False)["epoch"] == 1


def test_gpu_options_run_on_cpu_and_keep_the_memory_exact(tiny_source, tiny_config, tmp_path):
    """bf16 autocast and channels_last: the same code path a GPU run takes (torch.compile: below)."""
    fast = RuntimeConfig(precision="bf16", channels_last=True)
    cfg = replace(tiny_config, pretrain=replace(tiny_config.pretrain, max_steps=6))
    method, history = run(tiny_source, cfg, tmp_path / "ck.pt", runtime=fast)
    assert len(history) == 6 and all(math.isfinite(r["loss"]) for r in history)
    memory = method.memory
    assert memory.keys.dtype == torch.float32 and memory.num_filled == 32
    # Scores are maintained incrementally in fp32 even though the encoder ran under bf16 autocast.
    assert torch.allclose(memory.scores, memory.full_scores(), atol=1e-4)


@pytest.mark.slow  # torch.compile of the loss module and backbones: about 90 s
def test_compiled_step_trains_as_the_eager_one(tiny_source, tiny_config, tmp_path):
    """runtime.compile (the whole loss module and the backbones): the same losses and memory keys as
    eager, to float tolerance."""
    cfg = replace(tiny_config, pretrain=replace(tiny_config.pretrain, max_steps=6))
    eager_method, eager = run(tiny_source, cfg, tmp_path / "eager.pt")
    method, compiled = run(tiny_source, cfg, tmp_path / "compiled.pt", runtime=RuntimeConfig(compile=True))
    torch.testing.assert_close([r["loss"] for r in compiled], [r["loss"] for r in eager], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(method.memory.keys, eager_method.memory.keys, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_loss_module_is_one_graph(name):
    """What runtime.compile compiles, each method's TrainingLoss, traces as a single graph: a host read
    or another graph break in a loss (which would split it and sync a GPU) fails here."""
    cfg = PretrainConfig(backbone="small_cnn", batch_size=16, memory=MemoryConfig(size=64))
    method = build_method(name, cfg, DataInfo(3, 16, 3)).train()
    if method.memory is not None:
        method.memory.push(torch.randn(64, method.memory.dim))
    for state in method.sample_state().values():  # a second epoch: BCL's and GH's per-sample terms on
        state.copy_(torch.rand(state.shape))
    method.on_epoch_start(1, 2)
    positions = torch.arange(16)
    batch = Batch(torch.rand(16, 3, 8, 8), positions % 3, positions, positions)
    with torch.no_grad():
        views = method.views(batch, ssl_augmentation(cfg.augment, 8, 3, [0.5] * 3, [0.25] * 3))
    explained = torch._dynamo.explain(TrainingLoss(method))(views, batch)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_fresh_memory_holds_the_final_encoders_keys_of_its_images(tiny_source, tiny_config, tmp_path):
    """dmoco_fresh re-encodes the memory's images after every step: at the end its keys are the final key
    encoder's keys of exactly those images, and the DUEL scores match them."""
    seed_everything(0)
    dataset = IndexedImages(tiny_source.train, list(range(20, 80)))
    method = build_method("dmoco_fresh", tiny_config.pretrain, DataInfo(1, len(dataset), 3))
    augment = torch.nn.Identity()  # deterministic views, so the expected keys can be recomputed
    cpu = RuntimeConfig()
    Trainer(method, dataset, augment, tiny_config.pretrain, cpu, 0).fit()
    memory = method.memory
    images = dataset.images.images[dataset.positions(memory.indices[: memory.num_filled])]
    # Re-encoded in training-size batches, as the loop does (train-mode BatchNorm uses batch statistics).
    keys = torch.cat([method.keys(to_unit(x)) for x in images.split(tiny_config.pretrain.batch_size)])
    torch.testing.assert_close(memory.valid_keys(), keys)
    torch.testing.assert_close(memory.scores[: memory.num_filled], memory.full_scores())
    # The plain method keeps keys of the encoder states that pushed them.
    seed_everything(0)
    stale = build_method("dmoco", tiny_config.pretrain, DataInfo(1, len(dataset), 3))
    Trainer(stale, dataset, augment, tiny_config.pretrain, cpu, 0).fit()
    images = dataset.images.images[dataset.positions(stale.memory.indices[: stale.memory.num_filled])]
    keys = torch.cat([stale.keys(to_unit(x)) for x in images.split(tiny_config.pretrain.batch_size)])
    assert not torch.allclose(stale.memory.valid_keys(), keys, atol=1e-3)


def test_positions_map_source_indices_to_rows(tiny_source):
    dataset = IndexedImages(tiny_source.train, [5, 17, 3, 90])
    assert dataset.positions(torch.tensor([3, 90, 5])).tolist() == [2, 3, 0]
    with pytest.raises(ValueError, match="not in this set"):
        dataset.positions(torch.tensor([4]))
