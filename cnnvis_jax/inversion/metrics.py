"""Reconstruction metrics, per image.

* normalized feature error ``‖Φ(x*) − Φ0‖² / ‖Φ0‖²`` (the papers' error; its root
  is the percentage they print), Φ0 the features of the original image;
* normalized image error ``‖x* − x0‖² / ‖x0‖²`` on images in [0, 1] (x* clipped to
  [0, 1], as displayed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnnvis_jax.model import Model

__all__ = ["normalized_error", "normalized_feature_error", "normalized_image_error"]


def normalized_error(estimate, reference) -> np.ndarray:
    """``‖a − b‖² / ‖b‖²`` per leading index: (N, ...) x (N, ...) -> float64 (N,).
    Images with ``‖b‖ = 0`` give ``inf`` (or ``nan`` when ``a = b = 0``)."""
    a = np.asarray(estimate, np.float64)
    b = np.asarray(reference, np.float64)
    axes = tuple(range(1, b.ndim))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum((a - b) ** 2, axis=axes) / np.sum(b * b, axis=axes)


def normalized_image_error(reconstructions, originals) -> np.ndarray:
    """(N, H, W, 3) x (N, H, W, 3) in [0, 1] -> (N,); reconstructions clipped first."""
    return normalized_error(np.clip(np.asarray(reconstructions), 0.0, 1.0), originals)


def normalized_feature_error(
    model: Model, layer: str, reconstructions, reference_features
) -> np.ndarray:
    """Features of ``reconstructions`` (N, H, W, 3) at ``layer`` against
    ``reference_features`` (N, *shape) -> (N,)."""
    from cnnvis_jax.inversion.regularized import features_of

    images = np.clip(np.asarray(reconstructions, np.float32), 0.0, 1.0)
    feats = features_of(model, images, (layer,))[model.resolve(layer)]
    return normalized_error(feats, reference_features)


def summarize(errors: Sequence[float]) -> dict:
    """``{"mean", "median", "std"}`` of per-image errors (finite ones)."""
    e = np.asarray(errors, np.float64)
    e = e[np.isfinite(e)]
    if e.size == 0:
        return {"mean": float("nan"), "median": float("nan"), "std": float("nan")}
    return {"mean": float(e.mean()), "median": float(np.median(e)), "std": float(e.std())}
