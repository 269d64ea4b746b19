"""Writes any labelled source as a Broden-format directory.

Layout (Broden's conventions, as NetDissect and NetDissect-Lite read them)::

    out_dir/
      index.csv      image,split,ih,iw,sh,sw,<one column per category>
      category.csv   name,first,last,count,frequency
      label.csv      number,name,category,frequency,coverage,syns
      c_<cat>.csv    code,number,name,frequency,coverage      (one per category)
      images/<dataset>/<name>.png                  the image (PNG, lossless)
      images/<dataset>/<name>_<cat>.png            a pixel-level layer (or
      images/<dataset>/<name>_<cat>_<k>.png        layer k = 1.. when a category has
                                                   several layers)

* A category cell of index.csv is ';'-separated: paths relative to ``images/`` for
  pixel-level layers, bare integers for image-level labels (label 0 is dropped), empty
  when the image has no label of that category. Columns are read by name.
* Label PNGs encode ``label = R + 256 * G`` (blue 0), at the segmentation size
  ``(sh, sw) = (ih // 2, iw // 2)`` as in Broden (224 -> 112, 227 -> 113). Masks at
  the image size are downsampled by *nearest* sampling at output pixel centres: output
  pixel ``(i, j)`` takes input pixel ``(floor((i + 0.5) * ih / sh), floor((j + 0.5) *
  iw / sw))`` (for even sizes: ``(2i + 1, 2j + 1)``), so every exported value is a label
  of the source (no blending); see :func:`downsample_labels`. Masks already at the
  segmentation size are written as they are. Layers with no label are not written.
* Statistics are computed from the exported data: a label's ``frequency`` is the
  number of images carrying it, its ``coverage`` the mean fraction of the segmentation
  it covers in those images (image-level labels cover 1.0), as
  :class:`cnnvis_jax.data.types.Label` defines them. ``category`` in label.csv lists
  ``cat(n)`` for every category the label belongs to (``n`` = images where it appears
  in that category), primary (largest coverage) first; ``syns`` is the label's name.
  In c_<cat>.csv codes are dense from 1 in label-number order; 0 means none and has
  no row. category.csv's ``first``/``last`` are the smallest and largest global label
  numbers of the category, ``count`` its number of labels and ``frequency`` the number
  of images with any label of it.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from cnnvis_jax.data.types import Sample
from cnnvis_jax.errors import DataError, InputError

_NAME_OK = re.compile(r"^[A-Za-z0-9_.-]+$")
_BATCH = 256


def segmentation_size(image_hw: tuple[int, int]) -> tuple[int, int]:
    """Broden's segmentation size for an image size: half, rounded down."""
    return image_hw[0] // 2, image_hw[1] // 2


def downsample_labels(mask: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest downsampling of label maps at output pixel centres.

    Args:
      mask: integer (..., H, W) labels.
      out_hw: (h, w) with h <= H and w <= W.

    Returns:
      (..., h, w) with ``out[..., i, j] = mask[..., floor((i + .5) H / h),
      floor((j + .5) W / w)]``, same dtype.
    """
    h_in, w_in = mask.shape[-2:]
    h, w = out_hw
    rows = ((2 * np.arange(h) + 1) * h_in) // (2 * h)
    cols = ((2 * np.arange(w) + 1) * w_in) // (2 * w)
    return mask[..., rows[:, None], cols[None, :]]


def encode_label_png(labels: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 3) RGB with R = label % 256, G = label // 256, B = 0."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise InputError("Broden label PNGs hold labels 0..65535 only.")
    out = np.zeros(labels.shape + (3,), np.uint8)
    out[..., 0] = labels % 256
    out[..., 1] = labels // 256
    return out


def decode_label_png(rgb: np.ndarray) -> np.ndarray:
    """int32 (h, w) labels from a Broden label PNG's RGB (R + 256 * G)."""
    rgb = np.asarray(rgb)
    return rgb[..., 0].astype(np.int32) + 256 * rgb[..., 1].astype(np.int32)


def _samples(source, indices: list[int]) -> Iterator[Sample]:
    """Samples of ``source`` at ``indices``; through ``source.batch`` (faster) when it
    returns the concept-set batch dict, else one by one."""
    batch = getattr(source, "batch", None)
    keys = ("image", "pixel", "scalar", "target")
    for start in range(0, len(indices), _BATCH):
        chunk = indices[start : start + _BATCH]
        out = batch(np.asarray(chunk, np.int64)) if callable(batch) else None
        if not (isinstance(out, dict) and all(k in out for k in keys)):
            batch = None
            for i in chunk:
                yield source[i]
            continue
        for j, i in enumerate(chunk):
            yield {
                "image": out["image"][j],
                "pixel": {c: m[j] for c, m in out["pixel"].items()},
                "scalar": {c: tuple(int(v) for v in s[j]) for c, s in out["scalar"].items()},
                "target": int(out["target"][j]),
                "index": int(i),
            }


class _Tally:
    """Per-label image counts and coverage sums, per category."""

    def __init__(self, num_labels: int, categories: tuple[str, ...]):
        self.freq = {c: np.zeros(num_labels, np.int64) for c in categories}
        self.cover = {c: np.zeros(num_labels, np.float64) for c in categories}
        self.any_freq = np.zeros(num_labels, np.int64)
        self.any_cover = np.zeros(num_labels, np.float64)
        self.cat_freq = dict.fromkeys(categories, 0)

    def add_image(self, per_category: dict[str, dict[int, float]]) -> None:
        """per_category: {category: {label: covered fraction}} of one image."""
        seen: dict[int, float] = {}
        for cat, fractions in per_category.items():
            if not fractions:
                continue
            self.cat_freq[cat] += 1
            for lab, frac in fractions.items():
                self.freq[cat][lab] += 1
                self.cover[cat][lab] += frac
                seen[lab] = max(seen.get(lab, 0.0), frac)
        for lab, frac in seen.items():
            self.any_freq[lab] += 1
            self.any_cover[lab] += frac


def _fractions(layers: np.ndarray) -> dict[int, float]:
    """{label: fraction of pixels carrying it in any layer} of an (L, h, w) mask."""
    npix = layers.shape[-2] * layers.shape[-1]
    if layers.shape[0] == 1:
        counts = np.bincount(layers.reshape(-1))
        labels = np.nonzero(counts)[0]
        return {int(lab): counts[lab] / npix for lab in labels if lab != 0}
    out = {}
    for lab in np.unique(layers):
        if lab != 0:
            out[int(lab)] = float((layers == lab).any(axis=0).sum()) / npix
    return out


def export_broden(
    source,
    out_dir: str | os.PathLike,
    *,
    indices: Iterable[int] | None = None,
    split_of: str | Callable[[int], str] | None = None,
    dataset: str = "concepts",
    overwrite: bool = False,
) -> Path:
    """Writes ``source`` (a types.py source with a vocabulary) as a Broden directory.

    Args:
      source: random-access source (``len``, ``source[i]`` -> Sample) whose
        ``vocabulary`` is not None. Images must all have the same size (H, W); masks
        must be at the image size or at (H // 2, W // 2).
      out_dir: directory to write (created).
      indices: source indices to export (default: all), in index.csv order.
      split_of: the split column: a fixed name, a function of the source index, or
        None for ``source.split`` when the source has one, else "train". Broden uses
        "train" and "val".
      dataset: sub-folder of ``images/`` receiving the files.
      overwrite: allow writing into a directory that already has an index.csv.

    Returns:
      ``Path(out_dir)``.

    Raises:
      InputError: bad arguments, or a source without a vocabulary.
      DataError: a sample carries a label number missing from the vocabulary, or
        image and mask sizes are inconsistent.
    """
    vocab = getattr(source, "vocabulary", None)
    if vocab is None:
        raise InputError("export_broden needs a source with a vocabulary (concept labels).")
    if not _NAME_OK.match(dataset):
        raise InputError(f"dataset must be a plain folder name, got {dataset!r}.")
    n = len(source)
    if indices is None:
        idx = list(range(n))
    else:
        idx = [int(i) for i in np.asarray(list(indices)).reshape(-1)]
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise InputError(f"index {bad[0]} is out of range; valid indices are 0..{n - 1}.")
    if split_of is None:
        fixed = getattr(source, "split", "train")
        split_fn: Callable[[int], str] = lambda i: fixed  # noqa: E731
    elif isinstance(split_of, str):
        split_fn = lambda i: split_of  # noqa: E731
    elif callable(split_of):
        split_fn = split_of
    else:
        raise InputError("split_of must be a split name, a function of the index, or None.")

    out = Path(out_dir)
    if (out / "index.csv").exists() and not overwrite:
        raise InputError(
            f"{out} already holds a Broden index.csv; pass overwrite=True to replace it."
        )
    img_dir = out / "images" / dataset
    img_dir.mkdir(parents=True, exist_ok=True)

    categories = tuple(vocab.categories)
    valid = {c: np.zeros(vocab.num_labels, bool) for c in categories}
    for lab in vocab.labels:
        for c in lab.categories:
            if c in valid:
                valid[c][lab.number] = True
    tally = _Tally(vocab.num_labels, categories)
    prefix = getattr(source, "split", None) or "image"
    prefix = prefix if _NAME_OK.match(str(prefix)) else "image"
    width = max(6, len(str(max(idx, default=0))))

    rows = []
    image_hw = None
    for sample, i in zip(_samples(source, idx), idx):
        image = np.asarray(sample["image"])
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise DataError(f"image {i} must be uint8 (H, W, 3), got {image.dtype} {image.shape}.")
        hw = image.shape[:2]
        if image_hw is None:
            image_hw = hw
        sh, sw = segmentation_size(hw)
        split = split_fn(i)
        if not isinstance(split, str) or not _NAME_OK.match(split):
            raise InputError(f"split_of({i}) must be a plain split name, got {split!r}.")
        name = f"{prefix}_{i:0{width}d}"
        Image.fromarray(image).save(img_dir / f"{name}.png")
        row = {
            "image": f"{dataset}/{name}.png",
            "split": split,
            "ih": hw[0],
            "iw": hw[1],
            "sh": sh,
            "sw": sw,
        }
        per_category: dict[str, dict[int, float]] = {}
        for cat, mask in sample["pixel"].items():
            if cat not in valid:
                raise DataError(f"image {i} has pixel category {cat!r}, not in the vocabulary.")
            mask = np.asarray(mask)
            if mask.ndim == 2:
                mask = mask[None]
            _check_labels(mask.astype(np.int64), valid[cat], cat, i)
            if mask.shape[-2:] == tuple(hw):
                mask = downsample_labels(mask, (sh, sw))
            elif mask.shape[-2:] != (sh, sw):
                raise DataError(
                    f"image {i}: {cat} mask is {mask.shape[-2:]}, expected {tuple(hw)} or {(sh, sw)}."
                )
            mask = mask.astype(np.int64)
            paths = []
            for k, layer in enumerate(mask):
                if not layer.any():
                    continue
                suffix = f"_{cat}" if len(mask) == 1 else f"_{cat}_{k + 1}"
                Image.fromarray(encode_label_png(layer)).save(img_dir / f"{name}{suffix}.png")
                paths.append(f"{dataset}/{name}{suffix}.png")
            row[cat] = ";".join(paths)
            per_category[cat] = _fractions(mask)
        for cat, values in sample["scalar"].items():
            if cat not in valid:
                raise DataError(
                    f"image {i} has image-level category {cat!r}, not in the vocabulary."
                )
            labels = [int(v) for v in values if int(v) != 0]
            _check_labels(np.asarray(labels, np.int64), valid[cat], cat, i)
            row[cat] = ";".join(str(v) for v in labels)
            per_category[cat] = dict.fromkeys(labels, 1.0)
        tally.add_image(per_category)
        rows.append(row)

    _write_csv(
        out / "index.csv",
        ["image", "split", "ih", "iw", "sh", "sw", *categories],
        [{**{c: "" for c in categories}, **r} for r in rows],
    )
    _write_tables(out, vocab, categories, tally)
    return out


def _check_labels(values: np.ndarray, valid: np.ndarray, category: str, index: int) -> None:
    if not values.size:
        return
    flat = values.reshape(-1)
    bad = (flat < 0) | (flat >= len(valid))
    bad[~bad] = ~valid[flat[~bad]] & (flat[~bad] != 0)
    if bad.any():
        raise DataError(
            f"image {index} has label {int(flat[bad][0])} in category {category!r}, "
            "which the vocabulary does not list in that category."
        )


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _write_tables(out: Path, vocab, categories: tuple[str, ...], tally: _Tally) -> None:
    def mean_cover(total: float, count: int) -> float:
        return total / count if count else 0.0

    label_rows = []
    for lab in vocab.labels:
        cats = [c for c in lab.categories if c in categories]
        # primary category first: largest coverage, ties in the vocabulary's order
        cats.sort(key=lambda c: -mean_cover(tally.cover[c][lab.number], tally.freq[c][lab.number]))
        label_rows.append(
            {
                "number": lab.number,
                "name": lab.name,
                "category": ";".join(f"{c}({tally.freq[c][lab.number]})" for c in cats),
                "frequency": int(tally.any_freq[lab.number]),
                "coverage": _fmt(
                    mean_cover(tally.any_cover[lab.number], tally.any_freq[lab.number])
                ),
                "syns": lab.name,
            }
        )
    _write_csv(
        out / "label.csv",
        ["number", "name", "category", "frequency", "coverage", "syns"],
        label_rows,
    )

    cat_rows = []
    for cat in categories:
        members = [lab for lab in vocab.labels if cat in lab.categories]
        rows = [
            {
                "code": code,
                "number": lab.number,
                "name": lab.name,
                "frequency": int(tally.freq[cat][lab.number]),
                "coverage": _fmt(
                    mean_cover(tally.cover[cat][lab.number], tally.freq[cat][lab.number])
                ),
            }
            for code, lab in enumerate(members, start=1)
        ]
        _write_csv(out / f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"], rows)
        numbers = [lab.number for lab in members]
        cat_rows.append(
            {
                "name": cat,
                "first": min(numbers, default=0),
                "last": max(numbers, default=0),
                "count": len(members),
                "frequency": tally.cat_freq[cat],
            }
        )
    _write_csv(out / "category.csv", ["name", "first", "last", "count", "frequency"], cat_rows)
