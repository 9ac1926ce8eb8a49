"""Stage 1: the long-tailed manifest of one imbalance setting and LT draw."""

from __future__ import annotations

from duel.config import to_dict
from duel.data.cache import cached_source
from duel.data.longtail import build_manifest
from duel.utils import write_json
from pipeline.common import (
    PARAMS,
    DrawOption,
    ImbalanceOption,
    ParamsOption,
    check_imbalance,
    load_params,
    manifest_path,
    setting,
    stage_name,
)
from pipeline.tracking import StageRun


def prepare(
    imbalance: ImbalanceOption,
    draw: DrawOption = 0,
    params: ParamsOption = PARAMS,
) -> None:
    """Build the manifest (validation split, pool, LT subset, its balanced match, counts, source fingerprint)."""
    cfg = load_params(params)
    check_imbalance(cfg, imbalance)
    source = cached_source(cfg.data, cfg.runtime)
    manifest = build_manifest(source, cfg.data, cfg.prepare, imbalance, draw)
    config = {"data": to_dict(cfg.data), "prepare": to_dict(cfg.prepare), "imbalance": imbalance, "draw": draw}
    metrics = {"num_train": manifest["num_train"], "num_val": len(manifest["val_indices"])}
    with StageRun("prepare", stage_name("prepare", setting(imbalance), draw), config, cfg.tracking.experiment) as run:
        out = manifest_path(imbalance, draw)
        write_json(out, manifest)
        run.log_metrics(metrics)
        run.log_artifact(out)
