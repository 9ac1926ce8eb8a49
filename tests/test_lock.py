"""requirements.lock: the whole environment pinned with hashes, in step with pyproject.toml's pins."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from tests.project_copy import ROOT

LINE = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+) --hash=sha256:[0-9a-f]{64}$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    lines = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if not line.startswith("#")]
    matches = [LINE.match(line) for line in lines]
    assert all(matches), [line for line, m in zip(lines, matches, strict=True) if not m]
    return {canonical(m["name"]): m["version"] for m in matches if m}


def test_the_lock_holds_every_pin_of_pyproject_at_its_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    lock = locked()
    for pin in pins:
        name, version = pin.split("==")
        assert lock.get(canonical(name)) == version, f"{pin}: run `make lock`"


def test_this_environment_is_the_locked_one():
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    drift = {name: (v, installed.get(name)) for name, v in locked().items() if installed.get(name) != v}
    assert not drift, f"installed packages differ from requirements.lock (locked, installed): {drift}; run `make setup`"
