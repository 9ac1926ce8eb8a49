"""Encoders that map images to a feature vector (no classifier head)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def small_cnn(in_channels: int) -> nn.Module:
    """Three conv blocks and global pooling: 128-d features, fast on CPU for 8-32 px images."""

    def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(in_channels, 32, 1),
        *block(32, 64, 2),
        *block(64, 128, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of `splits` interleaved sub-batches (images
    i, i + splits, i + 2 splits, ... form one): MoCo's CIFAR-10 demo's SplitBatchNorm, which lets one
    device see the per-GPU statistics of shuffle-BN. The running statistics follow the sub-batches'
    mean; evaluation, and a batch that does not divide into the splits, use plain BatchNorm."""

    def __init__(self, num_features: int, splits: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.splits
        if not self.training or n % s:
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        mean, var = self.running_mean.repeat(s), self.running_var.repeat(s)
        weight, bias = self.weight.repeat(s), self.bias.repeat(s)
        out = F.batch_norm(x.reshape(n // s, c * s, h, w), mean, var, weight, bias, True, self.momentum, self.eps)
        self.running_mean.copy_(mean.view(s, c).mean(0))
        self.running_var.copy_(var.view(s, c).mean(0))
        return out.reshape(n, c, h, w)


def split_batchnorm(module: nn.Module, splits: int) -> nn.Module:
    """Every BatchNorm2d of `module` made a SplitBatchNorm2d over `splits` sub-batches, in place; the
    state_dict keys and values are unchanged, so evaluation loads the weights into plain BatchNorm."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            split = SplitBatchNorm2d(child.num_features, splits, eps=child.eps, momentum=child.momentum)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            split_batchnorm(child, splits)
    return module


def _resnet(arch: str, cifar_stem: bool) -> Callable[[int], nn.Module]:
    def build(in_channels: int) -> nn.Module:
        import torchvision  # lazily: it pulls in torch._dynamo, 1.5 s on every stage start

        net = getattr(torchvision.models, arch)()
        if cifar_stem:  # 3x3 conv, stride 1, no max-pool: small images keep their resolution
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        net.fc = nn.Identity()
        return net

    stem = "the CIFAR stem (3x3 conv, stride 1, no max-pool)" if cifar_stem else "the ImageNet stem"
    build.__doc__ = f"torchvision {arch} with {stem}, no classifier."
    return build


BACKBONES: dict[str, tuple[Callable[[int], nn.Module], int]] = {
    "small_cnn": (small_cnn, 128),
    "resnet18_cifar": (_resnet("resnet18", cifar_stem=True), 512),  # CIFAR, 32 px
    "resnet18": (_resnet("resnet18", cifar_stem=False), 512),  # STL-10, 96 px
    "resnet50": (_resnet("resnet50", cifar_stem=False), 2048),  # ImageNet-LT, 224 px
}


def build_backbone(name: str, in_channels: int) -> tuple[nn.Module, int]:
    """The encoder and its feature dimension."""
    factory, dim = BACKBONES[name]
    return factory(in_channels), dim
