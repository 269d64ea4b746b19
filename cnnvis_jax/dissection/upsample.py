"""Bilinear upsampling of activation maps that matches PIL's ``Image.resize(BILINEAR)``.

NetDissect-Lite upsamples every float32 activation map with
``Image.fromarray(map).resize((sw, sh), Image.BILINEAR)``. PIL resamples separably
(horizontal pass, then vertical) with a triangle filter; for each output pixel ``x``

    center = (x + 0.5) * scale,      scale = in / out
    support = max(scale, 1)          (the filter widens when shrinking)
    taps    = int(center - support + 0.5) .. int(center + support + 0.5) - 1,
              clipped to the input
    weight  = triangle((tap - center + 0.5) / max(scale, 1)), normalized to sum 1

:func:`pil_taps` computes these taps exactly as PIL does (float64), and
:func:`upsample` applies them on device as two
small matrix products (one per axis).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.errors import InputError


class Taps(NamedTuple):
    """Resampling taps of one axis.

    Attributes:
      index: int32 (out, T) input positions (padded rows repeat position 0).
      weight: float64 (out, T) weights, as PIL computes them (padded taps weigh 0);
        rows sum to 1.
    """

    index: np.ndarray
    weight: np.ndarray


def _triangle(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


@functools.lru_cache(maxsize=64)
def pil_taps(size_in: int, size_out: int) -> Taps:
    """PIL's bilinear taps (see the module docstring) for ``size_in -> size_out``."""
    if size_in < 1 or size_out < 1:
        raise InputError(f"resize sizes must be positive, got {size_in} -> {size_out}.")
    scale = size_in / size_out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    rows: list[list[tuple[int, float]]] = []
    for x in range(size_out):
        center = (x + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), size_in)
        ws = [_triangle((i + xmin - center + 0.5) / filterscale) for i in range(xmax - xmin)]
        total = sum(ws)
        if total != 0.0:
            ws = [w / total for w in ws]
        rows.append([(xmin + i, w) for i, w in enumerate(ws) if w != 0.0])
    width = max(1, max(len(r) for r in rows))
    index = np.zeros((size_out, width), np.int32)
    weight = np.zeros((size_out, width), np.float64)
    for x, row in enumerate(rows):
        for t, (i, w) in enumerate(row):
            index[x, t] = i
            weight[x, t] = w
    return Taps(index, weight)


def layer_taps(feature_hw: tuple[int, int], seg_hw: tuple[int, int]) -> tuple[Taps, Taps]:
    """(rows, cols) taps taking a ``feature_hw`` map to ``seg_hw``."""
    return pil_taps(int(feature_hw[0]), int(seg_hw[0])), pil_taps(
        int(feature_hw[1]), int(seg_hw[1])
    )


def dense(taps: Taps, size_in: int) -> np.ndarray:
    """float32 (out, in) resampling matrix of ``taps``."""
    out = np.zeros((taps.index.shape[0], int(size_in)), np.float64)
    rows = np.repeat(np.arange(taps.index.shape[0]), taps.index.shape[1])
    np.add.at(out, (rows, taps.index.reshape(-1)), taps.weight.reshape(-1))
    return out.astype(np.float32)


def layer_matrices(
    feature_hw: tuple[int, int], seg_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(rows (sh, h), cols (sw, w)) PIL-bilinear matrices taking ``feature_hw`` to ``seg_hw``."""
    rows, cols = layer_taps(feature_hw, seg_hw)
    return dense(rows, feature_hw[0]), dense(cols, feature_hw[1])


def upsample(maps: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """Resize ``maps`` (B, h, w, U) to (B, sh, sw, U) with PIL's bilinear filter.

    ``rows`` (sh, h) and ``cols`` (sw, w) are the matrices of :func:`layer_matrices`
    (pass them as jit arguments). Horizontal pass first, then vertical, as PIL does;
    full float32 precision on every backend.
    """
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("jw,bhwu->bhju", cols, maps.astype(jnp.float32), precision=hi)
    return jnp.einsum("ih,bhju->biju", rows, x, precision=hi)
