import numpy as np
import pytest
import torch

from duel.data.sources import ImageSet, SourceData
from duel.validation import parse_config


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
