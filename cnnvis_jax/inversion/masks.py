"""Masks over a layer's features: which target values the inversion must match.

A mask has the layer's activation shape without the batch axis ((H, W, C) or
(C,)), float32 of 0/1; masks multiply (``central(...) * channel_group(...)``).
The inversion's feature loss and its normalization ``‖mask·Φ0‖²`` use only the
masked values, as ``invert_nn.m`` / ``get_preimage_opts.m`` do.
"""

from __future__ import annotations

import math

import numpy as np

from cnnvis_jax.errors import InputError

__all__ = ["central_neighbourhood", "channel_group", "full_mask"]


def _check_shape(shape) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    if len(shape) not in (1, 3):
        raise InputError(f"feature shape must be (H, W, C) or (C,), got {shape}.")
    return shape


def full_mask(shape) -> np.ndarray:
    """All ones of ``shape``."""
    return np.ones(_check_shape(shape), np.float32)


def central_neighbourhood(shape, size: int) -> np.ndarray:
    """Ones on the central ``size × size`` positions of a spatial layer (all channels).

    The window starts at ``ceil((W − n + 1)/2)`` (1-based) with ``n = min(size, W)``,
    as the reference code places it.
    """
    shape = _check_shape(shape)
    if len(shape) != 3:
        raise InputError(
            f"a central neighbourhood needs a spatial layer (H, W, C), got shape {shape}; "
            "use channel_group for fully connected layers."
        )
    if size < 1:
        raise InputError(f"neighbourhood size must be at least 1, got {size}.")
    h, w, _ = shape
    ny, nx = min(size, h), min(size, w)
    y0 = math.ceil((h - ny + 1) / 2) - 1
    x0 = math.ceil((w - nx + 1) / 2) - 1
    mask = np.zeros(shape, np.float32)
    mask[y0 : y0 + ny, x0 : x0 + nx, :] = 1.0
    return mask


def channel_group(shape, group: int, groups: int = 2) -> np.ndarray:
    """Ones on channel group ``group`` (0-based) of ``groups`` equal contiguous groups
    (``groups=2``: the first or the second half, the reference's ``filterGroup``)."""
    shape = _check_shape(shape)
    channels = shape[-1]
    if groups < 1 or groups > channels:
        raise InputError(f"groups must be in 1..{channels} for this layer, got {groups}.")
    if not 0 <= group < groups:
        raise InputError(f"group must be in 0..{groups - 1}, got {group}.")
    bounds = np.round(np.linspace(0, channels, groups + 1)).astype(int)
    mask = np.zeros(shape, np.float32)
    mask[..., bounds[group] : bounds[group + 1]] = 1.0
    return mask
