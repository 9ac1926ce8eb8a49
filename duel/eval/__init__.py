"""Frozen-feature evaluation: features, linear probe, kNN, group metrics, t-SNE."""
