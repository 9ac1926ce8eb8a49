"""The decoded-source cache the stages share: the same data back, a new entry when the data changes,
a damaged entry rebuilt, and nothing cached where it would hold file paths instead of pixels."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import duel.data.cache as cache
from duel.config import DataConfig, RuntimeConfig
from duel.data.cache import cached_source, entry_path
from duel.data.sources import SourceData, load_source
from tests.fake_data import write_image_folder, write_image_list_tree
from tests.project_copy import ROOT


def assert_same(a: SourceData, b: SourceData) -> None:
    assert (a.name, a.classes, a.fingerprint()) == (b.name, b.classes, b.fingerprint())
    assert a.train.images.dtype == b.train.images.dtype and a.train.labels.dtype == b.train.labels.dtype
    assert (a.val_indices is None and b.val_indices is None) or np.array_equal(a.val_indices, b.val_indices)


def no_decoding(monkeypatch):
    def refuse(*args):
        raise AssertionError("decoded the source although its cache entry is there")

    monkeypatch.setattr(cache, "load_source", refuse)


def test_digits_come_back_from_the_cache_without_decoding(tmp_path, monkeypatch):
    runtime = RuntimeConfig(cache_dir=str(tmp_path))
    first = cached_source(DataConfig(), runtime)
    assert_same(first, load_source(DataConfig()))
    assert [p.name for p in tmp_path.iterdir()] == [entry_path(DataConfig(), runtime).name]
    no_decoding(monkeypatch)
    assert_same(cached_source(DataConfig(), runtime), first)
    with pytest.raises(AssertionError, match="decoded the source"):  # other data settings: another entry
        cached_source(DataConfig(image_size=16), runtime)


def test_a_stage_reading_the_cache_does_not_import_scikit_learn(tmp_path):
    code = (
        "import sys; from duel.config import DataConfig, RuntimeConfig; from duel.data.cache import cached_source; "
        f"cached_source(DataConfig(), RuntimeConfig(cache_dir={str(tmp_path)!r})); print('sklearn' in sys.modules)"
    )
    runs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True) for _ in range(2)]
    assert [r.stdout.strip() for r in runs] == ["True", "False"], runs[-1].stderr


def test_an_image_folder_changed_on_disk_is_a_new_entry(tmp_path):
    data, runtime = (
        tmp_path / "data",
        RuntimeConfig(cache_dir=str(tmp_path / "cache"), data_root=str(tmp_path / "data")),
    )
    write_image_folder(data, per_class=3, test_per_class=1, classes=2, size=8)
    cfg = DataConfig(source="imagefolder")
    before = entry_path(cfg, runtime)
    assert_same(cached_source(cfg, runtime), load_source(cfg, runtime))

    changed = data / "train" / "class1" / "0002.jpg"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(changed, format="JPEG")
    os.utime(changed, ns=(1, 1))  # another modification time, also on a coarse-grained filesystem
    assert entry_path(cfg, runtime) != before
    again = cached_source(cfg, runtime)
    assert_same(again, load_source(cfg, runtime))
    assert int(again.train.images[-1].max()) < 20  # the new black image, not the cached one
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 2


def test_a_damaged_entry_is_rebuilt_with_a_note(tmp_path, capsys):
    write_image_list_tree(tmp_path / "data", counts=[4, 3])
    cfg = DataConfig(
        source="imagefolder",
        image_size=16,
        train_list="ImageNet_LT_train.txt",
        val_list="ImageNet_LT_val.txt",
        test_list="ImageNet_LT_test.txt",
    )
    runtime = RuntimeConfig(cache_dir=str(tmp_path / "cache"), data_root=str(tmp_path / "data"))
    first = cached_source(cfg, runtime)
    assert first.val_indices is not None
    path = entry_path(cfg, runtime)
    path.write_bytes(path.read_bytes()[:100])
    assert_same(cached_source(cfg, runtime), first)
    note = capsys.readouterr().err.strip()
    assert note.startswith(f"note: source cache {path} is damaged") and len(note.splitlines()) == 1
    assert_same(cached_source(cfg, runtime), first)  # rewritten whole
    assert capsys.readouterr().err == ""


def test_lazy_folders_and_a_switched_off_cache_write_nothing(tmp_path):
    write_image_list_tree(tmp_path / "data", counts=[2, 2])
    lists = {"train_list": "ImageNet_LT_train.txt", "test_list": "ImageNet_LT_test.txt", "image_size": 16}
    lazy = DataConfig(source="imagefolder", lazy=True, **lists)
    runtime = RuntimeConfig(cache_dir=str(tmp_path / "cache"), data_root=str(tmp_path / "data"))
    assert entry_path(lazy, runtime) is None
    assert not cached_source(lazy, runtime).train.in_memory
    off = RuntimeConfig(cache_dir=None, data_root=str(tmp_path / "data"))
    assert entry_path(DataConfig(source="imagefolder", **lists), off) is None
    cached_source(DataConfig(source="imagefolder", **lists), off)
    assert not (tmp_path / "cache").exists()
