"""The documentation cannot drift from the code or the reports: the params reference is complete and
committed as the code generates it, the registries it lists are the ones validation enforces, the params
files' comments name every allowed value and only pages that exist, every page reads the same on the
repository page and in the built site (no include syntax, links and images that resolve in the
repository tree, report tables as the report files hold them), figures quoted from committed files match
them, user-facing text carries no notes of our own process, and the site builds in strict mode."""

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from ruamel.yaml import YAML

from duel.config import StudyConfig, flatten, to_dict
from duel.errors import ConfigError
from duel.validation import CHOICES, parse_config
from pipeline.cli import COMMANDS, build_app
from pipeline.reference import cli_reference, entries, method_entries, params_reference
from tests.project_copy import ROOT

PARAMS_FILES = [ROOT / "params.yaml", *sorted((ROOT / "params").glob("*.yaml"))]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated_pages() -> set[str]:
    """The pages only the built site has (the notebook's); every other page is a file under docs/."""
    return set(load("docs_hooks", ROOT / "docs" / "hooks.py").SITE_COPIES.values())


def sync_docs():
    return load("sync_docs", ROOT / "tools" / "sync_docs.py")


def prose(text: str) -> str:
    """A page without its fenced code blocks and inline code: what a reader sees as text, links, images."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"(`+)(?!`).+?(?<!`)\1(?!`)", "", text, flags=re.S)


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_every_params_key_and_method_hyper_parameter_is_described():
    keys = entries(StudyConfig) + [e for rows in method_entries().values() for e in rows]
    undocumented = [e.key for e in keys if not e.doc]
    assert not undocumented, f"add a comment next to these fields: {undocumented}"
    reference = params_reference()
    for e in keys:
        assert f"`{e.key}`" in reference


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_the_allowed_values_the_reference_lists_are_the_ones_validation_enforces(key):
    *sections, name = key.split(".")
    values: dict = {}
    node = values
    for section in sections:
        node = node.setdefault(section, {})
    plural = isinstance(flatten(to_dict(StudyConfig()))[key], list)
    node[name] = ["no-such-value"] if plural else "no-such-value"
    with pytest.raises(ConfigError, match=re.escape(key)):
        parse_config(values)
    for allowed in CHOICES[key]:  # every listed value passes its own check (it may need other keys)
        node[name] = [allowed] if plural else allowed
        try:
            parse_config(values)
        except ConfigError as exc:
            assert f"{key}=" not in str(exc), exc


def line_comments(node, prefix: str = ""):
    """(dotted key, the comment on its line) for every leaf of a ruamel round-trip mapping."""
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from line_comments(value, f"{dotted}.")
            continue
        token = (node.ca.items.get(key) or [None] * 3)[2]
        if token is None and hasattr(value, "ca") and value.ca.comment:  # after a flow sequence: [a, b]
            token = value.ca.comment[0]
        yield dotted, token.value.strip().lstrip("#").strip() if token else ""


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.name)
def test_params_file_comments_list_every_allowed_value_and_link_only_existing_pages(path):
    """A comment that lists a key's alternatives (`a | b | c`) lists all of them, and a page it names exists."""
    pages = generated_pages()
    text = path.read_text()
    for page in re.findall(r"docs/[\w/.-]+\.md", text):
        assert (ROOT / page).is_file() or page.removeprefix("docs/") in pages, (path.name, page)
    for key, comment in line_comments(YAML().load(text)):
        alternatives = comment.split(";")[0]
        if key in CHOICES and " | " in alternatives:
            listed = {part.strip().split(" ")[0].rstrip(":") for part in alternatives.split(" | ")}
            assert listed == set(CHOICES[key]), (path.name, key, sorted(listed ^ set(CHOICES[key])))


def test_the_command_reference_has_every_command_with_its_options():
    reference = cli_reference(build_app())
    for command in COMMANDS:
        assert f"## `{command}`" in reference
    assert "`--imbalance`" in reference and "`--resume` / `--no-resume`" in reference


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_syntax_only_the_site_renders(page):
    """The repository page shows a snippet include, an attribute list or an admonition as literal text."""
    text = prose(page.read_text())
    assert "--8<--" not in text, f"{page_id(page)}: use an include block (tools/sync_docs.py) instead of --8<--"
    assert not re.search(r"\)\{[^}]*\}", text), f"{page_id(page)}: an attribute list after a link or image"
    assert not re.search(r"^(!!!|\?\?\?) ", text, flags=re.M), f"{page_id(page)}: an admonition"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_and_images_resolve_in_the_repository_tree(page):
    """Every relative link or image target of a page is a file or folder of the repository, relative to
    the page, as the repository page resolves it (the site build serves reports/ and the notebook too)."""
    text = prose(page.read_text())
    assert "../shared" not in text
    targets = re.findall(r"\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)", text)
    targets += re.findall(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", text)
    missing = []
    for target in targets:
        path = target.split("#", 1)[0]
        if not path or target.startswith(("http://", "https://", "mailto:")):
            continue
        resolved = (page.parent / path).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            missing.append(target)
    assert not missing, f"{page_id(page)} links to what the repository does not hold: {missing}"


def committed(path: str) -> str:
    """A file as committed: `make repro` rewrites reports/ and outputs/ with this machine's timings,
    while the pages quote the committed study (the working tree's file outside a git checkout)."""
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else (ROOT / path).read_text()


def test_included_reports_are_the_committed_report_files(tmp_path):
    """The tables a page shows between include markers are the report files as committed."""
    tool = sync_docs()
    includes = [m["path"] for page in PAGES for m in tool.INCLUDE.finditer(page.read_text())]
    assert includes, "no page includes a report"
    for path in includes:
        assert (ROOT / path).is_file(), f"an included report no longer exists: {path}"
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(committed(path))
    late = [page_id(p) for p in PAGES if tool.synced(p.read_text(), tmp_path) != p.read_text()]
    assert not late, f"out of step with their committed reports (run `python tools/sync_docs.py`): {late}"


def test_the_committed_references_are_the_ones_the_code_generates():
    tool = sync_docs()
    late = [page_id(p) for p in tool.reference_pages() if p in tool.stale()]
    assert not late, f"out of step with the code (run `python tools/sync_docs.py`): {late}"


PROCESS_WORDS = {
    r"\[issue \d+\]|\bissues? #?\d+\b": "an issue number",
    r"\[check\]": "the tag of an internal check",
    r"\bwe (checked|verified|re-?ran|noticed)\b": "our process",
    r"\bcommit [0-9a-f]{7,40}\b|\b[0-9a-f]{7,40} \(commit\)": "a commit hash",
    r"(?<!\d-core )reference machine": "a reference machine without its size",
}


@pytest.mark.parametrize("path", [*PAGES, *PARAMS_FILES], ids=page_id)
def test_user_facing_text_carries_no_process_words(path):
    """Readers cannot look up our issues, checks or commits: say what a figure is and where it comes from."""
    text = " ".join(path.read_text().split())
    found = [(why, m.group(0)) for pattern, why in PROCESS_WORDS.items() for m in re.finditer(pattern, text, re.I)]
    assert not found, f"{page_id(path)}: {found}"


def runs_csv(path: str) -> list[dict[str, str]]:
    return list(csv.DictReader(committed(path).splitlines()))


def quoted(page: str, pattern: str) -> list[str]:
    found = re.findall(pattern, " ".join((ROOT / page).read_text().split()))
    assert found, f"{page} no longer quotes {pattern!r}: update this test with the page"
    return found


def test_the_timings_quoted_from_the_default_study_are_its_files():
    rows = runs_csv("reports/runs.csv")
    training = sum(float(r["train_seconds"]) for r in rows)
    probes = sum(float(r["probe_seconds"]) for r in rows)
    for train, probe in quoted("docs/benchmarks.md", r"training ([\d.]+) s, probes ([\d.]+) s"):
        assert (train, probe) == (f"{training:.1f}", f"{probes:.1f}")
    dmoco = {r["imbalance"]: float(r["train_seconds"]) for r in rows if r["method"] == "dmoco"}
    assert quoted("docs/benchmarks.md", r"dmoco pretrain stage \(r = 100\) trains for ([\d.]+) s") == [
        f"{dmoco['100.0']:.2f}"
    ]
    metrics = json.loads(committed("outputs/pretrain/dmoco-imb1-lt-d0-s0/metrics.json"))
    assert quoted("docs/diagnostics.md", r"against dmoco's ([\d.]+) s of training") == [
        f"{metrics['train_seconds']:.2f}"
    ]


def test_the_replay_figures_of_the_digits_page_are_the_committed_replay():
    text = (ROOT / "reports/memory_replay.md").read_text()
    row = {m[0] + " / " + m[1]: m[2] for m in re.findall(r"^\| (keys, eval) \| ([\w ]+?) \| ([\d.]+) \|", text, re.M)}
    cosines = re.search(r"^\| keys, eval \| [\d.]+ \| ([\d.]+) \| ([\d.]+) \|", text, re.M).groups()
    stream = re.search(r"Stream entropy ([\d.]+)", text)[1]
    ((greedy, fifo, stream_quoted, same, other),) = quoted(
        "docs/science/digits.md",
        r"entropy to ([\d.]+) from FIFO's ([\d.]+) \(the stream's: ([\d.]+)\).*?similarity is ([\d.]+) to its own "
        r"class and ([\d.]+) to the others",
    )
    assert (greedy, fifo, stream_quoted) == (row["keys, eval / duel greedy"], row["keys, eval / fifo"], stream)
    assert (same, other) == cosines


def report_tables(path: str) -> dict[str, dict[str, list[str]]]:
    """A report's tables by caption: first cell of each row -> the other cells."""
    tables, caption, header = {}, None, True
    for line in (ROOT / path).read_text().splitlines():
        if line.startswith("#"):
            caption = line.lstrip("# ")
            tables[caption] = {}
        elif line.startswith("|---"):
            header = False
        elif line.startswith("| ") and caption:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not header:
                tables[caption][cells[0]] = cells[1:]
        else:
            header = True
    return tables


def page_table(page: str, header_start: str) -> list[list[str]]:
    lines = (ROOT / page).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_the_lt_baselines_summary_is_the_committed_report():
    """Each cell of the summary table on the LT-baselines page is the report's figure."""
    tables = report_tables("reports/cifar10_exp_cpu_check/results.md")
    linear, knn, few = (
        tables[c] for c in ("Linear-probe top-1 (%)", "kNN top-1 (%)", "Linear-probe top-1 on the few group (%)")
    )
    heads = next(t for c, t in tables.items() if c.startswith("Linear probe and LT-aware heads"))
    rows = page_table("docs/science/lt-baselines.md", "| method | linear |")
    assert len(rows) == len(linear)
    for method, lin, few_cell, knn_cell, *head_cells in rows:
        assert [lin, few_cell, knn_cell] == [linear[method][0], few[method][0], knn[method][0]], method
        for head, cell in zip(["ce", "ce + post-hoc", "logit_adjusted", "ldam_drw"], head_cells, strict=True):
            _, _, few_h, all_h = heads[f"{method} / {head}"]
            assert cell == f"{few_h} / {all_h}", (method, head)


def test_the_site_builds_in_strict_mode(tmp_path):
    """A dead link, a missing page or an included report file that is no longer written fails the build."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for page in ("reference/params", "reference/cli", "notebook", "science/real-images"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page


def test_the_committed_notebook_carries_its_outputs():
    """The site renders the notebook as committed: it must hold the outputs of a run on the default study."""
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3, "run `make notebook` after `make repro`"
    assert not [o for o in outputs if o.output_type == "error"]
