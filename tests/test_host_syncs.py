"""No training step reads a device value on the host except where named below (on a GPU each such read
waits for all queued work). Counted on the CPU by benchmarks/host_syncs.py's dispatch mode, per call site."""

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from host_syncs import counted
from train_step import ours

from duel.config import AugmentConfig, PretrainConfig, RuntimeConfig
from duel.data.augment import ssl_augmentation
from duel.memory import ActiveMemory
from duel.methods import METHODS, DataInfo, build_method

# The documented exceptions: call site -> why it reads the host, and how often per step at most.
ALLOWED = {
    # kornia draws its random parameters, then reads some of them on the host (crop sizes, the order
    # of the colour jitter's operations): a fixed number per augmentation call, whatever the batch.
    "kornia/geometry/transform/crop2d.py": 1,
    "kornia/augmentation/_2d/intensity/color_jiggle.py": 5,
    # BCL's RandAugment reads its per-image magnitudes and probabilities once per call, and lists the
    # host generator's draws (operation, applied, sign: host tensors, no device wait) once per round.
    "duel/data/augment.py": 5,
    # The re-encoding methods load the window's images by dataset index from host storage: one read of
    # the window's indices (the rest are host-side lookups of host tensors).
    "duel/data/datasets.py": 5,
}
PER = {"duel/data/datasets.py": "step"}  # else: per augmentation call
B = 8


def allowed(site: str, augment_calls: int) -> int:
    per = PER.get(site)
    return ALLOWED[site] * (1 if per == "step" else augment_calls)


@pytest.mark.parametrize(
    "runtime, batch_mode",
    [(RuntimeConfig(), "greedy"), (RuntimeConfig(precision="bf16", channels_last=True), "topk")],
    ids=["fp32-greedy", "bf16-channels_last-topk"],
)
def test_no_training_step_syncs_outside_the_named_exceptions(runtime, batch_mode):
    base = PretrainConfig(backbone="small_cnn", batch_size=B, proj_dim=16)
    cfg = replace(base, memory=replace(base.memory, size=32, batch_mode=batch_mode))
    images = torch.randint(0, 256, (B, 3, 16, 16), dtype=torch.uint8)
    augment = ssl_augmentation(cfg.augment, 16, 3, [0.5] * 3, [0.25] * 3)
    for name in METHODS:
        step = ours(name, cfg, runtime, images, augment)
        step()  # the memory is full from the start: every push evicts
        with counted() as (mode, _):
            step()
        window = min(build_method(name, cfg, DataInfo(3, B)).refresh_size(), cfg.memory.size)
        calls = 2 + math.ceil(window / B)  # two views, and the re-encoded window's batches
        unexpected = {site: n for site, n in mode.sites.items() if site not in ALLOWED or n > allowed(site, calls)}
        assert not unexpected, f"{name}: host syncs at {unexpected}"


def test_the_counter_sees_a_host_read_in_a_push(monkeypatch):
    """The test above can fail: a push that reads its fill level on the host is counted, at the line that
    reads it (here this file's)."""
    memory = ActiveMemory(16, 4, "fifo")
    memory.push(torch.randn(16, 4))
    monkeypatch.setattr(ActiveMemory, "num_filled", property(lambda self: int(self.filled)))
    with counted() as (mode, _):
        memory.push(torch.randn(4, 4))
    assert mode.sites[__file__] > 0


@pytest.mark.parametrize("size, n", [(64, 24), (40, 100)])
def test_greedy_push_equals_the_definition_key_by_key(size, n):
    """Exact greedy DUEL: each key in turn evicts the slot whose score, recomputed from scratch, is the
    highest. The incremental, sync-free push gives the same slots and the same scores (float tolerance)."""
    g = torch.Generator().manual_seed(3)
    memory = ActiveMemory(size, 8, "duel", 0.2, "greedy", num_classes=4)
    memory.push(torch.randn(size, 8, generator=g), labels=torch.randint(0, 4, (size,), generator=g))
    for step in range(3):
        keys = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)
        keys[: n // 2] = torch.nn.functional.normalize(keys[0] + 0.2 * keys[: n // 2], dim=1)  # a dense head
        labels = torch.randint(0, 4, (n,), generator=g)
        reference, indices = memory.keys.clone(), memory.indices.clone()
        for i, key in enumerate(keys):
            p = torch.exp((reference @ reference.T - 1) / 0.2)
            j = int((p.sum(1) - p.diagonal()).argmax())
            reference[j], indices[j] = key, 1000 * step + i
        memory.push(keys, labels, 1000 * step + torch.arange(n))
        assert torch.equal(memory.indices, indices)
        torch.testing.assert_close(memory.keys, reference)
        torch.testing.assert_close(memory.scores, memory.full_scores(), rtol=1e-4, atol=1e-4)


def test_the_gpu_profiles_augmentation_launches_as_many_kernels_for_any_batch():
    """`cropping_mode: resample` (the GPU profiles) warps the batch at once; kornia's default crops image by
    image, so its op count grows with the batch (and it reads the crop sizes on the host)."""
    ops = {}
    for mode in ("slice", "resample"):
        cfg = replace(AugmentConfig(), cropping_mode=mode)
        augment = ssl_augmentation(cfg, 16, 3, [0.5] * 3, [0.25] * 3)
        for batch in (8, 64):
            with counted() as (counter, _):
                augment(torch.rand(batch, 3, 16, 16))
            ops[mode, batch] = sum(counter.ops.values()), counter.sites["kornia/geometry/transform/crop2d.py"]
    assert ops["resample", 8] == ops["resample", 64] and ops["resample", 8][1] == 0
    assert ops["slice", 64][0] > ops["slice", 8][0] + 100
