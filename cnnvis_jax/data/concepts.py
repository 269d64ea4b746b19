"""The embedded concept set: seeded synthetic scenes with Broden-style labels.

Every image is a background layout (the *scene*: field, desert, coast, mountain,
street, living room, corridor) with one to three objects built from parts (a house is
a facade, a triangular roof, a door, a window and maybe a chimney; a car from the side
is a body, windows, disc wheels and a headlight...). Every part and background region
is filled with one of the 11 Broden colours and one fill (solid or one of nine DTD
textures at several orientations and scales), independently of the object's class.
Later objects cover earlier ones and the masks follow what is visible.

The training target is the class of the *main object*, the largest one (see
:func:`cnnvis_jax.data.shapes.draw_image`); ``target="scene"`` uses the scene instead,
the analogue of a Places network.

Labels follow Broden: global numbers from 1 (0 = none), names with Broden's suffixes
(``red-c``, ``street-s``), one fixed :func:`concept_vocabulary`. Pixel-level
categories at the image size: ``object`` (object classes and background regions, every
pixel), ``part`` (every pixel of an object; 0 on background regions except building
windows), ``texture`` (0 on solid fills) and ``color`` (every pixel). ``scene`` is an
image-level label. There is no ``material`` category. Unlike Broden, where textures
are whole DTD images, ``texture`` is pixel-level here.

Determinism: the parameters of image ``index`` of split ``split`` come from a
counter-based hash (splitmix64) of ``(seed, split, index)`` and the drawing uses only
integer arithmetic and exactly rounded float operations, so an image is the same on
every machine and whatever batch it is generated in.

Speed: parameters are drawn by a short Python function per image; rasterization is
vectorized over the batch: each primitive becomes one span per image row, spans are
painted into per-pixel bit sets (one bit per primitive, in drawing order) with a
difference array and a cumulative XOR, and the topmost primitive of every pixel is the
highest set bit. Labels and colours are then single gathers, textures one gather in a
precomputed atlas (:mod:`cnnvis_jax.data.textures`).
"""

from __future__ import annotations

import functools
import itertools
import numbers
from collections.abc import Sequence

import numpy as np

from cnnvis_jax.data import shapes, textures
from cnnvis_jax.data.types import CATEGORIES, Label, Sample, Vocabulary
from cnnvis_jax.errors import InputError

CLASS_NAMES = shapes.CLASS_NAMES
"""Object classes, the default training targets."""
SCENE_CLASS_NAMES = tuple(name[: -len("-s")] for name in shapes.SCENE_NAMES)
"""Scene classes without the ``-s`` suffix (class names for ``target="scene"``)."""
FACETS = shapes.FACETS
COLOR_NAMES = textures.COLOR_NAMES
TEXTURE_NAMES = textures.TEXTURE_NAMES
PART_NAMES = shapes.PART_NAMES
SCENE_NAMES = shapes.SCENE_NAMES
OBJECT_NAMES = shapes.OBJECT_NAMES
PIXEL_CATEGORIES = ("object", "part", "texture", "color")
"""Pixel-level categories of the concept set, in the order of ``pixel`` dicts."""
SPLITS = ("train", "val", "test")
TARGETS = ("object", "scene")
MIN_IMAGE_SIZE = 32

_CHUNK = 128  # images rasterized at once (keeps the working set in cache)
_UNIFORMS = 160  # uniforms drawn per image up front (more are drawn on demand)


# ----------------------------------------------------------------------------- vocabulary


def _numbering() -> dict[str, np.ndarray]:
    """Global label numbers of every index space, as lookup arrays."""
    n = 1
    out = {}
    for key, names in (
        ("color", COLOR_NAMES),
        ("object", OBJECT_NAMES),
        ("part", PART_NAMES),
        ("texture", TEXTURE_NAMES),
        ("scene", SCENE_NAMES),
    ):
        out[key] = np.arange(n, n + len(names), dtype=np.int32)
        n += len(names)
    return out


_NUMBERS = _numbering()
# Index-space lookups (index -> global number); part and fill index 0 means none.
_OBJ_LABEL = _NUMBERS["object"]
_PART_LABEL = np.concatenate([[0], _NUMBERS["part"]]).astype(np.int32)
_COLOR_LABEL = _NUMBERS["color"]
_FILL_LABEL = np.concatenate([[0], _NUMBERS["texture"]]).astype(np.int32)
_VARIANT_LABEL = _FILL_LABEL[textures.VARIANT_FAMILY]
_SCENE_LABEL = _NUMBERS["scene"]


@functools.cache
def concept_vocabulary() -> Vocabulary:
    """The fixed vocabulary of the concept set.

    Numbers: colours 1-11 (Broden's order), then objects (classes, then background
    regions), parts, textures and scenes. Frequencies and coverages are 0 (unknown);
    the Broden export computes them from the exported images.
    """
    labels = []
    for category, names in (
        ("color", COLOR_NAMES),
        ("object", OBJECT_NAMES),
        ("part", PART_NAMES),
        ("texture", TEXTURE_NAMES),
        ("scene", SCENE_NAMES),
    ):
        for number, name in zip(_NUMBERS[category].tolist(), names):
            labels.append(Label(number=number, name=name, categories=(category,)))
    categories = tuple(c for c in CATEGORIES if c in _NUMBERS)
    return Vocabulary(categories=categories, labels=tuple(labels))


# ----------------------------------------------------------------------------- checks


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an integer, got {value!r}.")
    value = int(value)
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in {low}..{high}"
        raise InputError(f"{name} must be {rng}, got {value}.")
    return value


def _check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
    return value


def _split_id(split: str) -> int:
    return SPLITS.index(_check_choice("split", split, SPLITS))


# ----------------------------------------------------------------------------- rasterizer


def _pixel_geometry(prims: np.ndarray, frames: np.ndarray, size: int) -> np.ndarray:
    """float64 (P, 13) primitives in pixel coordinates.

    Args:
      prims: float64 (P, 13) shape, box (u0, v0, u1, v1) and 4 polygon vertices
        (u, v) in frame coordinates (see :mod:`cnnvis_jax.data.shapes`).
      frames: float64 (P, 5) frame (X0, Y0, W, H, mirror) of each primitive, in image
        units.

    Returns:
      The same layout with x, y in pixels (pixel (i, j) spans [j, j+1] x [i, i+1]).
    """
    fx, fy = frames[:, 0:1] * size, frames[:, 1:2] * size
    fw, fh = frames[:, 2:3] * size, frames[:, 3:4] * size
    mirror = frames[:, 4:5] > 0.5
    u0, v0, u1, v1 = prims[:, 1:2], prims[:, 2:3], prims[:, 3:4], prims[:, 4:5]
    u0, u1 = np.where(mirror, 1.0 - u1, u0), np.where(mirror, 1.0 - u0, u1)
    vx, vy = prims[:, 5::2], prims[:, 6::2]
    vx = np.where(mirror, 1.0 - vx, vx)
    out = np.empty_like(prims)
    out[:, 0:1] = prims[:, 0:1]
    out[:, 1:2], out[:, 3:4] = fx + u0 * fw, fx + u1 * fw
    out[:, 2:3], out[:, 4:5] = fy + v0 * fh, fy + v1 * fh
    out[:, 5::2], out[:, 6::2] = fx + vx * fw, fy + vy * fh
    return out


def _spans(geo: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row spans of primitives.

    Args:
      geo: float64 (P, 13) primitives in pixel coordinates (:func:`_pixel_geometry`);
        all four vertices equal means no clipping polygon.
      size: image size S.

    Returns:
      (prim, row, x0, x1), int64 (N,) each: for every row of every primitive that
      covers at least one pixel of that row, the first and one-past-last covered
      column. Pixel (row, x) is covered when its centre (x + 0.5, row + 0.5) is inside
      the shape and inside the clipping polygon (boundaries included).
    """
    shape = geo[:, 0]
    bx0, by0, bx1, by1 = geo[:, 1], geo[:, 2], geo[:, 3], geo[:, 4]
    # Polygon edges as half-planes a*x + b*y + c <= 0, oriented by the centroid.
    vx, vy = geo[:, 5::2], geo[:, 6::2]
    nx, ny = vx[:, [1, 2, 3, 0]], vy[:, [1, 2, 3, 0]]
    a = ny - vy
    b = vx - nx
    c = -(a * vx + b * vy)
    mx = (vx[:, 0:1] + vx[:, 1:2] + vx[:, 2:3] + vx[:, 3:4]) * 0.25
    my = (vy[:, 0:1] + vy[:, 1:2] + vy[:, 2:3] + vy[:, 3:4]) * 0.25
    flip = np.where(a * mx + b * my + c > 0.0, -1.0, 1.0)
    a, b, c = a * flip, b * flip, c * flip
    with np.errstate(divide="ignore", invalid="ignore"):
        # horizontal edges bound the rows
        yb = -c / b
        flat = a == 0.0
        above = np.where(flat & (b < 0.0), yb, -np.inf)
        below = np.where(flat & (b > 0.0), yb, np.inf)
        # other edges bound the columns: x <= alpha + beta*y (a > 0), x >= ... (a < 0)
        alpha, beta = -c / a, -b / a
    top = np.maximum(
        np.maximum(by0, np.maximum(above[:, 0], above[:, 1])), np.maximum(above[:, 2], above[:, 3])
    )
    bottom = np.minimum(
        np.minimum(by1, np.minimum(below[:, 0], below[:, 1])), np.minimum(below[:, 2], below[:, 3])
    )
    right, left = a > 0.0, a < 0.0
    # one row per per-primitive quantity, gathered per (primitive, row) pair below
    table = np.concatenate(
        [
            np.stack(
                [
                    shape,
                    (bx0 + bx1) * 0.5,
                    (by0 + by1) * 0.5,
                    (bx1 - bx0) * 0.5,
                    np.maximum((by1 - by0) * 0.5, 1e-9),
                ]
            ),
            np.where(right, alpha, np.inf).T,
            np.where(right, beta, 0.0).T,
            np.where(left, alpha, -np.inf).T,
            np.where(left, beta, 0.0).T,
        ],
    )
    with np.errstate(invalid="ignore"):
        r0 = np.clip(np.ceil(top - 0.5), 0, size).astype(np.int64)
        r1 = np.clip(np.floor(bottom - 0.5) + 1.0, 0, size).astype(np.int64)
    counts = np.maximum(r1 - r0, 0)
    prim = np.repeat(np.arange(len(geo)), counts)
    row = np.arange(len(prim)) - np.repeat(np.cumsum(counts) - counts - r0, counts)
    t = np.take(table, prim, axis=1)
    yc = row + 0.5
    dy = (yc - t[2]) / t[4]
    d2 = dy * dy
    hw = np.where(t[0] == shapes.ELLIPSE, np.sqrt(np.maximum(1.0 - d2, 0.0)), 1.0)
    hw = np.where(t[0] == shapes.ROUND, np.sqrt(np.sqrt(np.maximum(1.0 - d2 * d2, 0.0))), hw)
    hw *= t[3]
    hi = t[1] + hw
    lo = t[1] - hw
    for i in range(4):
        hi = np.minimum(hi, t[5 + i] + t[9 + i] * yc)
        lo = np.maximum(lo, t[13 + i] + t[17 + i] * yc)
    x0 = np.clip(np.ceil(lo - 0.5), 0, size).astype(np.int64)
    x1 = np.clip(np.floor(hi - 0.5) + 1.0, 0, size).astype(np.int64)
    keep = x1 > x0
    return prim[keep], row[keep], x0[keep], x1[keep]


def _flat(params: list[dict], key: str, dtype) -> np.ndarray:
    """The concatenation of every image's ``key`` list, flattened (tuples unpacked)."""
    items = itertools.chain.from_iterable(p[key] for p in params)
    if key in ("prims", "frames", "ents"):
        items = itertools.chain.from_iterable(items)
    return np.array(list(items), dtype)


def _rasterize(params: list[dict], size: int, out: dict, start: int) -> None:
    """Draws a batch of images from their parameters (see shapes.draw_image) into
    ``out["image"]``, ``out["pixel"][category]`` and ``out["instance"]`` at
    ``start .. start + len(params)``."""
    bsz = len(params)
    stop = start + bsz
    n_prims = np.array([len(p["prims"]) for p in params], np.int64)
    n_ents = np.array([len(p["ents"]) for p in params], np.int64)
    n_frames = np.array([len(p["frames"]) for p in params], np.int64)
    prim_off = np.cumsum(n_prims) - n_prims
    prims = _flat(params, "prims", np.float64).reshape(-1, 14)
    frames = _flat(params, "frames", np.float64).reshape(-1, 5)
    ents = _flat(params, "ents", np.int64).reshape(-1, 8)
    prim_ent = _flat(params, "prim_ent", np.int64) + np.repeat(np.cumsum(n_ents) - n_ents, n_prims)
    prim_frame = _flat(params, "prim_frame", np.int64)
    prim_frame += np.repeat(np.cumsum(n_frames) - n_frames, n_prims)
    img = np.repeat(np.arange(bsz), n_prims)
    slot = np.arange(len(prims)) - np.repeat(prim_off, n_prims)

    geo = _pixel_geometry(prims[:, 1:], frames[prim_frame], size)
    prim, row, x0, x1 = _spans(geo, size)

    # Painter's algorithm over bit sets: primitive k of an image toggles bit k at the
    # first and one past the last column of each of its row spans; a cumulative XOR
    # along the row gives the set of primitives covering each pixel, and the highest
    # set bit (from the float64 exponent; exact for k < 53) the topmost one.
    width = size + 1
    base = (img[prim] * size + row) * width
    weight = np.ldexp(1.0, slot[prim])
    toggles = np.bincount(
        np.concatenate([base + x0, base + x1]),
        np.concatenate([weight, weight]),
        minlength=bsz * size * width,
    )
    bits = toggles.astype(np.uint64).reshape(bsz, size, width)
    np.bitwise_xor.accumulate(bits, axis=2, out=bits)
    exponent = bits[:, :, :size].astype(np.float64).view(np.int64) >> 52
    gid = exponent + (prim_off - 1023)[:, None, None]  # global primitive index

    # Per-primitive tables, then one gather per output.
    pe = ents[prim_ent]
    atlas = textures.texture_atlas(size)
    tile = atlas.shape[1]
    tex_base = pe[:, 3] * (tile * tile) + pe[:, 5] * tile + pe[:, 4]
    yx = np.arange(size)[:, None] * tile + np.arange(size)[None, :]
    level = np.take(atlas.reshape(-1), np.take(tex_base, gid) + yx)
    pal = textures.palettes(ents[:, 2], ents[:, 6]).reshape(-1, 3)
    pal_index = np.take(prim_ent * textures.NUM_LEVELS, gid)
    pal_index += level
    np.take(pal, pal_index, axis=0, out=out["image"][start:stop])
    tables = {
        "object": _OBJ_LABEL[pe[:, 0]],
        "part": _PART_LABEL[pe[:, 1] + 1],
        "texture": _VARIANT_LABEL[pe[:, 3]],
        "color": _COLOR_LABEL[pe[:, 2]],
    }
    for category, table in tables.items():
        np.take(table, gid, out=out["pixel"][category][start:stop, 0])
    np.take(pe[:, 7].astype(np.int32), gid, out=out["instance"][start:stop])


def generate_batch(
    seed: int, split: str, indices, image_size: int = 64
) -> dict[str, np.ndarray | dict[str, np.ndarray]]:
    """Generates concept-set images by index.

    Args:
      seed: data set seed (integer >= 0).
      split: "train", "val" or "test" (independent streams).
      indices: 1-D integer array-like (B,) of image indices (>= 0).
      image_size: S, the image height and width (>= 32).

    Returns:
      A dict of stacked arrays::

        image:        uint8 (B, S, S, 3) RGB
        pixel:        {object, part, texture, color: int32 (B, 1, S, S)} label numbers
        scalar:       {scene: int32 (B, 1)} label numbers
        object_class: int32 (B,) main object's class (index into CLASS_NAMES)
        scene_class:  int32 (B,) scene (index into SCENE_NAMES)
        facet:        int32 (B,) main object's facet (index into FACETS[class])
        instance:     int32 (B, S, S) 0 background, 1 main object, 2.. other objects
        index:        int64 (B,) the indices

      Image ``i`` is the same whatever the other indices of the batch are.
    """
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    split_id = _split_id(split)
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise InputError(f"indices must be a 1-D array of integers, got shape {idx.shape}.")
    idx = idx.astype(np.int64)
    if idx.size and idx.min() < 0:
        raise InputError(f"indices must be >= 0, got {int(idx.min())}.")
    bsz = len(idx)
    s = image_size
    out = {
        "image": np.empty((bsz, s, s, 3), np.uint8),
        "pixel": {c: np.empty((bsz, 1, s, s), np.int32) for c in PIXEL_CATEGORIES},
        "scalar": {"scene": np.empty((bsz, 1), np.int32)},
        "object_class": np.empty(bsz, np.int32),
        "scene_class": np.empty(bsz, np.int32),
        "facet": np.empty(bsz, np.int32),
        "instance": np.empty((bsz, s, s), np.int32),
        "index": idx.copy(),
    }
    keys = textures.stream_keys(seed, split_id, idx)
    for start in range(0, bsz, _CHUNK):
        stop = min(start + _CHUNK, bsz)
        vals = textures.uniforms(keys[start:stop], 0, _UNIFORMS).tolist()
        params = [
            shapes.draw_image(shapes.Stream(keys[start + j : start + j + 1], v), s)
            for j, v in enumerate(vals)
        ]
        _rasterize(params, s, out, start)
        scene = np.array([p["scene"] for p in params], np.int32)
        out["scene_class"][start:stop] = scene
        out["scalar"]["scene"][start:stop, 0] = _SCENE_LABEL[scene]
        out["object_class"][start:stop] = [p["cls"] for p in params]
        out["facet"][start:stop] = [p["facet"] for p in params]
    return out


# ----------------------------------------------------------------------------- source


class ConceptSet:
    """Random-access source of concept-set images (see the module docstring).

    Args:
      size: number of images (indices 0 .. size-1).
      split: "train", "val" or "test"; the splits are independent streams.
      seed: data set seed (integer >= 0).
      image_size: S (>= 32); images are (S, S, 3) and masks (1, S, S).
      target: "object" (main object's class, names in CLASS_NAMES) or "scene"
        (scene class, names in SCENE_CLASS_NAMES).

    ``source[i]`` is a :class:`~cnnvis_jax.data.types.Sample` with ``pixel`` masks for
    object, part, texture and color (int32 (1, S, S) label numbers) and ``scalar``
    ``{"scene": (label,)}``. :meth:`batch` generates many at once, vectorized.
    """

    def __init__(
        self,
        size: int,
        *,
        split: str = "train",
        seed: int = 0,
        image_size: int = 64,
        target: str = "object",
    ):
        self.size = _check_int("size", size, 0)
        self.split = _check_choice("split", split, SPLITS)
        self.seed = _check_int("seed", seed, 0, 2**63 - 1)
        self.image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE)
        self.target = _check_choice("target", target, TARGETS)
        self.vocabulary = concept_vocabulary()
        self.class_names = CLASS_NAMES if target == "object" else SCENE_CLASS_NAMES
        self.facets = FACETS

    def __repr__(self) -> str:
        return (
            f"ConceptSet(size={self.size}, split={self.split!r}, seed={self.seed}, "
            f"image_size={self.image_size}, target={self.target!r})"
        )

    def __len__(self) -> int:
        return self.size

    def _indices(self, indices) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise InputError(f"indices must be a 1-D array of integers, got shape {idx.shape}.")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.size):
            bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
            raise InputError(
                f"index {bad} is out of range; valid indices are 0..{self.size - 1} "
                f"(the set has {self.size} images)."
            )
        return idx

    def batch(self, indices) -> dict:
        """Generates images by index, vectorized.

        Args:
          indices: 1-D integer array-like (B,) in 0 .. len-1.

        Returns:
          ``{"image": uint8 (B, S, S, 3), "target": int32 (B,), "pixel": {category:
          int32 (B, 1, S, S)}, "scalar": {"scene": int32 (B, 1)}, "index": int64 (B,),
          "facet": int32 (B,)}``; ``facet`` indexes FACETS[class] of the main object.
        """
        idx = self._indices(indices)
        out = generate_batch(self.seed, self.split, idx, self.image_size)
        target = out["object_class"] if self.target == "object" else out["scene_class"]
        return {
            "image": out["image"],
            "target": target,
            "pixel": out["pixel"],
            "scalar": out["scalar"],
            "index": out["index"],
            "facet": out["facet"],
        }

    def __getitem__(self, index) -> Sample:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise InputError(f"index must be an integer, got {index!r}.")
        out = self.batch([int(index)])
        return {
            "image": out["image"][0],
            "pixel": {c: m[0] for c, m in out["pixel"].items()},
            "scalar": {"scene": (int(out["scalar"]["scene"][0, 0]),)},
            "target": int(out["target"][0]),
            "index": int(index),
        }
