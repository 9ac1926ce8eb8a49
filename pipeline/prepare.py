"""Stage 1: the long-tailed manifest of one imbalance setting and LT draw."""

from __future__ import annotations

from duel.config import StudyConfig, to_dict
from duel.data.cache import cached_source
from duel.data.longtail import build_manifest
from duel.files import write_json
from duel.utils import configure_cpu
from pipeline.common import manifest_path, setting, stage_name
from pipeline.tracking import StageRun


def prepare(cfg: StudyConfig, imbalance: float, draw: int) -> None:
    """The manifest of one setting and draw, written and logged (`pipeline.cli.prepare` checked them)."""
    configure_cpu(cfg.runtime)
    source = cached_source(cfg.data, cfg.runtime)
    manifest = build_manifest(source, cfg.data, cfg.prepare, imbalance, draw)
    config = {"data": to_dict(cfg.data), "prepare": to_dict(cfg.prepare), "imbalance": imbalance, "draw": draw}
    metrics = {"num_train": manifest["num_train"], "num_val": len(manifest["val_indices"])}
    with StageRun("prepare", stage_name("prepare", setting(imbalance), draw), config, cfg.tracking.experiment) as run:
        out = manifest_path(imbalance, draw)
        write_json(out, manifest)
        run.log_metrics(metrics)
        run.log_artifact(out)
