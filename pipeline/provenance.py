"""Which code made a study's numbers, and whether this code still does (docs/provenance.md).

The report stage writes `provenance.json` beside its tables: the commit and the code files with
uncommitted changes, the DVC hash of every code file and directory the study's prepare, pretrain and
probe stages depended on and their params (as dvc.lock recorded them when they ran), the platform
and the command that remakes the study. `python -m pipeline provenance` hashes those files now, as
DVC does, and names each committed study under reports/ current or stale. The report stage's own
code shapes the tables, not the numbers, and is left out of both.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from duel.config import RuntimeConfig, flatten
from duel.errors import DuelError
from duel.files import write_json

PROVENANCE = "provenance.json"
WRITTEN_BY = re.compile(r"^# Written by `(?P<command>[^`]+)`")
NUMBER_STAGES = ("prepare", "pretrain", "probe")  # the stages whose outputs the tables' numbers are
RUNS_FROM = "Runs from: "  # a table joined from several studies (notebooks/study_summary.py) names their folders


def locked_inputs(root: Path) -> tuple[dict[str, list[str]], dict[str, Any], list[str]]:
    """Code hashes (path -> the distinct hashes its stages recorded, one when the study is of one code)
    and params of the pipeline's prepare / pretrain / probe instances from dvc.lock, and the instances
    dvc.lock has no record of."""
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    code: dict[str, set[str]] = {}
    params: dict[str, Any] = {}
    unrecorded = []
    try:
        repo = Repo(str(root))
    except NotDvcRepoError:  # the stages run by hand in a folder DVC does not manage
        return {}, {}, ["every stage (no DVC project here)"]
    with repo:
        stages = [s for s in repo.index.stages if s.name.split("@")[0] in NUMBER_STAGES]
        produced = {str(o.def_path) for s in repo.index.stages for o in s.outs}
        for stage in stages:
            if not any(d.hash_info for d in stage.deps):  # no entry in dvc.lock
                unrecorded.append(stage.addressing)
                continue
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    params.update(flatten(dep.hash_info.value or {}))
                elif not any(dep.def_path == out or dep.def_path.startswith(f"{out}/") for out in produced):
                    code.setdefault(dep.def_path, set()).add(dep.hash_info.value)
    return {path: sorted(hashes) for path, hashes in sorted(code.items())}, dict(sorted(params.items())), unrecorded


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(runtime: RuntimeConfig) -> dict[str, Any]:
    """The platform that ran the report (the study's stages ran there too unless launched on a cluster,
    whose nodes each stage's MLflow run names)."""
    import torch

    gpu = runtime.device.startswith("cuda") and torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "os": f"{platform.system()} {platform.machine()}",
        "device": runtime.device,
        "processor": torch.cuda.get_device_name() if gpu else _cpu(),
        "threads": torch.get_num_threads(),
        "kernels": "portable" if runtime.portable else "native",
    }


def remake_command(params_file: Path) -> str:
    """The commands that remake the study: the `use-profile` line that wrote params.yaml, if one did."""
    first = params_file.read_text().splitlines()[:1]
    match = WRITTEN_BY.match(first[0]) if first else None
    return f"{match['command']} && dvc repro" if match else "dvc repro"


def record(root: Path, params_file: Path, runtime: RuntimeConfig) -> dict[str, Any]:
    """The study's provenance.json, as the report stage writes it (docs/provenance.md lists the fields)."""
    code, params, unrecorded = locked_inputs(root)
    commit = (_git(root, "rev-parse", "HEAD") or "").strip() or None
    # entries "XY path", NUL-terminated: a path's own spaces and a leading status blank are kept
    changed = (_git(root, "status", "--porcelain", "-z", "--", *code) or "") if commit and code else ""
    other = []
    if code:
        hasher = Hasher(root)
        try:  # a stage recorded before a later edit it was not rerun for (`dvc commit`, a stage run by hand)
            other = [path for path, hashes in code.items() if hasher(path) not in hashes]
        finally:
            hasher.close()
    return {
        "commit": commit,
        "uncommitted": sorted(entry[3:] for entry in changed.split("\0") if entry),
        "other_code": other,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "remake": remake_command(params_file),
        "platform": machine(runtime),
        "unrecorded_stages": unrecorded,
        "code": code,
        "params": params,
    }


def write(folder: Path, provenance: dict[str, Any]) -> None:
    write_json(folder / PROVENANCE, provenance)


def summary_line(provenance: dict[str, Any]) -> str:
    """The head of results.md: who made these numbers, on what, and how to make them again."""
    p = provenance["platform"]
    commit = (provenance["commit"] or "no git commit")[:10]
    dirty, other = provenance["uncommitted"], provenance["other_code"]
    tree = f"with uncommitted changes to {', '.join(dirty)}" if dirty else "as committed"
    if other:
        tree += f"; dvc.lock holds other versions of {', '.join(other)}"
    made = f"Made on {provenance['date']} by code {commit} ({tree}), Python {p['python']}, torch {p['torch']}, "
    made += f"{p['device']} ({p['processor']}, {p['threads']} threads, {p['kernels']} kernels). "
    if unrecorded := provenance["unrecorded_stages"]:
        made += f"Not in dvc.lock: {', '.join(unrecorded[:3])}{' ...' if len(unrecorded) > 3 else ''}. "
    return made + f"Remake: `{provenance['remake']}`. Still current? `python -m pipeline provenance`."


@dataclass(frozen=True)
class Status:
    folder: Path
    provenance: dict[str, Any] | None
    changed: list[str]

    @property
    def current(self) -> bool:
        return self.provenance is not None and not self.changed and not self.provenance["unrecorded_stages"]

    def line(self) -> str:
        if self.provenance is None:
            return "not recorded: made before studies recorded their code; remake it to check its numbers"
        made = f"made by {(self.provenance['commit'] or 'no git commit')[:10]} on {self.provenance['date']}"
        if self.provenance["unrecorded_stages"]:
            return f"incomplete: {made}, {len(self.provenance['unrecorded_stages'])} stage instances not in dvc.lock"
        if self.changed:
            return f"stale: {made}; changed since: {', '.join(self.changed)}"
        return f"current: {made}; the code it depended on is unchanged"


class Hasher:
    """Files' and directories' hashes as DVC computes a dependency's (md5, .dvcignore applied)."""

    def __init__(self, root: Path) -> None:
        from dvc.repo import Repo
        from dvc.stage import Stage

        self.repo = Repo(str(root))
        self.stage = Stage(self.repo, wdir=str(root.resolve()))  # paths relative to the root, not the cwd
        self.known: dict[str, str | None] = {}

    def __call__(self, path: str) -> str | None:
        from dvc.dependency import Dependency

        if path not in self.known:
            dep = Dependency(self.stage, path)
            self.known[path] = dep.get_hash().value if dep.exists else None
        return self.known[path]

    def close(self) -> None:
        self.repo.close()


def status(folder: Path, hasher: Hasher) -> Status:
    path = folder / PROVENANCE
    if not path.is_file():
        return Status(folder, None, [])
    try:
        provenance = json.loads(path.read_text())
        code = provenance["code"]
    except (OSError, ValueError, KeyError) as exc:
        raise DuelError(f"{path} is not a provenance record ({exc}); remake the study to write it again") from exc
    return Status(folder, provenance, [p for p, hashes in code.items() if hasher(p) not in hashes])


def studies(reports: Path) -> list[Path]:
    """The committed studies: every folder under reports/ with a report's results.md."""
    return sorted(p.parent for p in reports.rglob("results.md"))


def study_folder(folder: Path) -> Path:
    """The study a report file belongs to: the nearest folder up that holds a results.md."""
    return next((p for p in (folder, *folder.parents) if (p / "results.md").is_file()), folder)


def status_note(report: Path, root: Path, hasher: Hasher) -> str:
    """The status of the studies a quoted report file's numbers come from, as a page shows it above them."""
    joined = [line for line in report.read_text().splitlines() if line.startswith(RUNS_FROM)]
    folders = [root / f for f in joined[-1][len(RUNS_FROM) :].split(", ")] if joined else [study_folder(report.parent)]
    found = [status(folder, hasher) for folder in folders]
    head = "> **Study status** (`python -m pipeline provenance`)"
    if not joined and report.name != "results.md":  # e.g. a benchmark's or replay's table beside the report
        where = found[0].folder.relative_to(root)
        return f"{head}: not recorded: written by its own script, not by the report of `{where}` ({found[0].line()})\n"
    if len(found) == 1:
        return f"{head}: {found[0].line()}\n"
    return f"{head}:\n" + "".join(f"> - `{s.folder.relative_to(root)}`: {s.line()}\n" for s in found)


def check(root: Path, strict: bool) -> None:
    """Print each study's status; with `strict`, exit 1 when one is not current."""
    reports = root / "reports"
    if not reports.is_dir():
        raise DuelError(f"no reports/ under {root}; run it from the repository's root")
    hasher = Hasher(root)
    try:
        found = [status(folder, hasher) for folder in studies(reports)]
    finally:
        hasher.close()
    width = max(len(str(s.folder.relative_to(root))) for s in found)
    for s in found:
        print(f"{s.folder.relative_to(root)!s:<{width}}  {s.line()}")
    if strict and not all(s.current for s in found):
        raise SystemExit(1)
