import math
import re

import pytest
import torch
import torch.nn.functional as F

from duel.diagnostics import (
    SIMILARITY_BINS,
    head_classes,
    memory_diagnostics,
    replay_stream,
    score_decomposition,
    similarity_histograms,
    summary_metrics,
    tail_risk,
)
from duel.memory import ActiveMemory


def two_view_stream(tau: float) -> tuple[ActiveMemory, torch.Tensor]:
    """8 images with orthogonal keys, each pushed as two identical views; images 0-3 class 0, 4-7 class 1."""
    mem = ActiveMemory(16, 8, policy="fifo", temperature=tau, num_classes=2)
    images = torch.eye(8)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    mem.push(torch.cat([images, images]), labels.repeat(2), torch.arange(8).repeat(2))
    return mem, labels


def test_exact_duplicate_views_are_attributed_to_the_same_image():
    tau = 0.2
    mem, _ = two_view_stream(tau)
    parts = score_decomposition(mem.valid_keys(), mem.labels, mem.indices, tau)
    far = math.exp(-1 / tau)  # p_dup of two orthogonal keys
    # Each key: its other view (p_dup = 1), 3 other images of its class x 2 views, 4 of the other class x 2.
    expected = torch.tensor([1.0, 6 * far, 8 * far]).expand(16, 3)
    torch.testing.assert_close(parts, expected)
    torch.testing.assert_close(parts.sum(1), mem.full_scores())


def test_decomposition_sums_to_the_scores_of_a_trained_like_memory():
    mem = ActiveMemory(64, 16, policy="duel", temperature=0.1, num_classes=4)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        z = F.normalize(torch.randn(12, 16, generator=g), dim=1)
        idx = torch.randint(0, 30, (12,), generator=g)
        mem.push(torch.cat([z, z + 0.05 * torch.randn(12, 16, generator=g)]), (idx % 4).repeat(2), idx.repeat(2))
    n = mem.num_filled
    parts = score_decomposition(mem.valid_keys(), mem.labels[:n], mem.indices[:n], 0.1)
    torch.testing.assert_close(parts.sum(1), mem.scores[:n], rtol=1e-4, atol=1e-4)
    assert (parts >= 0).all() and (parts[:, 0] > 0).any()


def test_similarity_histograms_count_every_ordered_pair_in_its_relation_and_group():
    mem, _ = two_view_stream(0.1)
    head = head_classes([10, 1])  # class 0 is the head
    hist = similarity_histograms(mem.valid_keys(), mem.labels, mem.indices, head)
    top, zero = SIMILARITY_BINS - 1, SIMILARITY_BINS // 2  # similarity 1 and 0
    for group in ("head", "tail"):  # 8 keys in each group
        assert hist[f"{group}/same_image"][top] == sum(hist[f"{group}/same_image"]) == 8
        assert hist[f"{group}/same_class"][zero] == sum(hist[f"{group}/same_class"]) == 8 * 6
        assert hist[f"{group}/other_class"][zero] == sum(hist[f"{group}/other_class"]) == 8 * 8


def test_head_classes_are_those_with_half_the_largest_count():
    assert head_classes([5000, 2997, 1796, 50]).tolist() == [True, True, False, False]
    assert head_classes([10, 10]).all()


@pytest.mark.parametrize(
    ("policy", "batch_mode"), [("fifo", "greedy"), ("random", "greedy"), ("duel", "greedy"), ("duel", "topk")]
)
def test_insertion_and_eviction_counts_add_up_to_the_pushes(policy, batch_mode):
    mem = ActiveMemory(40, 8, policy=policy, batch_mode=batch_mode, num_classes=3)
    g = torch.Generator().manual_seed(1)
    pushed = torch.zeros(3, dtype=torch.long)
    for _ in range(12):
        labels = torch.randint(0, 3, (16,), generator=g)
        mem.push(torch.randn(16, 8, generator=g), labels)
        pushed += torch.bincount(labels, minlength=3)
    assert torch.equal(mem.inserted, pushed)
    assert int(mem.evicted.sum()) == 12 * 16 - 40  # every push past the first 40 keys evicts one
    assert torch.equal(mem.inserted - mem.evicted, mem.class_histogram(3))


def test_memory_diagnostics_record_and_its_summary():
    mem, _ = two_view_stream(0.2)
    mem.push(torch.eye(8)[:4], torch.zeros(4, dtype=torch.long), torch.arange(100, 104))  # evicts 4 keys of class 0
    record = memory_diagnostics(mem, [10, 1])
    assert record["head_classes"] == [0]
    assert record["inserted"] == [12, 8] and record["evicted"] == [4, 0] and record["histogram"] == [8, 8]
    summary = summary_metrics(record)
    assert summary["memory_head_share"] == 0.5 and summary["evicted_head_share"] == 1.0
    assert summary["inserted_head_share"] == pytest.approx(12 / 20)
    # The re-pushed class-0 keys are exact copies under new indices: a same-class duplicate, not a same-image one.
    far = math.exp(-1 / 0.2)
    assert summary["score/head/same_image"] == 0.0
    assert summary["score/head/same_class"] == pytest.approx(1 + 6 * far)
    assert summary["score/tail/same_image"] == pytest.approx(1.0)


def test_tail_risk_is_low_when_the_head_is_dense_and_one_when_classes_look_alike():
    g = torch.Generator().manual_seed(0)
    centre = F.normalize(torch.randn(1, 16, generator=g), dim=1)
    head = F.normalize(centre + 0.05 * torch.randn(90, 16, generator=g), dim=1)  # a tight head cluster
    tail = F.normalize(torch.randn(10, 16, generator=g), dim=1)  # tail keys spread out
    labels = torch.tensor([0] * 90 + [1] * 10)
    is_tail = torch.tensor([False, True])
    risk = tail_risk(torch.cat([head, tail]), labels, is_tail, taus=(0.1,))
    assert risk[0.1] == 0.0  # the 10 highest scores are all head keys
    # Labels independent of the keys: the top scores hold tail keys at about their base rate.
    alike = F.normalize(torch.randn(2000, 16, generator=g), dim=1)
    mixed = tail_risk(alike, (torch.rand(2000, generator=g) < 0.1).long(), is_tail, taus=(0.1, 0.5))
    assert all(0.6 < r < 1.4 for r in mixed.values()), mixed
    assert math.isnan(tail_risk(head, torch.zeros(90, dtype=torch.long), is_tail)[0.1])  # no tail key: undefined


def test_fresh_evictions_count_keys_overwritten_by_their_own_push():
    duel = ActiveMemory(4, 4, policy="duel", temperature=0.1, num_classes=1)
    fifo = ActiveMemory(4, 4, policy="fifo", num_classes=1)
    for mem in (duel, fifo):
        mem.push(torch.eye(4), torch.zeros(4))
        mem.push(torch.eye(4)[:1].repeat(3, 1), torch.zeros(3))  # three copies of the first key
    # DUEL: all scores tie (orthogonal keys), and ties go to the first slot, so every copy lands in
    # slot 0, overwriting the copy the same push put there before it.
    assert int(duel.evicted_fresh) == 2 and duel.born.tolist() == [2, 1, 1, 1]
    assert int(fifo.evicted_fresh) == 0 and fifo.born.tolist() == [2, 2, 2, 1]
    record = memory_diagnostics(duel, [7])
    assert record["fresh_eviction_share"] == pytest.approx(2 / 3) and record["memory_age"] == pytest.approx(0.75)


def test_key_drift_groups_the_similarity_to_current_keys_by_staleness():
    mem = ActiveMemory(4, 4, policy="fifo")
    mem.push(torch.eye(4))  # push 1
    mem.pushes += 9  # nine pushes later, slots 2 and 3 are re-encoded (to the same keys)
    mem.rekey(torch.tensor([2, 3]), torch.eye(4)[2:])
    current = torch.stack([-torch.eye(4)[0], torch.eye(4)[3], torch.eye(4)[0], 2 * torch.eye(4)[3]])
    record = memory_diagnostics(mem, [1], current)
    assert (mem.pushes - mem.encoded).tolist() == [9, 9, 0, 0]
    # Stale slots 0, 1: opposite and orthogonal to today's keys; fresh slots 2, 3: orthogonal and equal.
    assert record["key_drift/8-31"] == pytest.approx(-0.5) and record["key_drift/0-1"] == pytest.approx(0.5)
    assert record["key_similarity_now"] == pytest.approx(0.0)
    assert not any(k.startswith("key_drift/") for k in memory_diagnostics(mem, [1]))  # no current keys: none
    mem.pushes += 200  # every key 128 or more pushes old: the last group
    record = memory_diagnostics(mem, [1], current)
    assert set(k for k in record if k.startswith("key_drift/")) == {"key_drift/128-inf"}
    # Every scalar is an MLflow metric name (letters, digits, _ - . space : / only).
    assert all(re.fullmatch(r"[\w\-. :/]+", name) for name in summary_metrics(record)), list(summary_metrics(record))


def test_replay_shows_duel_balancing_separated_classes_but_not_class_free_keys():
    """Fixed keys streamed through a memory: DUEL evens out the classes only where they form clusters."""
    g = torch.Generator().manual_seed(0)
    counts = [900, 25, 25, 25, 25]  # one dominant class
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    centres = F.normalize(torch.randn(5, 32, generator=g), dim=1)
    clustered = F.normalize(centres[labels] + 0.3 * torch.randn(len(labels), 32, generator=g), dim=1)
    scattered = F.normalize(torch.randn(len(labels), 32, generator=g), dim=1)  # no class structure

    def final_entropy(keys: torch.Tensor, policy: str) -> float:
        return replay_stream(keys, labels, ActiveMemory(200, 32, policy, temperature=0.1), 50, epochs=3)[-1]

    fifo = final_entropy(clustered, "fifo")
    assert final_entropy(clustered, "duel") > fifo + 0.3  # the head cluster is thinned out
    assert final_entropy(scattered, "duel") < final_entropy(scattered, "fifo") + 0.05  # no gain without clusters
