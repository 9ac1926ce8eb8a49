"""Tiny datasets written in the real on-disk formats that torchvision and the list files use."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def images_for(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """HWC uint8 images whose red channel encodes the class (class c -> 20 c .. 20 c + 9) plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
    x[..., 0] = (20 * labels[:, None, None] + rng.integers(0, 10, (len(labels), size, size))).astype(np.uint8)
    return x


def _pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_cifar10(root: Path, per_class: int, test_per_class: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py: five pickled training batches, a test batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = np.tile(np.arange(10), per_class)
    x = images_for(labels, 32)
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # CIFAR stores planes R, G, B of 1024 bytes
    for b, part in enumerate(np.array_split(np.arange(len(x)), 5), 1):
        _pickle(folder / f"data_batch_{b}", {"data": rows[part], "labels": labels[part].tolist()})
    t_labels = np.tile(np.arange(10), test_per_class)
    t_rows = images_for(t_labels, 32, seed=1).transpose(0, 3, 1, 2).reshape(len(t_labels), -1)
    _pickle(folder / "test_batch", {"data": t_rows, "labels": t_labels.tolist()})
    _pickle(folder / "batches.meta", {"label_names": [f"class{c}" for c in range(10)]})
    return x, labels


def write_cifar100(root: Path, per_class: int, test_per_class: int = 2) -> None:
    """cifar-100-python: `train`, `test` and `meta` pickles with fine labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n, seed in (("train", per_class, 0), ("test", test_per_class, 1)):
        labels = np.tile(np.arange(100), n)
        rows = images_for(labels % 12, 32, seed).transpose(0, 3, 1, 2).reshape(len(labels), -1)
        _pickle(folder / name, {"data": rows, "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist()})
    _pickle(folder / "meta", {"fine_label_names": [f"fine{c}" for c in range(100)]})


def write_stl10(root: Path, per_class: int, unlabeled: int = 7, size: int = 96) -> np.ndarray:
    """stl10_binary: column-major uint8 image files, 1-based uint8 label files, class_names.txt."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)

    def write(name: str, labels: np.ndarray | None, n: int, seed: int) -> np.ndarray:
        x = images_for(labels if labels is not None else np.zeros(n, dtype=np.int64), size, seed)
        x.transpose(0, 3, 2, 1).tofile(folder / f"{name}_X.bin")  # channel, column, row order on disk
        if labels is not None:
            (labels + 1).astype(np.uint8).tofile(folder / f"{name}_y.bin")
        return x

    labels = np.tile(np.arange(10), per_class)
    x = write("train", labels, len(labels), 0)
    write("test", np.tile(np.arange(10), 2), 20, 1)
    write("unlabeled", None, unlabeled, 2)
    (folder / "class_names.txt").write_text("\n".join(f"name{c}" for c in range(10)) + "\n")
    return x


def write_image_list_tree(root: Path, counts: list[int], size: int = 40) -> None:
    """An ImageNet-LT style tree: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG and the three list files."""
    for split, per_class in (("train", counts), ("val", [2] * len(counts)), ("test", [2] * len(counts))):
        lines = []
        for c, n in enumerate(per_class):
            folder = root / ("val" if split == "test" else split) / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                name = f"{split}_{i:04d}.JPEG"
                pixels = images_for(np.array([c]), size, seed=100 * c + i)[0]
                Image.fromarray(pixels[:, : size - 6]).save(folder / name, format="JPEG", quality=95)
                lines.append(f"{folder.relative_to(root) / name} {c}")
        (root / f"ImageNet_LT_{split}.txt").write_text("\n".join(lines) + "\n")


def write_image_folder(root: Path, per_class: int, test_per_class: int = 3, classes: int = 10, size: int = 32) -> None:
    """train/<class>/*.jpg and test/<class>/*.jpg: the layout of the CIFAR-10 JPEG copy in ../shared/data."""
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, pixels in enumerate(images_for(np.full(n, c), size, seed=1000 * c + (split == "test"))):
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", format="JPEG", quality=95)
