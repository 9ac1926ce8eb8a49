"""SDCLR (Jiang et al., ICML 2021): SimCLR against a pruned self-competitor of the encoder.

The second view goes through a pruned copy of the backbone that shares its weights: a global
magnitude mask over every conv and linear weight of the backbone keeps the largest
(1 - prune_ratio) of them, recomputed from the current weights at the start of every epoch
(VITA-Group/SDCLR prune/mask.py `magnitudePruning`, called per epoch in prune/prune_simCLR.py).
The pruned branch has BatchNorm layers of its own (their `prune_dual_bn`), in the backbone and in a
projection head with BatchNorm (`pretrain.head: mlp3_bn` is their dual-BN `proj_head` in
models/resnet_prune_multibn.py): it never touches the dense branch's statistics. The head's linear
layers are shared and not pruned (only the backbone's `prune_conv2d` layers are). Loss:
NT-Xent(dense(view 1), pruned(view 2)); samples the pruned network forgets (the tail, in their
analysis) get larger losses.

The masked forward is `torch.func.functional_call` with weight * mask and the pruned branch's
norm layers substituted, so there is no second copy of the network's weights.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from duel.config import PretrainConfig
from duel.losses import nt_xent
from duel.method_params import SDCLRParams
from duel.methods.base import DataInfo, SSLMethod, StepOutput, pair_mean

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class SDCLR(SSLMethod):
    Params = SDCLRParams

    def __init__(self, cfg: PretrainConfig, data: DataInfo, params: Any = None) -> None:
        super().__init__(cfg, data, params)
        self.masked = [name for name, m in self.backbone.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        for i, name in enumerate(self.masked):
            self.register_buffer(f"prune_mask_{i}", torch.ones_like(self.backbone.get_parameter(f"{name}.weight")))
        # "backbone.<name>" and "projector.<name>": every norm layer of the two parts the pruned branch runs
        self.norm_names = [
            f"{part}.{name}"
            for part in ("backbone", "projector")
            for name, m in getattr(self, part).named_modules()
            if isinstance(m, NORMS)
        ]
        self.pruned_norms = nn.ModuleList([copy.deepcopy(self.get_submodule(n)) for n in self.norm_names])

    def masks(self) -> list[torch.Tensor]:
        return [getattr(self, f"prune_mask_{i}") for i in range(len(self.masked))]

    @torch.no_grad()
    def prune(self) -> None:
        """Keep exactly the largest-magnitude (1 - prune_ratio) of the masked weights, across all layers."""
        weights = [self.backbone.get_parameter(f"{name}.weight") for name in self.masked]
        magnitude = torch.cat([w.detach().abs().flatten() for w in weights])
        keep = len(magnitude) - math.ceil(self.params.prune_ratio * len(magnitude))
        flat = torch.zeros_like(magnitude)
        flat[magnitude.topk(keep).indices] = 1.0
        for mask, part in zip(self.masks(), flat.split([w.numel() for w in weights]), strict=True):
            mask.copy_(part.view_as(mask))

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        super().on_epoch_start(epoch, epochs)
        self.prune()

    def pruned_tensors(self, part: str) -> dict[str, torch.Tensor]:
        """The weights of `part` (backbone or projector) as the pruned branch runs it: the backbone's
        masked, and the pruned branch's own norm layers (and running stats) in both."""
        tensors = dict(getattr(self, part).named_parameters())
        if part == "backbone":
            for name, mask in zip(self.masked, self.masks(), strict=True):
                tensors[f"{name}.weight"] = tensors[f"{name}.weight"] * mask
        for full_name, norm in zip(self.norm_names, self.pruned_norms, strict=True):
            owner, _, prefix = full_name.partition(".")
            if owner == part:
                tensors |= {f"{prefix}.{k}": v for k, v in norm.named_parameters()}
                tensors |= {f"{prefix}.{k}": v for k, v in norm.named_buffers()}
        return tensors

    def pruned_features(self, images: torch.Tensor) -> torch.Tensor:
        return functional_call(self.backbone, self.pruned_tensors("backbone"), (images,), strict=False)

    def training_loss(self, views, batch):
        dense = self.embed(views[0])
        projected = functional_call(
            self.projector, self.pruned_tensors("projector"), (self.pruned_features(views[1]),), strict=False
        )
        pruned = F.normalize(projected, dim=1)
        per_view = nt_xent(dense, pruned, self.temperature, reduction="none")
        return StepOutput(per_view.mean(), pair_mean(per_view))
