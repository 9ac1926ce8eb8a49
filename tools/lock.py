"""Write requirements.lock: every package `pip install -e '.[dev]'` resolves to here, pinned with its hash.

    python tools/lock.py        # after changing a pin in pyproject.toml (`make lock`)

pip resolves without installing (`--dry-run --report`) and reports each file it would take with its
sha256; `make setup` installs exactly these files (`--require-hashes`), then the project itself without
dependencies. The lock is for the platform it was made on (Linux x86-64, CPython 3.11).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "duel-pipeline"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
        subprocess.run([*pip, "--report", str(report), "-e", ".[dev]"], cwd=ROOT, check=True)
        resolved = json.loads(report.read_text())["install"]
    lines = [
        "# Every package of `pip install -e '.[dev]'`, pinned with the sha256 of its file: written by",
        f"# `python tools/lock.py` on {platform.system()} {platform.machine()}, CPython {platform.python_version()};",
        "# `make setup` installs it with --require-hashes. Edit pyproject.toml, then run `make lock`.",
    ]
    for item in sorted(resolved, key=lambda i: i["metadata"]["name"].lower()):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if name == PROJECT:
            continue
        hashes = item["download_info"]["archive_info"]["hashes"]
        lines.append(f"{name}=={version} --hash=sha256:{hashes['sha256']}")
    (ROOT / "requirements.lock").write_text("\n".join(lines) + "\n")
    print(f"requirements.lock: {len(lines) - 3} packages")


if __name__ == "__main__":
    main()
