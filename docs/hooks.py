"""MkDocs hooks: the references generated from the code, and the study outputs the pages show.

The params and command references are built from the code at every build (`pipeline/reference.py`),
so they cannot drift from it; figures come from `reports/`, where `dvc repro` writes them.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

from pipeline.cli import build_app
from pipeline.reference import cli_reference, params_reference

REPORTS = Path("reports")
GENERATED = {  # page -> its Markdown, made at build time
    "reference/params.md": params_reference,
    "reference/cli.md": lambda: cli_reference(build_app()),
}


def on_files(files: Files, config) -> Files:
    for page, make in GENERATED.items():
        files.append(File.generated(config, page, content=make()))
    for path in sorted(REPORTS.rglob("*.png")):
        files.append(File.generated(config, path.as_posix(), abs_src_path=str(path.resolve())))
    return files
