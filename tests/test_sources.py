import numpy as np
import pytest
import torch
from PIL import Image

from duel.config import DataConfig
from duel.data.sources import DataError, load_source


def write_tree(root, split, per_class, size=12, fmt="png"):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog"]):
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((size, size, 3), 40 + 100 * c, dtype=np.uint8) + rng.integers(
                0, 20, (size, size, 3), dtype=np.uint8
            )
            Image.fromarray(pixels).save(folder / f"{i:04d}.{fmt}")


def test_imagefolder_reads_train_and_test_trees(tmp_path):
    write_tree(tmp_path, "train", 6)
    write_tree(tmp_path, "test", 2, fmt="jpg")
    src = load_source(DataConfig(source="imagefolder", root=str(tmp_path)))
    assert src.classes == ["cat", "dog"]
    assert src.train.images.shape == (12, 3, 12, 12) and src.train.images.dtype == torch.uint8
    assert src.test.images.shape == (4, 3, 12, 12)
    assert src.train.labels.tolist() == [0] * 6 + [1] * 6
    assert abs(int(src.train.images[0, 0, 0, 0]) - 40) < 20 and int(src.train.images[-1, 0, 0, 0]) >= 140
    assert len(src.fingerprint()) == 16


def test_imagefolder_without_test_tree_carves_a_stratified_test_split(tmp_path):
    write_tree(tmp_path, "train", 8)
    src = load_source(DataConfig(source="imagefolder", root=str(tmp_path), test_fraction=0.25, image_size=8))
    assert src.train.images.shape == (12, 3, 8, 8)
    assert np.bincount(src.test.labels).tolist() == [2, 2]


def test_imagefolder_reports_a_corrupt_image(tmp_path):
    write_tree(tmp_path, "train", 2)
    (tmp_path / "train" / "dog" / "0001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*0001.png"):
        load_source(DataConfig(source="imagefolder", root=str(tmp_path)))


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"data\.root is not set"):
        load_source(DataConfig(source="imagefolder"))
    with pytest.raises(DataError, match=r"has no train/ folder"):
        load_source(DataConfig(source="imagefolder", root=str(tmp_path / "missing")))


def test_digits_is_embedded_and_split_deterministically():
    a, b = load_source(DataConfig()), load_source(DataConfig())
    assert a.train.images.shape == (1347, 1, 8, 8) and a.test.images.shape == (450, 1, 8, 8)
    assert a.fingerprint() == b.fingerprint()
    assert int(a.train.images.max()) == 255
    assert np.bincount(a.test.labels).min() >= 43  # stratified
