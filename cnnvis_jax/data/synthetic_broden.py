"""A small synthetic data set in Broden's own format, for parity runs against the
reference dissection code and for tests of the Broden path end to end.

Unlike :func:`~cnnvis_jax.data.broden_export.export_broden` (which writes the embedded
concept set), this generator reproduces the *structure* of the real Broden release,
so that every code path of a Broden reader and of a dissection tally is exercised:

* six categories in category.csv order ``color, object, part, material, scene,
  texture``; color, object, part and material are pixel-level, scene and texture
  image-level (bare integers in index.csv);
* four kinds of rows, like Broden's four sources (``images/<source>/...``):
  ``ade20k`` (object, part, material, scene, color), ``pascal`` (object, part,
  color), ``opensurfaces`` (material, color) and ``dtd`` (texture, color); every row
  has a colour map, as in Broden;
* parts with one or two mask layers (a pixel may carry a part label in both);
* labels that belong to two categories (listed as ``material(n);object(m)`` in
  label.csv and present in both c_*.csv files) with different coverages, and one
  label whose coverage is equal in both, so the primary-category rule and its
  tie-break matter;
* a few ``ade20k`` rows whose scene cell is ``0`` (1,987 real ADE rows are), which
  NetDissect-Lite scores as an ordinary label.

Images are PNG (lossless, so every reader decodes the same bytes) of size ``S``;
masks are ``(S // 2, S // 2)`` label PNGs (label = R + 256 * G). Everything is a
function of ``seed`` through ``numpy.random.default_rng`` and Pillow's bilinear
resize, so the same call writes the same files on any machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from cnnvis_jax.data import textures
from cnnvis_jax.data.broden_export import _write_csv, downsample_labels, encode_label_png
from cnnvis_jax.errors import InputError

CATEGORY_ORDER = ("color", "object", "part", "material", "scene", "texture")
COLORS = textures.COLOR_NAMES
OBJECTS = ("sky", "tree", "building", "road", "person", "car", "grass", "water", "table")
PARTS = ("head", "leg", "wheel", "window", "door", "roof", "arm", "torso")
MATERIALS = ("metal", "glass", "fabric", "stone", "plastic")
SHARED = ("wood", "brick")
"""Labels in both ``object`` and ``material``: wood's coverage differs between the
two categories, brick's is equal (the tie-break decides)."""
SCENES = ("street", "kitchen", "bedroom", "forest", "beach", "office")
TEXTURES = ("banded", "dotted", "striped", "chequered", "zigzagged", "grid")
SOURCES = ("ade20k", "pascal", "opensurfaces", "dtd")
PART_OF = {
    "person": ("head", "arm", "leg", "torso"),
    "car": ("wheel", "window", "door"),
    "building": ("window", "door", "roof"),
    "table": ("leg",),
}


def _vocabulary() -> tuple[dict[str, int], dict[str, tuple[str, ...]]]:
    """``({name: number}, {name: categories})`` with numbers 1.. in a fixed order."""
    entries = (
        [(c, ("color",)) for c in COLORS]
        + [(o, ("object",)) for o in OBJECTS]
        + [(s, ("object", "material")) for s in SHARED]
        + [(p, ("part",)) for p in PARTS]
        + [(m, ("material",)) for m in MATERIALS]
        + [(s, ("scene",)) for s in SCENES]
        + [(t, ("texture",)) for t in TEXTURES]
    )
    numbers = {name: i + 1 for i, (name, _) in enumerate(entries)}
    return numbers, dict(entries)


def _smooth(rng: np.random.Generator, size: int, grid: int, channels: int) -> np.ndarray:
    """float (size, size, channels) in [0, 1]: a random grid upsampled bilinearly."""
    small = rng.random((grid, grid, channels)).astype(np.float32)
    out = np.empty((size, size, channels), np.float32)
    for c in range(channels):
        im = Image.fromarray(small[..., c], mode="F").resize((size, size), Image.BILINEAR)
        out[..., c] = np.asarray(im)
    return out


def _ellipse(size: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def _rect(size: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return m


def _pattern(size: int, kind: int, period: int, phase: int) -> np.ndarray:
    """float (size, size) in [0, 1]: one of six periodic patterns (texture images)."""
    y, x = np.mgrid[0:size, 0:size]
    p = max(period, 2)
    if kind == 0:  # banded
        v = ((y + phase) // p) % 2
    elif kind == 1:  # dotted
        v = ((y % p - p / 2) ** 2 + (x % p - p / 2) ** 2) < (p / 4) ** 2
    elif kind == 2:  # striped (diagonal)
        v = ((x + y + phase) // p) % 2
    elif kind == 3:  # chequered
        v = ((x // p) + (y // p)) % 2
    elif kind == 4:  # zigzagged
        v = ((y + np.abs((x % (2 * p)) - p) + phase) // p) % 2
    else:  # grid
        v = ((x % p) < 2) | ((y % p) < 2)
    return np.asarray(v, np.float32)


class _Row:
    """One image being drawn: the picture and its per-category masks."""

    def __init__(self, size: int):
        self.size = size
        self.image = np.zeros((size, size, 3), np.float32)
        self.masks: dict[str, list[np.ndarray]] = {}
        self.scalar: dict[str, list[int]] = {}

    def paint(self, region: np.ndarray, rgb: np.ndarray, texture: np.ndarray | None = None):
        colour = rgb[None, None, :] / 255.0
        if texture is not None:
            colour = colour * (0.75 + 0.25 * texture[..., None])
        self.image = np.where(region[..., None], colour, self.image)

    def layer(self, category: str, k: int = 0) -> np.ndarray:
        layers = self.masks.setdefault(category, [])
        while len(layers) <= k:
            layers.append(np.zeros((self.size, self.size), np.int32))
        return layers[k]


def _draw_row(rng: np.random.Generator, source: str, size: int, numbers: dict) -> _Row:
    row = _Row(size)
    base = textures.BASE_RGB.astype(np.float32)
    background = _smooth(rng, size, 4, 3)
    tint = base[rng.integers(len(base))]
    row.image = 0.5 * background + 0.5 * tint[None, None, :] / 255.0
    if source in ("ade20k", "pascal"):
        if source == "ade20k":
            # a full-width "stuff" object at the top or bottom, as ADE's sky/road/grass
            stuff = OBJECTS[rng.choice([0, 3, 6, 7])]
            cut = int(rng.integers(size // 5, size // 2))
            top = bool(rng.integers(2))
            region = _rect(size, 0, 0, cut, size) if top else _rect(size, size - cut, 0, size, size)
            row.paint(region, base[rng.integers(len(base))], _smooth(rng, size, 8, 1)[..., 0])
            row.layer("object")[region] = numbers[stuff]
        for _ in range(int(rng.integers(1, 4))):
            name = (OBJECTS + SHARED)[rng.integers(len(OBJECTS) + len(SHARED))]
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            ry, rx = rng.uniform(0.12, 0.3, 2) * size
            region = (
                _ellipse(size, cy, cx, ry, rx)
                if rng.integers(2)
                else _rect(size, int(cy - ry), int(cx - rx), int(cy + ry), int(cx + rx))
            )
            rgb = base[rng.integers(len(base))]
            row.paint(region, rgb, _smooth(rng, size, 16, 1)[..., 0])
            row.layer("object")[region] = numbers[name]
            if name in SHARED and source == "ade20k":
                row.layer("material")[region] = numbers[name]
            for k, part in enumerate(PART_OF.get(name, ())[: int(rng.integers(1, 5))]):
                py = cy + rng.uniform(-0.6, 0.6) * ry
                px = cx + rng.uniform(-0.6, 0.6) * rx
                pr = rng.uniform(0.25, 0.5) * min(ry, rx)
                part_region = _ellipse(size, py, px, pr, pr * rng.uniform(0.6, 1.4)) & region
                row.paint(part_region, base[rng.integers(len(base))])
                # parts overlap in two layers, as Broden's multi-layer part masks
                row.layer("part", k % 2)[part_region] = numbers[part]
        if source == "ade20k":
            scene = int(rng.integers(len(SCENES) + 1))
            # scene cell 0 ("none") in about one row in seven, as in ADE
            row.scalar["scene"] = [0 if scene == len(SCENES) else numbers[SCENES[scene]]]
    if source in ("ade20k", "opensurfaces"):
        for _ in range(int(rng.integers(1, 3))):
            name = (MATERIALS + SHARED)[rng.integers(len(MATERIALS) + len(SHARED))]
            y0, x0 = rng.integers(0, size * 3 // 4, 2)
            h, w = rng.integers(size // 6, size // 2, 2)
            region = _rect(size, int(y0), int(x0), int(y0 + h), int(x0 + w))
            kind = int(rng.integers(6))
            pattern = _pattern(size, kind, int(rng.integers(4, 12)), int(rng.integers(8)))
            row.paint(region, base[rng.integers(len(base))], pattern)
            row.layer("material")[region] = numbers[name]
            if name == "brick" and source == "ade20k":
                row.layer("object")[region] = numbers[name]
    if source == "dtd":
        kind = int(rng.integers(len(TEXTURES)))
        pattern = _pattern(size, kind, int(rng.integers(5, 16)), int(rng.integers(8)))
        a, b = base[rng.choice(len(base), 2, replace=False)]
        row.image = (
            a[None, None] * pattern[..., None] + b[None, None] * (1 - pattern[..., None])
        ) / 255
        row.scalar["texture"] = [numbers[TEXTURES[kind]]]
    noise = rng.normal(0.0, 0.03, row.image.shape).astype(np.float32)
    row.image = np.clip(row.image + noise, 0.0, 1.0)
    return row


def write_synthetic_broden(
    out_dir: str | os.PathLike,
    *,
    images: int = 160,
    image_size: int = 224,
    seed: int = 0,
    val_fraction: float = 0.25,
) -> Path:
    """Writes a synthetic Broden directory (see the module docstring) and returns it.

    Args:
      out_dir: folder to create (must not hold an index.csv already).
      images: number of rows (>= 8, so that each of the four sources appears twice).
      image_size: S, the image side (224 as broden1_224, 227 as broden1_227); masks
        are (S // 2) square.
      seed: everything drawn is a function of it.
      val_fraction: share of rows in the ``val`` split (the rest are ``train``).
    """
    if int(images) != images or images < 8:
        raise InputError(f"images must be an integer >= 8, got {images!r}.")
    if int(image_size) != image_size or image_size < 32:
        raise InputError(f"image_size must be an integer >= 32, got {image_size!r}.")
    if not 0.0 <= val_fraction <= 1.0:
        raise InputError(f"val_fraction must be in [0, 1], got {val_fraction!r}.")
    out = Path(out_dir)
    if (out / "index.csv").exists():
        raise InputError(f"{out} already holds a Broden index.csv; choose an empty folder.")
    size, seg = int(image_size), int(image_size) // 2
    numbers, member = _vocabulary()
    names = {v: k for k, v in numbers.items()}
    rng = np.random.default_rng(seed)
    # per category: label -> [images containing it, summed coverage]
    stats = {c: {} for c in CATEGORY_ORDER}
    cat_images = dict.fromkeys(CATEGORY_ORDER, 0)
    index_rows = []
    for i in range(int(images)):
        source = SOURCES[i % len(SOURCES)] if i < 2 * len(SOURCES) else SOURCES[rng.integers(4)]
        row = _draw_row(rng, source, size, numbers)
        folder = out / "images" / source
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{source}_{i:05d}"
        pixels = np.clip(np.rint(row.image * 255.0), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="RGB").save(folder / f"{stem}.png")
        small = np.asarray(Image.fromarray(pixels).resize((seg, seg), Image.BILINEAR))
        colour = textures.nearest_color(small).astype(np.int32) + numbers[COLORS[0]]
        row.masks["color"] = [colour]
        cells = {}
        for cat in CATEGORY_ORDER:
            items = []
            present = False
            for k, full in enumerate(row.masks.get(cat, ())):
                m = full if full.shape[0] == seg else downsample_labels(full, (seg, seg))
                if not m.any():
                    continue
                rel = f"{source}/{stem}_{cat}" + (f"_{k + 1}" if k else "") + ".png"
                Image.fromarray(encode_label_png(m)).save(out / "images" / rel)
                items.append(rel)
                present = True
                values, counts = np.unique(m[m > 0], return_counts=True)
                for v, c in zip(values.tolist(), counts.tolist()):
                    s = stats[cat].setdefault(v, [0, 0.0])
                    s[0] += 1
                    s[1] += c / (seg * seg)
            for v in row.scalar.get(cat, ()):
                items.append(str(v))
                if v:
                    present = True
                    s = stats[cat].setdefault(v, [0, 0.0])
                    s[0] += 1
                    s[1] += 1.0
            cat_images[cat] += int(present)
            cells[cat] = ";".join(items)
        split = "val" if rng.random() < val_fraction else "train"
        index_rows.append(
            {
                "image": f"{source}/{stem}.png",
                "split": split,
                "ih": size,
                "iw": size,
                "sh": seg,
                "sw": seg,
                **cells,
            }
        )
    # brick's coverage is made equal in both of its categories (the tie case)
    if numbers["brick"] in stats["object"] and numbers["brick"] in stats["material"]:
        stats["object"][numbers["brick"]][1] = stats["material"][numbers["brick"]][1] = max(
            stats["object"][numbers["brick"]][1], stats["material"][numbers["brick"]][1]
        )
    _write_csv(
        out / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", *CATEGORY_ORDER], index_rows
    )
    label_rows, cat_rows = [], []
    for number in sorted(names):
        name = names[number]
        cats = [c for c in member[name] if number in stats[c]]
        if not cats:
            continue
        freq = sum(stats[c][number][0] for c in cats)
        cov = sum(stats[c][number][1] for c in cats) / max(freq, 1)
        cats.sort(key=lambda c: -stats[c][number][1] / stats[c][number][0])
        label_rows.append(
            {
                "number": number,
                "name": name,
                "category": ";".join(f"{c}({stats[c][number][0]})" for c in cats),
                "frequency": freq,
                "coverage": f"{cov:.6f}",
                "syns": name,
            }
        )
    used = {r["number"] for r in label_rows}
    for cat in CATEGORY_ORDER:
        present = sorted(v for v in stats[cat] if v in used)
        codes = [
            {
                "code": code,
                "number": v,
                "name": names[v],
                "frequency": stats[cat][v][0],
                "coverage": f"{stats[cat][v][1] / stats[cat][v][0]:.6f}",
            }
            for code, v in enumerate(present, start=1)
        ]
        _write_csv(out / f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"], codes)
        cat_rows.append(
            {
                "name": cat,
                "first": present[0] if present else 0,
                "last": present[-1] if present else 0,
                "count": len(present),
                "frequency": cat_images[cat],
            }
        )
    _write_csv(
        out / "label.csv",
        ["number", "name", "category", "frequency", "coverage", "syns"],
        label_rows,
    )
    _write_csv(out / "category.csv", ["name", "first", "last", "count", "frequency"], cat_rows)
    return out


def synthetic_torchvision_weights(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic, non-trivial weights for zoo network ``name`` as a torchvision
    state dict ({key: float32 array in torch layout}), drawn with numpy only (so the
    same seed gives the same weights under any JAX version).

    Convolutions and linear layers: He-normal by fan-in; biases N(0, 0.05);
    BatchNorm: weight U(0.6, 1.4), bias N(0, 0.1), running mean N(0, 0.1),
    running var U(0.5, 1.5), num_batches_tracked 0.
    """
    shapes = _torch_shapes(name)
    rng = np.random.default_rng(seed)
    out = {}
    for key in sorted(shapes):
        shape = shapes[key]
        leaf = key.rsplit(".", 1)[-1]
        is_bn = _is_batchnorm(key, shapes)
        if leaf == "num_batches_tracked":
            out[key] = np.zeros(shape, np.int64)
        elif is_bn and leaf == "weight":
            out[key] = rng.uniform(0.6, 1.4, shape).astype(np.float32)
        elif is_bn and leaf == "bias":
            out[key] = rng.normal(0.0, 0.1, shape).astype(np.float32)
        elif leaf == "running_mean":
            out[key] = rng.normal(0.0, 0.1, shape).astype(np.float32)
        elif leaf == "running_var":
            out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif leaf == "bias":
            out[key] = rng.normal(0.0, 0.05, shape).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[key] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return out


def _is_batchnorm(key: str, shapes: dict[str, tuple]) -> bool:
    return key.rsplit(".", 1)[0] + ".running_mean" in shapes


def _torch_shapes(name: str) -> dict[str, tuple[int, ...]]:
    from cnnvis_jax.weights import _zoo_module, state_dict_shapes

    return state_dict_shapes(_zoo_module(name, 0, None, {}, abstract=True))


__all__ = [
    "CATEGORY_ORDER",
    "synthetic_torchvision_weights",
    "write_synthetic_broden",
]
