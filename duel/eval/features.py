"""Features of a frozen encoder, extracted once without augmentation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from duel.data.augment import to_unit
from duel.data.datasets import IndexedImages


@torch.no_grad()
def extract_features(
    encoder: nn.Module, normalize: nn.Module, dataset: IndexedImages, batch_size: int, device: str
) -> np.ndarray:
    encoder.eval().to(device)
    normalize.to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    feats = [encoder(normalize(to_unit(x.to(device)))).float().cpu() for x, _, _ in loader]
    return torch.cat(feats).numpy()
