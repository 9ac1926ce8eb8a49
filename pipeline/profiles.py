"""`python -m pipeline use-profile <name>`: make a versioned profile from params/ the study's params.yaml.

`--set key=value` overrides single keys (e.g. runtime.data_root); `--smoke` shrinks the
profile to a CPU run of a few steps on the same code path (CI runs every
profile this way on tiny data in the real formats). Comments in the profile,
where its hyper-parameters are sourced, are kept.
"""

from __future__ import annotations

import io
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq

from duel.config import GIVEN_PROFILES
from duel.data.longtail import class_counts
from duel.errors import DuelError
from duel.eval.groups import class_groups
from duel.files import atomic_path
from duel.validation import parse_config
from pipeline.common import PARAMS

PROFILES = Path("params")
# Classes of the sources whose class count is known before loading (smoke n_max).
KNOWN_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "stl10": 10}


def smallest_n_max(values: dict[str, Any]) -> int | None:
    """The smallest head-class size that leaves every class >= 1 image in every setting of the sweep, in
    counts the study's `probe.groups` accepts (thirds refuse a cut between classes of equal count, which
    the floor of a small exp profile makes)."""
    data, prepare = values["data"], values.get("prepare", {})
    profile = prepare.get("profile", "exp")
    classes = KNOWN_CLASSES.get(data["source"])
    root = values.get("runtime", {}).get("data_root")
    train = Path(root or "") / "train"
    if data["source"] == "imagefolder" and not data.get("train_list") and root and train.is_dir():
        classes = sum(1 for p in train.iterdir() if p.is_dir())  # root/train/<class>/
    if classes is None or profile in GIVEN_PROFILES:
        return None
    match = prepare.get("match_profile", "exp")
    probe = values.get("probe", {})
    grouping = (probe.get("groups", "thirds"), tuple(probe.get("shot_thresholds", (20, 100))))

    def fits(counts: list[int]) -> bool:
        try:
            class_groups(counts, *grouping)
        except DuelError:
            return False
        return min(counts) >= 1

    for n in range(1, 100_000):
        if all(fits(class_counts(profile, n, classes, r, match)) for r in values["sweep"]["imbalance"]):
            return n
    raise DuelError(
        f"no head-class size gives every class an image in groups probe.groups={grouping[0]} accepts; "
        "check sweep.imbalance and probe.groups"
    )


def smoke_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """A few CPU steps through every stage of the profile: its source, backbone, profile and protocol."""
    sweep = values["sweep"]
    out = {
        "sweep.methods": sweep["methods"][: max(1, 2 // len(sweep["train_sets"]))],  # two runs
        "sweep.imbalance": sweep["imbalance"][-1:],  # the most imbalanced setting
        "sweep.draws": sweep["draws"][:1],
        "sweep.seeds": sweep["seeds"][:1],
        "tracking.experiment": f"{values['tracking']['experiment']}-smoke",
        "data.image_size": 16,
        "pretrain.epochs": 1,
        "pretrain.max_steps": 2,
        "pretrain.batch_size": 8,
        "pretrain.memory.size": 32,
        "pretrain.checkpoint_every": 1,
        "probe.batch_size": 64,
        "probe.train_set": "kshot",
        "probe.shots": 2,
        "probe.splits": 2,
        "probe.c_grid": [1.0],
        "probe.knn_k": 10,
        "probe.head_epochs": 5,
        "report.tsne_max_points": 100,
        "runtime.download": False,
        "runtime.num_workers": 0,
        "runtime.device": "cpu",
        "runtime.precision": "fp32",
        "runtime.compile": False,
    }
    if values["pretrain"].get("warmup_epochs", 0):  # two epochs: a warm-up, then the cosine
        out |= {"pretrain.epochs": 2, "pretrain.warmup_epochs": 1}
    n_max = smallest_n_max({**values, "sweep": {**sweep, "imbalance": out["sweep.imbalance"]}})
    if n_max is not None:
        out["prepare.n_max"] = n_max
    return out


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(doc.get(key), dict):
            raise DuelError(f"--set {dotted}: {key!r} is not a section of the profile")
        doc = doc[key]
    if isinstance(value, list):  # written [a, b] like the profiles' own lists
        value = CommentedSeq(value)
        value.fa.set_flow_style()
    doc[leaf] = value


def _plain(doc: Any) -> Any:
    """ruamel's commented mappings as plain Python values, for validation."""
    return yaml.safe_load(io.StringIO(_dump(doc)))


def _dump(doc: Any) -> str:
    writer = YAML()
    writer.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    stream = io.StringIO()
    writer.dump(doc, stream)
    return stream.getvalue()


def use_profile(
    name: Annotated[str, typer.Argument(help="a file in params/ without .yaml (digits, cifar10_exp, ...)")],
    smoke: Annotated[
        bool, typer.Option(help="shrink to a few CPU steps (what CI runs); a key given with --set keeps its value")
    ] = False,
    set_values: Annotated[
        list[str] | None, typer.Option("--set", help="override one key, e.g. --set runtime.data_root=/data/cifar")
    ] = None,
    output: Annotated[Path, typer.Option(help="the params file to write")] = PARAMS,
) -> None:
    """Write params/<name>.yaml (with overrides) to params.yaml, validated; then run `dvc repro`."""
    source = PROFILES / f"{name}.yaml"
    if not source.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
        raise DuelError(f"unknown profile {name!r}; known profiles: {known}")
    doc = YAML().load(source)
    explicit = set()
    for item in set_values or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise DuelError(f"--set {item!r} is not key=value; e.g. --set runtime.data_root=/data/cifar")
        _set(doc, key.strip(), yaml.safe_load(raw))
        explicit.add(key.strip())
    if smoke:  # shrinks every key the command line did not set itself
        for key, value in smoke_overrides(_plain(doc)).items():
            if key not in explicit:
                _set(doc, key, value)
    parse_config(_plain(doc))  # a bad profile or override fails here, before params.yaml changes

    # shell-quoted, so the header (and the remake command a report copies from it) pastes as it ran
    flags = "".join([" --smoke" if smoke else "", *(f" --set {shlex.quote(s)}" for s in set_values or [])])
    header = f"# Written by `python -m pipeline use-profile {name}{flags}` from {source}; edit that file instead.\n"
    with atomic_path(output) as tmp:
        tmp.write_text(header + _dump(doc))
    print(f"{output} <- {source}{' (smoke)' if smoke else ''}; now run `dvc repro`")
