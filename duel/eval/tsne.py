"""2-D t-SNE maps of features (a seeded subsample when there are many points)."""

from __future__ import annotations

import numpy as np
from sklearn.manifold import TSNE


def tsne_embed(
    features: np.ndarray, labels: np.ndarray, perplexity: float, max_points: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    if len(features) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(features), max_points, replace=False))
        features, labels = features[keep], labels[keep]
    perplexity = min(perplexity, (len(features) - 1) / 3)
    coords = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
    return coords, labels
