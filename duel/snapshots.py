"""The memory over training, the DUEL paper's Figure 5 form: at chosen epochs' ends, the memory's keys as
stored, the last K keys pushed into it, and the current encoder's features of a fixed display subset of
the training images, each with labels and source indices, for one joint t-SNE per point.

The last K pushes (K the memory's size), not every push since the previous point: that is bounded, and it
is what a FIFO memory would hold now, so beside a DUEL memory it shows what the stream brought and what
DUEL kept of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from duel.memory import ActiveMemory

DISPLAY_IMAGES = 1000  # training images whose features each point shows: enough for a map, cheap to encode
POINT_ARRAYS = ("memory", "recent")  # the per-point sets of keys, stored end to end in the file


def display_positions(n: int, seed: int, size: int = DISPLAY_IMAGES) -> torch.Tensor:
    """A sorted seeded subset of `size` of the positions 0..n-1, drawn from its own generator (so training's
    RNG streams are untouched)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


class MemorySnapshots:
    """The points recorded so far (`points`) and the ring of the memory's last K pushes since `watch`;
    `state_dict` holds both, so a checkpoint carries them through a kill and resume."""

    def __init__(self, display_images: int = DISPLAY_IMAGES) -> None:
        self.display_images = display_images
        self.points: list[dict[str, Any]] = []
        self._ring: list[torch.Tensor] = []  # keys, labels, indices of the last K pushes, on the memory's device
        self._pushed = 0  # keys pushed since watching began

    def watch(self, memory: ActiveMemory) -> None:
        """Keep the last `memory.size` keys pushed into `memory` from now on."""
        if not self._ring:
            size, device = memory.size, memory.keys.device
            no_meta = torch.full((size,), -1, dtype=torch.long, device=device)
            self._ring = [torch.zeros(size, memory.dim, device=device), no_meta, no_meta.clone()]
        self._ring = [part.to(memory.keys.device) for part in self._ring]
        memory.on_push = self._push

    def _push(self, keys: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        size, n = len(self._ring[0]), len(keys)
        take = min(n, size)  # a push larger than the ring leaves only its last keys
        slots = (self._pushed + torch.arange(n - take, n, device=keys.device)) % size
        for part, values in zip(self._ring, (keys, labels, indices), strict=True):
            part[slots] = values[n - take :]
        self._pushed += n

    def recent(self) -> list[torch.Tensor]:
        """Keys, labels and indices of the last K pushes, oldest first."""
        size = len(self._ring[0])
        if self._pushed < size:
            return [part[: self._pushed] for part in self._ring]
        return [part.roll(-(self._pushed % size), 0) for part in self._ring]

    def record(
        self,
        memory: ActiveMemory,
        features: torch.Tensor,
        display: tuple[torch.Tensor, torch.Tensor],
        step: int,
        epoch: int,
        num_classes: int,
    ) -> None:
        """A point after `step` (0-based), at the end of `epoch` (from 1): `features` are the current
        encoder's of the display images, whose source indices and labels are `display`."""
        filled = memory.num_filled
        keys, labels, indices = self.recent()
        arrays = {
            "memory_keys": memory.keys[:filled],
            "memory_labels": memory.labels[:filled],
            "memory_indices": memory.indices[:filled],
            "recent_keys": keys,
            "recent_labels": labels,
            "recent_indices": indices,
            "display_features": features,
            "display_indices": display[0],
            "display_labels": display[1],
        }
        point = {name: value.detach().to("cpu", copy=True).numpy() for name, value in arrays.items()}  # not views
        self.points.append(point | {"step": step, "epoch": epoch, "memory_entropy": memory.class_entropy(num_classes)})

    def state_dict(self) -> dict[str, Any]:
        return {"points": self.points, "ring": [part.cpu() for part in self._ring], "pushed": self._pushed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.points, self._ring, self._pushed = list(state["points"]), list(state["ring"]), state["pushed"]

    def arrays(self) -> dict[str, np.ndarray]:
        """The points as flat arrays (memory_snapshots.npz): `step`, `epoch`, `memory_entropy` per point;
        `display_indices` and `display_labels` once, `display_features` (points, images, d); the memory's
        and the recent keys, labels and indices of all points end to end, `<set>_point` naming each row's
        point. No point: every array empty."""
        points = self.points
        no_ints, no_keys = np.zeros(0, np.int64), np.zeros((0, 0), np.float32)

        def joined(name: str, empty: np.ndarray) -> np.ndarray:
            return np.concatenate([p[name] for p in points]) if points else empty

        out = {
            "step": np.array([p["step"] for p in points], dtype=np.int64),
            "epoch": np.array([p["epoch"] for p in points], dtype=np.int64),
            "memory_entropy": np.array([p["memory_entropy"] for p in points], dtype=np.float64),
            "display_indices": points[0]["display_indices"] if points else no_ints,
            "display_labels": points[0]["display_labels"] if points else no_ints,
            "display_features": np.stack([p["display_features"] for p in points]) if points else no_keys[None],
        }
        for name in POINT_ARRAYS:
            rows = [len(p[f"{name}_labels"]) for p in points]
            out[f"{name}_point"] = np.repeat(np.arange(len(points), dtype=np.int64), rows)
            out[f"{name}_keys"] = joined(f"{name}_keys", no_keys)
            out[f"{name}_labels"] = joined(f"{name}_labels", no_ints)
            out[f"{name}_indices"] = joined(f"{name}_indices", no_ints)
        return out
