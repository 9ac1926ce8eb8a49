"""The lock: uv's universal uv.lock, exported for pip as requirements.lock, installs on every Python and
platform the README names, in step with pyproject.toml's pins and with the installed environment."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import PurePosixPath

import pytest
from packaging.markers import Marker
from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.project_copy import ROOT

PYTHONS = [(3, 11), (3, 12), (3, 13)]
# manylinux_2_28 is the newest tag a pinned wheel needs (torch); 2_39 is Ubuntu 24.04's glibc.
LINUX = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 4, -1)]
LINUX += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
MACOS = list(mac_platforms((14, 0), "arm64"))  # torch's arm64 wheels need macOS 14
PLATFORMS = {"linux-x86_64": ("linux", "Linux", "x86_64", LINUX), "macos-arm64": ("darwin", "Darwin", "arm64", MACOS)}
TARGETS = [(py, plat) for py in PYTHONS for plat in PLATFORMS]
REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;]+)(?:\s*;\s*(?P<marker>.+?))?\s*(?=--hash|$)")
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def uv_lock() -> dict[str, dict]:
    packages = tomllib.loads((ROOT / "uv.lock").read_text())["package"]
    return {canonicalize_name(p["name"]): p for p in packages if p["name"] != "duel-pipeline"}


def requirements() -> dict[str, tuple[str, Marker | None, set[str]]]:
    """requirements.lock: name -> (version, marker, hashes), from pip's format (continuation lines joined)."""
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    entries: dict[str, tuple[str, Marker | None, set[str]]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            match = REQUIREMENT.match(line)
            assert match, f"requirements.lock: not a pinned requirement: {line!r}"
            marker = Marker(match["marker"]) if match["marker"] else None
            entries[canonicalize_name(match["name"])] = (match["version"], marker, set(HASH.findall(line)))
    return entries


def environment(python: tuple[int, int], platform: str) -> dict[str, str]:
    sys_platform, system, machine, _ = PLATFORMS[platform]
    version = f"{python[0]}.{python[1]}"
    return {
        "python_version": version,
        "python_full_version": f"{version}.0",
        "sys_platform": sys_platform,
        "platform_system": system,
        "platform_machine": machine,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
    }


def supported_tags(python: tuple[int, int], platform: str) -> set[Tag]:
    platforms = PLATFORMS[platform][3]
    interpreter = f"cp{python[0]}{python[1]}"
    return {*cpython_tags(python, platforms=platforms), *compatible_tags(python, interpreter, platforms)}


def wheel_tags(package: dict) -> list[frozenset[Tag]]:
    return [parse_wheel_filename(PurePosixPath(w["url"]).name)[3] for w in package.get("wheels", [])]


def is_pure(tags: list[frozenset[Tag]]) -> bool:
    return all(t.abi == "none" and t.platform == "any" for wheel in tags for t in wheel)


@pytest.mark.parametrize(("python", "platform"), TARGETS, ids=[f"cp{p[0]}{p[1]}-{plat}" for p, plat in TARGETS])
def test_every_compiled_package_has_a_wheel_for_each_python_and_platform(python, platform):
    lock, required = uv_lock(), requirements()
    env, tags = environment(python, platform), supported_tags(python, platform)
    missing = []
    for name, (_, marker, _) in required.items():
        if marker is not None and not marker.evaluate(env):
            continue  # not installed there (e.g. the CUDA wheels on macOS)
        wheels = wheel_tags(lock[name])
        if wheels and not is_pure(wheels) and not any(wheel & tags for wheel in wheels):
            missing.append(name)
    assert not missing, f"no wheel for cp{python[0]}{python[1]} {platform}: {missing}; run `make lock` with uv"


def test_requirements_lock_is_uv_locks_export_with_every_files_hash():
    lock = uv_lock()
    for name, (version, _, hashes) in requirements().items():
        package = lock[name]
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert version == package["version"], f"{name}: requirements.lock is out of step with uv.lock; run `make lock`"
        assert hashes == {f["hash"].removeprefix("sha256:") for f in files}, f"{name}: hashes differ; run `make lock`"


def test_the_lock_holds_every_pin_of_pyproject_at_its_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    lock = requirements()
    for pin in pins:
        name, version = pin.split("==")
        assert lock[canonicalize_name(name)][0] == version, f"{pin}: run `make lock`"


def test_this_environment_is_the_locked_one():
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    drift = {
        name: (version, installed.get(name))
        for name, (version, marker, _) in requirements().items()
        if (marker is None or marker.evaluate()) and installed.get(name) != version
    }
    assert not drift, f"installed packages differ from requirements.lock (locked, installed): {drift}; run `make setup`"
