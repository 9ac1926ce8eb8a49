import os

import numpy as np
import pytest
import torch

from duel.data.sources import ImageSet, SourceData
from duel.validation import parse_config


def pytest_configure(config):
    """A share of the cores per test worker: pytest-xdist runs one worker per core, and each worker's stage,
    queue and torchrun processes would otherwise run as many threads as there are cores. Oversubscribed,
    two concurrent digits pretrain stages took 39-97 s instead of 15 s on the 2-core machine."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # xdist's controller runs no test, and its workers inherit its environment: theirs to set
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """The e2e study's tests first: they run in order on one worker, the suite's longest chain, one stage
    process at a time. The rest keep their order, which spreads the tests that start several processes
    (queue workers, torchrun ranks, tracking servers) among light ones: with all slow tests first, they ran
    beside each other and slowed each other down (seen in a CI run on the 2-core machine)."""
    items.sort(key=lambda item: "e2e_study" not in {m.args[0] for m in item.iter_markers("xdist_group")})


@pytest.fixture
def tiny_source() -> SourceData:
    """40 random 8x8 grey images per class for 3 classes; a test split of 10 per class."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> ImageSet:
        labels = np.repeat(np.arange(3), n)
        return ImageSet(labels, images=torch.randint(0, 256, (3 * n, 1, 8, 8), dtype=torch.uint8, generator=g))

    return SourceData("tiny", ["a", "b", "c"], split(40), split(10))


@pytest.fixture
def tiny_config():
    """The default config shrunk to run in a second."""
    return parse_config(
        {
            "pretrain": {
                "epochs": 3,
                "batch_size": 8,
                "proj_dim": 16,
                "memory": {"size": 32},
                "checkpoint_every": 1,
                "method_kwargs": {"gh": {"num_targets": 8, "warmup": 0.0}},  # GH on from the first step
            },
            "probe": {"knn_k": 5},
        }
    )
