"""Data-parallel pretraining: torchrun with 2 CPU processes (gloo) on digits, against one process."""

import json
import subprocess
import sys

import pytest
import torch

from duel.distributed import World
from tests.project_copy import ROOT

# torchrun: two ranks of 2 threads each, not beside other torchruns
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("torchrun")]

WORKER = ROOT / "tests" / "ddp_worker.py"


def torchrun(nproc, *args, check=True):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    proc = subprocess.run([*command, str(WORKER), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert (proc.returncode == 0) == check, proc.stderr[-3000:]
    return proc


def results(out, ranks):
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def states(out, ranks):
    return [torch.load(out / f"state{r}.pt") for r in range(ranks)]


def test_a_rank_takes_its_block_of_each_global_batch():
    order = torch.arange(20)
    assert World(0, 2).shard(order, 4).tolist() == [0, 1, 2, 3, 8, 9, 10, 11]  # 16 of 20: two global batches
    assert World(1, 2).shard(order, 4).tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    assert World().shard(order, 8).tolist() == list(range(16))


@pytest.mark.parametrize(
    "method, options",
    [("dmoco", []), ("rmoco", []), ("dmoco_roll", ["--bn-splits", 4])],  # DUEL; random draws; re-encoding shares
)
def test_memories_are_identical_on_both_ranks_after_every_step(tmp_path, method, options):
    """dmoco_roll with shuffle-BN over 4 groups: 2 split BatchNorm groups per rank, keys across ranks."""
    torchrun(2, "train", method, tmp_path, *options)
    rank0, rank1 = results(tmp_path, 2)
    assert len(rank0["hashes"]) == 3 * (128 // 16) and rank0["hashes"] == rank1["hashes"]
    assert len(set(rank0["hashes"])) == len(rank0["hashes"])  # the memory changed at every step
    assert rank0["final"] == rank1["final"]  # weights, key encoder and memory alike
    assert rank0["losses"] == rank1["losses"]  # the global mean, reported by every rank


def test_shuffle_bn_across_ranks_computes_keys_on_a_shared_permutation_and_returns_each_rank_its_rows(tmp_path):
    torchrun(2, "shuffle", "-", tmp_path)
    ranks = results(tmp_path, 2)
    for rank in ranks:  # every rank gets its own rows' results back, in its order
        assert rank["rowwise"] == [[2 * v for v in row] for row in rank["rows"]]
    computed_by = [row[0] for rank in ranks for row in rank["computed_by"]]
    assert sorted(computed_by) == [0] * 6 + [1] * 6  # each rank computed half of the global batch
    assert computed_by[:6] != [0] * 6  # ... drawn across the ranks (rank 0's permutation), not its own rows


def test_ranks_whose_memories_disagree_stop_the_run(tmp_path):
    # Step 22 of 24: the memory is checked after the last step (and every 50 steps).
    proc = torchrun(2, "train", "dmoco", tmp_path, "--diverge-at", 22, check=False)
    assert "differs between rank" in proc.stderr and "the ranks' states diverged" in proc.stderr


def test_a_killed_two_rank_run_resumes_to_the_uninterrupted_result(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    torchrun(2, "train", "dmoco", full)
    proc = torchrun(2, "train", "dmoco", cut, "--die-at", 12, check=False)  # rank 1 SIGKILLed in epoch 2
    assert "Signals.SIGKILL" in proc.stderr or "SIGKILL" in proc.stderr
    assert torch.load(cut / "last.pt", weights_only=False)["epoch"] == 1
    # Another number of ranks would shard the data otherwise: refused in one line, the checkpoint kept.
    one = [sys.executable, str(WORKER), "train", "dmoco", cut, "--resume"]
    alone = subprocess.run(one, capture_output=True, text=True, timeout=300)
    assert alone.returncode != 0 and "was written with world_size=2, not 1; delete it or run without" in alone.stderr
    torchrun(2, "train", "dmoco", cut, "--resume")
    assert results(cut, 2)[0]["losses"] == results(full, 2)[0]["losses"]
    resumed, uninterrupted = states(cut, 1)[0], states(full, 1)[0]
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key


@pytest.mark.parametrize("method", ["dmoco", "dsimclr"])  # memory negatives; batch and memory negatives
def test_two_ranks_compute_what_one_process_computes_on_the_global_batch(tmp_path, method):
    """Same global batches and views: the losses, the weights after each SGD step and the memory agree
    (DDP's gradient averaging, SimCLR's negatives gathered across ranks, memory pushes in rank order)."""
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, str(WORKER), "steps", method, one], check=True, timeout=300)
    torchrun(2, "steps", method, two)
    single, (rank0, rank1) = results(one, 1)[0], results(two, 2)
    assert rank0["losses"] == rank1["losses"]
    torch.testing.assert_close(torch.tensor(rank0["losses"]), torch.tensor(single["losses"]))
    reference, (state0, state1) = states(one, 1)[0], states(two, 2)
    for key, value in reference.items():
        assert torch.equal(state0[key], state1[key]), key
        torch.testing.assert_close(state0[key], value, msg=key)
