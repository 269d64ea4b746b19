"""Inversion with a trained decoder: features (optionally perturbed) -> images."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from cnnvis_jax.inversion.decoder import Decoder
from cnnvis_jax.inversion.io import check_decoder
from cnnvis_jax.inversion.regularized import features_of
from cnnvis_jax.model import Model

__all__ = ["decode", "reconstruct"]


@functools.lru_cache(maxsize=16)
def _decode_fn():
    return jax.jit(lambda decoder, f: decoder.apply(decoder.params, f))


def decode(decoder: Decoder, features: Any, batch_size: int = 64) -> np.ndarray:
    """Decode features (N, *feature_shape) in fixed-size batches -> float32 (N, H, W, 3)."""
    f = np.asarray(features, np.float32)
    if f.shape == decoder.feature_shape:
        f = f[None]
    n = len(f)
    size = min(batch_size, n)
    out = []
    fn = _decode_fn()
    for start in range(0, n, size):
        chunk = f[start : start + size]
        pad = size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        out.append(np.asarray(fn(decoder, chunk))[: size - pad])
    return np.concatenate(out)


def reconstruct(
    model: Model,
    decoder: Decoder,
    images01: Any,
    *,
    transform: Callable[[str, np.ndarray], np.ndarray] | None = None,
    model_fp: str | None = None,
) -> np.ndarray:
    """Reconstruct images (N, H, W, 3) in [0, 1] from their features at the decoder's
    layer, after ``transform(layer, features)`` when given. Refuses a decoder of
    another layer or model (:func:`.io.check_decoder`)."""
    check_decoder(decoder, model, decoder.layer, model_fp)
    feats = features_of(model, images01, (decoder.layer,))[decoder.layer]
    if transform is not None:
        feats = np.asarray(transform(decoder.layer, feats), np.float32)
    return decode(decoder, feats)
