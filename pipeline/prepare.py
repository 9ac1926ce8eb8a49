"""Stage 1: the long-tailed manifest of one imbalance setting."""

from __future__ import annotations

from duel.config import to_dict
from duel.data.longtail import build_manifest
from duel.data.sources import load_source
from duel.utils import write_json
from pipeline.common import PARAMS, ImbalanceOption, ParamsOption, check_imbalance, load_params, manifest_path, setting
from pipeline.tracking import StageRun, stage_name


def prepare(
    imbalance: ImbalanceOption,
    params: ParamsOption = PARAMS,
) -> None:
    """Build the LT manifest (indices, per-class counts, seed, source fingerprint)."""
    cfg = load_params(params)
    check_imbalance(cfg, imbalance)
    source = load_source(cfg.data, cfg.runtime)
    manifest = build_manifest(source, cfg.data, cfg.prepare, imbalance)
    config = {"data": to_dict(cfg.data), "prepare": to_dict(cfg.prepare), "imbalance": imbalance}
    metrics = {"num_train": manifest["num_train"], "num_val": len(manifest["val_indices"])}
    with StageRun("prepare", stage_name("prepare", setting(imbalance)), config, cfg.tracking.experiment) as run:
        out = manifest_path(imbalance)
        write_json(out, manifest)
        run.log_metrics(metrics)
        run.log_artifact(out)
