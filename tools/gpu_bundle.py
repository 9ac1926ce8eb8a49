"""Write .gpu/: what benchmarks/gpu_run.py needs on a GPU machine that has Python 3.12, torch and
torchvision but no package registry (docs/benchmarks.md#gpu).

    python tools/gpu_bundle.py [--cifar ../shared/data/cifar10-jpg.zip]     # `make gpu-bundle`

- `.gpu/wheels/`: the other imports at this project's pins (kornia, kornia_rs, tqdm, PyYAML) and
  lightly 1.6.0 for the peer row, CPython 3.12 x86-64 wheels, without their dependencies (lightly's
  modules that the peer uses import only torch, torchvision, numpy, tqdm and Pillow);
- `.gpu/cifar10.zip`: the CIFAR-10 JPEG copy's training images and 50 test images per class (the
  image-folder layout; the run reads no test image), so the bundle and the repository stay under
  the 64 MiB a device call carries.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ["kornia==0.9.0", "kornia_rs==0.2.0", "tqdm==4.70.1", "PyYAML==6.0.3", "lightly==1.6.0"]
TEST_PER_CLASS = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path, default=ROOT.parent / "shared/data/cifar10-jpg.zip")
    args = parser.parse_args()
    if not args.cifar.is_file():
        sys.exit(f"error: {args.cifar} is not a file; pass --cifar with the CIFAR-10 JPEG zip")
    out = ROOT / ".gpu"
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps"]
    pip += ["--only-binary=:all:", "--python-version", "3.12", "--platform", "manylinux2014_x86_64"]
    subprocess.run([*pip, "-d", str(out / "wheels"), *WHEELS], check=True)
    taken: Counter[str] = Counter()
    partial = out / "cifar10.zip.partial"
    with zipfile.ZipFile(args.cifar) as src, zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            parts = info.filename.split("/")
            if info.is_dir() or parts[0] == "train" or taken[parts[1]] < TEST_PER_CLASS:
                taken[parts[1]] += parts[0] == "test" and not info.is_dir()
                dst.writestr(info, src.read(info))
    partial.replace(out / "cifar10.zip")  # a bundle is whole or absent
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB (wheels and CIFAR-10 JPEGs); carry it as .gpu")


if __name__ == "__main__":
    main()
