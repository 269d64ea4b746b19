"""Image grids and PNG writing (labelled tiles, as people would rather look than read)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (clipped) or uint8 -> uint8, same shape."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def rescale_each(images: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Min-max rescale every image of (N, ...) to [0, 1] independently (for
    filters, gradients and other signed pictures)."""
    images = np.asarray(images, np.float64)
    axes = tuple(range(1, images.ndim))
    lo = images.min(axis=axes, keepdims=True)
    hi = images.max(axis=axes, keepdims=True)
    return ((images - lo) / np.maximum(hi - lo, eps)).astype(np.float32)


def label_colors(num: int, seed: int = 7) -> np.ndarray:
    """uint8 (num, 3) distinct-ish colours for label numbers; label 0 is black."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(40, 256, size=(num, 3), dtype=np.uint8)
    colors[0] = 0
    return colors


def image_grid(
    images: np.ndarray,
    *,
    ncols: int | None = None,
    labels: Sequence[str] | None = None,
    pad: int = 2,
    scale: int = 1,
    background: int = 255,
) -> np.ndarray:
    """Tile (N, H, W, 3) images into one uint8 picture, optional text under each.

    ``scale`` enlarges each tile by pixel repetition (small images stay crisp).
    """
    tiles = to_uint8(images)
    if tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"image_grid expects (N, H, W, 3) images, got {tiles.shape}.")
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, _ = tiles.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    text_h = 12 if labels is not None else 0
    cell_h, cell_w = h + text_h + pad, w + pad
    canvas = np.full((nrows * cell_h + pad, ncols * cell_w + pad, 3), background, np.uint8)
    for k in range(n):
        r, c = divmod(k, ncols)
        y, x = pad + r * cell_h, pad + c * cell_w
        canvas[y : y + h, x : x + w] = tiles[k]
    if labels is None:
        return canvas
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for k, text in enumerate(labels[:n]):
        r, c = divmod(k, ncols)
        draw.text(
            (pad + c * cell_w, pad + r * cell_h + h),
            str(text)[: max(w // 6, 4)],
            fill=(0, 0, 0),
            font=font,
        )
    return np.asarray(picture)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8/float image as PNG atomically, creating parent folders
    (process 0 alone in a run of several processes)."""
    import io

    from cnnvis_jax.report.files import write_bytes, writes_here

    if not writes_here():
        return Path(path)
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="PNG")
    return write_bytes(path, buffer.getvalue())
