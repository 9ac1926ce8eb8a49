"""Training and evaluation sets whose samples carry their index into the source, and their batches.

In-memory images are gathered by indexing one uint8 tensor, which may live on
the GPU (no per-sample Python, no host-to-device copy); lazy image folders are
decoded by DataLoader workers and copied through pinned memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from duel.data.sources import ImageSet


class Batch(NamedTuple):
    images: torch.Tensor  # uint8 as stored (the training step hands methods floats in [0, 1])
    labels: torch.Tensor  # analysis only: never used for training
    indices: torch.Tensor  # into the source: the identity of a sample across runs and stages
    positions: torch.Tensor  # into this set: the rows of per-sample state


class IndexedImages(Dataset):
    """uint8 images with labels and source indices; augmentation happens on batches later."""

    def __init__(self, images: ImageSet, indices: np.ndarray | list[int]) -> None:
        indices = np.asarray(indices, dtype=np.int64)
        self.images = images.subset(indices)
        self.labels = torch.as_tensor(self.images.labels)
        self.indices = torch.as_tensor(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Batch:
        return Batch(self.images.load(i), self.labels[i], self.indices[i], torch.tensor(i))

    def positions(self, source_indices: torch.Tensor) -> torch.Tensor:
        """The positions in this set of samples given by their source indices (all must be members)."""
        lookup = torch.full((int(self.indices.max()) + 1,), -1, dtype=torch.long)
        lookup[self.indices] = torch.arange(len(self.indices))
        wanted = source_indices.cpu()
        if len(wanted) and (wanted.min() < 0 or wanted.max() >= len(lookup) or (lookup[wanted] < 0).any()):
            raise ValueError("some source indices are not in this set")
        return lookup[wanted]

    def to(self, device: torch.device) -> IndexedImages:
        """Hold the images on `device` (in-memory sets only)."""
        assert self.images.images is not None, "only in-memory images can move to a device"
        self.images.images = self.images.images.to(device)
        return self

    def batches(
        self, order: torch.Tensor, batch_size: int, device: torch.device, num_workers: int = 0, drop_last: bool = False
    ) -> Iterator[Batch]:
        """Batches of the samples at positions `order`, on `device`."""
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        chunks = [order[start : start + batch_size] for start in range(0, stop, batch_size)]
        pin = device.type == "cuda"
        if self.images.images is not None:
            stored = self.images.images
            for idx in chunks:
                x = stored[idx.to(stored.device)]
                if x.device != device:
                    x = (x.pin_memory() if pin else x).to(device, non_blocking=True)
                yield Batch(x, self.labels[idx].to(device), self.indices[idx].to(device), idx.to(device))
            return
        loader = DataLoader(self, batch_sampler=[c.tolist() for c in chunks], num_workers=num_workers, pin_memory=pin)
        for x, labels, indices, positions in loader:
            yield Batch(x.to(device, non_blocking=True), labels.to(device), indices.to(device), positions.to(device))
