"""Compositional explanations of units: the logical formula of concepts whose mask best
matches each unit's mask (Mu & Andreas 2020, "Compositional Explanations of Neurons",
NeurIPS; reference code github.com/jayelm/compexp, ``vision/``).

A formula is built left to right from concepts with the reference's three operators,
``F OR c``, ``F AND c`` and ``F AND NOT c`` (``vision/dissection/neuron.py``,
``compute_best_iou``), e.g. ``(water OR sky) AND NOT blue``; its length is its number
of concepts. Per unit, beam search keeps the ``beam`` best formulas, starting from the
best single concepts; each step extends every kept formula by every concept and
operator and keeps the ``beam`` best of the kept and the new ones, ``length - 1``
times; ties go to the shorter formula. Defaults: beam 5 and length 3, the
reference's vision settings (``vision/settings.py``: ``BEAM_SIZE = 5``,
``MAX_FORMULA_LENGTH = 3``; its README: "the maximum formula length (default is 3)").
Two clean-ups the reference does not make: a concept appears at most once in a
formula, and the beam never holds two formulas with the same mask (``a OR b`` and
``b OR a``; ``F OR c`` with c inside F, which is F). Masks are compared by two
fingerprints, sums of independent random 24-bit weights over the mask's pixel
signatures (exact float64 integers that follow by inclusion-exclusion like the
counts), so two different masks are taken for one with odds below 2^-48 per pair.

Score: the set IoU of the unit's mask and the formula's mask over every pixel of every
image, ``|M_u AND F| / |M_u OR F|``, as the reference computes it (``compute_iou``).
For one concept this is NetDissect's IoU with the plain denominator ``|M_u|`` (not the
per-category denominators of the ``lite``/``original`` scores), so the atomic label
here can differ from the dissection's label.

Masks: exactly the dissection's. ``M_u`` is the unit's activation map upsampled to the
segmentation and thresholded with the dissection's pass-1 threshold (the sparse
tally's host upsampling, :func:`~cnnvis_jax.dissection.sparse_tally.host_cells` and
:func:`~cnnvis_jax.dissection.sparse_tally.upsampled_cells`, or the dense tally's
:func:`~cnnvis_jax.dissection.tally.layer_masks` for maps larger than the
segmentation). A concept's mask is every pixel that carries the label in any pixel
layer of :func:`~cnnvis_jax.dissection.labels.load_labelled`, and every pixel of an
image with the image-level label (a pixel is counted once even where two part layers
or two image-level slots carry the label; the dissection's tally counts it twice there).

Counting: every formula is a function of a pixel's labels alone, so pixels with the
same labels (the same *signature*) are interchangeable. One streamed pass over the
data set reduces it to the distinct signatures ``s`` (``T`` of them; about 9,000 for
2,000 concept-set images), their pixel counts ``w[s]`` and each unit's activated
pixels per signature ``A[u, s]``. Then, with the 0/1 membership ``C[s, l]`` and a kept
formula's mask ``F[u, b, s]`` over signatures, one beam step for all units and all
kept formulas is two products,

    |M_u AND F AND c| = (A * F) @ C      |F AND c| = (w * F) @ C      (U, B, L)

and every candidate's counts follow by inclusion-exclusion (:func:`extension_counts`):
``|M AND (F OR c)| = |M AND F| + |M AND c| - |M AND F AND c|``,
``|F AND NOT c| = |F| - |F AND c|``, ... The products run over chunks of signatures
(memory stays bounded) in float64 on the host, where these integer counts are exact.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from cnnvis_jax import parallel
from cnnvis_jax.dissection import sparse_tally
from cnnvis_jax.dissection.dissect import (
    Dissection,
    default_batch_size,
    dissect,
    dissection_model,
    spatial_layers,
)
from cnnvis_jax.dissection.labels import LabelLayout, load_labelled
from cnnvis_jax.dissection.tally import layer_masks
from cnnvis_jax.dissection.thresholds import float32_below
from cnnvis_jax.dissection.upsample import layer_matrices
from cnnvis_jax.errors import InputError
from cnnvis_jax.features import prefetched, to_model_input
from cnnvis_jax.model import Model
from cnnvis_jax.progress import progress_bar

if TYPE_CHECKING:
    import scipy.sparse

OPS = ("or", "and", "and not")
"""The operators, in the order the reference tries them (``F op c``)."""
OP_TEXT = {"or": "OR", "and": "AND", "and not": "AND NOT"}
DEFAULT_LENGTH = 3
"""Longest formula (concepts), the reference's ``MAX_FORMULA_LENGTH``."""
DEFAULT_BEAM = 5
"""Formulas kept per unit, the reference's ``BEAM_SIZE``."""
MAX_LENGTH = 10
GAIN = 0.02
"""IoU a formula must add over the best single concept to count as a gain in summaries."""
CHUNK_ELEMENTS = 1 << 22
"""Signature x formula elements per chunk of a beam step."""
FINGERPRINTS = 2
"""Independent random weightings whose sums over a mask identify it (module docstring)."""


def check_search(length: Any, beam: Any) -> tuple[int, int]:
    """``(length, beam)`` as integers, or :class:`InputError` naming the problem and
    the fix (length 1..10, beam >= 1)."""

    def whole(v) -> bool:
        return isinstance(v, int | np.integer) and not isinstance(v, bool)

    if not whole(length) or not 1 <= length <= MAX_LENGTH:
        raise InputError(
            f"formula length must be an integer from 1 to {MAX_LENGTH}, got {length!r}; "
            f"use e.g. {DEFAULT_LENGTH} (the reference's setting)."
        )
    if not whole(beam) or beam < 1:
        raise InputError(
            f"beam width must be a positive integer, got {beam!r}; use e.g. {DEFAULT_BEAM} "
            "(the reference's setting)."
        )
    return int(length), int(beam)


# --- formulas --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Formula:
    """A left-deep formula ``((leaves[0] ops[0] leaves[1]) ops[1] leaves[2]) ...``.

    Attributes:
      leaves: label numbers, at least one (the search uses a label at most once).
      ops: ``len(leaves) - 1`` operators from :data:`OPS`.
    """

    leaves: tuple[int, ...]
    ops: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "leaves", tuple(int(v) for v in self.leaves))
        object.__setattr__(self, "ops", tuple(self.ops))
        if not self.leaves or len(self.ops) != len(self.leaves) - 1:
            raise InputError(
                f"a formula needs one more concept than operators, got {len(self.leaves)} "
                f"concepts and {len(self.ops)} operators."
            )
        bad = [op for op in self.ops if op not in OPS]
        if bad:
            raise InputError(f"unknown operator {bad[0]!r}; the operators are {OPS}.")

    def __len__(self) -> int:
        return len(self.leaves)

    def extend(self, op: str, label: int) -> Formula:
        """``self op label``."""
        return Formula(self.leaves + (int(label),), self.ops + (op,))

    def text(self, names: Sequence[str]) -> str:
        """Readable form with label ``names``, e.g. ``(water OR sky) AND NOT blue``."""
        out = str(names[self.leaves[0]])
        for i, (op, leaf) in enumerate(zip(self.ops, self.leaves[1:], strict=True)):
            out = f"{f'({out})' if i else out} {OP_TEXT[op]} {names[leaf]}"
        return out

    def tree(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Structured (JSON-able) form: ``{"label": n[, "name": ...]}`` for a concept,
        ``{"op": "OR"|"AND", "left": ..., "right": ...}`` and ``{"op": "NOT", "arg":
        ...}``; :meth:`from_tree` reads it back."""

        def leaf(n: int) -> dict[str, Any]:
            return {"label": n} if names is None else {"label": n, "name": str(names[n])}

        out = leaf(self.leaves[0])
        for op, n in zip(self.ops, self.leaves[1:], strict=True):
            right = {"op": "NOT", "arg": leaf(n)} if op == "and not" else leaf(n)
            out = {"op": "OR" if op == "or" else "AND", "left": out, "right": right}
        return out

    @staticmethod
    def from_tree(tree: Mapping[str, Any]) -> Formula:
        """The formula of a :meth:`tree` (left-deep, ``NOT`` only on a right concept)."""
        leaves: list[int] = []
        ops: list[str] = []
        node = tree
        while "op" in node:
            right = node["right"]
            negated = right.get("op") == "NOT"
            if negated:
                right = right["arg"]
            if (
                node["op"] not in ("OR", "AND")
                or "label" not in right
                or (negated and node["op"] != "AND")
            ):
                raise InputError(f"not a formula tree of this module: {json.dumps(tree)[:200]}")
            leaves.append(int(right["label"]))
            ops.append("and not" if negated else node["op"].lower())
            node = node["left"]
        if "label" not in node:
            raise InputError(f"not a formula tree of this module: {json.dumps(tree)[:200]}")
        leaves.append(int(node["label"]))
        return Formula(tuple(reversed(leaves)), tuple(reversed(ops)))

    def mask(self, member: np.ndarray) -> np.ndarray:
        """bool (...): the formula on ``member``, bool (..., L) concept membership."""
        out = member[..., self.leaves[0]]
        for op, leaf in zip(self.ops, self.leaves[1:], strict=True):
            c = member[..., leaf]
            out = out | c if op == "or" else out & c if op == "and" else out & ~c
        return out


# --- the counting algebra --------------------------------------------------------------


def extension_counts(
    unit_formula: np.ndarray,
    formula: np.ndarray,
    unit_concept: np.ndarray,
    concept: np.ndarray,
    unit_formula_concept: np.ndarray,
    formula_concept: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of every extension ``F op c`` (ops in :data:`OPS` order) by inclusion-exclusion.

    Args:
      unit_formula: (U, B) ``|M_u AND F|``.
      formula: (U, B) ``|F|``.
      unit_concept: (U, L) ``|M_u AND c|``.
      concept: (L,) ``|c|``.
      unit_formula_concept: (U, B, L) ``|M_u AND F AND c|``.
      formula_concept: (U, B, L) ``|F AND c|``.

    Returns:
      ``(|M_u AND G|, |G|)``, each (U, B, L, 3), for ``G`` = ``F OR c``, ``F AND c``,
      ``F AND NOT c``.
    """
    uf, f = unit_formula[:, :, None], formula[:, :, None]
    uc, c = unit_concept[:, None, :], concept[None, None, :]
    ufc, fc = unit_formula_concept, formula_concept
    inter = np.stack([uf + uc - ufc, ufc, uf - ufc], axis=-1)
    size = np.stack([f + c - fc, fc, f - fc], axis=-1)
    return inter, size


def set_iou(intersection: np.ndarray, size: np.ndarray, unit_size: np.ndarray) -> np.ndarray:
    """``|M AND G| / (|M| + |G| - |M AND G|)`` (0 where both masks are empty);
    ``unit_size`` broadcasts against the other two."""
    union = unit_size + size - intersection
    return np.divide(intersection, union, out=np.zeros(np.broadcast(intersection, union).shape),
                     where=union > 0)  # fmt: skip


# --- the data set as signatures --------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class UnitHits:
    """A layer's activated pixels, counted per unit and signature (sorted by signature).

    Attributes:
      unit, signature, count: int64 (E,) ``A[unit, signature] = count`` (nonzero only).
      units: U.
    """

    unit: np.ndarray
    signature: np.ndarray
    count: np.ndarray
    units: int

    def unit_sizes(self) -> np.ndarray:
        """int64 (U,) ``|M_u|``."""
        return np.bincount(self.unit, weights=self.count, minlength=self.units).astype(np.int64)

    def dense(self, start: int, stop: int) -> np.ndarray:
        """float64 (U, stop - start): ``A`` on signatures ``start .. stop - 1``."""
        lo, hi = np.searchsorted(self.signature, [start, stop])
        out = np.zeros((self.units, stop - start), np.float64)
        out[self.unit[lo:hi], self.signature[lo:hi] - start] = self.count[lo:hi]
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class ConceptTables:
    """The data set reduced to what every formula's IoU needs (module docstring).

    Attributes:
      signatures: int32 (T, W) the label numbers of each distinct signature (each
        label at most once per row; 0 = no label), W = pixel layers + image-level slots.
      pixels: int64 (T,) pixels carrying each signature.
      hits: {layer: :class:`UnitHits`}.
      num_labels: L (label numbers 0 .. L - 1; 0 is never a concept).
      images: images counted.
    """

    signatures: np.ndarray
    pixels: np.ndarray
    hits: dict[str, UnitHits]
    num_labels: int
    images: int

    def membership(self, start: int, stop: int) -> np.ndarray:
        """bool (stop - start, L): signature ``s`` carries label ``l`` (column 0 False)."""
        rows = self.signatures[start:stop]
        out = np.zeros((len(rows), self.num_labels), bool)
        out[np.arange(len(rows))[:, None], rows] = True
        out[:, 0] = False
        return out

    def sparse_membership(self, start: int, stop: int) -> scipy.sparse.csr_matrix:
        """float64 (stop - start, L) sparse :meth:`membership` (column 0 holds the empty
        slots: ignore it)."""
        import scipy.sparse

        rows = self.signatures[start:stop]
        t, w = rows.shape
        return scipy.sparse.csr_matrix(
            (np.ones(t * w), rows.reshape(-1).astype(np.int64), np.arange(0, t * w + 1, w)),
            shape=(t, self.num_labels),
        )

    @functools.cached_property
    def _fingerprint_weights(self) -> np.ndarray:
        shape = (len(self.pixels), FINGERPRINTS)
        return np.random.default_rng(0).integers(0, 1 << 24, shape).astype(np.float64)

    def fingerprint_weights(self, start: int, stop: int) -> np.ndarray:
        """float64 (stop - start, FINGERPRINTS) random integer weights below 2^24 of
        signatures ``start .. stop - 1`` (fixed seed: the same for every call)."""
        return self._fingerprint_weights[start:stop]

    def concept_fingerprints(self) -> np.ndarray:
        """float64 (L, FINGERPRINTS) each concept's mask fingerprints (row 0: 0)."""
        weights = self.fingerprint_weights(0, len(self.pixels))
        return (
            self.sparse_membership(0, len(self.pixels)).T
            @ weights
            * (np.arange(self.num_labels) > 0)[:, None]
        )

    def concept_sizes(self) -> np.ndarray:
        """int64 (L,) ``|c|`` (0 for label 0)."""
        w = np.repeat(self.pixels, self.signatures.shape[1])
        out = np.bincount(self.signatures.reshape(-1), weights=w, minlength=self.num_labels)
        out[0] = 0
        return out.astype(np.int64)

    def unit_concept_counts(self, layer: str) -> np.ndarray:
        """int64 (U, L) ``|M_u AND c|`` (column 0 is 0)."""
        h = self.hits[layer]
        labels = self.signatures[h.signature]  # (E, W)
        index = h.unit[:, None] * self.num_labels + labels
        out = np.bincount(
            index.reshape(-1),
            weights=np.repeat(h.count, labels.shape[1]),
            minlength=h.units * self.num_labels,
        ).reshape(h.units, self.num_labels)
        out[:, 0] = 0
        return out.astype(np.int64)


def signature_columns(pixel: np.ndarray, scalar: np.ndarray, layout: LabelLayout) -> np.ndarray:
    """int32 (W, B, P): each pixel's labels as a signature, column by column: its pixel
    layers' labels, then its image's image-level labels, with label 0, unscored labels,
    empty slots and repeats of a label in an earlier column as 0 (W = pixel layers +
    image-level slots).

    Args:
      pixel: int (B, Ly, P) label numbers per pixel layer.
      scalar: int (B, S) image-level label numbers, -1 = empty slot.
    """
    keep = layout.scored().copy()
    keep[0] = False
    lookup = np.where(keep, np.arange(layout.num_labels), 0).astype(np.int32)
    b, layers, p = pixel.shape
    columns = np.empty((layers + scalar.shape[1], b, p), np.int32)
    columns[:layers] = lookup[pixel.transpose(1, 0, 2)]
    image = np.where(scalar >= 0, lookup[np.maximum(scalar, 0)], 0)  # (B, S)
    columns[layers:] = image.T[:, :, None]
    for j in range(1, len(columns)):
        repeated = np.zeros((b, p), bool)
        for i in range(j):
            repeated |= columns[j] == columns[i]
        columns[j][repeated] = 0
    return columns


class _TableBuilder:
    """Accumulates :class:`ConceptTables` batch by batch: numbers the signatures as
    they appear and counts pixels and activated pixels per signature."""

    def __init__(self, layout: LabelLayout, units: Mapping[str, int]):
        self.layout = layout
        self.width = layout.layers + layout.slots
        self.units = dict(units)
        num = layout.num_labels
        self.packed = float(num) ** self.width < 2.0**62  # a signature fits one int64 key
        self.numbers: dict[Any, int] = {}
        self.rows: list[np.ndarray] = []
        self.pixels: list[np.ndarray] = []
        self.pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in units}
        self.images = 0

    def _number(self, columns: np.ndarray) -> np.ndarray:
        """int64 (R,) the numbers of the signatures ``columns`` (int32 (W, R))."""
        if self.packed:
            keys = np.zeros(columns.shape[1], np.int64)
            for column in columns:
                keys = keys * self.layout.num_labels + column
            unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
            names = unique.tolist()
        else:
            rows = np.ascontiguousarray(columns.T)
            _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
            names = [rows[i].tobytes() for i in first]
        numbers = np.empty(len(names), np.int64)
        for k, name in enumerate(names):
            number = self.numbers.get(name)
            if number is None:
                number = self.numbers[name] = len(self.numbers)
                self.rows.append(columns[:, first[k]])
            numbers[k] = number
        return numbers[inverse.reshape(-1)]

    def add(self, pixel: np.ndarray, scalar: np.ndarray, hits: Mapping[str, tuple]) -> None:
        """One batch of valid images: labels ``pixel`` (B, Ly, P) and ``scalar`` (B, S),
        and per layer the activated pixels as ``(image, unit, pixel)`` index arrays."""
        b = len(pixel)
        columns = signature_columns(pixel, scalar, self.layout)
        signature = self._number(columns.reshape(self.width, -1)).reshape(b, -1)
        self.pixels.append(np.bincount(signature.reshape(-1)))
        for name, (image, unit, where) in hits.items():
            keys = np.asarray(unit, np.int64) << 32 | signature[image, where]
            self.pairs[name].append(np.unique(keys, return_counts=True))
        self.images += b

    def finish(self) -> ConceptTables:
        signatures = (
            np.stack(self.rows).astype(np.int32)
            if self.rows
            else np.zeros((0, self.width), np.int32)
        )
        pixels = np.zeros(len(signatures), np.int64)
        for part in self.pixels:
            pixels[: len(part)] += part
        hits = {}
        for name, parts in self.pairs.items():
            keys = np.concatenate([k for k, _ in parts] or [np.zeros(0, np.int64)])
            counts = np.concatenate([c for _, c in parts] or [np.zeros(0, np.int64)])
            unique, inverse = np.unique(keys, return_inverse=True)
            summed = np.bincount(inverse.reshape(-1), weights=counts, minlength=len(unique))
            unit, signature = unique >> 32, unique & 0xFFFFFFFF
            by_signature = np.lexsort((unit, signature))
            hits[name] = UnitHits(
                unit=unit[by_signature],
                signature=signature[by_signature],
                count=summed[by_signature].astype(np.int64),
                units=self.units[name],
            )
        return ConceptTables(signatures, pixels, hits, self.layout.num_labels, self.images)


def tables_from_masks(
    pixel: np.ndarray,
    scalar: np.ndarray,
    unit_masks: Mapping[str, np.ndarray],
    layout: LabelLayout,
) -> ConceptTables:
    """:class:`ConceptTables` of in-memory labels and unit masks.

    Args:
      pixel: int (N, Ly, P) label numbers per pixel layer (as
        :func:`~cnnvis_jax.dissection.labels.load_labelled` returns them).
      scalar: int (N, S) image-level labels, -1 = empty slot.
      unit_masks: {layer: bool (N, P, U)} each unit's mask.
      layout: the labels' :class:`~cnnvis_jax.dissection.labels.LabelLayout`.
    """
    builder = _TableBuilder(layout, {name: m.shape[2] for name, m in unit_masks.items()})
    hits = {}
    for name, m in unit_masks.items():
        n, p, u = np.nonzero(m)
        hits[name] = (n, u, p)
    builder.add(np.asarray(pixel), np.asarray(scalar), hits)
    return builder.finish()


def _sparse_hits(acts, threshold, valid, rows, cols, sw):
    """(image, unit, pixel) of the activated pixels, upsampled and thresholded on the
    host as the sparse tally does (:func:`sparse_tally.layer_counts`)."""
    _, cells = sparse_tally.host_cells(acts, threshold, valid)
    n, i, j, u = np.unravel_index(np.flatnonzero(cells), cells.shape)
    up, y, x, inside = sparse_tally.upsampled_cells(acts, n, i, j, u, rows, cols)
    k, ry, rx = np.nonzero((up > threshold[u][:, None, None]) & inside)
    return n[k], u[k], y[k, ry] * sw + x[k, rx]


_device_masks = jax.jit(layer_masks)


def _dense_hits(acts, threshold, valid, taps):
    """(image, unit, pixel) of the activated pixels of the dense tally's masks."""
    n, p, u = np.nonzero(np.asarray(_device_masks(acts, threshold, taps, valid)))
    return n, u, p


@functools.partial(jax.jit, static_argnames="layers")
def _forward(model: Model, images, *, layers: tuple[str, ...]):
    return model.apply(model.params, to_model_input(model, images), layers)


def concept_tables(
    model: Model,
    source: Any,
    dissection: Dissection,
    layers: Sequence[str],
    *,
    batch_size: int | None = None,
    progress: bool = True,
) -> ConceptTables:
    """One streamed pass over the dissected images (``dissection.order``): their
    signatures and each unit's activated pixels per signature, with the dissection's
    thresholds, label layout and unit masks (module docstring).

    The activations come from ``dissection.features`` when the dissection kept them,
    else from a forward of ``model`` prepared as :func:`dissect` ran it. This process
    reads every image (in a run of several processes, call it in one of them).
    """
    layout = dissection.layout
    order = dissection.order
    if order is None:
        raise InputError("the dissection does not record its images; run dissect() again.")
    missing = [name for name in layers if name not in dissection.layers]
    if missing:
        raise InputError(
            f"layer {missing[0]!r} is not in the dissection (it has "
            f"{', '.join(dissection.layers)}); dissect it too or pass dissection=None."
        )
    features = dissection.features or {}
    forward = tuple(name for name in layers if name not in features)
    run_model = dissection_model(model, source, layers, dissection.preprocess)
    size = batch_size or default_batch_size(run_model)
    sh, sw = layout.seg_size
    threshold, resample = {}, {}
    for name in layers:
        threshold[name] = float32_below(dissection.layers[name].thresholds.values)
        h, w, _ = run_model.layer(name).shape
        cells = sparse_tally.axis_cells(h, sh), sparse_tally.axis_cells(w, sw)
        resample[name] = cells if None not in cells else layer_matrices((h, w), (sh, sw))
    builder = _TableBuilder(layout, {name: run_model.layer(name).channels for name in layers})

    def prepare(start: int):
        chunk, valid = parallel.take_batch(order, start, size)  # fixed shape, padded
        return start, valid, load_labelled(source, chunk, layout, images=bool(forward))

    with progress_bar(len(order), f"compose {','.join(layers)}", enabled=progress) as bar:
        for start, valid, batch in prefetched(prepare, list(range(0, len(order), size))):
            count = int(valid.sum())  # valid rows come first
            acts = _forward(run_model, batch["image"], layers=forward) if forward else {}
            hits = {}
            for name in layers:
                if name in features:
                    a = features[name][start : start + count]
                    pad = np.zeros((len(valid) - count, *a.shape[1:]), np.float32)
                    a = np.concatenate([a, pad])
                else:
                    a = np.asarray(acts[name], np.float32)
                how = resample[name]
                if isinstance(how[0], sparse_tally.AxisCells):
                    hits[name] = _sparse_hits(a, threshold[name], valid, how[0], how[1], sw)
                else:
                    hits[name] = _dense_hits(a, threshold[name], valid, how)
            builder.add(batch["pixel"][:count], batch["scalar"][:count], hits)
            bar.update(count)
    return builder.finish()


# --- beam search -----------------------------------------------------------------------

_OP_CODE = {op: k + 1 for k, op in enumerate(OPS)}  # 0: no operator (a shorter formula)


def _pack(formulas: Sequence[Sequence[Formula | None]], width: int, length: int):
    """int64 leaves (U, B, length) and ops (U, B, length - 1) of ``formulas`` (empty
    slots: label 0, whose mask is empty)."""
    units = len(formulas)
    leaves = np.zeros((units, width, length), np.int64)
    ops = np.zeros((units, width, max(length - 1, 0)), np.int64)
    for u, row in enumerate(formulas):
        for b, f in enumerate(row):
            if f is not None:
                leaves[u, b, : len(f)] = f.leaves
                ops[u, b, : len(f) - 1] = [_OP_CODE[op] for op in f.ops]
    return leaves, ops


def _masks(member: np.ndarray, leaves: np.ndarray, ops: np.ndarray) -> np.ndarray:
    """bool (t, K): K packed formulas (leaves (K, N), ops (K, N - 1)) on ``member``
    (bool (t, L)), all at once."""
    out = member[:, leaves[:, 0]]
    for j in range(ops.shape[1]):
        c = member[:, leaves[:, j + 1]]
        code = ops[:, j]
        out = np.where(code == 1, out | c, np.where(code == 2, out & c,
                       np.where(code == 3, out & ~c, out)))  # fmt: skip
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class FormulaCounts:
    """Counts of U units x B formulas (float64, exact integers).

    Attributes:
      unit_formula: (U, B) ``|M_u AND F|``.
      formula: (U, B) ``|F|``.
      unit_formula_concept: (U, B, L) ``|M_u AND F AND c|``.
      formula_concept: (U, B, L) ``|F AND c|``.
      fingerprint: (U, B, FINGERPRINTS) the fingerprints of ``F``.
      concept_fingerprint: (U, B, L, FINGERPRINTS) those of ``F AND c``.
    """

    unit_formula: np.ndarray
    formula: np.ndarray
    unit_formula_concept: np.ndarray
    formula_concept: np.ndarray
    fingerprint: np.ndarray
    concept_fingerprint: np.ndarray


def formula_counts(
    tables: ConceptTables, layer: str, formulas: Sequence[Sequence[Formula | None]]
) -> FormulaCounts:
    """The counts of ``formulas`` (per unit of ``layer``, B each; None = empty slot,
    counted as an empty mask) that every extension's IoU needs, as products over chunks
    of signatures (module docstring). Identical formulas of different units are
    evaluated once."""
    hits = tables.hits[layer]
    units, width = len(formulas), max(len(row) for row in formulas)
    longest = max((len(f) for row in formulas for f in row if f is not None), default=1)
    leaves, ops = _pack(formulas, width, longest)
    flat = np.concatenate([leaves, ops], axis=2).reshape(units * width, -1)
    unique, inverse = np.unique(flat, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    u_leaves, u_ops = unique[:, :longest], unique[:, longest:]
    num, k = tables.num_labels, len(unique)
    per_unit = np.zeros((num, units * width))  # |M AND F AND c|, transposed
    # per unique formula: |F AND c| and the fingerprints of F AND c, transposed
    shared = np.zeros((num, (1 + FINGERPRINTS) * k))
    unit_formula = np.zeros(units * width)
    formula = np.zeros((1 + FINGERPRINTS) * k)  # |F| and F's fingerprints
    total = len(tables.pixels)
    step = max(1, CHUNK_ELEMENTS // max(units * width, (1 + FINGERPRINTS) * k, num))
    for start in range(0, total, step):
        stop = min(start + step, total)
        member = tables.sparse_membership(start, stop).T  # (L, t)
        masks = _masks(tables.membership(start, stop), u_leaves, u_ops)  # (t, K)
        weights = np.concatenate(
            [tables.pixels[start:stop, None], tables.fingerprint_weights(start, stop)], axis=1
        )  # (t, 1 + FINGERPRINTS)
        weighted = (masks[:, None, :] * weights[:, :, None]).reshape(stop - start, -1)
        shared += member @ weighted
        formula += weighted.sum(0)
        activated = masks[:, inverse] * hits.dense(start, stop).repeat(width, axis=0).T
        per_unit += member @ activated
        unit_formula += activated.sum(0)
    shared = shared.reshape(num, 1 + FINGERPRINTS, k)[:, :, inverse]  # (L, 1 + F, U * B)
    formula = formula.reshape(1 + FINGERPRINTS, k)[:, inverse]
    return FormulaCounts(
        unit_formula=unit_formula.reshape(units, width),
        formula=formula[0].reshape(units, width),
        unit_formula_concept=per_unit.T.reshape(units, width, num),
        formula_concept=shared[:, 0].T.reshape(units, width, num),
        fingerprint=formula[1:].T.reshape(units, width, FINGERPRINTS),
        concept_fingerprint=shared[:, 1:]
        .transpose(2, 0, 1)
        .reshape(units, width, num, FINGERPRINTS),
    )


def _atomic(tables: ConceptTables, layer: str):
    """(unit sizes (U,), |M AND c| (U, L), |c| (L,), IoU (U, L) with -1 for non-concepts)."""
    unit_size = tables.hits[layer].unit_sizes().astype(np.float64)
    concept = tables.concept_sizes().astype(np.float64)
    unit_concept = tables.unit_concept_counts(layer).astype(np.float64)
    iou = set_iou(unit_concept, concept[None, :], unit_size[:, None])
    return unit_size, unit_concept, concept, np.where(concept[None, :] > 0, iou, -1.0)


def _best_distinct(iou, lengths, fingerprints, candidate, width):
    """Per unit the first ``width`` entries by (IoU desc, length, position) with IoU > 0
    and distinct masks (``fingerprints`` (U, M, FINGERPRINTS)); ``candidate(u,
    position)`` gives the formula. Returns per unit ``[(formula, IoU, fingerprint)]``."""
    units, size = iou.shape
    position = np.broadcast_to(np.arange(size), iou.shape)
    order = np.lexsort((position, lengths, -iou), axis=-1)
    picked = []
    for u in range(units):
        seen, row = set(), []
        for p in order[u].tolist():
            if iou[u, p] <= 0 or len(row) == width:
                break
            mark = tuple(fingerprints[u, p].tolist())
            if mark not in seen:
                seen.add(mark)
                row.append((candidate(u, p), float(iou[u, p]), fingerprints[u, p]))
        picked.append(row)
    return picked


def search(
    tables: ConceptTables,
    layer: str,
    names: Sequence[str],
    *,
    length: int = DEFAULT_LENGTH,
    beam: int = DEFAULT_BEAM,
) -> ComposeResult:
    """Beam search (module docstring) for every unit of ``layer`` on ``tables``.

    Args:
      tables: from :func:`concept_tables` or :func:`tables_from_masks`.
      layer: a layer of ``tables.hits``.
      names: (L,) label names for the readable formulas.
      length: longest formula, 1 (single concepts) .. 10.
      beam: formulas kept per unit, >= 1.

    Raises:
      InputError: bad ``length`` or ``beam``; ``layer`` not in the tables.
    """
    length, beam = check_search(length, beam)
    if layer not in tables.hits:
        raise InputError(f"no unit masks of layer {layer!r}; the tables hold {list(tables.hits)}.")
    unit_size, unit_concept, concept, atomic_iou = _atomic(tables, layer)
    units, num = atomic_iou.shape
    concept_marks = tables.concept_fingerprints()
    atoms = _best_distinct(
        atomic_iou,
        np.ones(atomic_iou.shape),
        np.broadcast_to(concept_marks, (units, *concept_marks.shape)),
        lambda u, p: Formula((p,)),
        beam,
    )
    kept = atoms
    for _ in range(length - 1):
        formulas = [[f for f, _, _ in row] or [None] for row in kept]
        width = max(len(row) for row in formulas)
        formulas = [row + [None] * (width - len(row)) for row in formulas]
        counts = formula_counts(tables, layer, formulas)
        inter, size = extension_counts(
            counts.unit_formula,
            counts.formula,
            unit_concept,
            concept,
            counts.unit_formula_concept,
            counts.formula_concept,
        )
        iou = set_iou(inter, size, unit_size[:, None, None, None])
        leaves, _ = _pack(formulas, width, length)
        present = np.array([[f is not None for f in row] for row in formulas])
        in_formula = np.zeros((units, width, num), bool)
        np.put_along_axis(in_formula, leaves, True, axis=2)
        allowed = present[..., None] & ~in_formula & (concept > 0)
        changed = size != counts.formula[:, :, None, None]  # the mask moved
        iou = np.where(allowed[..., None] & changed, iou, -1.0)
        mark, joint = counts.fingerprint[:, :, None, :], counts.concept_fingerprint
        marks = np.stack([mark + concept_marks - joint, joint, mark - joint], axis=3)
        old_iou = np.array([[s for _, s, _ in row] + [-1.0] * (width - len(row)) for row in kept])
        old_len = np.array([[0 if f is None else len(f) for f in row] for row in formulas])
        pool_iou = np.concatenate([old_iou, iou.reshape(units, -1)], axis=1)
        pool_len = np.concatenate([old_len, np.repeat(old_len + 1, num * len(OPS), axis=1)], 1)

        def candidate(u, p, formulas=formulas, width=width):
            if p < width:
                return formulas[u][p]
            b, rest = divmod(p - width, num * len(OPS))
            label, op = divmod(rest, len(OPS))
            return formulas[u][b].extend(OPS[op], label)

        pool_marks = np.concatenate(
            [counts.fingerprint, marks.reshape(units, -1, FINGERPRINTS)], axis=1
        )
        kept = _best_distinct(pool_iou, pool_len, pool_marks, candidate, beam)
    best_atom = [row[0][:2] if row else (None, 0.0) for row in atoms]
    best = [row[0][:2] if row else (None, 0.0) for row in kept]
    return ComposeResult(
        layer=layer,
        length=length,
        beam=beam,
        names=tuple(str(n) for n in names),
        formulas=tuple(f for f, _ in best),
        iou=np.array([s for _, s in best], np.float64),
        atomic_label=np.array([0 if f is None else f.leaves[0] for f, _ in best_atom], np.int64),
        atomic_iou=np.array([s for _, s in best_atom], np.float64),
        beams=tuple(tuple((f, s) for f, s, _ in row) for row in kept),
        images=tables.images,
    )


# --- results ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ComposeResult:
    """Best formula of every unit of one layer.

    Attributes:
      layer, length, beam: what was searched (longest formula, formulas kept).
      names: (L,) label names.
      formulas: (U,) each unit's best formula, None where no concept overlaps its mask.
      iou: float64 (U,) its set IoU.
      atomic_label: int64 (U,) the best single concept (0: none).
      atomic_iou: float64 (U,) its set IoU.
      beams: per unit the final beam, ``((formula, IoU), ...)`` best first.
      images: images searched.
    """

    layer: str
    length: int
    beam: int
    names: tuple[str, ...]
    formulas: tuple[Formula | None, ...]
    iou: np.ndarray
    atomic_label: np.ndarray
    atomic_iou: np.ndarray
    beams: tuple[tuple[tuple[Formula, float], ...], ...]
    images: int

    @property
    def gain(self) -> np.ndarray:
        """float64 (U,) IoU of the best formula minus that of the best single concept."""
        return self.iou - self.atomic_iou

    def text(self, unit: int) -> str:
        """The readable formula of ``unit`` ("" when it has none)."""
        f = self.formulas[unit]
        return "" if f is None else f.text(self.names)

    def records(self) -> list[dict[str, Any]]:
        """One JSON-able record per unit: ``unit``, ``formula`` (text), ``tree``
        (:meth:`Formula.tree`), ``length``, ``iou``, ``atomic_label``, ``atomic_iou``,
        ``gain``, ``beam`` (``[{formula, iou}]``)."""
        out = []
        for u, f in enumerate(self.formulas):
            out.append(
                {
                    "unit": u,
                    "formula": self.text(u),
                    "tree": None if f is None else f.tree(self.names),
                    "length": 0 if f is None else len(f),
                    "iou": float(self.iou[u]),
                    "atomic_label": self.names[self.atomic_label[u]] if f is not None else "",
                    "atomic_iou": float(self.atomic_iou[u]),
                    "gain": float(self.gain[u]),
                    "beam": [{"formula": g.text(self.names), "iou": s} for g, s in self.beams[u]],
                }
            )
        return out

    def summary(self, min_gain: float = GAIN) -> dict[str, Any]:
        """Units, units gaining at least ``min_gain`` IoU from a formula, mean IoUs."""
        return {
            "units": len(self.formulas),
            "length": self.length,
            "beam": self.beam,
            "min_gain": min_gain,
            "units_gaining": int(np.sum(self.gain >= min_gain)),
            "mean_iou": float(np.mean(self.iou)) if len(self.iou) else 0.0,
            "mean_atomic_iou": float(np.mean(self.atomic_iou)) if len(self.iou) else 0.0,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``{layer, length, beam, images, summary, units: records}`` as JSON."""
        from cnnvis_jax.report.files import write_json

        record = {
            "layer": self.layer,
            "length": self.length,
            "beam": self.beam,
            "images": self.images,
            "iou": "set IoU |M_u AND F| / |M_u OR F| over all pixels (Mu & Andreas 2020)",
            "summary": self.summary(),
            "units": self.records(),
        }
        write_json(path, record)
        return Path(path)


def compose_layers(
    model: Model,
    source: Any,
    layers: Sequence[str] | str,
    *,
    length: int = DEFAULT_LENGTH,
    beam: int = DEFAULT_BEAM,
    dissection: Dissection | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    **dissect_options: Any,
) -> dict[str, ComposeResult]:
    """:func:`compose` for several layers with one pass over the data set."""
    length, beam = check_search(length, beam)
    layers = spatial_layers(model, layers)
    if dissection is None:
        dissection = dissect(model, source, layers, batch_size=batch_size, progress=progress,
                             **dissect_options)  # fmt: skip
    elif dissect_options:
        raise InputError(
            f"{', '.join(dissect_options)} are settings of the dissection; with dissection= "
            "given, its settings apply: drop them or pass dissection=None."
        )
    tables = concept_tables(model, source, dissection, layers, batch_size=batch_size,
                            progress=progress)  # fmt: skip
    names = dissection.layout.names
    return {name: search(tables, name, names, length=length, beam=beam) for name in layers}


def compose(
    model: Model,
    source: Any,
    layer: str,
    *,
    length: int = DEFAULT_LENGTH,
    beam: int = DEFAULT_BEAM,
    dissection: Dissection | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    **dissect_options: Any,
) -> ComposeResult:
    """Compositional explanations of every unit of ``layer`` (module docstring).

    Args:
      model: the network.
      source: the concept data set (as for :func:`dissect`).
      layer: a spatial layer.
      length: longest formula in concepts, 1 .. 10 (default 3; 1 = single concepts).
      beam: formulas kept per unit, >= 1 (default 5).
      dissection: a :func:`dissect` result that includes ``layer``: its thresholds,
        images, label layout and (when kept) activations are used. Without it,
        :func:`dissect` runs first with ``dissect_options`` (``quantile``, ``mode``,
        ``categories``, ``indices``, ``preprocess``, ...).
      batch_size: images per step of the pass over the data set.
      progress: show progress bars.

    Returns:
      :class:`ComposeResult`: per unit the best formula and its IoU, the best single
      concept and its IoU, and the gain.

    Raises:
      InputError: length outside 1 .. 10 or beam < 1 (before any work), a layer that
        is not spatial or not in ``dissection``, bad dissection settings.
    """
    check_search(length, beam)
    out = compose_layers(model, source, [layer], length=length, beam=beam, dissection=dissection,
                         batch_size=batch_size, progress=progress, **dissect_options)  # fmt: skip
    return next(iter(out.values()))


__all__ = [
    "ComposeResult",
    "ConceptTables",
    "Formula",
    "FormulaCounts",
    "OPS",
    "UnitHits",
    "check_search",
    "compose",
    "compose_layers",
    "concept_tables",
    "extension_counts",
    "formula_counts",
    "signature_columns",
    "search",
    "set_iou",
    "tables_from_masks",
]
