import numpy as np
import pytest
import torch
from PIL import Image

from duel.config import DataConfig, RuntimeConfig
from duel.data.datasets import IndexedImages
from duel.data.sources import DataError, load_source
from pipeline.pretrain import pretraining_set
from tests.fake_data import write_cifar10, write_cifar100, write_image_list_tree, write_stl10


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
    src = load_source(DataConfig(source="imagefolder"), RuntimeConfig(data_root=str(tmp_path)))
    assert src.classes == ["cat", "dog"]
    assert src.train.images.shape == (12, 3, 12, 12) and src.train.images.dtype == torch.uint8
    assert src.test.images.shape == (4, 3, 12, 12)
    assert src.train.labels.tolist() == [0] * 6 + [1] * 6
    assert abs(int(src.train.images[0, 0, 0, 0]) - 40) < 20 and int(src.train.images[-1, 0, 0, 0]) >= 140
    assert len(src.fingerprint()) == 16


def test_imagefolder_without_test_tree_carves_a_stratified_test_split(tmp_path):
    write_tree(tmp_path, "train", 8)
    src = load_source(
        DataConfig(source="imagefolder", test_fraction=0.25, image_size=8),
        RuntimeConfig(data_root=str(tmp_path)),
    )
    assert src.train.images.shape == (12, 3, 8, 8)
    assert np.bincount(src.test.labels).tolist() == [2, 2]


def test_imagefolder_reports_a_corrupt_image(tmp_path):
    write_tree(tmp_path, "train", 2)
    (tmp_path / "train" / "dog" / "0001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*0001.png"):
        load_source(DataConfig(source="imagefolder"), RuntimeConfig(data_root=str(tmp_path)))


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"runtime\.data_root is not set"):
        load_source(DataConfig(source="imagefolder"))
    with pytest.raises(DataError, match=r"has no train/ folder"):
        load_source(DataConfig(source="imagefolder"), RuntimeConfig(data_root=str(tmp_path / "missing")))


def test_digits_is_embedded_and_split_deterministically():
    a, b = load_source(DataConfig()), load_source(DataConfig())
    assert a.train.images.shape == (1347, 1, 8, 8) and a.test.images.shape == (450, 1, 8, 8)
    assert a.fingerprint() == b.fingerprint()
    assert int(a.train.images.max()) == 255
    assert np.bincount(a.test.labels).min() >= 43  # stratified


# torchvision checks each file's md5 against the official archives; the tiny files here only have the format.
OWN_COPY = {"verify_checksums": False}


def test_cifar10_reads_pickled_batches(tmp_path):
    x, labels = write_cifar10(tmp_path, per_class=4)
    src = load_source(DataConfig(source="cifar10"), RuntimeConfig(data_root=str(tmp_path), **OWN_COPY))
    assert src.classes == [f"class{c}" for c in range(10)]
    assert src.train.images.shape == (40, 3, 32, 32) and len(src.test) == 30
    assert src.train.labels.tolist() == labels.tolist()
    assert torch.equal(src.train.images, torch.from_numpy(x).permute(0, 3, 1, 2))
    small = load_source(DataConfig(source="cifar10", image_size=16), RuntimeConfig(data_root=str(tmp_path), **OWN_COPY))
    assert small.train.images.shape == (40, 3, 16, 16)


def test_cifar100_reads_fine_labels(tmp_path):
    write_cifar100(tmp_path, per_class=2)
    src = load_source(DataConfig(source="cifar100"), RuntimeConfig(data_root=str(tmp_path), **OWN_COPY))
    assert src.num_classes == 100 and src.classes[7] == "fine7"
    assert np.bincount(src.train.labels).tolist() == [2] * 100 and len(src.test) == 200


def test_stl10_reads_binaries_and_optional_unlabeled_split(tmp_path):
    x = write_stl10(tmp_path, per_class=2, unlabeled=7, size=96)
    src = load_source(DataConfig(source="stl10"), RuntimeConfig(data_root=str(tmp_path), **OWN_COPY))
    assert src.classes[3] == "name3" and src.unlabeled is None
    assert torch.equal(src.train.images, torch.from_numpy(x).permute(0, 3, 1, 2))  # rows and columns not swapped
    assert src.train.labels.tolist() == np.tile(np.arange(10), 2).tolist()
    with_extra = load_source(
        DataConfig(source="stl10", unlabeled=True, image_size=32), RuntimeConfig(data_root=str(tmp_path), **OWN_COPY)
    )
    assert with_extra.unlabeled.images.shape == (7, 3, 32, 32) and set(with_extra.unlabeled.labels) == {-1}
    without = load_source(DataConfig(source="stl10", image_size=32), RuntimeConfig(data_root=str(tmp_path), **OWN_COPY))
    assert with_extra.fingerprint() == without.fingerprint()

    dataset = pretraining_set(with_extra, [0, 5, 19])  # the LT subset, then every unlabeled image
    assert dataset.indices.tolist() == [0, 5, 19, *range(20, 27)]
    assert dataset.labels.tolist() == [*with_extra.train.labels[[0, 5, 19]].tolist(), *[-1] * 7]
    assert torch.equal(dataset[4][0], with_extra.unlabeled.images[1])


@pytest.mark.parametrize("source", ["cifar10", "cifar100", "stl10"])
@pytest.mark.parametrize("verify", [True, False])
def test_missing_torchvision_dataset_names_the_file_and_both_ways_on(tmp_path, source, verify):
    first = {"cifar10": "cifar-10-batches-py/data_batch_1", "cifar100": "cifar-100-python/train"}
    with pytest.raises(DataError) as info:
        load_source(DataConfig(source=source), RuntimeConfig(data_root=str(tmp_path), verify_checksums=verify))
    message = str(info.value)
    assert f"{first.get(source, 'stl10_binary/train_X.bin')} is missing; set runtime.download: true" in message
    assert "runtime.verify_checksums: false for a copy you built yourself" in message and "\n" not in message


def test_torchvision_copy_failing_its_checksum_names_the_file(tmp_path):
    write_cifar10(tmp_path, per_class=4)
    runtime = RuntimeConfig(data_root=str(tmp_path))
    with pytest.raises(DataError, match=r"cifar-10-batches-py/data_batch_1 fails its md5 check; set runtime\.download"):
        load_source(DataConfig(source="cifar10"), runtime)
    (tmp_path / "cifar-10-batches-py/test_batch").write_bytes(b"not a pickle")  # present, but damaged
    with pytest.raises(DataError, match=r"CIFAR10 under .*: .*; set runtime\.download: true"):
        load_source(DataConfig(source="cifar10"), RuntimeConfig(data_root=str(tmp_path), **OWN_COPY))


@pytest.mark.parametrize("lazy", [False, True])
def test_imagefolder_list_files_in_the_imagenet_lt_format(tmp_path, lazy):
    write_image_list_tree(tmp_path, counts=[5, 3, 1], size=40)
    cfg = (
        DataConfig(
            source="imagefolder",
            image_size=24,
            lazy=lazy,
            train_list="ImageNet_LT_train.txt",
            val_list="ImageNet_LT_val.txt",
            test_list="ImageNet_LT_test.txt",
        ),
        RuntimeConfig(data_root=str(tmp_path)),
    )
    src = load_source(*cfg)
    assert src.classes == ["n00000000", "n00000001", "n00000002"]
    assert len(src.train) == 9 + 6 and src.val_indices.tolist() == list(range(9, 15))
    assert len(src.test) == 6 and src.train.in_memory is not lazy
    image = src.train.load(6)  # decoded (lazily or not) to 24 x 24 from a 40 x 34 JPEG
    assert image.shape == (3, 24, 24) and image.dtype == torch.uint8
    assert abs(float(image[0].float().mean()) - 20 * src.train.labels[6] - 4.5) < 8  # red encodes the class
    assert src.fingerprint() == load_source(*cfg).fingerprint()


def test_lazy_and_in_memory_folders_give_the_same_batches(tmp_path):
    write_image_list_tree(tmp_path, counts=[4, 4], size=32)
    base = {"source": "imagefolder", "image_size": 16, "train_list": "ImageNet_LT_train.txt"}
    where = RuntimeConfig(data_root=str(tmp_path))
    eager = load_source(DataConfig(**base, test_list="ImageNet_LT_test.txt"), where)
    lazy = load_source(DataConfig(**base, test_list="ImageNet_LT_test.txt", lazy=True), where)
    order = torch.tensor([5, 0, 7, 2, 1])
    device = torch.device("cpu")
    a = list(IndexedImages(eager.train, range(8)).batches(order, 2, device))
    b = list(IndexedImages(lazy.train, range(8)).batches(order, 2, device, num_workers=2))
    assert [len(batch.images) for batch in a] == [2, 2, 1]
    assert torch.cat([batch.positions for batch in b]).tolist() == order.tolist()
    for batch_a, batch_b in zip(a, b, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(batch_a, batch_b, strict=True))
    assert np.allclose(eager.channel_stats(), lazy.channel_stats())


def test_list_file_errors_are_one_line(tmp_path):
    write_image_list_tree(tmp_path, counts=[2, 2], size=16)
    (tmp_path / "bad.txt").write_text("train/n00000000/train_0000.JPEG\n")
    with pytest.raises(DataError, match=r"bad\.txt:1 is not a `relative/path label` line"):
        load_source(DataConfig(source="imagefolder", train_list="bad.txt"), RuntimeConfig(data_root=str(tmp_path)))
    with pytest.raises(DataError, match=r"list file .*missing\.txt does not exist"):
        load_source(
            DataConfig(source="imagefolder", train_list="missing.txt"),
            RuntimeConfig(data_root=str(tmp_path)),
        )
    (tmp_path / "gone.txt").write_text("train/n00000000/nothing.JPEG 0\n")
    with pytest.raises(DataError, match=r"nothing\.JPEG \(listed in gone\.txt\) does not exist"):
        load_source(
            DataConfig(source="imagefolder", train_list="gone.txt", lazy=True, image_size=8),
            RuntimeConfig(data_root=str(tmp_path)),
        )


def test_lazy_fingerprint_does_not_depend_on_where_the_dataset_is_mounted(tmp_path):
    write_image_list_tree(tmp_path / "a", counts=[2, 2], size=16)
    fingerprints = []
    for root in (tmp_path / "a", tmp_path / "moved"):
        if not root.exists():
            (tmp_path / "a").rename(root)
        lists = {"train_list": "ImageNet_LT_train.txt", "test_list": "ImageNet_LT_test.txt"}
        cfg = DataConfig(source="imagefolder", image_size=8, lazy=True, **lists), RuntimeConfig(data_root=str(root))
        fingerprints.append(load_source(*cfg).fingerprint())
    assert fingerprints[0] == fingerprints[1]
    with pytest.raises(DataError, match=r"cannot carve a stratified test split .* from 4 images"):
        load_source(
            DataConfig(source="imagefolder", image_size=8, train_list=lists["train_list"]),
            RuntimeConfig(data_root=str(root)),
        )
