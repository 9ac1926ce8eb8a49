"""Label-aware diagnostics of an active memory (DESIGN §2.4).

Labels never drive a replacement policy; they explain one. For a memory state
this module answers three questions:

- which classes enter and leave the memory (the memory's per-class insertion
  and eviction counters, read per epoch), how long its images have stayed
  (residence age) and how many pushes ago their keys were computed (staleness:
  the same, unless a method re-encodes the memory), and how often an eviction
  overwrites a key that the same push had just inserted;
- where a key's DUEL score comes from: the score of key i is a sum of
  p_dup(i, j) over the other keys j, split here by who j is: another key of the
  same image (same dataset index, e.g. the other augmented view), another image
  of the same class, or an image of another class;
- how similar keys are: histograms of the cosine similarity of ordered key
  pairs (i, j), i != j, by the same three relations, seen from head-class keys
  and from tail-class keys;
- how far the encoder has moved from the memory's keys: the cosine similarity of
  each stored key to the current encoder's key of the same image (unaugmented,
  eval mode), averaged over keys grouped by staleness. Fresh keys give the floor
  that augmentation and BatchNorm mode alone leave; lower similarity of older keys
  is encoder drift, what DUEL's scores then compare against new keys;
- whether the score could single out the head at another tau_d: for each tau_d
  of a grid, the tail risk, the tail classes' share of the 10 % highest-scoring
  keys divided by their share of the memory. At 1 a DUEL eviction hits tail
  keys as often as a random one; below 1 the score protects the tail.

Head classes are those with at least half the training images of the largest
class; the others are the tail (`head_classes`). Unknown labels (-1) count as
another class, and their keys belong to neither group.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from duel.memory import BLOCK, ActiveMemory

RELATIONS = ("same_image", "same_class", "other_class")
GROUPS = ("head", "tail")
SIMILARITY_BINS = 40  # equal-width bins over cosine similarity [-1, 1]
TAU_GRID = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01)  # tau_d values the tail risk is computed at
TOP_FRACTION = 0.1  # the highest-scoring keys, those DUEL would evict next
STALENESS_BINS = (0, 2, 8, 32, 128)  # lower edges, in pushes, of the key-drift groups


def head_classes(class_counts: list[int]) -> torch.Tensor:
    """A bool per class: at least half as many training images as the largest class."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    return counts >= counts.max() / 2


def _relations(labels: torch.Tensor, indices: torch.Tensor, rows: slice) -> dict[str, torch.Tensor]:
    """Boolean (rows, K) masks of the three relations between keys `rows` and every key, self-pairs excluded."""
    n = len(labels)
    same_image = (indices[rows, None] == indices[None]) & (indices[rows, None] >= 0)
    same_class = (labels[rows, None] == labels[None]) & (labels[rows, None] >= 0) & ~same_image
    not_self = torch.ones_like(same_image)
    not_self[torch.arange(same_image.shape[0]), torch.arange(n)[rows]] = False
    same_image &= not_self
    return {"same_image": same_image, "same_class": same_class, "other_class": not_self & ~same_image & ~same_class}


def score_decomposition(
    keys: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, temperature: float
) -> torch.Tensor:
    """(K, 3): each key's DUEL score split into its same-image, same-class and other-class parts.

    The three columns sum to the key's full score, sum_{j != i} exp((m_i . m_j - 1) / tau_d).
    """
    parts = torch.zeros(len(keys), len(RELATIONS), dtype=keys.dtype, device=keys.device)
    for start in range(0, len(keys), BLOCK):
        rows = slice(start, start + BLOCK)
        p = torch.exp((keys[rows] @ keys.T - 1.0) / temperature)
        for r, mask in enumerate(_relations(labels, indices, rows).values()):
            parts[rows, r] = (p * mask).sum(1)
    return parts


def similarity_histograms(
    keys: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, head: torch.Tensor
) -> dict[str, list[int]]:
    """Counts of ordered pair similarities per `<group>/<relation>`, over SIMILARITY_BINS bins of [-1, 1]."""
    group_of = {"head": _in_group(labels, head), "tail": _in_group(labels, ~head)}
    counts = {f"{g}/{r}": torch.zeros(SIMILARITY_BINS, dtype=torch.long) for g in GROUPS for r in RELATIONS}
    for start in range(0, len(keys), BLOCK):
        rows = slice(start, start + BLOCK)
        sims = (keys[rows] @ keys.T).clamp_(-1, 1)
        bins = ((sims + 1) / 2 * SIMILARITY_BINS).long().clamp_(max=SIMILARITY_BINS - 1)
        for relation, mask in _relations(labels, indices, rows).items():
            for group, members in group_of.items():
                chosen = bins[mask & members[rows, None]]
                counts[f"{group}/{relation}"] += torch.bincount(chosen, minlength=SIMILARITY_BINS).cpu()
    return {name: c.tolist() for name, c in counts.items()}


def tail_risk(keys: torch.Tensor, labels: torch.Tensor, tail: torch.Tensor, taus=TAU_GRID) -> dict[float, float]:
    """Per tau_d: the share of tail keys among the TOP_FRACTION highest DUEL scores over their share of all keys."""
    members = _in_group(labels, tail)
    if not members.any() or len(keys) < 2:
        return {tau: float("nan") for tau in taus}
    scores = torch.zeros(len(taus), len(keys), dtype=keys.dtype, device=keys.device)
    for start in range(0, len(keys), BLOCK):
        rows = slice(start, start + BLOCK)
        sims = keys[rows] @ keys.T
        for t, tau in enumerate(taus):
            scores[t, rows] = torch.exp((sims - 1.0) / tau).sum(1) - 1.0  # minus the self pair
    top = max(1, round(TOP_FRACTION * len(keys)))
    base = members.float().mean()
    return {tau: float(members[s.topk(top).indices].float().mean() / base) for tau, s in zip(taus, scores, strict=True)}


def _in_group(labels: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    known = (labels >= 0) & (labels < len(group))
    member = torch.zeros_like(known)
    member[known] = group.to(labels.device)[labels[known]]
    return member


def key_drift(memory: ActiveMemory, current: torch.Tensor) -> dict[str, float]:
    """Mean cosine similarity of stored keys to `current` (the current encoder's keys of the same
    images, slot by slot), overall and per staleness group `key_drift/<lo>-<hi>` in pushes (empty groups
    are left out). Slots whose current key is NaN (no image behind them) are left out."""
    sims = (memory.valid_keys().float() * torch.nn.functional.normalize(current.float(), dim=1)).sum(1)
    staleness = memory.pushes - memory.encoded[: memory.num_filled]
    known = ~sims.isnan()
    out = {"key_similarity_now": float(sims[known].mean())}
    for lo, hi in itertools.pairwise([*STALENESS_BINS, math.inf]):
        members = (staleness >= lo) & (staleness < hi) & known
        if members.any():
            out[f"key_drift/{lo}-{hi - 1 if hi < math.inf else 'inf'}"] = float(sims[members].mean())
    return out


def memory_diagnostics(
    memory: ActiveMemory, class_counts: list[int], current_keys: torch.Tensor | None = None
) -> dict[str, Any]:
    """Everything above for one memory state, as a JSON-ready dict (the key drift with `current_keys`).

    `histogram`, `inserted`, `evicted`: per class (the counters are cumulative);
    `score/<group>/<relation>`: the mean of that part of the DUEL score (at the
    memory's tau_d) over the group's keys; `similarity/<group>/<relation>`: pair counts per bin.
    """
    num_classes = len(class_counts)
    head = head_classes(class_counts)
    keys = memory.valid_keys().float()
    labels = memory.labels[: memory.num_filled]
    indices = memory.indices[: memory.num_filled]
    parts = score_decomposition(keys, labels, indices, memory.temperature)
    evictions = int(memory.evicted.sum()) if num_classes else 0
    out: dict[str, Any] = {
        "head_classes": head.nonzero().flatten().tolist(),
        "histogram": memory.class_histogram(num_classes).tolist(),
        "inserted": memory.inserted.tolist(),
        "evicted": memory.evicted.tolist(),
        # Of all evictions so far, the share that overwrote a key of the same push; the keys' mean age in pushes.
        "fresh_eviction_share": int(memory.evicted_fresh) / evictions if evictions else float("nan"),
        "memory_age": float((memory.pushes - memory.born[: memory.num_filled]).float().mean()),
        # Pushes since each key was computed by the encoder: its residence age, unless it was re-encoded.
        "key_staleness": float((memory.pushes - memory.encoded[: memory.num_filled]).float().mean()),
    }
    for group, members in (("head", _in_group(labels, head)), ("tail", _in_group(labels, ~head))):
        for r, relation in enumerate(RELATIONS):
            out[f"score/{group}/{relation}"] = float(parts[members, r].mean()) if members.any() else float("nan")
    for name, counts in similarity_histograms(keys, labels, indices, head).items():
        out[f"similarity/{name}"] = counts
    for tau, risk in tail_risk(keys, labels, ~head).items():
        out[f"tail_risk/{tau:g}"] = risk
    if current_keys is not None:
        out |= key_drift(memory, current_keys)
    return out


def replay_stream(
    keys: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    memory: ActiveMemory,
    batch_size: int,
    epochs: int = 1,
    seed: int = 0,
) -> list[float]:
    """Stream the keys of a held-still encoder through `memory` in shuffled batches, as training would
    push them; returns the memory's class entropy after each epoch. `keys` is an (N, d) tensor, or a
    function from a batch's indices to its keys (an encoder in training mode, whose BatchNorm statistics
    depend on the batch).

    Separates the policy from training: with the encoder held still, does the policy, in this space,
    keep a memory more uniform over classes than the stream?
    """
    encode = keys if callable(keys) else keys.__getitem__
    order = torch.Generator().manual_seed(seed)
    num_classes = int(labels.max()) + 1
    entropy = []
    for _ in range(epochs):
        perm = torch.randperm(len(labels), generator=order)
        for start in range(0, len(perm) - batch_size + 1, batch_size):
            chunk = perm[start : start + batch_size]
            memory.push(encode(chunk), labels[chunk], chunk)
        entropy.append(memory.class_entropy(num_classes))
    return entropy


def summary_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of a diagnostics record worth a curve: head shares of memory and evictions, score parts."""
    head = record["head_classes"]

    def head_share(values: list[int]) -> float:
        total = sum(values)
        return sum(values[c] for c in head) / total if total else float("nan")

    out = {
        "memory_head_share": head_share(record["histogram"]),
        "inserted_head_share": head_share(record["inserted"]),
        "evicted_head_share": head_share(record["evicted"]),
    }
    out.update({k: record[k] for k in ("fresh_eviction_share", "memory_age", "key_staleness")})
    out.update({k: v for k, v in record.items() if k.startswith(("score/", "tail_risk/", "key_drift/"))})
    if "key_similarity_now" in record:
        out["key_similarity_now"] = record["key_similarity_now"]
    return {k: v for k, v in out.items() if v == v}  # NaN (an empty group) is left out
