"""The canvas: an image larger than the network's input, optimized one crop at a time.

Two published methods move a window over a larger image: regularized inversion's
jitter (Mahendran & Vedaldi: the canvas is ``J - 1`` pixels larger, each step sees a
uniformly drawn ``H × W`` crop, the result is the central crop) and MFV's centre bias
(Nguyen et al.: a canvas zoomed at every octave, crops drawn from a Gaussian around
its centre, only the crop is updated). Both use these functions; every function
works on one image ``(Hc, Wc, C)`` and is vmapped by the caller.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "centre",
    "crop",
    "gaussian_origins",
    "jitter_origin",
    "paste",
    "place",
    "zoom",
]


def crop(canvas: jax.Array, origin: jax.Array, size: tuple[int, int]) -> jax.Array:
    """The ``size`` window of ``canvas`` (Hc, Wc, C) at ``origin`` int (2,) (row, col)."""
    return jax.lax.dynamic_slice(canvas, (origin[0], origin[1], 0), (*size, canvas.shape[-1]))


def paste(canvas: jax.Array, window: jax.Array, origin: jax.Array) -> jax.Array:
    """``canvas`` with ``window`` written at ``origin`` (the inverse of :func:`crop`)."""
    return jax.lax.dynamic_update_slice(canvas, window, (origin[0], origin[1], 0))


def place(image: jax.Array, jitter: int) -> jax.Array:
    """``image`` (H, W, C) in a zero canvas ``jitter - 1`` pixels larger, at offset
    ``floor((J - 1) / 2)`` (the inversion code's ``initialImage`` placement)."""
    if jitter == 1:
        return image
    h, w, c = image.shape
    off = (jitter - 1) // 2
    out = jnp.zeros((h + jitter - 1, w + jitter - 1, c), image.dtype)
    return jax.lax.dynamic_update_slice(out, image, (off, off, 0))


def centre(canvas: jax.Array, size: tuple[int, int], jitter: int) -> jax.Array:
    """The image of a canvas made by :func:`place` with ``jitter``."""
    off = (jitter - 1) // 2
    return jax.lax.dynamic_slice(canvas, (off, off, 0), (*size, canvas.shape[-1]))


def jitter_origin(key: jax.Array, jitter: int) -> jax.Array:
    """int32 (2,): a uniform crop origin in ``[0, J)`` per axis (inversion's jitter)."""
    return jax.random.randint(key, (2,), 0, jitter)


def gaussian_origins(key: jax.Array, count: int, canvas: tuple[int, int],
                     size: tuple[int, int], window) -> jax.Array:  # fmt: skip
    """int32 (count, 2): MFV's crop origins, drawn around the canvas centre with
    standard deviation ``window · (canvas - size)``, clipped to the canvas and
    truncated to pixels (the release's ``int()``)."""
    ch, cw = canvas
    h, w = size
    mid = jnp.asarray([(ch - h) / 2.0, (cw - w) / 2.0])
    spread = jnp.asarray([float(ch - h), float(cw - w)]) * window
    # drawn flat and reshaped (multi-dimensional draws compile far more slowly on CPU)
    draw = mid + spread * jax.random.normal(key, (count * 2,), jnp.float32).reshape(count, 2)
    return jnp.clip(draw, 0, jnp.asarray([ch - h, cw - w])).astype(jnp.int32)


def zoom(canvas: jax.Array, scale: float) -> jax.Array:
    """Canvases (B, Hc, Wc, C) resized by ``scale`` (bicubic; MFV's octave zoom)."""
    if scale == 1.0:
        return canvas
    b, ch, cw, c = canvas.shape
    return jax.image.resize(canvas, (b, round(ch * scale), round(cw * scale), c), method="cubic")
