"""Image sources: each loads labelled train and test splits as uint8 images (C, H, W).

Small images (CIFAR, STL-10, digits, small folders) are held in memory as one
uint8 tensor; a large-image folder (`data.lazy`) keeps file paths and decodes
each image on access, in DataLoader workers.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from duel.config import DataConfig, RuntimeConfig
from duel.errors import DataError

STATS_SAMPLE = 2000  # images a lazy set's channel statistics are estimated on


def decode_image(path: str, size: int | None) -> torch.Tensor:
    """One image file as uint8 RGB (3, H, W); with `size`, shorter side resized to it and centre-cropped."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    try:
        with Image.open(path) as img:
            tensor = TF.pil_to_tensor(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; remove or replace the file") from exc
    if size is not None and tuple(tensor.shape[-2:]) != (size, size):
        tensor = TF.center_crop(TF.resize(tensor, size, antialias=True), [size, size])
    return tensor


@dataclass
class ImageSet:
    """Labelled images: `images` in memory, or `files` decoded on access at `size` x `size`."""

    labels: np.ndarray  # int64 (N,), -1 for unlabeled images
    images: torch.Tensor | None = None  # uint8 (N, C, H, W)
    files: list[str] | None = None
    size: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        if self.images is not None:
            return tuple(self.images.shape[1:])  # type: ignore[return-value]
        assert self.size is not None
        return (3, self.size, self.size)

    def load(self, i: int) -> torch.Tensor:
        if self.images is not None:
            return self.images[i]
        assert self.files is not None
        return decode_image(self.files[i], self.size)

    def subset(self, indices: np.ndarray | list[int]) -> ImageSet:
        indices = np.asarray(indices, dtype=np.int64)
        if self.images is not None:
            return ImageSet(self.labels[indices], images=self.images[torch.as_tensor(indices)])
        assert self.files is not None
        return ImageSet(self.labels[indices], files=[self.files[i] for i in indices], size=self.size)

    def concat(self, other: ImageSet) -> ImageSet:
        labels = np.concatenate([self.labels, other.labels])
        if self.images is not None and other.images is not None:
            return ImageSet(labels, images=torch.cat([self.images, other.images]))
        if self.files is not None and other.files is not None and self.size == other.size:
            return ImageSet(labels, files=self.files + other.files, size=self.size)
        raise ValueError("only image sets of the same kind can be concatenated")

    def digest(self, h: hashlib._Hash) -> None:
        """Feed the content (pixels, or class folder, name and size of each file: the same wherever
        the dataset is mounted) and labels into a hash."""
        if self.images is not None:
            h.update(self.images.numpy().tobytes())
        else:
            assert self.files is not None
            for path in self.files:
                h.update(f"{Path(path).parent.name}/{Path(path).name}:{os.path.getsize(path)}\n".encode())
        h.update(self.labels.astype(np.int64).tobytes())

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std in [0, 1] (on a fixed sample of a lazy set)."""
        if self.images is not None:
            x = self.images
        else:
            n = min(len(self), STATS_SAMPLE)
            pick = np.sort(np.random.default_rng(0).choice(len(self), n, replace=False))
            x = torch.stack([self.load(int(i)) for i in pick])
        x = x.float().div_(255).transpose(0, 1).reshape(x.shape[1], -1)
        return x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()


@dataclass
class SourceData:
    name: str
    classes: list[str]
    train: ImageSet
    test: ImageSet
    val_indices: np.ndarray | None = None  # an official validation split, as indices into train
    unlabeled: ImageSet | None = None  # extra pretraining images without labels (STL-10)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.train.shape[0]

    @property
    def image_size(self) -> int:
        return self.train.shape[-1]

    def fingerprint(self) -> str:
        """Content hash of the labelled splits: manifests record it so stale indices are caught."""
        h = hashlib.sha256()
        for split in (self.train, self.test):
            split.digest(h)
        if self.val_indices is not None:
            h.update(self.val_indices.astype(np.int64).tobytes())
        return h.hexdigest()[:16]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        return self.train.channel_stats()


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or images.shape[-1] == size:
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    try:
        keep, held = train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise DataError(
            f"cannot carve a stratified test split (data.test_fraction={fraction}) from {len(labels)} images: "
            f"{exc}; add a test split to the source or change data.test_fraction"
        ) from exc
    return np.sort(keep), np.sort(held)


def _root(runtime: RuntimeConfig, holds: str) -> Path:
    if runtime.data_root is None:
        raise DataError(f"runtime.data_root is not set; point it at the folder holding {holds}")
    return Path(runtime.data_root).expanduser()


# ------------------------------------------------------------------ embedded
def load_digits(cfg: DataConfig, runtime: RuntimeConfig) -> SourceData:
    """scikit-learn's bundled 8x8 digits (no download); the test split is carved with a fixed seed."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.from_numpy(np.round(bunch.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    whole = ImageSet(bunch.target.astype(np.int64), images=_resize(images, cfg.image_size))
    train, test = _stratified_split(whole.labels, cfg.test_fraction, cfg.split_seed)
    return SourceData("digits", [str(c) for c in range(10)], whole.subset(train), whole.subset(test))


# --------------------------------------------------------------- torchvision
CHECKED_LISTS = ("train_list", "test_list")  # torchvision's [file name, md5] records of a dataset class


def _torchvision(cls: type, runtime: RuntimeConfig, folder: str, **kwargs) -> object:
    root = _root(runtime, f"{folder} (or where runtime.download: true should put it)")
    if not runtime.verify_checksums:  # torchvision checks presence alone where a file's md5 is None
        unchecked: dict[str, Any] = {key: [[name, None] for name, _ in getattr(cls, key)] for key in CHECKED_LISTS}
        if hasattr(cls, "meta"):
            unchecked["meta"] = {**cls.meta, "md5": None}
        cls = type(cls.__name__, (cls,), unchecked)
    try:
        return cls(str(root), download=runtime.download, **kwargs)
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as exc:
        problem = _first_bad_file(cls, root) or str(exc).splitlines()[0]
        raise DataError(
            f"{cls.__name__} under {root}: {problem}; set runtime.download: true (needs internet) for the official "
            f"files in {folder}, or runtime.verify_checksums: false for a copy you built yourself"
        ) from exc


def _first_bad_file(cls: type, root: Path) -> str | None:
    """The first of a torchvision dataset's files that is missing or fails its md5 (None: not checked)."""
    from torchvision.datasets.utils import check_integrity

    records = [record for key in CHECKED_LISTS for record in getattr(cls, key)]
    if hasattr(cls, "meta"):
        records.append([cls.meta["filename"], cls.meta["md5"]])
    for name, md5 in records:
        path = root / cls.base_folder / name
        if not path.is_file():
            return f"{path} is missing"
        if not check_integrity(str(path), md5):
            return f"{path} fails its md5 check"
    return None


def _cifar(cls_name: str, folder: str) -> Loader:
    def load(cfg: DataConfig, runtime: RuntimeConfig) -> SourceData:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        splits = []
        for train in (True, False):
            ds = _torchvision(cls, runtime, folder, train=train)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> NCHW
            splits.append(ImageSet(np.asarray(ds.targets, dtype=np.int64), images=_resize(images, cfg.image_size)))
        return SourceData(cls_name.lower(), list(ds.classes), *splits)

    load.__doc__ = f"torchvision's {cls_name} (python pickle batches under root/{folder}); official test split."
    return load


def load_stl10(cfg: DataConfig, runtime: RuntimeConfig) -> SourceData:
    """torchvision's STL10 (binaries under root/stl10_binary); `data.unlabeled` adds its 100k unlabeled images."""
    from torchvision.datasets import STL10

    splits = {}
    for name in ("train", "test", "unlabeled") if cfg.unlabeled else ("train", "test"):
        ds = _torchvision(STL10, runtime, "stl10_binary", split=name)
        images = _resize(torch.from_numpy(ds.data), cfg.image_size)
        splits[name] = ImageSet(np.asarray(ds.labels, dtype=np.int64), images=images)
    return SourceData("stl10", list(ds.classes), splits["train"], splits["test"], unlabeled=splits.get("unlabeled"))


# --------------------------------------------------------------- imagefolder
def _read_list(root: Path, list_file: str) -> tuple[list[str], np.ndarray]:
    """`relative/path label` lines (the ImageNet-LT split files); paths relative to runtime.data_root."""
    path = Path(list_file).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DataError(f"list file {path} does not exist; fix the data.*_list entry")
    files, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{n} is not a `relative/path label` line: {line!r}")
        files.append(str(root / parts[0]))
        labels.append(int(parts[1]))
    return files, np.asarray(labels, dtype=np.int64)


def _list_classes(files: list[str], labels: np.ndarray, list_file: str) -> list[str]:
    """Class names from the folder of each label's first image; labels must be 0..C-1."""
    present = np.unique(labels)
    if present[0] != 0 or present[-1] != len(present) - 1:
        raise DataError(f"labels in {list_file} must be 0..C-1 with every class present")
    first = {}
    for path, label in zip(files, labels.tolist(), strict=True):
        first.setdefault(label, Path(path).parent.name)
    return [first[c] for c in range(len(present))]


def _folder_files(folder: Path, classes: list[str] | None) -> tuple[list[str], np.ndarray, list[str]]:
    from torchvision.datasets import ImageFolder

    tree = ImageFolder(str(folder), loader=lambda p: p)  # paths only; decoding happens later
    if classes is not None and tree.classes != classes:
        raise DataError(f"{folder} has classes {tree.classes}, expected {classes} as in the train folder")
    files = [p for p, _ in tree.samples]
    return files, np.asarray(tree.targets, dtype=np.int64), tree.classes


def _image_set(files: list[str], labels: np.ndarray, cfg: DataConfig, where: str) -> ImageSet:
    if cfg.lazy:
        missing = next((f for f in files if not os.path.isfile(f)), None)
        if missing is not None:
            raise DataError(f"{missing} (listed in {where}) does not exist; fix runtime.data_root or the list file")
        return ImageSet(labels, files=files, size=cfg.image_size)
    images = [decode_image(f, cfg.image_size) for f in files]
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise DataError(f"images under {where} differ in size {sorted(shapes)[:2]}; set data.image_size")
    return ImageSet(labels, images=torch.stack(images))


def load_imagefolder(cfg: DataConfig, runtime: RuntimeConfig) -> SourceData:
    """`root/train/<class>/<image>` (+ `root/test/...`), or the images named by `data.*_list` files."""
    root = _root(runtime, "train/<class>/<image> or the files of data.train_list")
    if cfg.train_list is not None:
        files, labels = _read_list(root, cfg.train_list)
        classes = _list_classes(files, labels, cfg.train_list)
    else:
        if not (root / "train").is_dir():
            raise DataError(
                f"runtime.data_root={str(root)!r} has no train/ folder; point runtime.data_root at the dataset folder"
            )
        files, labels, classes = _folder_files(root / "train", None)
    train = _image_set(files, labels, cfg, cfg.train_list or str(root / "train"))

    val_indices = None
    if cfg.val_list is not None:  # official validation images join train; the manifest uses them as val
        v_files, v_labels = _read_list(root, cfg.val_list)
        val_indices = np.arange(len(train), len(train) + len(v_files))
        train = train.concat(_image_set(v_files, v_labels, cfg, cfg.val_list))

    if cfg.test_list is not None:
        test = _image_set(*_read_list(root, cfg.test_list), cfg, cfg.test_list)
    elif (root / "test").is_dir():
        t_files, t_labels, _ = _folder_files(root / "test", classes)
        test = _image_set(t_files, t_labels, cfg, str(root / "test"))
    else:
        if val_indices is not None:
            raise DataError("data.val_list needs a test split: set data.test_list or add root/test/")
        keep, held = _stratified_split(train.labels, cfg.test_fraction, cfg.split_seed)
        train, test = train.subset(keep), train.subset(held)
    return SourceData("imagefolder", classes, train, test, val_indices=val_indices)


Loader = Callable[[DataConfig, RuntimeConfig], SourceData]  # one per source name in SOURCES


SOURCES: dict[str, Loader] = {
    "digits": load_digits,
    "cifar10": _cifar("CIFAR10", "cifar-10-batches-py"),
    "cifar100": _cifar("CIFAR100", "cifar-100-python"),
    "stl10": load_stl10,
    "imagefolder": load_imagefolder,
}


def load_source(cfg: DataConfig, runtime: RuntimeConfig | None = None) -> SourceData:
    """The source named by `cfg`, found where `runtime` says (sources on disk need runtime.data_root)."""
    return SOURCES[cfg.source](cfg, runtime or RuntimeConfig())
