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
    steps: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=(cfg.crop_min_scale, 1.0))]
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
def _cutout(image: torch.Tensor, v: float) -> torch.Tensor:
    """A square of side v * width at a uniformly random centre, filled with BCL's grey (125, 123, 114)."""
    size = round(v * image.shape[-1])
    if size == 0:
        return image
    h, w = image.shape[-2:]
    cy, cx = (int(torch.randint(0, n, ())) for n in (h, w))
    y0, y1, x0, x1 = max(0, cy - size // 2), min(h, cy + size // 2), max(0, cx - size // 2), min(w, cx + size // 2)
    fill = torch.tensor([125, 123, 114], dtype=image.dtype, device=image.device) / 255
    out = image.clone()
    out[:, y0:y1, x0:x1] = (fill if image.shape[0] == 3 else fill.mean(0, keepdim=True)).view(-1, 1, 1)
    return out


Op = tuple[str, Callable[[torch.Tensor, float], torch.Tensor], float, float, bool]  # name, op, min, max, signed


@functools.cache
def rand_augment_ops() -> list[Op]:
    """The 15 operations on one float image in [0, 1] (torchvision is imported here: it is slow to import)."""
    import torchvision.transforms.v2.functional as TF

    def affine(x: torch.Tensor, translate: list[int] | None = None, shear: list[float] | None = None) -> torch.Tensor:
        return TF.affine(x, angle=0.0, translate=translate or [0, 0], scale=1.0, shear=shear or [0.0, 0.0])

    return [
        # PIL's shear (1, v, 0, 0, 1, 0) is an angle of atan(v); translations are fractions of the width.
        ("shear_x", lambda x, v: affine(x, shear=[math.degrees(math.atan(v)), 0.0]), 0.0, 0.6, True),
        ("shear_y", lambda x, v: affine(x, shear=[0.0, math.degrees(math.atan(v))]), 0.0, 0.6, True),
        ("translate_x", lambda x, v: affine(x, translate=[round(v * x.shape[-1]), 0]), 0.0, 0.66, True),
        ("translate_y", lambda x, v: affine(x, translate=[0, round(v * x.shape[-1])]), 0.0, 0.66, True),
        ("rotate", lambda x, v: TF.rotate(x, v), 0.0, 60.0, True),
        ("autocontrast", lambda x, v: TF.autocontrast(x), 0.0, 1.0, False),
        ("invert", lambda x, v: TF.invert(x), 0.0, 1.0, False),
        ("equalize", lambda x, v: TF.equalize(x), 0.0, 1.0, False),
        ("solarize", lambda x, v: TF.solarize(x, v / 255), 0.0, 110.0, False),  # threshold on the 0..255 scale
        ("posterize", lambda x, v: TF.posterize(x, max(1, int(v))), 4.0, 8.0, False),
        ("contrast", lambda x, v: TF.adjust_contrast(x, v), 0.1, 1.9, False),
        ("color", lambda x, v: TF.adjust_saturation(x, v), 0.1, 1.9, False),
        ("brightness", lambda x, v: TF.adjust_brightness(x, v), 0.1, 1.9, False),
        ("sharpness", lambda x, v: TF.adjust_sharpness(x, v), 0.1, 1.9, False),
        ("cutout", _cutout, 0.0, 0.4, False),
    ]


def rand_augment_prob(images: torch.Tensor, magnitude: torch.Tensor, prob: torch.Tensor, ops: int = 1) -> torch.Tensor:
    """BCL's `RandAugment_prob` on a float batch in [0, 1]: per image, `ops` operations drawn uniformly
    (with replacement), each applied with probability prob[i] at magnitude[i] (on RandAugment's 0..30 scale).
    Per-image magnitudes are why this is a loop over images, not one kornia call."""
    out = images.clone()
    table = rand_augment_ops()
    for _ in range(ops):
        choice = torch.randint(0, len(table), (len(images),)).tolist()
        apply = (torch.rand(len(images)) < prob.cpu()).tolist()
        sign = torch.where(torch.rand(len(images)) < 0.5, -1.0, 1.0).tolist()
        for i in (i for i, a in enumerate(apply) if a):
            _, op, low, high, signed = table[choice[i]]
            value = float(magnitude[i]) / 30 * (high - low) + low
            out[i] = op(out[i], value * sign[i] if signed else value).clamp_(0, 1)
    return out
