"""Concept labels of a data source as fixed-shape arrays for the device.

A :class:`LabelLayout` fixes, once per data set, how every image's labels become

    pixel:  int32 (B, Ly, P)  global label numbers per pixel layer, 0 = none
                              (all pixel categories' layers stacked; P = sh * sw)
    scalar: int32 (B, S)      image-level label numbers, -1 = empty slot

so that batches have one shape and the tally compiles once. Categories with several
layers (Broden's parts) keep all of them (a pixel carrying a label in two layers
counts twice, as NetDissect-Lite's ``bincount`` does).

``labelcat`` (L, C) is the one-hot primary category of every label number. Label 0
is "none": pixels of label 0 are never counted, and image-level 0s only with
``zero_scalar=True`` (NetDissect-Lite counts them). As in NetDissect-Lite, label 0
belongs to the *last* category of the data set's own order (Broden's category.csv:
``texture``) and is the label a unit gets in a category where no label overlaps it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from cnnvis_jax.data.types import Vocabulary
from cnnvis_jax.errors import InputError, did_you_mean

ZERO_NAME = ""
"""Name of label 0 (NetDissect-Lite's name of a number missing from label.csv)."""


@dataclasses.dataclass(frozen=True)
class LabelLayout:
    """How a data set's labels are laid out per batch (see the module docstring).

    Attributes:
      categories: scored categories, reporting order.
      pixel_layers: ((category, layers), ...) pixel-level categories and layer counts.
      scalar_slots: ((category, slots), ...) image-level categories and label slots.
      seg_size: (sh, sw) of the pixel labels.
      num_labels: L (label numbers 0 .. L-1).
      label_category: int32 (L,) primary category index per number, -1 = unused
        (label 0: the last category of ``source_order``).
      names: (L,) label names ("" for unused numbers and label 0).
      zero_scalar: image-level 0 is counted (NetDissect-Lite's quirk).
      source_order: int (C,) rank of each category in the data set's own order
        (Broden's category.csv), which breaks ties between categories as
        NetDissect-Lite does (the later one wins).
    """

    categories: tuple[str, ...]
    pixel_layers: tuple[tuple[str, int], ...]
    scalar_slots: tuple[tuple[str, int], ...]
    seg_size: tuple[int, int]
    num_labels: int
    label_category: np.ndarray = dataclasses.field(compare=False)
    names: tuple[str, ...] = dataclasses.field(compare=False)
    zero_scalar: bool = False
    source_order: tuple[int, ...] = ()

    @property
    def layers(self) -> int:
        return sum(n for _, n in self.pixel_layers)

    @property
    def slots(self) -> int:
        return max(1, sum(n for _, n in self.scalar_slots))

    @property
    def pixels(self) -> int:
        return self.seg_size[0] * self.seg_size[1]

    def labelcat(self) -> np.ndarray:
        """float32 (L, C) one-hot primary category per label number (0 rows unused)."""
        out = np.zeros((self.num_labels, len(self.categories)), np.float32)
        used = self.label_category >= 0
        out[np.nonzero(used)[0], self.label_category[used]] = 1.0
        return out

    def scored(self) -> np.ndarray:
        """bool (L,) label numbers that can be scored."""
        return self.label_category >= 0

    def describe(self) -> dict[str, Any]:
        return {
            "categories": list(self.categories),
            "pixel_layers": dict(self.pixel_layers),
            "scalar_slots": dict(self.scalar_slots),
            "seg_size": list(self.seg_size),
            "num_labels": self.num_labels,
            "zero_scalar": self.zero_scalar,
        }


def _first_sample(source) -> dict:
    batch = getattr(source, "batch", None)
    if callable(batch):
        out = batch(np.array([0]))
        if isinstance(out, dict) and "pixel" in out:
            return {
                "pixel": {c: np.asarray(m)[0] for c, m in out["pixel"].items()},
                "scalar": {c: tuple(np.asarray(s)[0].tolist()) for c, s in out["scalar"].items()},
            }
    return source[0]


def label_layout(
    source: Any,
    categories: tuple[str, ...] | list[str] | None = None,
    *,
    zero_scalar: bool = False,
) -> LabelLayout:
    """The :class:`LabelLayout` of ``source`` (a concept set, a Broden source, or any
    source with a ``vocabulary`` whose samples carry ``pixel``/``scalar`` labels).

    Raises:
      InputError: the source has no concept labels, is empty, a requested category
        is missing, no pixel-level category is left, or segmentation sizes differ.
    """
    vocab: Vocabulary | None = getattr(source, "vocabulary", None)
    if vocab is None:
        raise InputError(
            "the data set has no concept labels; dissection needs a labelled data set "
            "(--dataset concepts or broden:DIR)."
        )
    if len(source) == 0:
        raise InputError("the data set is empty; dissection needs labelled images.")
    available = tuple(vocab.categories)
    if categories is None:
        chosen = available
    else:
        chosen = tuple(dict.fromkeys(categories))
        for c in chosen:
            if c not in available:
                raise InputError(
                    f"the data set has no category {c!r}; " + did_you_mean(c, list(available))
                )
        chosen = tuple(c for c in available if c in chosen)
    rows = getattr(source, "rows", None)
    if rows is not None:  # Broden: from index.csv, nothing decoded
        layers = {c: max((len(r.masks.get(c, ())) for r in rows), default=0) for c in chosen}
        slots = {c: max((len(r.scalar.get(c, ())) for r in rows), default=0) for c in chosen}
        seg = getattr(source, "segmentation_size", None)
        if seg is None:
            raise InputError(
                "the Broden rows have different segmentation sizes (sh, sw); dissection "
                "needs one size: select one split or resize the masks."
            )
    else:
        first = _first_sample(source)
        layers = {c: int(np.shape(first["pixel"][c])[0]) for c in chosen if c in first["pixel"]}
        slots = {c: len(first["scalar"][c]) for c in chosen if c in first["scalar"]}
        shapes = {tuple(np.shape(m)[-2:]) for m in first["pixel"].values()}
        if len(shapes) != 1:
            raise InputError(
                f"pixel labels of one image differ in size {sorted(shapes)}; dissection "
                "needs one segmentation size."
            )
        seg = shapes.pop()
    pixel = tuple((c, n) for c in chosen if (n := layers.get(c, 0)) > 0)
    scalar = tuple((c, n) for c in chosen if (n := slots.get(c, 0)) > 0)
    if not pixel:
        raise InputError(
            "the data set has no pixel-level category among "
            f"{', '.join(chosen)}; dissection scores units against pixel masks, so it "
            "needs at least one (object, part, material, color)."
        )
    used = tuple(c for c in chosen if c in dict(pixel) or c in dict(scalar))
    label_category = np.full(vocab.num_labels, -1, np.int32)
    names = [""] * vocab.num_labels
    for lab in vocab.labels:
        primary = next((c for c in lab.categories if c in used), None)
        if primary is not None:
            label_category[lab.number] = used.index(primary)
            names[lab.number] = lab.name
    own = [c for c in getattr(source, "category_order", ()) if c in used]
    own += [c for c in used if c not in own]
    label_category[0] = used.index(own[-1])
    names[0] = ZERO_NAME
    return LabelLayout(
        categories=used,
        pixel_layers=pixel,
        scalar_slots=scalar,
        seg_size=(int(seg[0]), int(seg[1])),
        num_labels=vocab.num_labels,
        label_category=label_category,
        names=tuple(names),
        zero_scalar=zero_scalar,
        source_order=tuple(own.index(c) for c in used),
    )


def _encode_one(layout: LabelLayout, pixel: dict, scalar: dict, where: str) -> tuple:
    sh, sw = layout.seg_size
    pix = np.zeros((layout.layers, sh * sw), np.int32)
    row = 0
    for c, n in layout.pixel_layers:
        m = pixel.get(c)
        if m is not None:
            m = np.asarray(m)
            if m.ndim == 2:
                m = m[None]
            if m.shape[-2:] != (sh, sw):
                raise InputError(
                    f"{where}: {c} mask is {m.shape[-2]}x{m.shape[-1]}, not the data set's "
                    f"segmentation size {sh}x{sw}."
                )
            if m.shape[0] > n:
                raise InputError(
                    f"{where}: {c} has {m.shape[0]} mask layers, more than the {n} the "
                    "layout allows; build the layout from the whole data set."
                )
            pix[row : row + m.shape[0]] = m.reshape(m.shape[0], -1)
        row += n
    sca = np.full(layout.slots, -1, np.int32)
    col = 0
    for c, n in layout.scalar_slots:
        values = [int(v) for v in scalar.get(c, ())]
        if len(values) > n:
            raise InputError(
                f"{where}: {c} has {len(values)} image-level labels, more than the {n} slots "
                "of the layout."
            )
        for k, v in enumerate(values):
            sca[col + k] = v if (v != 0 or layout.zero_scalar) else -1
        col += n
    if pix.max(initial=0) >= layout.num_labels or sca.max(initial=0) >= layout.num_labels:
        raise InputError(
            f"{where}: a label number is outside the vocabulary (0..{layout.num_labels - 1})."
        )
    return pix, sca


def load_labelled(
    source: Any, indices: np.ndarray, layout: LabelLayout, *, images: bool = True
) -> dict[str, np.ndarray]:
    """``{"image": uint8 (B, H, W, 3), "pixel": int32 (B, Ly, P), "scalar": int32 (B, S)}``
    for ``indices`` of ``source`` (vectorized through ``source.batch`` when it returns
    per-category masks, else sample by sample). With ``images=False`` a source that
    can read labels alone (``source.labels(i)``, e.g. a Broden directory) decodes no
    image and ``"image"`` is absent."""
    indices = np.asarray(indices, np.int64)
    labels_only = not images and callable(getattr(source, "labels", None))
    batch = getattr(source, "batch", None)
    out = batch(indices) if callable(batch) and not labels_only else None
    if isinstance(out, dict) and "pixel" in out and "scalar" in out:
        b = len(indices)
        sh, sw = layout.seg_size
        pix = np.zeros((b, layout.layers, sh * sw), np.int32)
        row = 0
        for c, n in layout.pixel_layers:
            m = np.asarray(out["pixel"][c])
            if m.shape[-2:] != (sh, sw) or m.shape[1] > n:
                raise InputError(
                    f"{c} masks of the batch are {m.shape[1:]}, not {n} layers of {sh}x{sw}."
                )
            pix[:, row : row + m.shape[1]] = m.reshape(b, m.shape[1], -1)
            row += n
        sca = np.full((b, layout.slots), -1, np.int32)
        col = 0
        for c, n in layout.scalar_slots:
            s = np.asarray(out["scalar"][c]).reshape(b, -1)
            s = np.where((s == 0) & (not layout.zero_scalar), -1, s)
            sca[:, col : col + s.shape[1]] = s
            col += n
        return {"image": np.asarray(out["image"]), "pixel": pix, "scalar": sca}
    fetch = source.labels if labels_only else source.__getitem__
    images, pixels, scalars = [], [], []
    for i in indices.tolist():
        sample = fetch(int(i))
        p, s = _encode_one(layout, sample.get("pixel", {}), sample.get("scalar", {}), f"image {i}")
        pixels.append(p)
        scalars.append(s)
        if not labels_only:
            images.append(np.asarray(sample["image"]))
    if labels_only:
        return {"pixel": np.stack(pixels), "scalar": np.stack(scalars)}
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise InputError(
            f"images of one batch differ in size {sorted(shapes)}; dissection needs one "
            "image size (resize the data set)."
        )
    return {"image": np.stack(images), "pixel": np.stack(pixels), "scalar": np.stack(scalars)}


class ArrayConceptSource:
    """An in-memory labelled source (for your own arrays, and for tests).

    Args:
      images: uint8 (N, H, W, 3).
      pixel: {category: int (N, Ly, h, w)} global label numbers, 0 = none.
      scalar: {category: int (N, k)} image-level labels (-1 = empty slot).
      vocabulary: the :class:`~cnnvis_jax.data.types.Vocabulary` of the labels.
    """

    class_names: tuple[str, ...] = ()

    def __init__(self, images, pixel, scalar, vocabulary: Vocabulary):
        self.images = np.asarray(images, np.uint8)
        self.pixel = {c: np.asarray(m, np.int32) for c, m in pixel.items()}
        self.scalar = {
            c: np.asarray(s, np.int32).reshape(len(self.images), -1) for c, s in scalar.items()
        }
        self.vocabulary = vocabulary

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices) -> dict:
        idx = np.asarray(indices, np.int64)
        return {
            "image": self.images[idx],
            "target": np.full(len(idx), -1, np.int32),
            "pixel": {c: m[idx] for c, m in self.pixel.items()},
            "scalar": {c: s[idx] for c, s in self.scalar.items()},
            "index": idx,
        }

    def __getitem__(self, index: int) -> dict:
        i = int(index)
        return {
            "image": self.images[i],
            "pixel": {c: m[i] for c, m in self.pixel.items()},
            "scalar": {c: tuple(int(v) for v in s[i] if v >= 0) for c, s in self.scalar.items()},
            "target": -1,
            "index": i,
        }
