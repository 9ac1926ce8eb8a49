"""MkDocs hooks: the pages generated from the code and the notebook, and the study outputs pages show.

The params and command references are built from the code at every build (`pipeline/reference.py`),
so they cannot drift from it; the analysis notebook is rendered with the outputs it was committed with
(`make notebook` re-executes it on the default study); figures come from `reports/`, where
`dvc repro` writes them.
"""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
from mkdocs.structure.files import File, Files

from pipeline.cli import build_app
from pipeline.reference import cli_reference, params_reference

REPORTS = Path("reports")
NOTEBOOK = Path("notebooks/analysis.ipynb")
GENERATED = {  # page -> its Markdown, made at build time
    "reference/params.md": params_reference,
    "reference/cli.md": lambda: cli_reference(build_app()),
}


def notebook_page(path: Path) -> tuple[str, dict[str, bytes]]:
    """The notebook as Markdown (code, then its outputs) and the PNG figures it shows, by file name."""
    nb = nbformat.read(path, as_version=4)
    lines = [f"<!-- rendered from {path} -->"]
    figures: dict[str, bytes] = {}
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines += [cell.source, ""]
            continue
        if cell.cell_type != "code":
            continue
        lines += ["```python", cell.source, "```", ""]
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if output.output_type == "stream":
                lines += ["```text", output.text.rstrip(), "```", ""]
            elif "image/png" in data:
                name = f"notebook-figure-{len(figures) + 1}.png"
                figures[name] = base64.b64decode(data["image/png"])
                lines += [f"![figure {len(figures)}]({name})", ""]
            elif "text/html" in data:
                lines += ['<div class="notebook-output" markdown="0">', data["text/html"], "</div>", ""]
            elif "text/plain" in data:
                lines += ["```text", data["text/plain"], "```", ""]
    return "\n".join(lines), figures


def on_files(files: Files, config) -> Files:
    for page, make in GENERATED.items():
        files.append(File.generated(config, page, content=make()))
    text, figures = notebook_page(NOTEBOOK)
    files.append(File.generated(config, "notebook.md", content=text))
    for name, png in figures.items():
        files.append(File.generated(config, name, content=png))
    for path in sorted(REPORTS.rglob("*.png")):
        files.append(File.generated(config, path.as_posix(), abs_src_path=str(path.resolve())))
    return files
