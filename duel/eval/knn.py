"""Weighted kNN classifier (Wu et al. 2018): cosine similarity, votes weighted by exp(sim / T)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    query_features: np.ndarray,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> np.ndarray:
    bank = F.normalize(torch.as_tensor(train_features, dtype=torch.float32), dim=1)
    bank_labels = torch.as_tensor(train_labels, dtype=torch.long)
    k = min(k, len(bank))
    preds = []
    for start in range(0, len(query_features), chunk):
        q = F.normalize(torch.as_tensor(query_features[start : start + chunk], dtype=torch.float32), dim=1)
        sims, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), num_classes).scatter_add_(1, bank_labels[idx], (sims / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds).numpy()
