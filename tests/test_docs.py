"""The documentation cannot drift from the code: the params reference is complete, the registries it lists
are the ones validation enforces, the params files' comments name every allowed value and only pages that
exist, the README links only to files that exist, and the site builds in strict mode."""

import importlib.util
import os
import re
import subprocess
import sys

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


def generated_pages() -> set[str]:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return set(hooks.GENERATED)


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


def test_the_readme_links_only_to_files_in_the_repository():
    text = (ROOT / "README.md").read_text()
    assert "../shared" not in text
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), target


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
