"""Active memory of L2-normalised keys with FIFO, random and DUEL replacement.

DUEL's duplication score (DESIGN §2.2):

    p_dup(i, j) = exp((m_i . m_j - 1) / tau_d)   in (0, 1], 1 iff m_i = m_j
    score_i     = sum_{j != i} p_dup(i, j)        expected number of duplicates of i

A new key replaces the slot with the highest score. Scores are maintained
incrementally: evicting m_j subtracts p_dup(k, m_j) from every score, inserting
z adds p_dup(k, z), and the score of the new slot is computed from scratch, so a
push costs O(B K d), never the O(K^2 d) full recompute (`full_scores`).

Slots are filled in order while the memory is not yet full (every policy), so
the filled slots are always the prefix `[:filled]`; the policy decides only
which filled slots to overwrite once the memory is full.

No push reads a device value on the host (a sync on a GPU): the fill level and
the pointers depend only on how many keys came in, so they are mirrored as
Python ints, and slots are chosen, written and counted with index arithmetic.
Greedy DUEL is still a loop of about 20 kernels per key; on CUDA, `cuda_graphs`
replays the whole loop of a push as one captured graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from duel.config import BATCH_MODES

POLICIES = ("fifo", "random", "duel")
BLOCK = 4096  # most keys scored as one block: a (K, BLOCK) matrix bounds what a push allocates


def greedy_replace(keys: torch.Tensor, scores: torch.Tensor, new: torch.Tensor, temperature: float) -> torch.Tensor:
    """Greedy DUEL on a full memory, in place: each row of `new` in turn replaces the slot of highest
    score, with one (K, d) x (d, 2) product per key; returns the slots written, (len(new),), on the
    device. Slots are (1,) device indices, not Python ints (nor 0-dim tensors, which Python turns into
    ints), so the host never waits for the device and the loop can be captured as a CUDA graph."""
    slots = []
    for key in new.unbind(0):
        j = scores.argmax().view(1)
        p = keys @ torch.stack([keys.index_select(0, j)[0], key], 1)
        p = p.sub_(1).div_(temperature).exp_()  # p_dup(k, evicted), p_dup(k, z)
        scores.add_(p[:, 1]).sub_(p[:, 0])
        # p[j, 1] pairs z with the evicted key, not a neighbour
        scores.index_copy_(0, j, p[:, 1].sum() - p[:, 1].index_select(0, j))
        keys.index_copy_(0, j, key.view(1, -1))
        slots.append(j)
    return torch.cat(slots)


def label_entropy(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Normalised entropy in [0, 1] of labels in [0, num_classes) (-1 ignored), as a float64 scalar on
    their device: no host read, so a training step can compute it and the host read it later."""
    if num_classes < 2:
        return torch.zeros((), dtype=torch.float64, device=labels.device)
    known = (labels >= 0).double()
    counts = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
    counts.index_add_(0, labels.clamp(0, num_classes - 1), known)
    p = counts / counts.sum().clamp(min=1)
    return -torch.special.xlogy(p, p).sum() / math.log(num_classes)


def class_entropy(labels: torch.Tensor, num_classes: int) -> float:
    """Normalised entropy in [0, 1] of a set of labels over `num_classes` classes (-1 ignored)."""
    return float(label_entropy(labels, num_classes))


class ActiveMemory(nn.Module):
    """K keys of dimension d used as contrastive negatives.

    Labels and dataset indices are stored next to each key for analysis only
    (-1 where unknown); they never influence which slot is replaced.
    Every per-slot array and the pointer are buffers, so `state_dict` holds the
    whole memory state and checkpoints restore it exactly. With `num_classes`,
    it also counts the keys inserted and evicted per class (diagnostics only).
    """

    def __init__(
        self,
        size: int,
        dim: int,
        policy: str = "fifo",
        temperature: float = 0.1,
        batch_mode: str = "greedy",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"unknown memory policy {policy!r}; allowed: {', '.join(POLICIES)}")
        if batch_mode not in BATCH_MODES:
            raise ValueError(f"unknown batch_mode {batch_mode!r}; allowed: {', '.join(BATCH_MODES)}")
        if size < 1 or dim < 1 or temperature <= 0:
            raise ValueError("memory size and dim must be >= 1 and temperature > 0")
        self.size, self.dim = size, dim
        self.policy, self.temperature, self.batch_mode = policy, temperature, batch_mode
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("indices", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("scores", torch.zeros(size))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next FIFO slot
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        # Diagnostics: keys inserted and evicted per class over the whole run (labels in [0, num_classes)).
        self.register_buffer("inserted", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("evicted", torch.zeros(num_classes, dtype=torch.long))
        # Diagnostics: pushes so far, the push each slot's key came in with, and how many evictions
        # hit a key inserted by the same push (a greedy push may overwrite its own batch).
        self.register_buffer("pushes", torch.zeros((), dtype=torch.long))
        self.register_buffer("born", torch.zeros(size, dtype=torch.long))
        self.register_buffer("evicted_fresh", torch.zeros((), dtype=torch.long))
        # Staleness: the push after which each slot's key was computed (by its own push, or by a later
        # re-encoding, `rekey`), and the next slot of a rolling re-encoding window.
        self.register_buffer("encoded", torch.zeros(size, dtype=torch.long))
        self.register_buffer("window_ptr", torch.zeros((), dtype=torch.long))
        # Random eviction draws from the memory's own generator: data-parallel ranks seed it alike and
        # draw alike, while their global RNGs (augmentation) differ. Saved with the state (extra state).
        self.generator = torch.Generator().manual_seed(0)
        self._filled = self._ptr = self._window = 0  # host mirrors of filled, ptr and window_ptr
        # Greedy pushes on CUDA as captured graphs (`_greedy`); the capture of the last push size.
        self.cuda_graphs = False
        self._graph: tuple | None = None
        # An observer of every push's normalised keys, labels and indices (analysis only: duel.snapshots);
        # not state: it changes nothing the memory holds.
        self.on_push: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def get_extra_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._filled, self._ptr, self._window = int(self.filled), int(self.ptr), int(self.window_ptr)

    # ------------------------------------------------------------------ views
    @property
    def num_filled(self) -> int:
        return self._filled

    def valid_keys(self) -> torch.Tensor:
        """The filled keys, (filled, d): the negatives a loss should use."""
        return self.keys[: self.num_filled]

    def duplication(self, sims: torch.Tensor) -> torch.Tensor:
        return torch.exp((sims - 1.0) / self.temperature)

    def full_scores(self) -> torch.Tensor:
        """O(K^2 d) computation of the DUEL scores of the filled slots from scratch, in blocks of rows."""
        keys = self.valid_keys()
        scores = torch.empty(len(keys), dtype=keys.dtype, device=keys.device)
        for start in range(0, len(keys), BLOCK):
            p = self.duplication(keys[start : start + BLOCK] @ keys.T)
            scores[start : start + BLOCK] = p.sum(1) - p.diagonal(start)
        return scores

    def class_entropy(self, num_classes: int) -> float:
        """Normalised entropy in [0, 1] of the labels stored in memory (-1 ignored)."""
        return float(self.label_entropy(num_classes))

    def label_entropy(self, num_classes: int) -> torch.Tensor:
        """`class_entropy` as a device scalar (no host read)."""
        return label_entropy(self.labels[: self.num_filled], num_classes)

    def class_histogram(self, num_classes: int) -> torch.Tensor:
        labels = self.labels[: self.num_filled]
        return torch.bincount(labels[labels >= 0], minlength=num_classes)

    def refresh_window(self, n: int) -> torch.Tensor:
        """The next `n` filled slots of a window cycling over the memory (every filled slot when `n`
        covers them all), advancing the window: re-encoding them each step bounds every key's staleness
        by ceil(filled / n) pushes."""
        filled = self.num_filled
        if n >= filled:
            return torch.arange(filled, device=self.keys.device)
        start = self._window % filled  # the memory may have grown since the last window
        self._window = (start + n) % filled
        self.window_ptr.fill_(self._window)
        return (start + torch.arange(n, device=self.keys.device)) % filled

    @torch.no_grad()
    def rekey(self, slots: torch.Tensor, keys: torch.Tensor) -> None:
        """Replace the keys of filled `slots` (the same images, e.g. re-encoded by the current encoder);
        labels, indices and residence ages are kept. DUEL scores are recomputed from scratch when every
        filled slot is replaced, else updated incrementally (O(len(slots) K d))."""
        with torch.autocast(self.keys.device.type, enabled=False):
            keys = nn.functional.normalize(keys.detach().to(self.keys), dim=1)
            self.encoded[slots] = self.pushes
            if self.policy != "duel":
                self.keys[slots] = keys
            elif len(slots) == self.num_filled:
                self.keys[slots] = keys
                self.scores[: self.num_filled] = self.full_scores()
            else:
                self._update_scores(slots, keys, 0)

    @torch.no_grad()
    def fill_random(self) -> None:
        """Push K random unit vectors (no label or index), drawn from the memory's generator: MoCo's queue
        at the start of training (facebookresearch/moco builder.py: `randn(dim, K)`, normalised)."""
        self.push(torch.randn(self.size, self.dim, generator=self.generator).to(self.keys))

    # ------------------------------------------------------------------- push
    @torch.no_grad()
    def push(
        self,
        keys: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
    ) -> None:
        """Insert a batch of keys (normalised here), replacing slots by the policy."""
        # Scores are updated incrementally over the whole run: keep them in fp32 under bf16 autocast.
        with torch.autocast(self.keys.device.type, enabled=False):
            self._push(keys, labels, indices)

    def _push(self, keys: torch.Tensor, labels: torch.Tensor | None, indices: torch.Tensor | None) -> None:
        self.pushes += 1
        keys = nn.functional.normalize(keys.detach().to(self.keys), dim=1)
        n = keys.shape[0]
        labels = self._meta(labels, n)
        indices = self._meta(indices, n)
        if self.on_push is not None:
            self.on_push(keys, labels, indices)
        if self.policy == "duel" and self.batch_mode == "greedy":
            # Filling empty slots involves no choice, so it is done in blocks.
            free = min(n, self.size - self.num_filled)
            for start in range(0, free, BLOCK):
                end = min(start + BLOCK, free)
                self._insert(self._free_slots(end - start), keys[start:end], labels[start:end], indices[start:end])
            if free < n:
                slots = self._greedy(keys[free:])
                self._count_replacements(slots, labels[free:], indices[free:])
            return
        # Block modes never place two keys of one block in the same slot.
        step = min(self.size, BLOCK)
        for start in range(0, n, step):
            chunk = slice(start, start + step)
            k = keys[chunk]
            slots = self._duel_slots(len(k)) if self.policy == "duel" else self._plain_slots(len(k))
            self._insert(slots, k, labels[chunk], indices[chunk])

    def _meta(self, values: torch.Tensor | None, n: int) -> torch.Tensor:
        if values is None:
            return torch.full((n,), -1, dtype=torch.long, device=self.labels.device)
        return values.detach().to(self.labels.device, torch.long).reshape(n)

    def _free_slots(self, n: int) -> torch.Tensor:
        free = min(n, self.size - self.num_filled)
        return torch.arange(self.num_filled, self.num_filled + free, device=self.keys.device)

    def _plain_slots(self, n: int) -> torch.Tensor:
        """`n` slots, the free ones first (so are `_duel_slots`'): `_insert` counts on that order."""
        if self.policy == "fifo":  # while the memory fills, ptr is its fill level
            slots = (self._ptr + torch.arange(n, device=self.keys.device)) % self.size
            self._ptr = (self._ptr + n) % self.size
            self.ptr.fill_(self._ptr)
            return slots
        free = self._free_slots(n)
        rest = n - len(free)
        taken = torch.randperm(self.num_filled, generator=self.generator)[:rest].to(self.keys.device)
        return torch.cat([free, taken])

    def _duel_slots(self, n: int) -> torch.Tensor:
        free = self._free_slots(n)
        rest = n - len(free)
        if rest == 0:
            return free
        taken = torch.topk(self.scores[: self.num_filled], rest).indices
        return torch.cat([free, taken])

    def _count(self, counter: torch.Tensor, labels: torch.Tensor) -> None:
        """Add 1 to `counter` at each label in [0, len(counter)); others are skipped by a zero weight, not
        by a boolean mask, whose data-dependent size would sync."""
        if len(counter):
            valid = (labels >= 0) & (labels < len(counter))
            counter.index_add_(0, labels.clamp(0, len(counter) - 1), valid.long())

    def _insert(self, slots: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        """Write a block into `slots`, its free slots first (the rest evict filled ones)."""
        free = min(len(slots), self.size - self.num_filled)
        old = slots[free:]
        self._count(self.evicted, self.labels[old])
        self._count(self.inserted, labels)
        self.evicted_fresh += (self.born[old] == self.pushes).sum()
        self.born[slots] = self.pushes
        self.encoded[slots] = self.pushes
        if self.policy == "duel":
            self._update_scores(slots, keys, free)
        else:
            self.keys[slots] = keys
        self.labels[slots] = labels
        self.indices[slots] = indices
        self._filled += free
        self.filled.fill_(self._filled)

    def _count_replacements(self, slots: torch.Tensor, new_labels: torch.Tensor, new_indices: torch.Tensor) -> None:
        """Bookkeeping of a greedy push that wrote keys with `new_labels` into `slots` one after another
        (`greedy_replace` writes only keys and scores): each slot's label and index become its
        last writer's; per-class insertions and evictions (a slot written earlier in this push evicts
        that writer's label), same-push evictions, birth pushes."""
        m = len(slots)
        position = torch.arange(m, device=slots.device)
        order = torch.argsort(slots * m + position)  # by slot, then by position in the push
        by_slot = slots[order]
        earlier = torch.full_like(position, -1)  # the previous position that wrote the same slot
        earlier[order[1:]] = torch.where(by_slot[1:] == by_slot[:-1], order[:-1], -1)
        rewritten = earlier >= 0
        evicted = torch.where(rewritten, new_labels[earlier.clamp(min=0)], self.labels[slots])
        self._count(self.evicted, evicted)
        self._count(self.inserted, new_labels)
        self.evicted_fresh += (rewritten | (self.born[slots] == self.pushes)).sum()
        last = torch.full_like(self.labels, -1).scatter_reduce_(0, slots, position, "amax")
        written, writer = last >= 0, last.clamp(min=0)
        self.labels.copy_(torch.where(written, new_labels[writer], self.labels))
        self.indices.copy_(torch.where(written, new_indices[writer], self.indices))
        self.born[slots] = self.pushes
        self.encoded[slots] = self.pushes

    def _greedy(self, new: torch.Tensor) -> torch.Tensor:
        """`greedy_replace` of `new` into the full memory; with `cuda_graphs` on CUDA, the loop is captured
        once per push size (capture records the kernels without running them) and replayed: one launch
        per push instead of about 20 per key, the same kernels in the same order."""
        if not (self.cuda_graphs and new.is_cuda):
            return greedy_replace(self.keys, self.scores, new, self.temperature)
        signature = (new.shape, new.dtype, self.keys.data_ptr(), self.scores.data_ptr())
        if self._graph is None or self._graph[0] != signature:
            self._graph = None  # the old capture's pool is freed before the new one allocates
            static = new.clone()
            side = torch.cuda.Stream(new.device)  # warm-up (cuBLAS setup) on copies, as capture requires
            side.wait_stream(torch.cuda.current_stream(new.device))
            with torch.cuda.stream(side):
                greedy_replace(self.keys.clone(), self.scores.clone(), static[:1], self.temperature)
            torch.cuda.current_stream(new.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: a DataLoader's pin-memory thread may allocate while this thread captures
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                slots = greedy_replace(self.keys, self.scores, static, self.temperature)
            self._graph = (signature, graph, static, slots)
        _, graph, static, slots = self._graph
        static.copy_(new)
        graph.replay()
        return slots.clone()

    def _update_scores(self, slots: torch.Tensor, keys: torch.Tensor, free: int) -> None:
        """Replace `slots` (the first `free` of them empty, the rest filled) by `keys` and update every
        score incrementally (two matmuls)."""
        filled = self.num_filled
        old = slots[free:]
        if len(old):
            # Remove the evicted keys' contributions from every filled slot.
            self.scores[:filled] -= self.duplication(self.keys[:filled] @ self.keys[old].T).sum(1)
        self.keys[slots] = keys
        now = filled + free  # the free slots are the next ones in order
        p = self.duplication(self.keys[:now] @ keys.T)  # (now, B): p_dup(k, z_b)
        self.scores[:now] += p.sum(1)
        # New slots: recompute from scratch, excluding the self-pair p_dup(z_b, z_b).
        self.scores[slots] = p.sum(0) - p[slots, torch.arange(len(slots), device=p.device)]
