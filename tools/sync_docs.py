"""Write into the documentation what it shows from other files, so every page reads the same on the
repository page and in the built site, with no include syntax left for either to render.

- Report tables. A page marks where a committed report goes:

      <!-- include: reports/results.md -->
      ... the report, written here by this tool ...
      <!-- end include -->

  and the lines between are the status of the studies it comes from (`pipeline/provenance.py`: current,
  or stale with the files changed since) and the report file, its headings made bold captions (so the
  report's headings stay out of the page's table of contents) and a blank line kept before every table.
- The params and command references, `docs/reference/params.md` and `docs/reference/cli.md`, generated
  from the code (`pipeline/reference.py`), and the fidelity page `docs/fidelity.md` (`pipeline/fidelity.py`).

    python tools/sync_docs.py            # rewrite the pages that are out of step
    python tools/sync_docs.py --check    # name them and exit 1 (tests/test_docs.py runs this check)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r"(?P<open><!-- include: (?P<path>\S+) -->\n)(?P<body>.*?)(?P<close><!-- end include -->)", re.S)
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def pages() -> list[Path]:
    """The Markdown files a reader opens: README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def render_report(text: str) -> str:
    """A report file as a page shows it: headings as bold captions, a blank line before each table."""
    out: list[str] = []
    for line in text.rstrip().splitlines():
        line = line.rstrip()
        if match := HEADING.match(line):
            line = f"**{match.group(1)}**"
        is_table = line.startswith("|")
        if is_table and out and out[-1] and not out[-1].startswith("|"):
            out.append("")
        if not is_table and line and out and out[-1].startswith("|"):
            out.append("")
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).rstrip() + "\n"


def synced(text: str, root: Path = ROOT) -> str:
    """The page with every include block holding its report as it is now (read under `root`), below the
    status of the studies it comes from (in this checkout: its code against theirs)."""
    if not INCLUDE.search(text):
        return text
    sys.path.insert(0, str(ROOT))
    from pipeline.provenance import Hasher, status_note

    hasher = Hasher(ROOT)

    def fill(match: re.Match) -> str:
        source = root / match["path"]
        if not source.is_file():
            raise FileNotFoundError(f"{match['path']} (included by a page) does not exist")
        note = status_note(ROOT / match["path"], ROOT, hasher)
        return f"{match['open']}{note}\n{render_report(source.read_text())}{match['close']}"

    try:
        return INCLUDE.sub(fill, text)
    finally:
        hasher.close()


def reference_pages() -> dict[Path, Callable[[], str]]:
    """The generated reference pages and what makes each (imported only when asked: it loads torch)."""
    sys.path.insert(0, str(ROOT))
    from pipeline import fidelity
    from pipeline.cli import build_app
    from pipeline.reference import cli_reference, params_reference

    return {
        ROOT / "docs" / "reference" / "params.md": params_reference,
        ROOT / "docs" / "reference" / "cli.md": lambda: cli_reference(build_app()),
        ROOT / "docs" / "fidelity.md": fidelity.render,
    }


def expected(with_references: bool = True) -> dict[Path, str]:
    """Every file this tool writes, with the text it should hold now."""
    out = {}
    for page in pages():
        text = page.read_text()
        if INCLUDE.search(text):
            out[page] = synced(text)
    if with_references:
        for page, make in reference_pages().items():
            text = make()
            out[page] = text if text.endswith("\n") else text + "\n"
    return out


def stale(with_references: bool = True) -> list[Path]:
    return [p for p, text in expected(with_references).items() if not p.is_file() or p.read_text() != text]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only name the files that are out of step")
    args = parser.parse_args()
    if args.check:
        if late := stale():
            sys.exit(
                "out of step with their sources (run `python tools/sync_docs.py`): "
                + ", ".join(str(p.relative_to(ROOT)) for p in late)
            )
        return
    for page, text in expected().items():
        if not page.is_file() or page.read_text() != text:
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(text)
            print(f"wrote {page.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
