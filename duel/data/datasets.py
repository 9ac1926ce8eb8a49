"""A dataset whose samples carry their index into the source (per-sample policies, diagnostics)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from duel.data.sources import ImageSet


class IndexedImages(Dataset):
    """uint8 images with labels and source indices; augmentation happens on batches later."""

    def __init__(self, images: ImageSet, indices: np.ndarray | list[int]) -> None:
        indices = np.asarray(indices, dtype=np.int64)
        self.images = images.images[torch.as_tensor(indices)]
        self.labels = torch.as_tensor(images.labels[indices])
        self.indices = torch.as_tensor(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i], self.indices[i]
