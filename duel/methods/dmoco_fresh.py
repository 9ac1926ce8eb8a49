"""DUEL-MoCo scoring against the current encoder (a variant beside the paper's form, `dmoco`).

A greedy DUEL memory keeps its keys for as long as they look unique, so most of
them come from an old encoder state: on CIFAR-10 with one dominant class, the
mean key age grew linearly with training and most evictions hit a key the same
push had just inserted. Scores then compare stale keys with fresh ones rather
than images with images. Here the memory's images are re-encoded by the
current key encoder (one new augmented view each) after every step and the
scores recomputed, so the next push compares keys of one encoder state.
Costs one key-encoder forward pass over the K memory images per step: the exact
reference of `dmoco_roll`, which re-encodes a window of the memory per step.
"""

from duel.methods.dmoco import DMoCo


class DMoCoFresh(DMoCo):
    def refresh_size(self) -> int:
        return self.cfg.memory.size
