"""MkDocs hooks: the analysis notebook page, the report figures, and links that leave docs/.

Pages are written to read right on the repository page too: a link or image points at the file in the
repository tree, relative to the page (a figure: `../../reports/figures/x.png` from docs/science/).
The build serves `reports/**/*.png` at `reports/...` and renders `notebooks/analysis.ipynb` as
`notebook.md` with the outputs it was committed with (`make notebook` re-executes it on the default
study); `on_page_markdown` points such links at those copies. The report tables inside pages and the
params and command references are written into docs/ by `tools/sync_docs.py`.
"""

from __future__ import annotations

import base64
import posixpath
import re
from pathlib import Path

import nbformat
from mkdocs.structure.files import File, Files

REPORTS = Path("reports")
NOTEBOOK = Path("notebooks/analysis.ipynb")
SITE_COPIES = {NOTEBOOK.as_posix(): "notebook.md"}  # repository file -> the page the site shows it as
LINK = re.compile(r"(\]\()([^)\s#]+)([^)\s]*\))")


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


def site_target(page: str, target: str) -> str | None:
    """Where the site serves a repository file that a page under docs/ links to; None if it stays."""
    if target.startswith(("http://", "https://", "mailto:", "/")):
        return None
    here = posixpath.dirname(posixpath.join("docs", page))
    in_repo = posixpath.normpath(posixpath.join(here, target))
    if in_repo.startswith("docs/"):
        return None
    if in_repo.startswith(f"{REPORTS.as_posix()}/"):
        served = in_repo
    elif in_repo in SITE_COPIES:
        served = SITE_COPIES[in_repo]
    else:
        return None
    return posixpath.relpath(posixpath.join("docs", served), here)


def on_page_markdown(markdown: str, page, config, files) -> str:
    def point(match: re.Match) -> str:
        new = site_target(page.file.src_uri, match[2])
        return f"{match[1]}{new or match[2]}{match[3]}"

    return LINK.sub(point, markdown)


def on_files(files: Files, config) -> Files:
    text, figures = notebook_page(NOTEBOOK)
    files.append(File.generated(config, "notebook.md", content=text))
    for name, png in figures.items():
        files.append(File.generated(config, name, content=png))
    for path in sorted(REPORTS.rglob("*.png")):
        files.append(File.generated(config, path.as_posix(), abs_src_path=str(path.resolve())))
    return files
