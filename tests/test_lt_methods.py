"""The long-tailed SSL methods: SDCLR's mask and BatchNorm split, BCL's scores and augmentation, GH's parts."""

import math

import pytest
import torch
from torch import nn

from duel.data.augment import rand_augment_ops, rand_augment_prob
from duel.data.datasets import Batch
from duel.errors import ConfigError
from duel.methods import DataInfo, StepOutput, build_method
from duel.methods.gh import simplex_etf, sinkhorn
from duel.validation import parse_config

# tests/test_bcl_fidelity.py checks these against the reference's PIL calls; the others meet torchvision's
PIL_OPS = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "cutout")
INTENSITY_OPS = [op for op in rand_augment_ops() if op[0] not in PIL_OPS]


def method(name, cfg, num_samples=8, channels=1):
    return build_method(name, cfg.pretrain, DataInfo(channels, num_samples, 3))


def dense_norm_state(sdclr):
    return {k: v.clone() for k, v in sdclr.backbone.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_sdclr_mask_prunes_exactly_the_smallest_prune_ratio_of_the_weights(tiny_config, ratio):
    cfg = parse_config({"pretrain": {"method_kwargs": {"sdclr": {"prune_ratio": ratio}}}})
    sdclr = build_method("sdclr", cfg.pretrain, DataInfo(3, 8))
    sdclr.on_epoch_start(0, 1)
    weights = [sdclr.backbone.get_parameter(f"{name}.weight").detach().abs() for name in sdclr.masked]
    masks = sdclr.masks()
    assert len(masks) == 3  # the small CNN's three convolutions
    total = sum(m.numel() for m in masks)
    pruned = sum(int((m == 0).sum()) for m in masks)
    assert pruned == math.ceil(ratio * total)
    if ratio > 0:  # one global threshold: every kept weight is at least as large as every pruned one
        kept = torch.cat([w[m == 1] for w, m in zip(weights, masks, strict=True)])
        gone = torch.cat([w[m == 0] for w, m in zip(weights, masks, strict=True)])
        assert kept.min() >= gone.max()
        assert len({float((m == 0).float().mean()) for m in masks}) > 1  # not the same share per layer


def test_sdclr_pruned_branch_has_its_own_batchnorm_statistics(tiny_config):
    torch.manual_seed(0)
    sdclr = method("sdclr", tiny_config)
    sdclr.on_epoch_start(0, 1)
    sdclr.train()
    dense_before = dense_norm_state(sdclr)
    pruned_before = [b.clone() for b in sdclr.pruned_norms.buffers()]
    x = torch.rand(8, 1, 8, 8)
    pruned = sdclr.pruned_features(x)
    for key, value in dense_norm_state(sdclr).items():
        assert torch.equal(value, dense_before[key]), key  # untouched by the pruned branch
    assert any(not torch.equal(a, b) for a, b in zip(pruned_before, sdclr.pruned_norms.buffers(), strict=True))
    # The pruned branch computes with masked weights: it differs from the dense branch in eval mode too.
    sdclr.eval()
    assert not torch.allclose(sdclr.pruned_features(x), sdclr.backbone(x))
    # Gradients reach the shared weights through the mask only (pruned entries get none from this branch).
    sdclr.train()
    sdclr.zero_grad()
    pruned.sum().backward()
    first = sdclr.backbone.get_parameter(f"{sdclr.masked[0]}.weight")
    assert torch.all(first.grad[sdclr.masks()[0] == 0] == 0) and first.grad.abs().sum() > 0


def test_bcl_weights_are_normalised_moving_average_losses(tiny_config):
    bcl = method("bcl", tiny_config, num_samples=4)
    bcl.on_epoch_start(0, 3)
    assert torch.equal(bcl.memo_weight, torch.zeros(4))  # first epoch: no extra augmentation
    batch = Batch(torch.zeros(3, 1, 8, 8), torch.zeros(3), torch.tensor([10, 11, 12]), torch.tensor([0, 1, 2]))
    bcl.after_step(StepOutput(torch.tensor(0.0), torch.tensor([1.0, 2.0, 4.0])), batch, 0, 1)
    assert bcl.memo_loss[:3].tolist() == [1.0, 2.0, 4.0] and math.isnan(bcl.memo_loss[3])  # first sight: copied
    bcl.after_step(StepOutput(torch.tensor(0.0), torch.tensor([2.0, 2.0, 2.0])), batch, 1, 2)
    beta = 0.97
    expected = [beta * 1 + (1 - beta) * 2, 2.0, beta * 4 + (1 - beta) * 2]
    torch.testing.assert_close(bcl.memo_loss[:3], torch.tensor(expected))
    bcl.on_epoch_start(1, 3)
    loss = torch.tensor(expected)
    z = (loss - loss.mean()) / loss.std()
    torch.testing.assert_close(bcl.memo_weight[:3], z / z.abs().max() / 2 + 0.5)
    assert bcl.memo_weight[3] == 0.5  # never seen: an average sample
    assert set(bcl.sample_state()) == {"memo_loss", "memo_weight"}


def test_bcl_views_follow_each_samples_weight(tiny_config):
    """Weight 0: the plain SimCLR view; weight 1: RandAugment on top (same SimCLR draw, compared by seed)."""
    bcl = method("bcl", tiny_config, num_samples=2)
    augment = nn.Sequential(nn.Identity(), nn.Identity())  # SimCLR steps, then "normalisation"
    images = torch.rand(2, 1, 8, 8)
    batch = Batch(images, torch.zeros(2), torch.arange(2), torch.arange(2))
    torch.manual_seed(0)
    plain = bcl.views(batch, augment)
    assert all(torch.equal(v, images) for v in plain)
    bcl.memo_weight.copy_(torch.tensor([0.0, 1.0]))
    changed = 0
    for seed in range(5):
        torch.manual_seed(seed)
        views = bcl.views(batch, augment)
        assert all(torch.equal(v[0], images[0]) for v in views)
        changed += sum(not torch.equal(v[1], images[1]) for v in views)
    assert changed >= 5  # of 10 draws at magnitude 30 (BCL-I: 10 + 20 w)


def test_rand_augment_prob_applies_one_operation_with_probability_p():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 16, 16)
    same = rand_augment_prob(images, torch.full((64,), 20.0), torch.zeros(64))
    assert torch.equal(same, images)
    out = rand_augment_prob(images, torch.full((64,), 20.0), torch.ones(64))
    differs = (out - images).abs().flatten(1).amax(1) > 1e-6
    assert differs.float().mean() > 0.8 and out.min() >= 0 and out.max() <= 1


def torchvision_op(name: str, image: torch.Tensor, v: float) -> torch.Tensor:
    """BCL's intensity operations on one image with torchvision's functional API: the definition the batched
    ones meet (the geometric ones and cutout meet the reference's PIL calls: tests/test_bcl_fidelity.py)."""
    import torchvision.transforms.v2.functional as TF

    return {
        "autocontrast": lambda: TF.autocontrast(image),
        "invert": lambda: TF.invert(image),
        "equalize": lambda: TF.equalize(image),
        "solarize": lambda: TF.solarize(image, v / 255),
        "posterize": lambda: TF.posterize(image, max(1, int(v))),
        "contrast": lambda: TF.adjust_contrast(image, v),
        "color": lambda: TF.adjust_saturation(image, v),
        "brightness": lambda: TF.adjust_brightness(image, v),
        "sharpness": lambda: TF.adjust_sharpness(image, v),
    }[name]().clamp(0, 1)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("op", INTENSITY_OPS, ids=lambda op: op[0])
def test_each_batched_intensity_operation_is_torchvisions_on_every_image(op, channels):
    """One call on a batch with a value per image (both signs, the range's ends, 0) = torchvision per image."""
    name, batched, low, high, signed = op
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, channels, 10, 12, generator=g)
    magnitudes = [0.0, 30.0, *(30 * torch.rand(10, generator=g)).tolist()]
    values = [(m / 30 * (high - low) + low) * (-1 if signed and i % 2 else 1) for i, m in enumerate(magnitudes)]
    out = batched(images, values).clamp(0, 1)
    expected = torch.stack([torchvision_op(name, image, v) for image, v in zip(images, values, strict=True)])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_rand_augment_gives_every_image_one_operation_at_its_own_magnitude():
    """The batching regroups images by operation: each result is still one table operation of its own
    image at its own magnitude (and sign), whatever its neighbours drew (the operation applied to that
    image alone: each one's definition is tested by itself)."""
    torch.manual_seed(1)
    images = torch.rand(48, 3, 12, 12)
    magnitude = 30 * torch.rand(48)
    out = rand_augment_prob(images, magnitude, torch.ones(48))
    for image, result, m in zip(images, out, magnitude.tolist(), strict=True):
        candidates = [
            op(image[None], [s * (m / 30 * (high - low) + low)])[0].clamp(0, 1)
            for _, op, low, high, signed in rand_augment_ops()[:-1]
            for s in ((1, -1) if signed else (1,))
        ]
        cut = (result != image).any(0)
        is_cutout = bool(torch.all(result[:, cut] == (torch.tensor([125, 123, 114]) / 255)[:, None]))
        assert is_cutout or any(torch.allclose(result, c, atol=1e-6, rtol=0) for c in candidates)


def test_simplex_etf_is_equiangular():
    etf = simplex_etf(10, 16, torch.Generator().manual_seed(0))
    gram = etf @ etf.T
    torch.testing.assert_close(gram.diagonal(), torch.ones(10))
    off = gram[~torch.eye(10, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, -1 / 9), atol=1e-5, rtol=0)


def test_sinkhorn_meets_both_marginals():
    g = torch.Generator().manual_seed(0)
    scores = torch.nn.functional.normalize(torch.randn(32, 4, generator=g), dim=1)
    prior = torch.tensor([0.5, 0.25, 0.125, 0.125])
    q = sinkhorn(scores, prior, epsilon=0.05, iterations=300)
    torch.testing.assert_close(q.sum(1), torch.ones(32), atol=1e-4, rtol=0)  # one label per sample
    torch.testing.assert_close(q.sum(0), 32 * prior, atol=1e-2, rtol=0)  # the prior over targets


def test_gh_switches_on_after_warmup_and_estimates_the_prior(tiny_config):
    cfg = parse_config(
        {"pretrain": {"proj_dim": 16, "method_kwargs": {"gh": {"num_targets": 4, "warmup": 0.5, "ramp": 0.2}}}}
    )
    gh = build_method("gh", cfg.pretrain, DataInfo(1, 6))
    gh.on_epoch_start(4, 10)
    assert gh.weight == 0.0 and torch.equal(gh.prior, torch.full((4,), 0.25))
    gh.score_ema[:4] = torch.eye(4)[[0, 0, 1, 3]]  # samples 4 and 5 not seen yet
    gh.on_epoch_start(5, 10)
    assert gh.weight == pytest.approx(0.5)  # the first of a two-epoch ramp
    torch.testing.assert_close(gh.prior, torch.tensor([0.5, 0.25, 0.0, 0.25]))
    gh.on_epoch_start(7, 10)
    assert gh.weight == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"sdclr": {"prune_ratio": 1.0}},
            "pretrain.method_kwargs.sdclr.prune_ratio=1.0 is not allowed: must be in [0, 1)",
        ),
        ({"bcl": {"beta": -0.1}}, "pretrain.method_kwargs.bcl.beta=-0.1 is not allowed: must be in [0, 1)"),
        (
            {"gh": {"num_targets": 100}},
            "pretrain.method_kwargs.gh.num_targets=100 is not allowed: 0 or in [2, pretrain",
        ),
        ({"sdclr": {"ratio": 0.5}}, "pretrain.method_kwargs.sdclr.ratio=0.5 is not allowed: unknown key"),
    ],
)
def test_bad_method_params_fail_in_one_line(kwargs, message):
    with pytest.raises(ConfigError) as info:
        parse_config({"pretrain": {"method_kwargs": kwargs}})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_gh_default_targets_follow_the_projection_width():
    for proj_dim, k in ((64, 64), (128, 100), (16, 16)):
        cfg = parse_config({"pretrain": {"proj_dim": proj_dim}}).pretrain
        assert build_method("gh", cfg, DataInfo(channels=1, num_samples=4)).targets.shape == (k, proj_dim)
    with pytest.raises(ConfigError, match=r"gh\.num_targets=100 .* pretrain\.proj_dim=64"):
        parse_config({"sweep": {"methods": ["gh"]}, "pretrain": {"method_kwargs": {"gh": {"num_targets": 100}}}})
