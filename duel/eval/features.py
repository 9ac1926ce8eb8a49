"""Features of a frozen encoder, extracted once without augmentation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from duel.data.augment import to_unit
from duel.data.datasets import IndexedImages


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    normalize: nn.Module,
    dataset: IndexedImages,
    batch_size: int,
    device: str,
    num_workers: int = 0,
) -> np.ndarray:
    dev = torch.device(device)
    encoder.eval().to(dev)
    normalize.to(dev)
    order = torch.arange(len(dataset))
    batches = dataset.batches(order, batch_size, dev, num_workers)
    feats = [encoder(normalize(to_unit(batch.images))).float().cpu() for batch in batches]
    return torch.cat(feats).numpy()
