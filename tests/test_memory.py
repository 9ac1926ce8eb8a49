import math

import pytest
import torch
import torch.nn.functional as F

from duel.memory import ActiveMemory


def unit(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("batch_mode", ["greedy", "topk"])
def test_incremental_scores_match_full_recompute(batch_mode):
    mem = ActiveMemory(64, 16, policy="duel", temperature=0.2, batch_mode=batch_mode)
    for step in range(40):  # 40 x 24 keys: the memory fills, then every push evicts
        mem.push(unit(24, 16, seed=step))
        torch.testing.assert_close(mem.scores[: mem.num_filled], mem.full_scores(), rtol=1e-4, atol=1e-4)
    assert mem.num_filled == 64


def test_greedy_evicts_the_most_duplicated_key():
    mem = ActiveMemory(3, 2, policy="duel", temperature=0.5)
    a, near_a, b = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0]])
    mem.push(torch.stack([a, near_a, b]), labels=torch.tensor([0, 0, 1]), indices=torch.tensor([0, 1, 2]))
    # a and near_a duplicate each other; b is alone. near_a, which also leans towards b, scores highest.
    assert mem.scores[1] > mem.scores[0] > mem.scores[2]
    mem.push(torch.tensor([[-1.0, 0.0]]), labels=torch.tensor([2]), indices=torch.tensor([3]))
    assert mem.indices.tolist() == [0, 3, 2]  # near_a's slot, and only it, holds the new key


def test_duel_never_looks_at_labels_the_same_keys_with_permuted_labels_evict_the_same_slots():
    g = torch.Generator().manual_seed(5)
    stream = list(dominant_stream(steps=12, batch=24, dim=16))
    permuted = [labels[torch.randperm(len(labels), generator=g)] for _, labels in stream]
    assert any(not torch.equal(a, b) for a, b in zip(permuted, (labels for _, labels in stream), strict=True))
    for policy, batch_mode in [("fifo", "greedy"), ("random", "greedy"), ("duel", "greedy"), ("duel", "topk")]:
        memories = [ActiveMemory(48, 16, policy, 0.1, batch_mode, num_classes=10) for _ in range(2)]
        for step, ((keys, labels), other) in enumerate(zip(stream, permuted, strict=True)):
            indices = torch.arange(len(keys)) + step * len(keys)
            memories[0].push(keys, labels, indices)
            memories[1].push(keys, other, indices)
        a, b = memories
        assert torch.equal(a.indices, b.indices), (policy, batch_mode)
        assert torch.equal(a.keys, b.keys) and torch.equal(a.scores, b.scores), (policy, batch_mode)


def test_fifo_overwrites_the_oldest_slot():
    mem = ActiveMemory(4, 3, policy="fifo")
    mem.push(unit(3, 3), indices=torch.tensor([0, 1, 2]))
    mem.push(unit(3, 3, seed=1), indices=torch.tensor([3, 4, 5]))
    assert mem.indices.tolist() == [4, 5, 2, 3]
    assert int(mem.ptr) == 2 and mem.num_filled == 4


def test_random_policy_keeps_every_key_of_a_push_and_fills_first():
    torch.manual_seed(0)
    mem = ActiveMemory(8, 4, policy="random")
    mem.push(unit(5, 4), indices=torch.arange(5))
    assert mem.indices[:5].tolist() == list(range(5)) and mem.num_filled == 5
    mem.push(unit(6, 4, seed=1), indices=torch.arange(5, 11))
    assert set(range(5, 11)) <= set(mem.indices.tolist())  # no key of one push overwrote another


def test_class_entropy():
    mem = ActiveMemory(4, 2)
    assert mem.class_entropy(4) == 0.0  # empty
    mem.push(unit(4, 2), labels=torch.tensor([0, 1, 2, 3]))
    assert mem.class_entropy(4) == pytest.approx(1.0)
    mem.push(unit(4, 2), labels=torch.tensor([1, 1, 1, 1]))
    assert mem.class_entropy(4) == 0.0
    mem.push(unit(2, 2), labels=torch.tensor([0, -1]))  # -1 (unknown) is ignored
    p = torch.tensor([1 / 3, 2 / 3])
    assert mem.class_entropy(4) == pytest.approx(float(-(p * p.log()).sum() / math.log(4)))


@pytest.mark.parametrize("policy", ["fifo", "random", "duel"])
def test_state_dict_round_trip_restores_every_slot_array(policy):
    mem = ActiveMemory(16, 8, policy=policy, num_classes=3)
    mem.seed(7)
    for step in range(3):  # the memory fills and evicts: counters, birth pushes and draws all move
        mem.push(unit(9, 8, seed=step), labels=torch.arange(9) % 3, indices=torch.arange(9) + 9 * step)
    mem.rekey(mem.refresh_window(5), unit(5, 8, seed=4))
    clone = ActiveMemory(16, 8, policy=policy, num_classes=3)
    clone.load_state_dict(mem.state_dict())
    assert clone.state_dict().keys() == mem.state_dict().keys()
    for name, value in mem.state_dict().items():  # every buffer and the random generator's state
        assert torch.equal(clone.state_dict()[name], value), name
    for m in (mem, clone):  # the next pushes (random draws included) continue alike
        m.push(unit(9, 8, seed=3), labels=torch.arange(9) % 3, indices=torch.arange(27, 36))
    for name, value in mem.state_dict().items():
        assert torch.equal(clone.state_dict()[name], value), name


def dominant_stream(steps: int, batch: int, dim: int, seed: int = 0):
    """90% of samples from class 0; each class is a tight cluster around its own centre."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(10, dim, generator=g), dim=1)
    for _ in range(steps):
        labels = torch.where(torch.rand(batch, generator=g) < 0.9, 0, torch.randint(1, 10, (batch,), generator=g))
        keys = centres[labels] + 0.15 * torch.randn(batch, dim, generator=g) / math.sqrt(dim)
        yield keys, labels


@pytest.mark.parametrize("batch_mode", ["greedy", "topk"])
def test_duel_keeps_memory_closer_to_uniform_than_fifo(batch_mode):
    fifo = ActiveMemory(128, 32, policy="fifo")
    duel = ActiveMemory(128, 32, policy="duel", temperature=0.1, batch_mode=batch_mode)
    for keys, labels in dominant_stream(steps=30, batch=32, dim=32):
        fifo.push(keys, labels)
        duel.push(keys, labels)
    h_fifo, h_duel = fifo.class_entropy(10), duel.class_entropy(10)
    assert h_fifo < 0.5  # the stream's own imbalance
    assert h_duel > h_fifo + 0.3
    assert duel.class_histogram(10)[0] < fifo.class_histogram(10)[0] / 2


def test_rejects_unknown_policy_and_batch_mode():
    with pytest.raises(ValueError, match="policy"):
        ActiveMemory(4, 2, policy="lru")
    with pytest.raises(ValueError, match="batch_mode"):
        ActiveMemory(4, 2, batch_mode="all")


@pytest.mark.parametrize("batch_mode", ["greedy", "topk"])
def test_pushes_larger_than_a_block_are_scored_in_blocks(monkeypatch, batch_mode):
    import duel.memory

    monkeypatch.setattr(duel.memory, "BLOCK", 8)  # (K, 8) matrices at most
    mem = ActiveMemory(20, 4, policy="duel", batch_mode=batch_mode)
    mem.push(unit(50, 4), indices=torch.arange(50))
    assert mem.num_filled == 20
    torch.testing.assert_close(mem.scores, mem.full_scores(), rtol=1e-4, atol=1e-4)
    assert len(set(mem.indices.tolist())) == 20


def test_rekey_replaces_keys_and_rescores_from_scratch():
    mem = ActiveMemory(16, 8, policy="duel", temperature=0.2)
    mem.push(unit(12, 8), labels=torch.arange(12), indices=torch.arange(12))
    new = 3 * unit(12, 8, seed=5)  # not normalised: rekey normalises like push
    mem.rekey(torch.arange(12), new)
    torch.testing.assert_close(mem.valid_keys(), F.normalize(new, dim=1))
    torch.testing.assert_close(mem.scores[:12], mem.full_scores())
    assert mem.labels[:12].tolist() == list(range(12)) and mem.num_filled == 12


def test_a_rolling_window_reencodes_every_slot_within_its_bound_and_keeps_scores_exact():
    """K / R windows of R slots cover every filled slot; scores updated slot by slot equal a full recompute,
    and no key is older than ceil(K / R) pushes, while residence ages (`born`) are untouched."""
    size, window = 64, 16
    mem = ActiveMemory(size, 8, policy="duel", temperature=0.2)
    seen: list[int] = []
    for step in range(3 * size // window):
        mem.push(unit(24, 8, seed=step), indices=torch.arange(24) + 24 * step)
        born = mem.born.clone()
        slots = mem.refresh_window(window)
        assert len(slots) == window and len(set(slots.tolist())) == window
        seen += slots.tolist()
        mem.rekey(slots, unit(window, 8, seed=100 + step))
        torch.testing.assert_close(mem.scores[: mem.num_filled], mem.full_scores(), rtol=1e-4, atol=1e-4)
        assert torch.equal(mem.born, born) and (mem.encoded[slots] == mem.pushes).all()
        if step >= size // window:
            assert int((mem.pushes - mem.encoded).max()) < math.ceil(size / window)
    assert set(seen[-size:]) == set(range(size))  # the last K / R windows covered every slot
    assert mem.refresh_window(size).tolist() == list(range(size))  # a window of K: every slot, in order
