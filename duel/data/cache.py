"""Decoded sources kept on disk between stage processes.

Every stage of a study loads the same source, each in its own process. Decoding an image folder's JPEGs
(CIFAR-10: about 23 s) or importing scikit-learn to read digits (about 1.3 s) in each of a study's dozens of
stages is the same work repeated: the first stage stores the decoded tensors and the others read them back
in a fraction of a second. An entry's key covers the data settings, the torch version (resizing) and the
inputs' identity: each file's path, size and modification time, or scikit-learn's version for digits. Any
change to the data is then a new entry, never a stale one. Lazy image sets hold file paths, not pixels,
and are not cached; nor are the torchvision formats, whose binary files already load in about a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from duel.config import DataConfig, RuntimeConfig, to_dict
from duel.data.sources import ImageSet, SourceData, load_source

CACHED_SOURCES = ("digits", "imagefolder")
FORMAT = 1  # bump when the stored layout or a loader's output changes


def _files(folder: Path) -> list[tuple[str, int, int]]:
    """(path relative to `folder`, size, mtime in ns) of every file below it, in a fixed order."""
    found = []
    for parent, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            stat = os.stat(os.path.join(parent, name))
            found.append((os.path.relpath(os.path.join(parent, name), folder), stat.st_size, stat.st_mtime_ns))
    return found


def _inputs(cfg: DataConfig, runtime: RuntimeConfig) -> Any:
    """What the loader reads, identified without reading it."""
    if cfg.source == "digits":
        return {"scikit-learn": version("scikit-learn")}
    root = Path(str(runtime.data_root)).expanduser()
    lists = [Path(name).expanduser() for name in (cfg.train_list, cfg.val_list, cfg.test_list) if name]
    outside = [str(p) for p in lists if p.is_absolute() and p.is_file()]  # list files kept beside the data
    return {"files": _files(root), "lists": [(p, os.path.getsize(p), os.stat(p).st_mtime_ns) for p in outside]}


def entry_path(cfg: DataConfig, runtime: RuntimeConfig) -> Path | None:
    """The cache file of this source, or None when it is not cached (off, lazy, or not a cached source)."""
    if runtime.cache_dir is None or cfg.source not in CACHED_SOURCES or cfg.lazy:
        return None
    if cfg.source != "digits" and (runtime.data_root is None or not Path(runtime.data_root).expanduser().is_dir()):
        return None  # the loader says what is missing
    key = {"format": FORMAT, "torch": torch.__version__, "data": to_dict(cfg), "inputs": _inputs(cfg, runtime)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return Path(runtime.cache_dir).expanduser() / f"{cfg.source}-{digest}.pt"


def _pack(images: ImageSet | None) -> dict[str, torch.Tensor] | None:
    return None if images is None else {"labels": torch.from_numpy(images.labels), "images": images.images}


def _unpack(saved: dict[str, torch.Tensor] | None) -> ImageSet | None:
    # Copies: the entry stays in this process (`_READ`) for the next stage, whatever this one does to its data.
    return None if saved is None else ImageSet(saved["labels"].numpy().copy(), images=saved["images"].clone())


def _write(path: Path, source: SourceData) -> None:
    state = {
        "name": source.name,
        "classes": source.classes,
        "val_indices": None if source.val_indices is None else torch.from_numpy(source.val_indices),
        **{split: _pack(getattr(source, split)) for split in ("train", "test", "unlabeled")},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # whole or absent, also with several stages writing the same entry at once
    finally:
        Path(tmp).unlink(missing_ok=True)


# The entry this process read last: a long-lived worker (`python -m pipeline launch`) runs one stage after
# another on the same source and reads it from disk once. An entry's path names its contents.
_READ: dict[Path, dict[str, Any]] = {}


def _read(path: Path) -> SourceData:
    state = _READ.get(path)
    if state is None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        _READ.clear()
        _READ[path] = state
    val = state["val_indices"]
    return SourceData(
        state["name"],
        list(state["classes"]),
        _unpack(state["train"]),  # type: ignore[arg-type]
        _unpack(state["test"]),  # type: ignore[arg-type]
        val_indices=None if val is None else val.numpy(),
        unlabeled=_unpack(state["unlabeled"]),
    )


def cached_source(cfg: DataConfig, runtime: RuntimeConfig | None = None) -> SourceData:
    """`load_source`, read back from `runtime.cache_dir` when an earlier stage has decoded the same data."""
    runtime = runtime or RuntimeConfig()
    path = entry_path(cfg, runtime)
    if path is None:
        return load_source(cfg, runtime)
    if path.exists():
        try:
            return _read(path)
        except Exception as exc:  # truncated or foreign: a cache entry is rebuilt, nothing else is lost
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"note: source cache {path} is damaged ({reason}); decoding the source again", file=sys.stderr)
    source = load_source(cfg, runtime)
    if all(s is None or s.in_memory for s in (source.train, source.test, source.unlabeled)):
        _write(path, source)
    return source
