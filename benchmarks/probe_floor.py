"""Probe floor: what the study's probes reach with no pretraining at all.

    python benchmarks/probe_floor.py [--imbalance 100] [--draw 0] [--inits 3]

Run in a study checkout after its prepare stage. The probe protocol of params.yaml (linear probe with C
chosen on validation, kNN, many / medium / few by the LT draw's counts; no LT heads) is applied to the
normalised raw pixels and to `--inits` random initialisations of pretrain.backbone that were never
trained. Where this floor is close to the trained encoders' scores, the probe is saturated: it cannot show
what pretraining changed (the D_b vs D_i study on digits in the README is the case that needed it).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from torch import nn

from duel.backbones import build_backbone
from duel.data.augment import normalizer
from pipeline.common import load_data, read_params
from pipeline.probe import probe_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imbalance", type=float, default=100.0)
    parser.add_argument("--draw", type=int, default=0)
    parser.add_argument("--inits", type=int, default=3, help="random initialisations of the backbone")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    cfg = read_params(args.params)  # a tool beside the stages: native kernels, whatever runtime.portable says
    cfg = dataclasses.replace(cfg, probe=dataclasses.replace(cfg.probe, heads=[]))
    source, manifest = load_data(cfg, args.imbalance, args.draw)
    normalize = normalizer(*source.channel_stats())
    encoders: dict[str, nn.Module] = {"raw pixels": nn.Flatten()}
    for init in range(args.inits):
        torch.manual_seed(init)
        encoders[f"untrained {cfg.pretrain.backbone} (init {init})"] = build_backbone(
            cfg.pretrain.backbone, source.channels
        )[0]

    print(f"{cfg.data.source}, imbalance {args.imbalance:g}, draw {args.draw}, probe.train_set {cfg.probe.train_set}")
    print("| encoder | linear top-1 | linear few | kNN top-1 | kNN few |")
    print("|---|---|---|---|---|")
    for name, encoder in encoders.items():
        metrics, _ = probe_encoder(encoder, normalize, source, manifest, cfg)
        cells = [100 * metrics[k] for k in ("linear_top1", "linear_few", "knn_top1", "knn_few")]
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in cells) + " |")


if __name__ == "__main__":
    main()
