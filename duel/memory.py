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
"""

from __future__ import annotations

import math

import torch
from torch import nn

POLICIES = ("fifo", "random", "duel")
BATCH_MODES = ("greedy", "topk")
BLOCK = 4096  # most keys scored as one block: a (K, BLOCK) matrix bounds what a push allocates


def class_entropy(labels: torch.Tensor, num_classes: int) -> float:
    """Normalised entropy in [0, 1] of a set of labels over `num_classes` classes (-1 ignored)."""
    labels = labels[labels >= 0]
    if labels.numel() == 0 or num_classes < 2:
        return 0.0
    p = torch.bincount(labels, minlength=num_classes).double() / labels.numel()
    p = p[p > 0]
    return float(-(p * p.log()).sum() / math.log(num_classes))


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

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def get_extra_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    # ------------------------------------------------------------------ views
    @property
    def num_filled(self) -> int:
        return int(self.filled)

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
        return class_entropy(self.labels[: self.num_filled], num_classes)

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
        start = int(self.window_ptr) % filled  # the memory may have grown since the last window
        self.window_ptr.fill_((start + n) % filled)
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
                self._update_scores(slots, keys)

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
        if self.policy == "duel" and self.batch_mode == "greedy":
            # Filling empty slots involves no choice, so it is done in blocks.
            free = min(n, self.size - self.num_filled)
            for start in range(0, free, BLOCK):
                end = min(start + BLOCK, free)
                self._insert(self._free_slots(end - start), keys[start:end], labels[start:end], indices[start:end])
            if free < n:
                # The diagnostics counters are updated once per push from plain Python values: per-key
                # tensor bookkeeping would double the cost of this loop on small memories.
                labels_before, born_before = self.labels.tolist(), self.born.tolist()
                replaced = [self._replace_most_duplicated(keys[i], labels[i], indices[i]) for i in range(free, n)]
                self._count_replacements(replaced, labels_before, born_before, labels[free:].tolist())
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
        if self.policy == "fifo":
            slots = (int(self.ptr) + torch.arange(n, device=self.keys.device)) % self.size
            self.ptr.fill_((int(self.ptr) + n) % self.size)
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
        if len(counter):
            labels = labels[(labels >= 0) & (labels < len(counter))]
            counter.index_add_(0, labels, torch.ones_like(labels))

    def _insert(self, slots: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        old = slots[slots < self.num_filled]
        self._count(self.evicted, self.labels[old])
        self._count(self.inserted, labels)
        self.evicted_fresh += (self.born[old] == self.pushes).sum()
        self.born[slots] = self.pushes
        self.encoded[slots] = self.pushes
        if self.policy == "duel":
            self._update_scores(slots, keys)
        else:
            self.keys[slots] = keys
        self.labels[slots] = labels
        self.indices[slots] = indices
        self.filled.fill_(min(self.size, self.num_filled + len(slots)))

    def _count_replacements(
        self, slots: list[int], labels_before: list[int], born_before: list[int], new_labels: list[int]
    ) -> None:
        """Diagnostics of a greedy push that wrote `new_labels` into `slots` one after another: per-class
        insertions and evictions, same-push evictions, the slots' birth push."""
        pushes = int(self.pushes)
        writer: dict[int, int] = {}  # slot -> position in this push of the key now in it
        evicted, fresh = [], 0
        for position, slot in enumerate(slots):
            if slot in writer:
                evicted.append(new_labels[writer[slot]])
            else:
                evicted.append(labels_before[slot])
            fresh += slot in writer or born_before[slot] == pushes  # inserted earlier in this push
            writer[slot] = position
        self._count(self.evicted, torch.tensor(evicted, dtype=torch.long, device=self.labels.device))
        self._count(self.inserted, torch.tensor(new_labels, dtype=torch.long, device=self.labels.device))
        self.evicted_fresh += fresh
        written = torch.tensor(slots, device=self.born.device)
        self.born[written] = pushes
        self.encoded[written] = pushes

    def _replace_most_duplicated(self, key: torch.Tensor, label: torch.Tensor, index: torch.Tensor) -> int:
        """Greedy DUEL step on a full memory: one (K, d) x (d, 2) product, in place; returns the slot."""
        j = int(self.scores.argmax())
        p = self.keys @ torch.stack([self.keys[j], key], 1)
        p = p.sub_(1).div_(self.temperature).exp_()  # p_dup(k, evicted), p_dup(k, z)
        self.scores.add_(p[:, 1]).sub_(p[:, 0])
        self.scores[j] = p[:, 1].sum() - p[j, 1]  # p[j, 1] pairs z with the evicted key, not a neighbour
        self.keys[j] = key
        self.labels[j] = label
        self.indices[j] = index
        return j

    def _update_scores(self, slots: torch.Tensor, keys: torch.Tensor) -> None:
        """Replace `slots` by `keys` and update every score incrementally (two matmuls)."""
        filled = self.num_filled
        old = slots[slots < filled]
        if len(old):
            # Remove the evicted keys' contributions from every filled slot.
            self.scores[:filled] -= self.duplication(self.keys[:filled] @ self.keys[old].T).sum(1)
        self.keys[slots] = keys
        now = max(filled, int(slots.max()) + 1)
        p = self.duplication(self.keys[:now] @ keys.T)  # (now, B): p_dup(k, z_b)
        self.scores[:now] += p.sum(1)
        # New slots: recompute from scratch, excluding the self-pair p_dup(z_b, z_b).
        self.scores[slots] = p.sum(0) - p[slots, torch.arange(len(slots), device=p.device)]
