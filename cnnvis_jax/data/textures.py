"""Colours, texture fills and the counter-based random numbers of the concept set.

Colours are the 11 Broden colour names. Each has a *base* and a *shade* RGB value; a
filled region is drawn with the four palette levels ``base + (shade - base) * l / 3``
(``l`` = 0..3) plus a brightness jitter of at most :data:`MAX_JITTER` on every channel,
so every pixel of a region keeps its colour name whatever its texture does. The palette
is chosen so that the nearest colour segment of any such pixel is its own colour.

Fills are a ``solid`` fill (level 0 everywhere, no texture label) and nine texture
families named as in the Describable Textures Dataset that Broden's texture labels come
from: striped, banded, dotted, chequered, grid, wavy, zigzagged, flecked, blotchy. Each
family has several variants (orientation, scale). All variants of one image size are
precomputed as one uint8 *atlas* of palette levels, ``(num_variants, T, T)`` with
``T = image_size + max_offset``; a region samples its variant at a per-region offset,
so a batch is textured with a single gather.

Every value here is computed with integer arithmetic or exactly rounded float
operations (+, -, *, /, floor), never with library transcendental functions, so the
atlas and the random numbers are bit-identical on every machine and numpy version.
"""

from __future__ import annotations

import functools

import numpy as np

COLOR_NAMES = (
    "black-c", "blue-c", "brown-c", "green-c", "grey-c", "orange-c",
    "pink-c", "purple-c", "red-c", "white-c", "yellow-c",
)  # fmt: skip
"""The 11 Broden colour names, in Broden's (alphabetical) order."""

# Level 0 (base) and level 3 (shade) of each colour, uint8 RGB.
BASE_RGB = np.array(
    [
        (25, 25, 25),  # black
        (35, 70, 215),  # blue
        (125, 75, 35),  # brown
        (45, 165, 55),  # green
        (150, 150, 150),  # grey
        (245, 140, 25),  # orange
        (250, 165, 205),  # pink
        (135, 55, 175),  # purple
        (215, 35, 35),  # red
        (245, 245, 245),  # white
        (245, 220, 45),  # yellow
    ],
    np.int16,
)
SHADE_RGB = np.array(
    [
        (70, 70, 70),  # black
        (20, 40, 150),  # blue
        (90, 50, 20),  # brown
        (25, 110, 35),  # green
        (110, 110, 110),  # grey
        (215, 105, 15),  # orange
        (230, 120, 170),  # pink
        (95, 35, 125),  # purple
        (160, 20, 25),  # red
        (205, 205, 205),  # white
        (210, 185, 25),  # yellow
    ],
    np.int16,
)
NUM_LEVELS = 4
MAX_JITTER = 10

FILL_NAMES = (
    "solid", "striped", "banded", "dotted", "chequered",
    "grid", "wavy", "zigzagged", "flecked", "blotchy",
)  # fmt: skip
"""Fill families; index 0 (``solid``) carries no texture label."""
TEXTURE_NAMES = FILL_NAMES[1:]
"""The texture labels (DTD names), one per textured fill family."""

SOLID = 0


def _variant_specs() -> tuple[tuple[int, tuple], ...]:
    """(family index, parameters) of every fill variant; variant 0 is solid.

    Parameters are in pixels at 64x64 and are scaled with the image size.
    """
    specs: list[tuple[int, tuple]] = [(0, ())]
    for period in (3, 4, 6):  # striped: period, orientation
        for orient in range(4):
            specs.append((1, (period, orient)))
    for period in (10, 16):  # banded
        for orient in range(4):
            specs.append((2, (period, orient)))
    for period in (4, 6, 9):  # dotted: period, hexagonal rows
        for hexa in (0, 1):
            specs.append((3, (period, hexa)))
    for cell in (2, 3, 5):  # chequered: cell, diamond
        for diamond in (0, 1):
            specs.append((4, (cell, diamond)))
    for period in (5, 8):  # grid: period, diagonal
        for diagonal in (0, 1):
            specs.append((5, (period, diagonal)))
    for period, wave in ((4, 12), (6, 20)):  # wavy: period, wavelength, vertical
        for vertical in (0, 1):
            specs.append((6, (period, wave, vertical)))
    for period, wave in ((4, 10), (6, 16)):  # zigzagged
        for vertical in (0, 1):
            specs.append((7, (period, wave, vertical)))
    for density, block in ((0.15, 1), (0.3, 1), (0.15, 2), (0.3, 2)):  # flecked
        specs.append((8, (density, block)))
    for cell in (6, 12):  # blotchy: noise cell size
        specs.append((9, (cell,)))
    return tuple(specs)


VARIANTS = _variant_specs()
"""(family, parameters) of each fill variant (index into the atlas)."""
VARIANT_FAMILY = np.array([fam for fam, _ in VARIANTS], np.int32)
FAMILY_VARIANTS = tuple(
    tuple(i for i, (fam, _) in enumerate(VARIANTS) if fam == f) for f in range(len(FILL_NAMES))
)
"""Variant indices of each fill family."""


# ----------------------------------------------------------------------------- hashing

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer on a uint64 array (wrapping arithmetic)."""
    z = np.asarray(z, np.uint64)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def stream_keys(seed: int, stream: int, indices: np.ndarray) -> np.ndarray:
    """uint64 (N,): one key per index, from (seed, stream, index)."""
    idx = np.asarray(indices, np.int64).astype(np.uint64)
    k = mix64(np.array([seed], np.uint64) ^ _GOLDEN)
    k = mix64(k ^ np.array([stream], np.uint64))
    return mix64(np.broadcast_to(k, idx.shape) ^ idx)


def uniforms(keys: np.ndarray, start: int, count: int) -> np.ndarray:
    """float64 (N, count) in [0, 1): values ``start .. start+count-1`` of each key's
    stream. Value r of a key is the same whatever else is computed with it."""
    keys = np.asarray(keys, np.uint64)
    r = np.arange(start + 1, start + count + 1, dtype=np.uint64) * _GOLDEN
    z = mix64(keys[:, None] + r[None, :])
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


# ----------------------------------------------------------------------------- atlas


def _scaled(n: float, scale: float, low: int) -> int:
    return max(low, int(n * scale + 0.5))


def _noise(shape: tuple[int, int], salt: int) -> np.ndarray:
    """float64 uniform [0, 1) noise over a grid, fixed by ``salt``."""
    h, w = shape
    keys = stream_keys(salt, 7, np.arange(h, dtype=np.int64))
    return uniforms(keys, 0, w)


def _smooth_wave(phase: np.ndarray) -> np.ndarray:
    """A sine-like periodic wave in [-1, 1] (piecewise parabola), period 1."""
    t = phase - np.floor(phase)
    return np.where(t < 0.5, 16.0 * t * (0.5 - t), -16.0 * (t - 0.5) * (1.0 - t))


def _zigzag_wave(phase: np.ndarray) -> np.ndarray:
    t = phase - np.floor(phase)
    return 4.0 * np.abs(t - 0.5) - 1.0


def _band(v: np.ndarray, period: float) -> np.ndarray:
    """Level 3 on the first half of each period of ``v``, 0 on the second."""
    return np.where(np.mod(v, period) * 2.0 < period, 3, 0)


def _render_variant(family: int, params: tuple, tile: int, scale: float) -> np.ndarray:
    yy, xx = np.meshgrid(np.arange(tile, dtype=np.float64), np.arange(tile, dtype=np.float64))
    yy, xx = yy.T, xx.T  # yy[i, j] = i (row), xx[i, j] = j (column)
    if family == 0:
        return np.zeros((tile, tile), np.uint8)
    if family in (1, 2):
        period, orient = params
        p = _scaled(period, scale, 2)
        v = (yy, xx, xx + yy, xx - yy + tile)[orient]
        if orient >= 2:  # keep the stripe width along the normal close to p
            p = _scaled(period * 1.41, scale, 3)
        out = _band(v, p)
    elif family == 3:
        period, hexa = params
        p = _scaled(period, scale, 3)
        row = np.floor(yy / p)
        x = xx + (np.mod(row, 2.0) * (p // 2) if hexa else 0.0)
        dx = np.mod(x, p) * 2.0 - (p - 1)
        dy = np.mod(yy, p) * 2.0 - (p - 1)
        radius2 = 0.6 * p
        out = np.where(dx * dx + dy * dy <= radius2 * radius2, 3, 0)
    elif family == 4:
        cell, diamond = params
        if diamond:
            c = _scaled(cell * 1.41, scale, 2)
            a = np.floor((xx + yy) / c) + np.floor((xx - yy + tile) / c)
        else:
            c = _scaled(cell, scale, 1)
            a = np.floor(xx / c) + np.floor(yy / c)
        out = np.where(np.mod(a, 2.0) == 0.0, 3, 0)
    elif family == 5:
        period, diagonal = params
        p = _scaled(period, scale, 3)
        width = _scaled(1, scale, 1)
        if diagonal:
            p = _scaled(period * 1.41, scale, 3)
            a, b = xx + yy, xx - yy + tile
        else:
            a, b = xx, yy
        out = np.where((np.mod(a, p) < width) | (np.mod(b, p) < width), 3, 0)
    elif family in (6, 7):
        period, wave, vertical = params
        p = _scaled(period, scale, 3)
        length = _scaled(wave, scale, 6)
        along, across = (yy, xx) if vertical else (xx, yy)
        shape_fn = _smooth_wave if family == 6 else _zigzag_wave
        out = _band(across + 0.6 * p * shape_fn(along / length), p)
    elif family == 8:
        density, block = params
        b = _scaled(block, scale, 1)
        n = _noise(((tile + b - 1) // b, (tile + b - 1) // b), 1000 + b)
        n = np.repeat(np.repeat(n, b, axis=0), b, axis=1)[:tile, :tile]
        out = np.where(n < density, 3, 0)
    elif family == 9:
        (cell,) = params
        c = _scaled(cell, scale, 3)
        g = tile // c + 2
        n = _noise((g, g), 2000 + c)
        fy, fx = yy / c, xx / c
        iy, ix = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
        ty, tx = fy - iy, fx - ix
        # smoothstep weights for rounder blobs
        ty = ty * ty * (3.0 - 2.0 * ty)
        tx = tx * tx * (3.0 - 2.0 * tx)
        top = n[iy, ix] * (1.0 - tx) + n[iy, ix + 1] * tx
        bottom = n[iy + 1, ix] * (1.0 - tx) + n[iy + 1, ix + 1] * tx
        value = top * (1.0 - ty) + bottom * ty
        out = np.clip(np.floor((value - 0.2) * 6.0), 0, 3)
    else:  # pragma: no cover - guarded by _variant_specs
        raise AssertionError(family)
    return out.astype(np.uint8)


def max_offset(image_size: int) -> int:
    """The range [0, max_offset) of per-region texture offsets at an image size."""
    return max(16, image_size // 2)


@functools.lru_cache(maxsize=4)
def texture_atlas(image_size: int) -> np.ndarray:
    """uint8 (num_variants, T, T) palette levels (0..3) of every fill variant, with
    ``T = image_size + max_offset(image_size)``. Read-only; cached per image size."""
    tile = image_size + max_offset(image_size)
    scale = image_size / 64.0
    atlas = np.stack([_render_variant(f, p, tile, scale) for f, p in VARIANTS])
    atlas.setflags(write=False)
    return atlas


def palettes(colors: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """uint8 (N, NUM_LEVELS, 3): the palette levels of N regions.

    Args:
      colors: int (N,) colour indices into :data:`COLOR_NAMES`.
      jitter: int (N,) brightness offsets in [-MAX_JITTER, MAX_JITTER].
    """
    base = BASE_RGB[colors].astype(np.int32)
    shade = SHADE_RGB[colors].astype(np.int32)
    levels = np.arange(NUM_LEVELS, dtype=np.int32)[None, :, None]
    # round-half-up integer interpolation
    value = base[:, None, :] * 3 + (shade - base)[:, None, :] * levels
    value = (2 * value + 3) // 6 + np.asarray(jitter, np.int32)[:, None, None]
    return np.clip(value, 0, 255).astype(np.uint8)


def nearest_color(rgb: np.ndarray) -> np.ndarray:
    """int (...,): index of the colour whose base-shade segment is nearest to each
    RGB value (the colour naming rule the palette is designed for)."""
    p = np.asarray(rgb, np.float64)[..., None, :]
    a = BASE_RGB.astype(np.float64)
    d = SHADE_RGB.astype(np.float64) - a
    t = np.clip(((p - a) * d).sum(-1) / (d * d).sum(-1), 0.0, 1.0)
    q = a + t[..., None] * d
    return np.argmin(((p - q) ** 2).sum(-1), axis=-1)
