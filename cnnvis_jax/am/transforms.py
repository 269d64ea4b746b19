"""Random, differentiable image transforms applied before every forward pass.

Each transform is a frozen (hashable) dataclass called as ``t(key, images) ->
images`` on float ``(B, H, W, 3)``; the randomness comes only from ``key`` and is
drawn per image. Output shapes depend only on input shapes (static), so chains
compile once. :func:`chain` composes transforms; :func:`fit` brings the result to
the model's input size (centre crop when larger, bilinear resize when smaller).

Lucid changes the image size in ``random_scale``; here :class:`Scale` and
:class:`Rotate` resample about the centre at the same size (bilinear, edge values
repeated outside), so that shapes stay fixed under ``jit``.

Two kinds of transform see more than ``(key, images)``:

* a *run-aware* transform (``run_aware = True``) is called ``t(key, x, run)`` with a
  :class:`Run`: ``fraction`` = step / (steps - 1) in [0, 1] (traced), for settings
  that move over the run (MACO's crop size), and the model's input ``size``;
* a *multi-view* transform (``views = n > 1``) turns each image into ``n`` views,
  ``(B, H, W, 3) -> (B * n, h, w, 3)`` (image-major: the views of image ``b`` are
  rows ``b * n .. b * n + n - 1``); the render loop scores every view and averages
  the ``n`` objective values of an image (MACO's crops).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from cnnvis_jax.am._tree import normal, randint
from cnnvis_jax.errors import InputError

__all__ = [
    "Run",
    "Crop",
    "Crops",
    "Noise",
    "Jitter",
    "Pad",
    "Rotate",
    "Scale",
    "apply_chain",
    "chain",
    "crop_and_resize",
    "distill_transforms",
    "fit",
    "lucid_transforms",
    "maco_transforms",
    "view_count",
]


class Run(NamedTuple):
    """What a run-aware transform sees besides its key and images."""

    fraction: Any  # step / (steps - 1), a traced float in [0, 1]
    size: tuple[int, int]  # the model's input (height, width)


@dataclasses.dataclass(frozen=True)
class Pad:
    """Pad ``width`` pixels on every side with ``value`` (``None``: reflect)."""

    width: int
    value: float | None = 0.5

    def __call__(self, key, x):
        del key
        pad = ((0, 0), (self.width, self.width), (self.width, self.width), (0, 0))
        if self.value is None:
            return jnp.pad(x, pad, mode="reflect")
        return jnp.pad(x, pad, constant_values=self.value)


@dataclasses.dataclass(frozen=True)
class Jitter:
    """Random crop of size ``(H - d, W - d)`` at an offset in ``0..d`` (Lucid's jitter)."""

    d: int

    def __call__(self, key, x):
        b, h, w, c = x.shape
        if self.d <= 0:
            return x
        if self.d >= min(h, w):
            raise InputError(f"jitter {self.d} is not smaller than the image ({h}x{w}).")
        offsets = randint(key, (b, 2), 0, self.d + 1)

        def crop(image, offset):
            return jax.lax.dynamic_slice(
                image, (offset[0], offset[1], 0), (h - self.d, w - self.d, c)
            )

        return jax.vmap(crop)(x, offsets)


def _resample(x, matrices):
    """Bilinear resampling of (B, H, W, C) about the centre: output pixel ``p``
    reads input ``M (p - c) + c`` (M: (B, 2, 2)); edge values repeat outside."""
    b, h, w, c = x.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=x.dtype), jnp.arange(w, dtype=x.dtype), indexing="ij")
    grid = jnp.stack([yy.reshape(-1) - cy, xx.reshape(-1) - cx])  # (2, H*W)
    coords = jnp.einsum("bij,jp->bip", matrices, grid)  # (B, 2, H*W)
    y = jnp.clip(coords[:, 0] + cy, 0.0, h - 1.0)
    x_ = jnp.clip(coords[:, 1] + cx, 0.0, w - 1.0)
    y0 = jnp.clip(jnp.floor(y), 0, h - 2 if h > 1 else 0).astype(jnp.int32)
    x0 = jnp.clip(jnp.floor(x_), 0, w - 2 if w > 1 else 0).astype(jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
    wy, wx = (y - y0)[..., None], (x_ - x0)[..., None]
    flat = x.reshape(b, h * w, c)

    def tap(yi, xi):
        return jnp.take_along_axis(flat, (yi * w + xi)[..., None], axis=1)

    top = tap(y0, x0) * (1 - wx) + tap(y0, x1) * wx
    bottom = tap(y1, x0) * (1 - wx) + tap(y1, x1) * wx
    return (top * (1 - wy) + bottom * wy).reshape(b, h, w, c)


def _zoom_matrix(n: int, inverse_scale, dtype):
    """(B, n, n) bilinear interpolation along one axis of length ``n`` for zooming
    about the centre: output ``i`` reads input ``(i - c) * inverse_scale + c``
    (clamped to the edge), as :func:`_resample` does per axis."""
    c = (n - 1) / 2.0
    pos = jnp.clip((jnp.arange(n, dtype=dtype) - c) * inverse_scale[:, None] + c, 0.0, n - 1.0)
    lo = jnp.clip(jnp.floor(pos), 0, n - 2 if n > 1 else 0).astype(jnp.int32)
    hi, wt = jnp.minimum(lo + 1, n - 1), (pos - lo)[..., None]
    return jax.nn.one_hot(lo, n, dtype=dtype) * (1 - wt) + jax.nn.one_hot(hi, n, dtype=dtype) * wt


def _zoom(x, inverse_scale):
    """:func:`_resample` for ``M = inverse_scale * I`` (B,), one axis at a time.

    A zoom's bilinear weights factor into a row and a column interpolation, so two
    small matrix products give the same values as the 2-D taps; on CPU they are
    cheaper than per-pixel gathers, and their gradient needs no scatter."""
    b, h, w, c = x.shape
    x = jnp.einsum("bih,bhwc->biwc", _zoom_matrix(h, inverse_scale, x.dtype), x)
    return jnp.einsum("bjw,biwc->bijc", _zoom_matrix(w, inverse_scale, x.dtype), x)


@dataclasses.dataclass(frozen=True)
class Scale:
    """Zoom about the centre by a factor drawn from ``factors`` (same output size)."""

    factors: tuple[float, ...]

    def __call__(self, key, x):
        s = jax.random.choice(key, jnp.asarray(self.factors, x.dtype), (x.shape[0],))
        return _zoom(x, 1.0 / s)


@dataclasses.dataclass(frozen=True)
class Rotate:
    """Rotate about the centre by an angle (degrees) drawn from ``angles``."""

    angles: tuple[float, ...]

    def __call__(self, key, x):
        a = jax.random.choice(key, jnp.asarray(self.angles, x.dtype), (x.shape[0],))
        a = a * (math.pi / 180.0)
        cos, sin = jnp.cos(a), jnp.sin(a)
        m = jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], -2)
        return _resample(x, m)


@dataclasses.dataclass(frozen=True)
class Crop:
    """Centre crop to ``size`` (``None``: the model's input size, as :func:`fit`)."""

    size: tuple[int, int] | None = None

    def __call__(self, key, x):
        del key
        if self.size is None:
            return x  # the render loop fits to the model size after the chain
        return fit(x, self.size)


def _crop_matrix(lo, hi, n_in: int, n_out: int, dtype):
    """Bilinear sampling of ``n_out`` points from ``lo`` to ``hi`` (fractions of the
    input, (...,)) along an axis of ``n_in`` pixels, as TensorFlow's
    ``crop_and_resize``: point ``i`` reads ``lo (n_in - 1) + i (hi - lo) (n_in - 1) /
    (n_out - 1)``. Returns the interpolation matrices (..., n_out, n_in) and whether
    each point lies inside the input (..., n_out) (outside points get no weight)."""
    steps = jnp.arange(n_out, dtype=dtype) / max(n_out - 1, 1)
    pos = (lo[..., None] + (hi - lo)[..., None] * steps) * (n_in - 1)
    inside = (pos >= 0) & (pos <= n_in - 1)
    top = jnp.clip(jnp.floor(pos), 0, n_in - 1).astype(jnp.int32)
    bottom = jnp.clip(jnp.ceil(pos), 0, n_in - 1).astype(jnp.int32)
    wt = (pos - jnp.floor(pos))[..., None]
    m = (
        jax.nn.one_hot(top, n_in, dtype=dtype) * (1 - wt)
        + jax.nn.one_hot(bottom, n_in, dtype=dtype) * wt
    )
    return m * inside[..., None], inside


@dataclasses.dataclass(frozen=True)
class Crops:
    """MACO's random crops (Fel et al. 2023; Xplique's ``maco``): ``views`` square
    crops per image, each resized to ``size`` -- a multi-view, scheduled transform.

    Per crop: centre ``0.5 + N(0, center_sd)`` per axis, side ``N(box, size_sd)``
    clipped to [0.05, 1] (fractions of the image), where ``box`` moves linearly from
    ``box_start`` to ``box_end`` over the run. Sampling is bilinear without
    antialiasing, as TensorFlow's ``crop_and_resize``; a crop reaching outside the
    image reads ``outside`` there (0.5: the value 0 of Xplique's [-1, 1] inputs).

    Maps (B, H, W, 3) to (B * views, size[0], size[1], 3), image-major; ``size``
    None: the model's input size.
    """

    views: int
    size: tuple[int, int] | None = None
    box_start: float = 0.5
    box_end: float = 0.05
    center_sd: float = 0.15
    size_sd: float = 0.05
    outside: float = 0.5
    run_aware = True

    def __post_init__(self):
        if int(self.views) < 1:
            raise InputError(f"crops per step must be at least 1, got {self.views}.")

    def __call__(self, key, x, run: Run):
        b = x.shape[0]
        size = tuple(run.size) if self.size is None else tuple(self.size)
        k_center, k_side = jax.random.split(key)
        centre = 0.5 + normal(k_center, (b, self.views, 2), x.dtype) * self.center_sd
        box = self.box_start + (self.box_end - self.box_start) * run.fraction
        side = normal(k_side, (b, self.views), x.dtype) * self.size_sd + box
        side = jnp.clip(side, 0.05, 1.0)[..., None]
        boxes = jnp.concatenate([centre - side / 2, centre + side / 2], axis=-1)
        crops = crop_and_resize(x, boxes, size, self.outside)
        return crops.reshape(b * self.views, *crops.shape[2:])


def crop_and_resize(x, boxes, size: tuple[int, int], outside: float = 0.0):
    """TensorFlow's ``crop_and_resize`` (bilinear, no antialiasing), per image.

    Args:
      x: (B, H, W, C) images.
      boxes: (B, n, 4) boxes ``(top, left, bottom, right)`` as fractions of the image
        (may reach outside [0, 1]).
      size: (h, w) of every crop.
      outside: the value of crop pixels that fall outside the image.

    Returns:
      (B, n, h, w, C): point ``(i, j)`` of a crop reads ``top (H - 1) + i (bottom -
      top) (H - 1) / (h - 1)`` and likewise across, interpolated bilinearly as two
      small matrix products (no gathers; cheap gradients).
    """
    _, h, w, _ = x.shape
    rows, in_rows = _crop_matrix(boxes[..., 0], boxes[..., 2], h, size[0], x.dtype)
    cols, in_cols = _crop_matrix(boxes[..., 1], boxes[..., 3], w, size[1], x.dtype)
    out = jnp.einsum("bnih,bhwc->bniwc", rows, x)
    out = jnp.einsum("bnjw,bniwc->bnijc", cols, out)
    inside = (in_rows[..., :, None] & in_cols[..., None, :])[..., None]
    return jnp.where(inside, out, jnp.asarray(outside, x.dtype))


@dataclasses.dataclass(frozen=True)
class Noise:
    """Add ``N(0, sd) + U(-sd / 2, sd / 2)`` per pixel (MACO's noise after the crops;
    Xplique's ``noise_intensity`` 0.08 on [-1, 1] inputs is 0.04 on [0, 1] images)."""

    sd: float = 0.04

    def __call__(self, key, x):
        k_normal, k_uniform = jax.random.split(key)
        gauss = normal(k_normal, x.shape, x.dtype) * self.sd
        flat = jax.random.uniform(k_uniform, (x.size,), x.dtype, -self.sd / 2, self.sd / 2)
        return x + gauss + flat.reshape(x.shape)


def fit(x, size: tuple[int, int]):
    """(B, H, W, 3) to (B, size[0], size[1], 3): centre crop when both sides are at
    least as large, bilinear (antialiased) resize otherwise."""
    b, h, w, c = x.shape
    th, tw = size
    if (h, w) == (th, tw):
        return x
    if h >= th and w >= tw:
        top, left = (h - th) // 2, (w - tw) // 2
        return x[:, top : top + th, left : left + tw]
    return jax.image.resize(x, (b, th, tw, c), method="bilinear", antialias=True)


def chain(*transforms) -> tuple:
    """A chain of transforms (a tuple, hashable), applied left to right."""
    for t in transforms:
        if not callable(t):
            raise InputError(f"not a transform: {t!r}.")
    return tuple(transforms)


def apply_chain(transforms: tuple, key, x, run: Run | None = None):
    """Apply ``transforms`` in order, each with its own key split from ``key``;
    run-aware transforms also receive ``run`` (required when there are any)."""
    if not transforms:
        return x
    keys = jax.random.split(key, len(transforms))
    for k, t in zip(keys, transforms):
        if getattr(t, "run_aware", False):
            if run is None:
                raise InputError(f"{type(t).__name__} needs the run's progress and input size.")
            x = t(k, x, run)
        else:
            x = t(k, x)
    return x


def view_count(transforms: tuple) -> int:
    """Views per image a chain makes (the product of its multi-view transforms' ``views``)."""
    return math.prod(int(getattr(t, "views", 1)) for t in transforms)


LUCID_SCALES = tuple(1 + (i - 5) / 50.0 for i in range(11))
"""0.90 .. 1.10 in steps of 0.02 (Lucid's standard_transforms)."""
LUCID_ANGLES = tuple(float(a) for a in list(range(-10, 11)) + 5 * [0])
"""-10 .. 10 degrees plus five extra zeros (Lucid's standard_transforms)."""
DISTILL_SCALES = (1.0, 0.975, 1.025, 0.95, 1.05)
DISTILL_ANGLES = tuple(float(a) for a in range(-5, 6))


def lucid_transforms() -> tuple:
    """Lucid's ``standard_transforms``: pad 12 (0.5), jitter 8, scale, rotate, jitter 4."""
    return chain(Pad(12, 0.5), Jitter(8), Scale(LUCID_SCALES), Rotate(LUCID_ANGLES), Jitter(4))


def distill_transforms() -> tuple:
    """The Distill article's set: pad 16, jitter 16, scale, rotate -5..5, jitter 8, crop."""
    return chain(
        Pad(16, 0.5), Jitter(16), Scale(DISTILL_SCALES), Rotate(DISTILL_ANGLES), Jitter(8), Crop()
    )


MACO_CROPS, MACO_NOISE = 32, 0.04
"""Xplique's ``maco`` defaults: 32 crops per step, noise 0.08 on [-1, 1] (0.04 on [0, 1])."""


def maco_transforms(crops: int = MACO_CROPS) -> tuple:
    """MACO's per-step transforms: :class:`Crops` to the model's input size (box 50%
    to 5% of the canvas over the run), then :class:`Noise`."""
    return chain(Crops(int(crops)), Noise(MACO_NOISE))
