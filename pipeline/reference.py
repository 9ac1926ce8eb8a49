"""The params and command references of the documentation, generated from the code so they cannot drift.

Descriptions come from the comments written next to each field of the config dataclasses
(`duel/config.py`) and of each method's `Params`: the comment on the field's line and the comment
lines right above it. Allowed values come from the registries (`duel.validation.CHOICES`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from typing import Any

import typer

from duel.config import StudyConfig
from duel.method_params import METHOD_PARAMS
from duel.validation import CHOICES


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str
    type: str
    default: Any
    doc: str
    allowed: tuple[str, ...] = ()


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description: the comment lines right above it, then the comment on its line
    (the closest definition of a field a dataclass inherits)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs |= _own_field_docs(base)
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {tok.start[0]: tok.string.lstrip("#").strip() for tok in _tokens(source) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    docs = {}
    for node in ast.parse(source).body[0].body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above, row = [], node.lineno - 1
        while row >= 1 and row in comments and lines[row - 1].lstrip().startswith("#"):
            above.insert(0, comments[row])
            row -= 1
        docs[node.target.id] = " ".join([*above, comments.get(node.lineno, "")]).strip()
    return docs


def _tokens(source: str) -> list[tokenize.TokenInfo]:
    return list(tokenize.generate_tokens(io.StringIO(source).readline))


def type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin is None:
        return getattr(hint, "__name__", str(hint))
    names = [type_name(a) for a in typing.get_args(hint)]
    if origin in (typing.Union, types.UnionType):
        return " | ".join(names)
    return f"{origin.__name__}[{', '.join(names)}]"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def entries(cls: type, prefix: str = "") -> list[Entry]:
    """Every leaf key of a config dataclass, nested sections flattened to dotted keys."""
    hints, docs, out = typing.get_type_hints(cls), field_docs(cls), []
    for f in dataclasses.fields(cls):
        key, hint = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += entries(hint, f"{key}.")
        else:
            out.append(Entry(key, type_name(hint), _default(f), docs.get(f.name, ""), CHOICES.get(key, ())))
    return out


def method_entries() -> dict[str, list[Entry]]:
    """Each registered method's own hyper-parameters (`pretrain.method_kwargs.<name>`)."""
    return {name: entries(params, f"pretrain.method_kwargs.{name}.") for name, params in METHOD_PARAMS.items()}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(rows: list[Entry]) -> list[str]:
    out = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    for e in rows:
        default = json.dumps(e.default) if e.default is not None else "null"
        allowed = ", ".join(f"`{a}`" for a in e.allowed)
        out.append(f"| `{e.key}` | {_cell(e.type)} | `{_cell(default)}` | {allowed} | {_cell(e.doc)} |")
    return out


def params_reference() -> str:
    lines = [
        "# Params reference",
        "",
        "Every key of `params.yaml` and the profiles in `params/`, generated from `duel/config.py` "
        "(types, defaults, descriptions) and the registries (allowed values). A key left out of a params file "
        "takes its default; an unknown key or a bad value stops every stage in one line.",
        "",
    ]
    sections: dict[str, list[Entry]] = {}
    for e in entries(StudyConfig):
        sections.setdefault(e.key.split(".")[0], []).append(e)
    for section, rows in sections.items():
        lines += [f"## `{section}`", "", *_table(rows), ""]
    lines += [
        "## Method hyper-parameters",
        "",
        "Under `pretrain.method_kwargs.<method>`; a method not named there takes its defaults.",
        "",
    ]
    for name, rows in method_entries().items():
        if rows:
            lines += [f"### `{name}`", "", *_table(rows), ""]
    plain = [name for name, rows in method_entries().items() if not rows]
    lines += [f"No hyper-parameters of their own: {', '.join(f'`{n}`' for n in plain)}.", ""]
    return "\n".join(lines)


def cli_reference(app: typer.Typer) -> str:
    """Every command of the typer app with its arguments and options, as `--help` describes them."""
    group = typer.main.get_command(app)
    lines = ["# Command reference", "", "`python -m pipeline <command> --help` prints the same.", ""]
    ctx = typer.Context(group, info_name="python -m pipeline")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        sub = typer.Context(command, info_name=f"python -m pipeline {name}", parent=None)
        lines += [
            f"## `{name}`",
            "",
            inspect.cleandoc(command.help or ""),
            "",
            "```text",
            command.get_usage(sub),
            "```",
            "",
        ]
        lines += ["| argument or option | type | help |", "|---|---|---|"]
        for param in command.params:
            names = param.opts if param.param_type_name == "argument" else [*param.opts, *param.secondary_opts]
            record = param.get_help_record(sub)
            help_text = record[1] if record else ""
            kind = param.display_type(sub).strip("<>")
            lines.append(f"| {' / '.join(f'`{n}`' for n in names)} | {_cell(kind)} | {_cell(help_text)} |")
        lines.append("")
    return "\n".join(lines)
