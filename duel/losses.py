"""Contrastive losses as plain functions on L2-normalised embeddings.

`reduction="none"` gives one loss per query row (per view), which methods with
per-sample state (BCL) average into one value per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from duel.distributed import gather_with_grad


def info_nce(
    query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor, temperature: float, reduction: str = "mean"
) -> torch.Tensor:
    """MoCo's InfoNCE: the positive logit q.k against q.n for every memory negative n.

    query, key: (B, d); negatives: (N, d), N may be 0 (an empty memory).
    """
    positive = (query * key).sum(1, keepdim=True)
    logits = torch.cat([positive, query @ negatives.T], dim=1) / temperature
    target = torch.zeros(len(query), dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, target, reduction=reduction)


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    extra_negatives: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """SimCLR's NT-Xent over the 2B views; `extra_negatives` (N, d) are appended to every row.

    Under torch.distributed, each rank's views are contrasted with the views of every rank's batch
    (gathered with gradient, as in large-batch SimCLR), so the loss and the DDP-averaged gradient are
    those of one process on the global batch; the rows (and `reduction="none"`) stay this rank's.
    With `reduction="none"`: the (2B,) loss of each view, view 1's rows first.
    """
    (all1, offset), (all2, _) = gather_with_grad(z1), gather_with_grad(z2)
    z, candidates = torch.cat([z1, z2]), torch.cat([all1, all2])
    n, total = len(z1), len(all1)
    logits = z @ candidates.T
    own = torch.arange(n, device=z.device) + offset
    rows = torch.arange(2 * n, device=z.device)
    logits[rows, torch.cat([own, own + total])] = float("-inf")  # a view is never its own negative
    if extra_negatives is not None and len(extra_negatives):
        logits = torch.cat([logits, z @ extra_negatives.T], dim=1)
    target = torch.cat([own + total, own])
    return F.cross_entropy(logits / temperature, target, reduction=reduction)
