"""The cosine temperature schedule (Kukleva et al., ICLR 2023) and the methods that use it: simclr_ts,
moco_ts, dmoco_ts. Reference: Annusha/temperature_schedules train_simCLR.py `--adj_tau cos`."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from duel.data.augment import ssl_augmentation
from duel.data.datasets import IndexedImages
from duel.engine import Trainer
from duel.errors import ConfigError
from duel.losses import nt_xent
from duel.methods import METHODS, DataInfo, build_method
from duel.methods.sdclr import SDCLR, SDCLRParams
from duel.methods.temperature import CosineTemperature, CosineTemperatureParams
from duel.utils import seed_everything
from duel.validation import parse_config
from pipeline.pretrain import MLflowLogging

SCHEDULED = ("simclr_ts", "moco_ts", "dmoco_ts")


def reference_tau(epoch: int, min_tau: float = 0.1, max_tau: float = 1.0, t_max: int = 200) -> float:
    """train_simCLR.py `train`, `args.adj_tau == 'cos'`, with `epoch` counted from 1 as its loop does."""
    return min_tau + 0.5 * (max_tau - min_tau) * (1 + math.cos(math.pi * epoch / t_max))


def with_kwargs(tiny_config, **kwargs):
    return replace(tiny_config.pretrain, method_kwargs={**tiny_config.pretrain.method_kwargs, **kwargs})


def test_the_schedule_is_the_references_formula_at_its_one_based_epoch(tiny_config):
    method = build_method("simclr_ts", tiny_config.pretrain, DataInfo(1, 8, 3))
    assert method.params == CosineTemperatureParams(tau_min=0.1, tau_max=1.0, t_max=200)  # the README's run
    expected = {0: 0.1 + 0.45 * (1 + math.cos(math.pi / 200)), 199: 0.1, 399: 1.0, 599: 0.1}
    for epoch, tau in expected.items():
        method.on_epoch_start(epoch, 2000)
        assert method.temperature == tau, epoch  # exactly, at the trough and the crest too
    for epoch in (1, 57, 100, 250, 1999):
        method.on_epoch_start(epoch, 2000)
        assert method.temperature == reference_tau(epoch + 1)
        # the reference evaluates the cosine in float32 (`torch.cos(torch.tensor(...))`)
        theirs = 0.1 + 0.5 * 0.9 * (1 + torch.cos(torch.tensor(torch.pi * (epoch + 1) / 200)))
        assert method.temperature == pytest.approx(float(theirs), abs=5e-7)


def test_the_temperature_is_constant_within_an_epoch_and_logged_once_per_epoch(tiny_source, tiny_config, tmp_path):
    cfg = with_kwargs(tiny_config, simclr_ts={"tau_min": 0.2, "tau_max": 0.6, "t_max": 2})
    seed_everything(0)
    dataset = IndexedImages(tiny_source.train, list(range(60)))
    method = build_method("simclr_ts", cfg, DataInfo(1, len(dataset), 3))
    used, loss = [], method.training_loss

    def recording(views, batch):
        used.append(method.temperature)
        return loss(views, batch)

    method.training_loss = recording
    run = SimpleNamespace(steps=[])
    run.log_step = lambda record, prefix: run.steps.append((prefix, record))  # a StageRun's curve logging
    augment = ssl_augmentation(cfg.augment, 8, 1, [0.5], [0.25])
    history = Trainer(method, dataset, augment, cfg, tiny_config.runtime, 0, callbacks=[MLflowLogging(run)]).fit()
    logged = [record for prefix, record in run.steps if prefix == "method"]
    tau = [reference_tau(e + 1, 0.2, 0.6, 2) for e in range(3)]  # 0.4, 0.2, 0.4: down and up, no restart
    assert len(used) == len(history) == 3 * 7
    assert used == [tau[record["epoch"]] for record in history]
    assert logged == [{"step": 7 * e + 6, "temperature": tau[e]} for e in range(3)]  # an MLflow curve


@pytest.mark.parametrize(("name", "plain"), [("simclr_ts", "simclr"), ("moco_ts", "moco"), ("dmoco_ts", "dmoco")])
def test_a_scheduled_loss_is_the_plain_methods_loss_at_the_epochs_temperature(tiny_config, name, plain):
    torch.manual_seed(0)
    scheduled = build_method(name, tiny_config.pretrain, DataInfo(1, 8, 3))
    if scheduled.memory is not None:
        scheduled.memory.push(F.normalize(torch.randn(32, 16), dim=1))
    views = [torch.rand(8, 1, 8, 8), torch.rand(8, 1, 8, 8)]
    losses = []
    for epoch in (0, 150, 199):
        scheduled.on_epoch_start(epoch, 400)
        tau = reference_tau(epoch + 1)
        reference = build_method(plain, replace(tiny_config.pretrain, temperature=tau), DataInfo(1, 8, 3))
        reference.load_state_dict(scheduled.state_dict())  # weights, key encoder and memory alike
        ours, theirs = scheduled.training_loss(views, None), reference.training_loss(views, None)
        assert torch.equal(ours.loss, theirs.loss) and torch.equal(ours.per_sample, theirs.per_sample)
        if plain == "simclr":  # and NT-Xent itself, written out
            z1, z2 = scheduled.embed(views[0]), scheduled.embed(views[1])
            torch.testing.assert_close(ours.loss, nt_xent(z1, z2, tau))
        losses.append(float(ours.loss.detach()))
    assert len(set(losses)) == 3  # the schedule reaches the loss


def test_dmoco_ts_keeps_the_duplication_temperature_fixed(tiny_config):
    method = build_method("dmoco_ts", tiny_config.pretrain, DataInfo(1, 8, 3))
    for epoch in (0, 100, 199):
        method.on_epoch_start(epoch, 400)
        assert method.memory.temperature == tiny_config.pretrain.memory.temperature
    policies = {n: METHODS[n].memory_policy for n in SCHEDULED}
    assert policies == {"simclr_ts": None, "moco_ts": "fifo", "dmoco_ts": "duel"}


@pytest.mark.parametrize("name", [n for n in METHODS if n not in SCHEDULED])
def test_every_method_without_a_schedule_keeps_pretrain_temperature(tiny_config, name):
    method = build_method(name, tiny_config.pretrain, DataInfo(1, 8, 3))
    assert not isinstance(method, CosineTemperature)
    for epoch in (0, 1, 2):
        method.on_epoch_start(epoch, 3)
        assert method.temperature == tiny_config.pretrain.temperature
        assert "temperature" not in method.epoch_metrics()


def test_any_method_can_take_the_schedule_and_keeps_its_own_epoch_hook(tiny_config):
    @dataclass(frozen=True)
    class SDCLRTSParams(CosineTemperatureParams, SDCLRParams):
        pass

    class SDCLRTS(CosineTemperature, SDCLR):
        Params = SDCLRTSParams

    params = SDCLRTS.parse_params({"t_max": 4, "prune_ratio": 0.5}, "pretrain.method_kwargs.x", tiny_config.pretrain)
    method = SDCLRTS(tiny_config.pretrain, DataInfo(1, 8, 3), params)
    method.on_epoch_start(3, 10)
    assert method.temperature == reference_tau(4, t_max=4) == 0.1
    assert float(torch.cat([m.flatten() for m in method.masks()]).mean()) == pytest.approx(0.5, abs=1e-3)  # pruned


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("simclr_ts", {"tau_min": 0}, r"simclr_ts\.tau_min=0\.0 is not allowed: must be > 0$"),
        ("simclr_ts", {"tau_min": -0.1}, r"simclr_ts\.tau_min=-0\.1 is not allowed: must be > 0$"),
        ("moco_ts", {"tau_max": 0.05}, r"moco_ts\.tau_max=0\.05 is not allowed: must be >= tau_min=0\.1$"),
        ("dmoco_ts", {"t_max": 0}, r"dmoco_ts\.t_max=0 is not allowed: must be >= 1 \(epochs from tau_max"),
        ("simclr_ts", {"t_max": 2.5}, r"simclr_ts\.t_max=2\.5 is not allowed: expected int$"),
        ("moco_ts", {"bn_splits": 3}, r"moco_ts\.bn_splits=3 is not allowed: must be >= 1 and divide"),  # MoCo's own
    ],
)
def test_bad_schedule_params_are_refused_in_one_line(name, kwargs, message):
    with pytest.raises(ConfigError, match=message) as error:
        parse_config({"pretrain": {"batch_size": 8, "memory": {"size": 32}, "method_kwargs": {name: kwargs}}})
    assert "\n" not in str(error.value)


def test_equal_bounds_are_a_constant_temperature(tiny_config):
    cfg = with_kwargs(tiny_config, moco_ts={"tau_min": 0.2, "tau_max": 0.2, "t_max": 1})
    method = build_method("moco_ts", cfg, DataInfo(1, 8, 3))
    for epoch in range(3):
        method.on_epoch_start(epoch, 3)
        assert method.temperature == 0.2
