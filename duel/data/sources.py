"""Image sources: each loads a train and a test split as uint8 tensors (N, C, H, W)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from duel.config import DataConfig, DuelError


class DataError(DuelError):
    """Missing, corrupt or insufficient data."""


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)

    def subset(self, indices: np.ndarray) -> ImageSet:
        return ImageSet(self.images[torch.as_tensor(indices)], self.labels[indices])


@dataclass
class SourceData:
    name: str
    classes: list[str]
    train: ImageSet
    test: ImageSet

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    def fingerprint(self) -> str:
        """Content hash of both splits: manifests record it so stale indices are caught."""
        h = hashlib.sha256()
        for split in (self.train, self.test):
            h.update(split.images.numpy().tobytes())
            h.update(split.labels.astype(np.int64).tobytes())
        return h.hexdigest()[:16]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training split in [0, 1], for normalisation."""
        x = self.train.images.float().div_(255).transpose(0, 1).reshape(self.channels, -1)
        return x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or images.shape[-1] == size:
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    keep, held = train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(keep), np.sort(held)


def load_digits(cfg: DataConfig) -> SourceData:
    """scikit-learn's bundled 8x8 digits (no download); the test split is carved with a fixed seed."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.from_numpy(np.round(bunch.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    images = _resize(images, cfg.image_size)
    labels = bunch.target.astype(np.int64)
    train, test = _stratified_split(labels, cfg.test_fraction, cfg.split_seed)
    whole = ImageSet(images, labels)
    return SourceData("digits", [str(c) for c in range(10)], whole.subset(train), whole.subset(test))


def _read_folder(root: Path, classes: list[str], size: int | None) -> ImageSet:
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.v2.functional import pil_to_tensor

    folder = ImageFolder(str(root))
    if folder.classes != classes:
        raise DataError(f"{root} has classes {folder.classes}, expected {classes} as in the train folder")
    images = []
    for path, _ in folder.samples:
        try:
            with Image.open(path) as img:
                tensor = pil_to_tensor(img.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {path}: {exc}; remove or replace the file") from exc
        images.append(_resize(tensor.unsqueeze(0), size))
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise DataError(f"images under {root} differ in size {sorted(shapes)[:2]}; set data.image_size")
    return ImageSet(torch.cat(images), np.asarray(folder.targets, dtype=np.int64))


def load_imagefolder(cfg: DataConfig) -> SourceData:
    """`root/train/<class>/<image>` and, if present, `root/test/<class>/<image>` (held in memory)."""
    if cfg.root is None:
        raise DataError("data.root is not set; point it at a folder holding train/<class>/<image>")
    root = Path(cfg.root).expanduser()
    if not (root / "train").is_dir():
        raise DataError(f"data.root={str(root)!r} has no train/ folder; point data.root at the dataset folder")
    from torchvision.datasets.folder import find_classes

    classes, _ = find_classes(str(root / "train"))
    train = _read_folder(root / "train", classes, cfg.image_size)
    if (root / "test").is_dir():
        test = _read_folder(root / "test", classes, cfg.image_size)
    else:
        keep, held = _stratified_split(train.labels, cfg.test_fraction, cfg.split_seed)
        train, test = train.subset(keep), train.subset(held)
    return SourceData("imagefolder", classes, train, test)


SOURCES: dict[str, Callable[[DataConfig], SourceData]] = {
    "digits": load_digits,
    "imagefolder": load_imagefolder,
}


def load_source(cfg: DataConfig) -> SourceData:
    return SOURCES[cfg.source](cfg)
