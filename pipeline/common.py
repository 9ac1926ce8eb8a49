"""What every stage shares: params loading, the output layout, data loading."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import yaml

from duel.config import TRAIN_SETS, StudyConfig
from duel.errors import ConfigError, DuelError
from duel.method_params import METHOD_PARAMS
from duel.validation import parse_config, validate_imbalance

if TYPE_CHECKING:
    from duel.data.sources import SourceData

# Command-line options shared by the stages.
MethodOption = Annotated[str, typer.Option(help="a registered method (duel.methods.METHODS), e.g. moco or dmoco")]
ImbalanceOption = Annotated[float, typer.Option(help="r of exp/step/balanced(_matched), rho_max of dominant")]
SeedOption = Annotated[int, typer.Option(help="training seed")]
DrawOption = Annotated[int, typer.Option(help="the random draw of the LT subset (sweep.draws)")]
TrainSetOption = Annotated[str, typer.Option(help="pretrain on lt (D_i) or balanced (D_b, same size)")]
ParamsOption = Annotated[Path, typer.Option(help="the params file")]
PARAMS = Path("params.yaml")

T = TypeVar("T")

OUTPUTS = Path("outputs")
CHECKPOINTS = Path("checkpoints")
REPORTS = Path("reports")


def read_params(path: Path) -> StudyConfig:
    """The study's config, checked, without setting up torch: a command checks its arguments against it
    before its stage imports torch and sets it up (`duel.utils.configure_cpu`); the UI, notebooks and
    table checks only read it."""
    if not path.exists():
        raise DuelError(f"params file {path} does not exist; run from the project root or pass --params")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DuelError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    return parse_config(values)


def stage_name(stage: str, *parts: Any) -> str:
    """The DVC matrix stage name, e.g. prepare@100-0."""
    return f"{stage}@{'-'.join(str(p) for p in parts)}" if parts else stage


def setting(value: float) -> str:
    """An imbalance value as DVC writes it in stage names: 10.0 -> '10', 0.5 -> '0.5'."""
    return f"{value:g}"


def check_imbalance(cfg: StudyConfig, imbalance: float) -> None:
    validate_imbalance(cfg.prepare, imbalance, key="--imbalance")


def check_method(method: str) -> None:
    if method not in METHOD_PARAMS:
        raise ConfigError("--method", method, f"known methods: {', '.join(METHOD_PARAMS)}")


def check_train_set(train_set: str) -> None:
    if train_set not in TRAIN_SETS:
        raise ConfigError("--train-set", train_set, "lt (the LT subset) or balanced (same size, balanced)")


def manifest_path(imbalance: float, draw: int) -> Path:
    return OUTPUTS / "prepare" / f"imb{setting(imbalance)}-d{draw}" / "manifest.json"


@dataclass(frozen=True)
class RunKey:
    """One pretrain + probe run of the sweep: a point of dvc.yaml's matrix."""

    method: str
    imbalance: float
    train_set: str = "lt"
    draw: int = 0
    seed: int = 0

    @property
    def name(self) -> str:
        """The run's folder under outputs/ and checkpoints/, e.g. dmoco-imb100-lt-d0-s0."""
        return f"{self.method}-imb{setting(self.imbalance)}-{self.train_set}-d{self.draw}-s{self.seed}"

    def stage(self, stage: str) -> str:
        """The DVC stage of this run, e.g. pretrain@dmoco-100-lt-0-0 (matrix keys in dvc.yaml's order)."""
        return stage_name(stage, self.method, setting(self.imbalance), self.train_set, self.draw, self.seed)

    def training_set(self, source: str) -> str:
        """The name of the images this run pretrains on, e.g. digits-imb100-lt-d0 (its MLflow dataset input)."""
        return f"{source}-imb{setting(self.imbalance)}-{self.train_set}-d{self.draw}"

    @property
    def pretrain_dir(self) -> Path:
        return OUTPUTS / "pretrain" / self.name

    @property
    def probe_dir(self) -> Path:
        return OUTPUTS / "probe" / self.name

    @property
    def checkpoint(self) -> Path:
        return CHECKPOINTS / self.name / "last.pt"

    def config(self) -> dict[str, Any]:
        """The run's coordinates as logged params (the MLflow runs table's columns)."""
        return {
            "method": self.method,
            "imbalance": self.imbalance,
            "train_set": self.train_set,
            "draw": self.draw,
            "seed": self.seed,
        }


def read_output(path: Path, produced_by: str, load: Callable[[Path], T]) -> T:
    """An output of an earlier stage, read by `load`; a missing or damaged file stops the stage in one
    line naming the file and the stage that rebuilds it."""
    if not path.exists():
        raise DuelError(f"{path} is missing; run `dvc repro {produced_by}` first")
    try:
        return load(path)
    except Exception as exc:  # truncated, foreign or half-copied: whatever the reader raises, it is damage
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DuelError(f"{path} is damaged ({reason}); delete it and run `dvc repro {produced_by}`") from exc


def read_json(path: Path, produced_by: str) -> Any:
    return read_output(path, produced_by, lambda p: json.loads(p.read_text()))


def load_data(cfg: StudyConfig, imbalance: float, draw: int) -> tuple[SourceData, dict[str, Any]]:
    """The source and the manifest of one imbalance setting and LT draw, checked against each other."""
    from duel.data.cache import cached_source  # torch: loaded by the stages that read images, not by every command
    from duel.data.longtail import check_manifest

    manifest = read_json(manifest_path(imbalance, draw), stage_name("prepare", setting(imbalance), draw))
    source = cached_source(cfg.data, cfg.runtime)
    check_manifest(manifest, source)
    return source, manifest
