"""What every stage shares: params loading, the output layout, data loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from duel.config import StudyConfig
from duel.data.longtail import check_manifest
from duel.data.sources import SourceData, load_source
from duel.errors import ConfigError, DuelError
from duel.validation import parse_config, validate_imbalance

# Command-line options shared by the stages.
MethodOption = Annotated[str, typer.Option(help="a registered method (duel.methods.METHODS), e.g. moco or dmoco")]
ImbalanceOption = Annotated[float, typer.Option(help="r of exp/step/balanced(_matched), rho_max of dominant")]
SeedOption = Annotated[int, typer.Option(help="training seed")]
ParamsOption = Annotated[Path, typer.Option(help="the params file")]
PARAMS = Path("params.yaml")

OUTPUTS = Path("outputs")
CHECKPOINTS = Path("checkpoints")
REPORTS = Path("reports")


def load_params(path: Path) -> StudyConfig:
    if not path.exists():
        raise DuelError(f"params file {path} does not exist; run from the project root or pass --params")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DuelError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    return parse_config(values)


def setting(value: float) -> str:
    """An imbalance value as DVC writes it in stage names: 10.0 -> '10', 0.5 -> '0.5'."""
    return f"{value:g}"


def check_imbalance(cfg: StudyConfig, imbalance: float) -> None:
    validate_imbalance(cfg.prepare, imbalance, key="--imbalance")


def check_method(method: str) -> None:
    from duel.methods import METHODS

    if method not in METHODS:
        raise ConfigError("--method", method, f"known methods: {', '.join(METHODS)}")


def manifest_path(imbalance: float) -> Path:
    return OUTPUTS / "prepare" / f"imb{setting(imbalance)}" / "manifest.json"


def run_id(method: str, imbalance: float, seed: int) -> str:
    return f"{method}-imb{setting(imbalance)}-s{seed}"


def pretrain_dir(method: str, imbalance: float, seed: int) -> Path:
    return OUTPUTS / "pretrain" / run_id(method, imbalance, seed)


def probe_dir(method: str, imbalance: float, seed: int) -> Path:
    return OUTPUTS / "probe" / run_id(method, imbalance, seed)


def read_json(path: Path, produced_by: str) -> Any:
    if not path.exists():
        raise DuelError(f"{path} is missing; run `dvc repro {produced_by}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DuelError(f"{path} is corrupt ({exc}); delete it and run `dvc repro {produced_by}`") from exc


def load_data(cfg: StudyConfig, imbalance: float) -> tuple[SourceData, dict[str, Any]]:
    """The source and the manifest of one imbalance setting, checked against each other."""
    manifest = read_json(manifest_path(imbalance), f"prepare@{setting(imbalance)}")
    source = load_source(cfg.data, cfg.runtime)
    check_manifest(manifest, source)
    return source, manifest
