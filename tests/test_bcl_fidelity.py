"""BCL does what MediaBrain-SJTU/BCL ([BCL]) does: its augmentation magnitude, its RandAugment's geometry and
cutout on PIL images, and an epoch that visits every sample.

[BCL] data/memoboosted_cifar100.py `__getitem__`: `RandAugment_prob(rand_k, m, w)` with, for rand_k == 1,
m = min_strength + (rand_strength - min_strength) * w, min_strength = 10, and otherwise
m = 5 + (rand_strength - 5) * w * np.random.rand(1). [BCL] data/randaug.py: ShearX `img.transform(img.size,
PIL.Image.AFFINE, (1, v, 0, 0, 1, 0))`, ShearY `(1, 0, 0, v, 1, 0)`, TranslateX `(1, 0, v * img.size[0], 0, 1,
0)`, TranslateY `(1, 0, 0, 0, 1, v * img.size[1])`, Rotate `img.rotate(v)`, CutoutAbs (below). [BCL] train.py:
`DataLoader(train_datasets, ..., shuffle=True, pin_memory=True)`, drop_last False. The expected values below
are those expressions evaluated by PIL and numpy.
"""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from duel.data.augment import rand_augment_ops
from duel.data.datasets import Batch
from duel.errors import ConfigError
from duel.methods import DataInfo, build_method
from duel.validation import parse_config
from tests.test_train import train_tiny

OPS = {name: (op, low, high) for name, op, low, high, _ in rand_augment_ops()}
GREY = (125, 123, 114)  # [BCL] CutoutAbs `color`


def bcl(ops=1, num_samples=4):
    cfg = parse_config({"pretrain": {"proj_dim": 16, "method_kwargs": {"bcl": {"ops": ops}}}})
    return build_method("bcl", cfg.pretrain, DataInfo(1, num_samples))


def pil_images(n, h, w, mode, seed=0):
    g = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return [Image.fromarray(g.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(n)]


def as_batch(images):
    """PIL images -> (n, C, H, W) floats in [0, 1], as duel.data.augment.to_unit makes them."""
    arrays = [np.asarray(im)[..., None] if im.mode == "L" else np.asarray(im) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255)


# ----------------------------------------------------------------------------------------- magnitude
def test_bcl_i_magnitude_is_10_plus_20_w_without_a_random_factor():
    method = bcl(ops=1)
    weight = torch.tensor([0.0, 0.5, 1.0, 0.25])
    torch.manual_seed(0)
    first = method.magnitude(weight)
    torch.manual_seed(1)
    assert torch.equal(first, method.magnitude(weight))  # no random draw
    assert first.tolist() == [10.0, 20.0, 30.0, 15.0]


def test_bcl_d_magnitude_is_5_plus_25_w_u_with_u_uniform_per_image():
    method = bcl(ops=2, num_samples=4000)
    weight = torch.linspace(0, 1, 4000)
    torch.manual_seed(0)
    magnitude = method.magnitude(weight)
    torch.manual_seed(0)
    u = torch.rand(4000)
    torch.testing.assert_close(magnitude, 5 + 25 * weight * u, rtol=0, atol=1e-5)
    assert magnitude[0] == 5.0 and magnitude.min() >= 5 and magnitude.max() < 30
    top = magnitude[weight > 0.9]  # w ~ 1: spread over [5, 30)
    assert top.min() < 7 and top.max() > 28


@pytest.mark.parametrize("ops", [1, 2])
def test_both_views_share_the_magnitude_and_apply_each_op_with_probability_w(monkeypatch, ops):
    """[BCL] builds the transform once per `__getitem__`: both views use one m (and one random factor)."""
    calls = []
    monkeypatch.setattr("duel.methods.bcl.rand_augment_prob", lambda x, m, p, k: calls.append((m, p, k)) or x)
    method = bcl(ops=ops)
    method.memo_weight.copy_(torch.tensor([0.0, 0.2, 0.7, 1.0]))
    batch = Batch(torch.rand(4, 1, 8, 8), torch.zeros(4), torch.arange(4), torch.arange(4))
    method.views(batch, nn.Sequential(nn.Identity(), nn.Identity()))
    (m1, p1, k1), (m2, p2, k2) = calls
    assert m1 is m2 and k1 == k2 == ops
    assert torch.equal(p1, method.memo_weight) and torch.equal(p2, method.memo_weight)


def test_min_strengths_are_bounded_by_the_strength():
    with pytest.raises(ConfigError, match="min_strength_one_op"):
        parse_config({"pretrain": {"method_kwargs": {"bcl": {"strength": 8.0}}}})


# ------------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("mode, h, w", [("RGB", 16, 16), ("RGB", 10, 12), ("L", 32, 32)])
@pytest.mark.parametrize(
    "name, data",
    [
        ("shear_x", lambda v, w, h: (1, v, 0, 0, 1, 0)),
        ("shear_y", lambda v, w, h: (1, 0, 0, v, 1, 0)),
        ("translate_x", lambda v, w, h: (1, 0, v * w, 0, 1, 0)),
        ("translate_y", lambda v, w, h: (1, 0, 0, 0, 1, v * h)),
        ("rotate", None),
    ],
)
def test_geometric_operations_are_pils_pixel_for_pixel(name, data, mode, h, w):
    """One batched call with a value per image (both signs, the range's ends, 0) = the reference's PIL call."""
    op, low, high = OPS[name]
    g = torch.Generator().manual_seed(1)
    magnitudes = [0.0, 30.0, 1e-3, *(30 * torch.rand(61, generator=g)).tolist()]
    values = [(m / 30 * (high - low) + low) * (-1 if i % 2 else 1) for i, m in enumerate(magnitudes)]
    images = pil_images(len(values), h, w, mode)
    expected = [
        im.rotate(v) if data is None else im.transform(im.size, Image.AFFINE, data(v, *im.size))
        for im, v in zip(images, values, strict=True)
    ]
    assert torch.equal(op(as_batch(images), values), as_batch(expected))


def test_shear_pivots_on_the_top_left_corner():
    """ShearX 0.5 on 16 rows: the top row stays, the bottom row moves by v * H = 8 pixels (PIL too);
    a centre pivot would move the top row by -4 and the bottom row by +4."""
    op, _, _ = OPS["shear_x"]
    columns = np.tile(np.arange(16, dtype=np.uint8) * 10 + 5, (16, 1))
    image = Image.fromarray(columns, "L")
    out = op(as_batch([image]), [0.5])[0, 0]
    pil = as_batch([image.transform(image.size, Image.AFFINE, (1, 0.5, 0, 0, 1, 0))])[0, 0]
    assert torch.equal(out, pil)
    source = as_batch([image])[0, 0]
    assert torch.equal(out[0], source[0])
    assert torch.equal(out[15, :8], source[15, 8:]) and torch.all(out[15, 8:] == 0)  # black fill


def test_translate_moves_by_v_times_the_width_as_pil_does():
    op, _, _ = OPS["translate_x"]
    columns = np.tile(np.arange(16, dtype=np.uint8) * 10 + 5, (4, 1))
    image = Image.fromarray(columns, "L")
    out = op(as_batch([image, image]), [0.25, -0.25])[:, 0]
    source = as_batch([image])[0, 0]
    assert torch.equal(out[0, :, :12], source[:, 4:]) and torch.all(out[0, :, 12:] == 0)  # content left by 4
    assert torch.equal(out[1, :, 4:], source[:, :12]) and torch.all(out[1, :, :4] == 0)


# -------------------------------------------------------------------------------------------- cutout
def reference_cutout(img, v, ux, uy):
    """[BCL] data/randaug.py Cutout and CutoutAbs, with np.random.uniform(w) written as numpy computes it
    (low = w, high = 1.0: w + (1 - w) * U) on the given U."""
    if v <= 0.0:
        return img
    v = v * img.size[0]
    w, h = img.size
    x0 = w + (1.0 - w) * ux
    y0 = h + (1.0 - h) * uy
    x0 = int(max(0, x0 - v / 2.0))
    y0 = int(max(0, y0 - v / 2.0))
    x1 = min(w, x0 + v)
    y1 = min(h, y0 + v)
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), GREY)
    return img


def test_numpys_uniform_of_one_argument_is_w_plus_1_minus_w_times_u():
    for seed in range(5):
        drawn = np.random.RandomState(seed).uniform(32)
        assert drawn == 32 + (1.0 - 32) * np.random.RandomState(seed).random_sample()
    assert 1 < np.random.RandomState(0).uniform(32, size=10000).min() < 1.1


@pytest.mark.parametrize("h, w", [(16, 16), (32, 32), (10, 12)])
def test_cutout_erases_the_references_box_with_its_grey(h, w):
    op, low, high = OPS["cutout"]
    values = [0.0, high, 0.01, 1 / w, *np.linspace(low, high, 61).tolist()]
    images = pil_images(len(values), h, w, "RGB", seed=3)
    torch.manual_seed(5)
    out = op(as_batch(images), values)
    torch.manual_seed(5)
    ux, uy = (
        torch.rand(len(values), dtype=torch.float64).tolist(),
        torch.rand(len(values), dtype=torch.float64).tolist(),
    )
    expected = [reference_cutout(im, v, a, b) for im, v, a, b in zip(images, values, ux, uy, strict=True)]
    assert torch.equal(out, as_batch(expected))
    assert torch.equal(out[0], as_batch(images[:1])[0])  # v = 0: untouched


def test_cutout_box_is_inclusive_and_clamped_on_the_far_side():
    """A side of 4 px away from the border greys 5 x 5 pixels (PIL fills both ends); one past the right
    and bottom edges is cut there."""
    op, _, _ = OPS["cutout"]
    image = as_batch(pil_images(1, 16, 16, "RGB"))
    grey = torch.tensor(GREY).view(3, 1, 1) / 255
    for seed in range(40):
        torch.manual_seed(seed)
        out = op(image, [0.25])[0]
        changed = (out != image[0]).any(0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        assert len(rows) in (5, *range(1, 5)) and len(cols) in (5, *range(1, 5))
        if rows[0] > 0 and rows[-1] < 15:
            assert len(rows) == 5
        box = out[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert torch.equal(box, grey.expand_as(box).float())


# ------------------------------------------------------------------------------------------- epoch
def test_the_last_partial_batch_trains_and_updates_its_losses(tiny_source, tmp_path):
    """60 samples in batches of 8: 8 steps an epoch, the last of 4 images; every loss average is set."""
    cfg = parse_config({"pretrain": {"epochs": 1, "batch_size": 8, "proj_dim": 16}})
    method, history, _ = train_tiny(tiny_source, cfg.pretrain, tmp_path / "ck.pt", "bcl")
    assert len(history) == 8
    assert not method.memo_loss.isnan().any()
