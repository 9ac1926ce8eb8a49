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
    resample = cfg.crop_interpolation.upper()  # kornia's Resample names
    crop = K.RandomResizedCrop(
        (size, size), scale=(cfg.crop_min_scale, 1.0), resample=resample, cropping_mode=cfg.cropping_mode
    )
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
# whatever the batch size. The reference runs them on PIL images: the geometric ones and cutout are
# PIL's, pixel for pixel (tests/test_bcl_fidelity.py); the intensity ones are torchvision's tensor
# equivalents on float images (tests/test_lt_methods.py).
BatchOp = Callable[[torch.Tensor, list[float]], torch.Tensor]  # (images (n, C, H, W) in [0, 1], values)
Op = tuple[str, BatchOp, float, float, bool]  # name, operation, min, max, signed
Matrix = tuple[float, float, float, float, float, float]  # PIL's affine data (a, b, c, d, e, f)


def _per_image(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1, 1)


def _blend(degenerate: Callable[[torch.Tensor], torch.Tensor]) -> BatchOp:
    """torchvision's enhance operations, image * v + degenerate(image) * (1 - v) clamped, with one v per
    image; the degenerate image is torchvision's own (its operation at factor 0)."""

    def op(images: torch.Tensor, values: list[float]) -> torch.Tensor:
        ratio = _per_image(values, images)
        return images.mul(ratio).add_(degenerate(images).mul(1 - ratio)).clamp_(0, 1)  # may be `images` itself

    return op


def _fix(v: float) -> int:
    """PIL's 16.16 fixed point (libImaging/Geometry.c `FIX(v)`: FLOOR(v * 65536.0 + 0.5))."""
    return math.floor(v * 65536.0 + 0.5)


def _pil_affine(matrix: Callable[[float, int, int], Matrix]) -> BatchOp:
    """PIL's `img.transform(img.size, Image.AFFINE, (a, b, c, d, e, f))` (nearest, black fill) with one
    matrix per image, `matrix(value, width, height)`: output pixel (x, y) copies input pixel
    (floor(a (x + .5) + b (y + .5) + c), floor(d (x + .5) + e (y + .5) + f)), black where that is outside.
    PIL computes the indices two ways (libImaging/Geometry.c `ImagingTransformAffine`), both reproduced
    exactly: in doubles when b = d = 0 (`ImagingScaleAffine`: translations), else in 16.16 fixed point
    (`affine_fixed`: shears, rotations). The batch is one gather."""

    def op(images: torch.Tensor, values: list[float]) -> torch.Tensor:
        n, c, h, w = images.shape
        dev = images.device
        rows = [matrix(v, w, h) for v in values]
        fixed = [
            [_fix(a), _fix(b), _fix(c0 + a * 0.5 + b * 0.5), _fix(d), _fix(e), _fix(f + d * 0.5 + e * 0.5)]
            for a, b, c0, d, e, f in rows
        ]
        q = torch.tensor(fixed, dtype=torch.int64, device=dev).view(n, 6, 1, 1)
        s = torch.tensor([[c0 + a * 0.5, a, f + e * 0.5, e] for a, _, c0, _, e, f in rows], dtype=torch.float64)
        s = s.to(dev).view(n, 4, 1, 1)
        x = torch.arange(w, device=dev).view(1, 1, w)
        y = torch.arange(h, device=dev).view(1, h, 1)
        use_fixed = torch.tensor([b != 0 or d != 0 for _, b, _, d, _, _ in rows], device=dev).view(n, 1, 1)
        xin = torch.where(
            use_fixed, (q[:, 2] + y * q[:, 1] + x * q[:, 0]) >> 16, (s[:, 0] + x * s[:, 1]).floor().long()
        )
        yin = torch.where(
            use_fixed, (q[:, 5] + y * q[:, 4] + x * q[:, 3]) >> 16, (s[:, 2] + y * s[:, 3]).floor().long()
        )
        inside = ((xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)).unsqueeze(1)
        index = (yin.clamp(0, h - 1) * w + xin.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
        return torch.where(inside, images.flatten(2).gather(2, index).view(n, c, h, w), 0.0)

    return op


def _rotation(v: float, w: int, h: int) -> Matrix:
    """PIL's `img.rotate(v)` (data/randaug.py `Rotate`): v degrees anticlockwise about (w / 2, h / 2),
    as PIL.Image.rotate builds its affine data (angle taken mod 360, cos and sin rounded to 15 digits).
    PIL copies the image at angle 0 (this matrix is the identity there) and transposes at 90, 180 and
    270 degrees, beyond BCL's range of +-60."""
    angle = -math.radians(v % 360.0)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    cx, cy = w / 2, h / 2
    return a, b, a * -cx + b * -cy + 0.0 + cx, d, e, d * -cx + e * -cy + 0.0 + cy


def _cutout(images: torch.Tensor, values: list[float]) -> torch.Tensor:
    """data/randaug.py `Cutout(img, v)` then `CutoutAbs`: nothing for v <= 0, else side s = v * width,
    centre x0 = np.random.uniform(w) (numpy's low = w, high = 1: uniform on (1, w]), y0 likewise;
    x0 = int(max(0, x0 - s / 2.)), x1 = min(w, x0 + s) (y the same), and `ImageDraw.rectangle((x0, y0,
    x1, y1), (125, 123, 114))`, which truncates the corners to integers and fills both ends: columns
    x0 ..= min(int(x1), w - 1), rows likewise. The centres come from the host generator, x then y;
    a one-channel image gets the grey's mean."""
    n, c, h, w = images.shape
    side = torch.tensor(values, dtype=torch.float64) * w
    cx = w - (w - 1) * torch.rand(n, dtype=torch.float64)  # np.random.uniform(w): w + (1 - w) * U[0, 1)
    cy = h - (h - 1) * torch.rand(n, dtype=torch.float64)
    x0, y0 = (cx - side / 2).clamp(min=0).floor(), (cy - side / 2).clamp(min=0).floor()
    x1, y1 = (x0 + side).clamp(max=w).floor().clamp(max=w - 1), (y0 + side).clamp(max=h).floor().clamp(max=h - 1)
    y0 = torch.where(side > 0, y0, h)  # v <= 0: no box (an empty row range)
    bounds = (y0, y1, x0, x1)
    y0, y1, x0, x1 = (b.to(device=images.device, dtype=torch.int64).view(n, 1, 1, 1) for b in bounds)
    rows = torch.arange(h, device=images.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, 1, w)
    inside = (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1)
    fill = torch.tensor([125, 123, 114], dtype=images.dtype, device=images.device) / 255
    fill = (fill if c == 3 else fill.mean(0, keepdim=True)).view(1, c, 1, 1)
    return torch.where(inside, fill, images)


@functools.cache
def rand_augment_ops() -> list[Op]:
    """The 15 operations (torchvision is imported here: it is slow to import)."""
    import torchvision.transforms.v2.functional as TF

    def each(op: Callable[[torch.Tensor], torch.Tensor]) -> BatchOp:
        return lambda images, values: op(images)  # per-image reductions over a batch: no value

    def posterize(images: torch.Tensor, values: list[float]) -> torch.Tensor:
        levels = _per_image([float(1 << max(1, int(v))) for v in values], images)
        return images.mul(levels).floor_().clamp_(min=torch.zeros_like(levels), max=levels - 1).div_(levels)

    def solarize(images: torch.Tensor, values: list[float]) -> torch.Tensor:
        return torch.where(images >= _per_image([v / 255 for v in values], images), 1.0 - images, images)

    return [
        # data/randaug.py: ShearX (1, v, 0, 0, 1, 0) and ShearY (1, 0, 0, v, 1, 0) pivot on the top-left
        # corner; TranslateX (1, 0, v * img.size[0], 0, 1, 0) and TranslateY (1, 0, 0, 0, 1, v * img.size[1]).
        ("shear_x", _pil_affine(lambda v, w, h: (1.0, v, 0.0, 0.0, 1.0, 0.0)), 0.0, 0.6, True),
        ("shear_y", _pil_affine(lambda v, w, h: (1.0, 0.0, 0.0, v, 1.0, 0.0)), 0.0, 0.6, True),
        ("translate_x", _pil_affine(lambda v, w, h: (1.0, 0.0, v * w, 0.0, 1.0, 0.0)), 0.0, 0.66, True),
        ("translate_y", _pil_affine(lambda v, w, h: (1.0, 0.0, 0.0, 0.0, 1.0, v * h)), 0.0, 0.66, True),
        ("rotate", _pil_affine(_rotation), 0.0, 60.0, True),
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
