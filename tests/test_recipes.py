"""The recipe components the reference implementations use, as options every method shares: the learning
rate's warm-up, projection heads with BatchNorm, the crop's interpolation, MoCo's asymmetric loss and
random queue, and per-method recipes in one study. Expected values are written out from the references'
own formulas."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from duel.config import PretrainConfig, build_config, for_method
from duel.data.augment import ssl_augmentation
from duel.errors import ConfigError
from duel.methods import DataInfo, build_method
from duel.train import lr_factor
from duel.validation import parse_config
from tests.test_train import run


def sdclr_cosine_annealing(step: int, total_steps: int, lr_max: float, lr_min: float, warmup_steps: int) -> float:
    """VITA-Group/SDCLR train_simCLR.py `cosine_annealing`, as written there."""
    if step < warmup_steps:
        return lr_max * step / warmup_steps
    return lr_min + (lr_max - lr_min) * 0.5 * (
        1 + math.cos((step - warmup_steps) / (total_steps - warmup_steps) * math.pi)
    )


def test_warm_up_is_sdclrs_schedule_as_its_loop_steps_it():
    total, warmup = 100, 10
    # Written out: update s takes SDCLR's step s + 1: 0.1, 0.2, ..., 1 over the warm-up (never lr 0), then
    # the cosine over the other 90 steps: 0.5 half-way through them, 0 at the last update.
    assert [lr_factor(s, total, warmup) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr_factor(54, total, warmup) == pytest.approx(0.5)
    assert lr_factor(99, total, warmup) == pytest.approx(0.0, abs=1e-12)
    for step in range(total):
        assert lr_factor(step, total, warmup) == pytest.approx(sdclr_cosine_annealing(step + 1, total, 1, 0, warmup))
    # Without warm-up: the plain cosine over the whole run, from the full rate at the first update.
    assert lr_factor(0, total) == 1.0 and lr_factor(25, total) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_training_logs_the_warm_up_learning_rate_at_every_step(tiny_source, tiny_config, tmp_path):
    cfg = replace(tiny_config, pretrain=replace(tiny_config.pretrain, warmup_epochs=1))
    _, history = run(tiny_source, cfg, tmp_path / "ck.pt", name="simclr")
    steps_per_epoch, total = 60 // 8, len(history)
    lrs = [r["lr"] for r in history]
    assert lrs[:steps_per_epoch] == pytest.approx([0.06 * (s + 1) / steps_per_epoch for s in range(steps_per_epoch)])
    expected = [0.06 * sdclr_cosine_annealing(s + 1, total, 1, 0, steps_per_epoch) for s in range(total)]
    assert lrs == pytest.approx(expected)


def test_warm_up_must_end_before_the_run():
    with pytest.raises(ConfigError, match=r"pretrain.warmup_epochs.*must be < epochs"):
        parse_config({"pretrain": {"epochs": 5, "warmup_epochs": 5}})


@pytest.mark.parametrize(
    ("head", "layers"),
    [
        ("mlp", [nn.Linear, nn.ReLU, nn.Linear]),
        ("linear", [nn.Linear]),
        ("mlp_bn", [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]),
        (
            "mlp3_bn",
            [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d],
        ),
    ],
)
def test_projection_heads_are_the_references_layers(head, layers):
    method = build_method("simclr", build_config(PretrainConfig, {"head": head, "proj_dim": 16}), DataInfo(1, 10))
    projector = method.projector
    assert [type(m) for m in projector] == layers
    linears = [m for m in projector if isinstance(m, nn.Linear)]
    width = method.feature_dim
    assert [(m.in_features, m.out_features) for m in linears] == [(width, width)] * (len(linears) - 1) + [(width, 16)]
    if head.endswith("_bn"):
        # The reference heads' later linear layers have no bias (a BatchNorm follows each).
        assert linears[0].bias is not None and all(m.bias is None for m in linears[1:])
    assert method.embed(torch.rand(4, 1, 8, 8)).shape == (4, 16)


def test_the_default_head_keeps_its_weight_names():
    state = build_method("moco", PretrainConfig(), DataInfo(1, 10)).state_dict()
    assert {"projector.0.weight", "projector.2.weight", "key_projector.2.bias"} <= set(state)


def test_sdclrs_pruned_branch_has_its_own_head_batchnorm(tiny_config):
    cfg = replace(tiny_config.pretrain, head="mlp3_bn")
    sdclr = build_method("sdclr", cfg, DataInfo(1, 10))
    head_norms = [n for n in sdclr.norm_names if n.startswith("projector.")]
    assert head_norms == ["projector.1", "projector.4", "projector.7"]
    dense_stats = [b.clone() for n in head_norms for b in sdclr.get_submodule(n).buffers()]
    pruned = [sdclr.pruned_norms[sdclr.norm_names.index(n)] for n in head_norms]
    pruned_stats = [b.clone() for m in pruned for b in m.buffers()]
    sdclr.prune()
    views = [torch.rand(8, 1, 8, 8), torch.rand(8, 1, 8, 8)]
    sdclr.training_loss(views, None)
    # Both branches ran once: each updated its own statistics.
    after_dense = [b for n in head_norms for b in sdclr.get_submodule(n).buffers()]
    after_pruned = [b for m in pruned for b in m.buffers()]
    assert all(not torch.equal(a, b) for a, b in zip(dense_stats[:2], after_dense[:2], strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(pruned_stats[:2], after_pruned[:2], strict=True))
    # The dense branch alone leaves the pruned statistics as they are.
    frozen = [b.clone() for b in after_pruned]
    sdclr.embed(views[0])
    assert all(torch.equal(a, b) for a, b in zip(frozen, after_pruned, strict=True))


def test_bicubic_crop_is_kornias_bicubic_and_bilinear_is_the_default():
    cfg = PretrainConfig().augment
    assert cfg.crop_interpolation == "bilinear"
    images = torch.rand(6, 3, 16, 16)
    views = {}
    for interpolation in ("bilinear", "bicubic"):
        augment = ssl_augmentation(replace(cfg, crop_interpolation=interpolation), 16, 3, [0.5] * 3, [0.25] * 3)
        assert augment[0].flags["resample"].name == interpolation.upper()
        torch.manual_seed(0)
        views[interpolation] = augment[0](images)
    assert not torch.allclose(views["bilinear"], views["bicubic"])


def moco_builder_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> torch.Tensor:
    """facebookresearch/moco moco/builder.py `forward`: logits [l_pos, l_neg] / T, cross-entropy with label 0."""
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", q, queue.T.clone().detach())
    logits = torch.cat([l_pos, l_neg], dim=1) / t
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long), reduction="none")


@pytest.mark.parametrize("symmetric", [False, True])
def test_moco_loss_is_the_builders_and_pushes_what_the_demo_pushes(tiny_config, symmetric):
    pretrain = replace(tiny_config.pretrain, method_kwargs={"moco": {"symmetric": symmetric}})
    moco = build_method("moco", pretrain, DataInfo(1, 10, 3))
    moco.memory.push(F.normalize(torch.randn(32, 16), dim=1))
    views = [torch.rand(8, 1, 8, 8), torch.rand(8, 1, 8, 8)]
    torch.manual_seed(0)
    output = moco.training_loss(views, None)
    with torch.no_grad():
        q1, q2 = moco.embed(views[0]), moco.embed(views[1])
        k1, k2 = moco.keys(views[0]), moco.keys(views[1])
    queue, t = moco.memory.valid_keys(), pretrain.temperature
    if symmetric:
        # Both directions, averaged; both views' keys, view 1's first.
        expected = (moco_builder_loss(q1, k2, queue, t) + moco_builder_loss(q2, k1, queue, t)) / 2
        torch.testing.assert_close(output.keys, torch.cat([k1, k2]))
    else:
        # MoCo's own loss: view 1 queries, view 2's keys; the queue takes view 2's B keys.
        expected = moco_builder_loss(q1, k2, queue, t)
        torch.testing.assert_close(output.keys, k2)
    torch.testing.assert_close(output.per_sample, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output.loss, expected.mean(), rtol=1e-5, atol=1e-6)


def test_asymmetric_moco_fills_its_memory_one_batch_per_step(tiny_source, tiny_config, tmp_path):
    kwargs = {"moco": {"symmetric": False}}
    cfg = replace(tiny_config, pretrain=replace(tiny_config.pretrain, max_steps=3, method_kwargs=kwargs))
    method, history = run(tiny_source, cfg, tmp_path / "ck.pt", name="moco")
    assert len(history) == 3 and method.memory.num_filled == 3 * 8


def test_a_random_queue_gives_negatives_from_the_first_step(tiny_source, tiny_config, tmp_path):
    cfg = replace(tiny_config, pretrain=replace(tiny_config.pretrain, max_steps=2))
    _, empty = run(tiny_source, cfg, tmp_path / "empty.pt", name="moco")
    assert empty[0]["loss"] == 0  # no negatives at step 0: InfoNCE of the positive alone
    cfg = replace(cfg, pretrain=replace(cfg.pretrain, memory=replace(cfg.pretrain.memory, init="random")))
    method, history = run(tiny_source, cfg, tmp_path / "random.pt", name="moco")
    assert history[0]["loss"] > 0
    memory = method.memory
    assert memory.num_filled == 32
    # Two symmetric steps push 2 x 16 keys into K 32: the FIFO queue turned over, no random key is left.
    assert (memory.labels >= 0).sum() == 32
    # The same seed draws the same random queue.
    again, _ = run(tiny_source, cfg, tmp_path / "again.pt", name="moco")
    torch.testing.assert_close(again.memory.keys, memory.keys)


def test_diagnostics_measure_the_keys_with_images_beside_random_ones(tiny_source, tiny_config, tmp_path):
    memory = replace(tiny_config.pretrain.memory, init="random")
    cfg = replace(tiny_config, pretrain=replace(tiny_config.pretrain, max_steps=1, memory=memory))
    method, _ = run(tiny_source, cfg, tmp_path / "ck.pt", name="moco")
    assert int((method.memory.indices == -1).sum()) == 16  # one push of 16 keys into K 32 random ones
    record = method.diagnostics[-1]
    assert math.isfinite(record["key_similarity_now"]) and -1 <= record["key_similarity_now"] <= 1


def test_a_random_queue_is_unit_vectors_without_labels(tiny_config):
    moco = build_method("moco", tiny_config.pretrain, DataInfo(1, 10, 3))
    moco.memory.seed(0)
    moco.memory.fill_random()
    keys = moco.memory.valid_keys()
    assert len(keys) == 32
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(32))
    assert (moco.memory.labels == -1).all() and (moco.memory.indices == -1).all()


@pytest.mark.parametrize("method", ["dmoco", "dsimclr", "dmoco_fresh"])
def test_a_random_queue_is_refused_for_duel_and_re_encoding_memories(tiny_config, method):
    memory = replace(tiny_config.pretrain.memory, init="random")
    with pytest.raises(ConfigError, match=r"pretrain.memory.init.*empty for a DUEL memory"):
        build_method(method, replace(tiny_config.pretrain, memory=memory), DataInfo(1, 10, 3))
    build_method("rmoco", replace(tiny_config.pretrain, memory=memory), DataInfo(1, 10, 3))  # random policy: fine


def test_a_methods_recipe_applies_to_its_runs_only():
    cfg = parse_config(
        {
            "sweep": {"methods": ["moco", "bcl"]},
            "pretrain": {"lr": 0.5, "recipes": {"bcl": {"weight_decay": 5e-4, "augment": {"crop_min_scale": 0.1}}}},
        }
    )
    bcl, moco = for_method(cfg.pretrain, "bcl"), for_method(cfg.pretrain, "moco")
    assert (bcl.weight_decay, bcl.augment.crop_min_scale, bcl.lr) == (5e-4, 0.1, 0.5)
    assert (moco.weight_decay, moco.augment.crop_min_scale) == (cfg.pretrain.weight_decay, 0.5)
    assert bcl.augment.rotation == cfg.pretrain.augment.rotation  # nested keys merge, not replace
    assert bcl.recipes == {} and moco.recipes == {}  # a run records its own values only


@pytest.mark.parametrize(
    ("recipes", "message"),
    [
        ({"bcl": {"lrr": 0.1}}, r"pretrain.recipes.bcl.lrr.*unknown key"),
        ({"bcl": {"lr": -1.0}}, r"pretrain.recipes.bcl.lr.*must be > 0"),
        ({"bcl": {"epochs": 5}}, r"pretrain.recipes.bcl.epochs.*not per method"),
        ({"nope": {"lr": 0.1}}, r"pretrain.recipes.*nope.*known methods"),
        ({"bcl": {"head": "deep"}}, r"pretrain.recipes.bcl.head"),
    ],
)
def test_a_bad_recipe_is_refused_where_it_is_written(recipes, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"sweep": {"methods": ["bcl"]}, "pretrain": {"recipes": recipes}})
