"""Two-view SSL augmentation applied to whole batches (kornia), on the training device.

torchvision's transforms draw one set of random parameters per call, so SSL
needs one call per image: 0.6 ms per 8x8 view on this project's 2-core
reference machine, most of a training step. kornia draws per-image parameters
for a batch in one call (about 9x faster here), on CPU or GPU alike.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import kornia.augmentation as K
import torch
from torch import nn

from duel.config import AugmentConfig


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1]."""
    return images.float().div_(255)


def normalizer(mean: list[float], std: list[float]) -> nn.Module:
    return K.Normalize(torch.tensor(mean), torch.tensor(std))


def ssl_augmentation(
    cfg: AugmentConfig, size: int, channels: int, mean: list[float], std: list[float]
) -> nn.Sequential:
    """One random view per image: crop, optional flip, small rotation, intensity jitter (colour for RGB),
    then normalisation, always the last step (a method adding operations inserts them before it)."""
    crop = K.RandomResizedCrop((size, size), scale=(cfg.crop_min_scale, 1.0), cropping_mode=cfg.cropping_mode)
    steps: list[nn.Module] = [crop]
    if cfg.hflip:
        steps.append(K.RandomHorizontalFlip())
    if cfg.rotation > 0:
        steps.append(K.RandomRotation(cfg.rotation))
    if cfg.jitter > 0:
        colour = (cfg.jitter, min(0.1, cfg.jitter / 4)) if channels == 3 else (0.0, 0.0)
        steps.append(K.ColorJitter(cfg.jitter, cfg.jitter, *colour, p=0.8))
    if channels == 3 and cfg.grayscale_p > 0:
        steps.append(K.RandomGrayscale(p=cfg.grayscale_p))
    steps.append(normalizer(mean, std))
    return nn.Sequential(*steps)


# BCL's RandAugment (MediaBrain-SJTU/BCL data/randaug.py `augment_list`): (operation, min, max); the
# value is min + (max - min) * magnitude / 30. Signs of shear, translation and rotation flip at random.
# Each operation takes a batch and one value per image, so a call costs a few kernels per operation,
# whatever the batch size; the results are torchvision's per-image ones (tests/test_lt_methods.py).
BatchOp = Callable[[torch.Tensor, list[float]], torch.Tensor]  # (images (n, C, H, W) in [0, 1], values)
Op = tuple[str, BatchOp, float, float, bool]  # name, operation, min, max, signed


def _per_image(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1, 1)


def _blend(degenerate: Callable[[torch.Tensor], torch.Tensor]) -> BatchOp:
    """torchvision's enhance operations, image * v + degenerate(image) * (1 - v) clamped, with one v per
    image; the degenerate image is torchvision's own (its operation at factor 0)."""

    def op(images: torch.Tensor, values: list[float]) -> torch.Tensor:
        ratio = _per_image(values, images)
        return images.mul(ratio).add_(degenerate(images).mul(1 - ratio)).clamp_(0, 1)  # may be `images` itself

    return op


def _affine(matrix: Callable[[float, int], list[float]]) -> BatchOp:
    """torchvision's affine and rotate on tensors (nearest, zero fill, its pixel-centre grid) with one
    inverse matrix per image, `matrix(value, width)`, so the batch is one grid_sample."""

    def op(images: torch.Tensor, values: list[float]) -> torch.Tensor:
        n, _, h, w = images.shape
        theta = torch.tensor([matrix(v, w) for v in values], dtype=images.dtype, device=images.device)
        base = torch.empty(1, h, w, 3, dtype=images.dtype, device=images.device)
        base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=images.device))
        base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=images.device)[:, None])
        base[..., 2].fill_(1)
        scale = torch.tensor([0.5 * w, 0.5 * h], dtype=images.dtype, device=images.device)
        grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(theta.view(n, 2, 3).transpose(1, 2).div_(scale))
        return nn.functional.grid_sample(
            images, grid.view(n, h, w, 2), mode="nearest", padding_mode="zeros", align_corners=False
        )

    return op


def _cutout(images: torch.Tensor, values: list[float]) -> torch.Tensor:
    """A square of side v * width at a uniformly random centre per image, filled with BCL's grey
    (125, 123, 114); the centres are drawn on the host generator, rows then columns."""
    n, c, h, w = images.shape
    half = torch.tensor([round(v * w) // 2 for v in values])  # 0: an empty square, as BCL's
    cy, cx = torch.randint(0, h, (n,)), torch.randint(0, w, (n,))
    bounds = [(cy - half).clamp(min=0), cy + half, (cx - half).clamp(min=0), cx + half]
    y0, y1, x0, x1 = (b.to(images.device).view(n, 1, 1, 1) for b in bounds)
    rows = torch.arange(h, device=images.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, 1, w)
    inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    fill = torch.tensor([125, 123, 114], dtype=images.dtype, device=images.device) / 255
    fill = (fill if c == 3 else fill.mean(0, keepdim=True)).view(1, c, 1, 1)
    return torch.where(inside, fill, images)


@functools.cache
def rand_augment_ops() -> list[Op]:
    """The 15 operations (torchvision is imported here: it is slow to import)."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

    def inverse(angle: float = 0.0, translate: tuple[int, int] = (0, 0), shear: tuple[float, float] = (0.0, 0.0)):
        return _get_inverse_affine_matrix([0.0, 0.0], angle, [float(t) for t in translate], 1.0, list(shear))

    def each(op: Callable[[torch.Tensor], torch.Tensor]) -> BatchOp:
        return lambda images, values: op(images)  # per-image reductions over a batch: no value

    def posterize(images: torch.Tensor, values: list[float]) -> torch.Tensor:
        levels = _per_image([float(1 << max(1, int(v))) for v in values], images)
        return images.mul(levels).floor_().clamp_(min=torch.zeros_like(levels), max=levels - 1).div_(levels)

    def solarize(images: torch.Tensor, values: list[float]) -> torch.Tensor:
        return torch.where(images >= _per_image([v / 255 for v in values], images), 1.0 - images, images)

    return [
        # PIL's shear (1, v, 0, 0, 1, 0) is an angle of atan(v); translations are fractions of the width.
        ("shear_x", _affine(lambda v, w: inverse(shear=(math.degrees(math.atan(v)), 0.0))), 0.0, 0.6, True),
        ("shear_y", _affine(lambda v, w: inverse(shear=(0.0, math.degrees(math.atan(v))))), 0.0, 0.6, True),
        ("translate_x", _affine(lambda v, w: inverse(translate=(round(v * w), 0))), 0.0, 0.66, True),
        ("translate_y", _affine(lambda v, w: inverse(translate=(0, round(v * w)))), 0.0, 0.66, True),
        ("rotate", _affine(lambda v, w: inverse(angle=-(v % 360))), 0.0, 60.0, True),  # TF.rotate's sign
        ("autocontrast", each(TF.autocontrast), 0.0, 1.0, False),
        ("invert", each(TF.invert), 0.0, 1.0, False),
        ("equalize", each(TF.equalize), 0.0, 1.0, False),
        ("solarize", solarize, 0.0, 110.0, False),  # threshold on the 0..255 scale
        ("posterize", posterize, 4.0, 8.0, False),
        ("contrast", _blend(lambda x: TF.adjust_contrast(x, 0.0)), 0.1, 1.9, False),
        ("color", _blend(lambda x: TF.adjust_saturation(x, 0.0)), 0.1, 1.9, False),
        ("brightness", _blend(torch.zeros_like), 0.1, 1.9, False),
        ("sharpness", _blend(lambda x: TF.adjust_sharpness(x, 0.0)), 0.1, 1.9, False),
        ("cutout", _cutout, 0.0, 0.4, False),
    ]


def rand_augment_prob(images: torch.Tensor, magnitude: torch.Tensor, prob: torch.Tensor, ops: int = 1) -> torch.Tensor:
    """BCL's `RandAugment_prob` on a float batch in [0, 1]: per image, `ops` operations drawn uniformly
    (with replacement), each applied with probability prob[i] at magnitude[i] (on RandAugment's 0..30 scale).
    The images that drew one operation are transformed together, so the host reads the magnitudes and
    probabilities once per call, not once per image."""
    out = images.clone()
    table = rand_augment_ops()
    magnitudes, probs = magnitude.tolist(), prob.cpu()
    for _ in range(ops):
        choice = torch.randint(0, len(table), (len(images),)).tolist()
        apply = (torch.rand(len(images)) < probs).tolist()
        sign = torch.where(torch.rand(len(images)) < 0.5, -1.0, 1.0).tolist()
        for k, (_, op, low, high, signed) in enumerate(table):
            chosen = [i for i in range(len(images)) if apply[i] and choice[i] == k]
            if not chosen:
                continue
            values = [magnitudes[i] / 30 * (high - low) + low for i in chosen]
            values = [v * sign[i] for v, i in zip(values, chosen, strict=True)] if signed else values
            index = torch.tensor(chosen, device=out.device)
            out[index] = op(out[index], values).clamp_(0, 1)
    return out
