"""Pass 2 with sparse bookkeeping: the device finds the few places a unit can exceed
its threshold, the host counts the labels there.

Only about 0.5% of the upsampled pixels of a unit exceed its threshold (that is what
the top quantile means), so thresholding every upsampled map and contracting it with
the labels spends nearly all its work on zeros. Here, per batch:

1. **Device** (one jitted forward for all layers): each activation map ``A`` and its
   *cells*. With PIL's bilinear upsampling (scale >= 1), output pixel ``(y, x)``
   interpolates the 2 x 2 input block whose top-left corner is ``(r(y), c(x))``, its
   first taps along each axis, with non-negative weights summing to 1; so it can
   exceed ``T_u`` only if the block's maximum does. The device marks the cells
   ``(n, i, j, u)`` whose block maximum exceeds the threshold (about 1% of them).
2. **Host**: the marked cells' output pixels are upsampled exactly as PIL does it
   (float64 sums of the float64 taps, a float32 horizontal pass, then the vertical
   pass), thresholded, and the labels under the pixels that exceed the threshold
   are counted with ``np.bincount`` into the counts of
   :mod:`~cnnvis_jax.dissection.tally` (same definitions, same integers).

Everything per image stays within the batch. Layers whose maps are larger than the
segmentation (downsampling, more than two taps per pixel) are not supported here:
:func:`sparse_applies` says so and the dense tally handles them.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.dissection.labels import LabelLayout
from cnnvis_jax.dissection.upsample import pil_taps
from cnnvis_jax.features import to_model_input
from cnnvis_jax.model import Model


@dataclasses.dataclass(frozen=True)
class AxisCells:
    """PIL's bilinear taps of one axis, grouped by interpolation cell.

    Attributes:
      first, second: int (out,) the two input positions output ``x`` reads (the
        second clamped to the input; its weight is then 0).
      w_first, w_second: float64 (out,) their weights.
      start, count: int (in,) the outputs whose first tap is each input position
        (a contiguous run ``start .. start + count - 1``).
      span: the longest run.
    """

    first: np.ndarray
    second: np.ndarray
    w_first: np.ndarray
    w_second: np.ndarray
    start: np.ndarray
    count: np.ndarray
    span: int


@functools.lru_cache(maxsize=64)
def axis_cells(size_in: int, size_out: int) -> AxisCells | None:
    """The cells of ``size_in -> size_out``, or None when an output reads more than
    two neighbouring inputs (downsampling)."""
    taps = pil_taps(int(size_in), int(size_out))
    if taps.index.shape[1] > 2:
        return None
    first = taps.index[:, 0].astype(np.int64)
    w_first = taps.weight[:, 0]
    if taps.index.shape[1] == 2:
        two = taps.weight[:, 1] != 0
        if np.any(taps.index[two, 1] != first[two] + 1):
            return None
        w_second = np.where(two, taps.weight[:, 1], 0.0)
    else:
        w_second = np.zeros_like(w_first)
    if np.any(np.diff(first) < 0):
        return None
    second = np.minimum(first + 1, size_in - 1)
    count = np.bincount(first, minlength=size_in)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    return AxisCells(first, second, w_first, w_second, start, count, int(count.max()))


def sparse_applies(model: Model, layers, seg_size: tuple[int, int]) -> bool:
    """Whether every layer's maps upsample to ``seg_size`` (the sparse tally's case)."""
    for name in layers:
        h, w, _ = model.layer(name).shape
        if axis_cells(h, seg_size[0]) is None or axis_cells(w, seg_size[1]) is None:
            return False
    return True


def _local_cells(model: Model, images, valid, thresholds, *, layers):
    """Forward, then per layer (activations, bool cells (B, h, w, U) whose 2 x 2 block
    maximum exceeds the unit's threshold)."""
    acts = model.apply(model.params, to_model_input(model, images), layers)
    out = {}
    for name in layers:
        a = acts[name].astype(jnp.float32)
        edge = jnp.pad(a, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
        block = jnp.maximum(
            jnp.maximum(edge[:, :-1, :-1], edge[:, 1:, :-1]),
            jnp.maximum(edge[:, :-1, 1:], edge[:, 1:, 1:]),
        )
        out[name] = (a, (block > thresholds[name]) & valid[:, None, None, None])
    return out


def host_cells(acts: np.ndarray, threshold: np.ndarray, valid: np.ndarray) -> tuple:
    """:func:`_local_cells` of one layer on the host, for activations kept from pass 1:
    ``(acts, bool cells (B, h, w, U))``; ``threshold`` float32 (U,)."""
    edge = np.pad(acts, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
    block = np.maximum(
        np.maximum(edge[:, :-1, :-1], edge[:, 1:, :-1]),
        np.maximum(edge[:, :-1, 1:], edge[:, 1:, 1:]),
    )
    return acts, (block > threshold) & valid[:, None, None, None]


@functools.lru_cache(maxsize=16)
def compiled_cells(layers: tuple[str, ...]):
    """jit(cells)(model, images, valid, thresholds) -> {layer: (acts, cells)}."""
    return jax.jit(functools.partial(_local_cells, layers=layers))


@dataclasses.dataclass(frozen=True)
class Labels:
    """One batch's labels on the host, in the forms the counts need.

    Attributes:
      pixel: int32 (B, Ly, P) label numbers per pixel layer (0 = none; padded
        images all 0).
      scalar: int64 (B, L) image-level label counts (padded images 0).
      scalar_cat: int64 (B, C) image-level labels per category.
      present: int64 (B, C) 1 where the image has a label of the category.
      per_image: int64 (B, L) pixels per label (label 0 not counted).
    """

    pixel: np.ndarray
    scalar: np.ndarray
    scalar_cat: np.ndarray
    present: np.ndarray
    per_image: np.ndarray


def batch_labels(
    pixel: np.ndarray, scalar: np.ndarray, valid: np.ndarray, layout: LabelLayout
) -> Labels:
    """:class:`Labels` of a batch (``pixel`` int (B, Ly, P), ``scalar`` int (B, S), -1 = none)."""
    b = len(valid)
    num = layout.num_labels
    pixel = np.where(valid[:, None, None], pixel, 0).astype(np.int32)
    scalar = np.where(valid[:, None], scalar, -1)
    rows = np.repeat(np.arange(b), scalar.shape[1])
    keep = scalar.reshape(-1) >= 0
    onehot = np.zeros((b, num), np.int64)
    np.add.at(onehot, (rows[keep], scalar.reshape(-1)[keep]), 1)
    image = np.repeat(np.arange(b, dtype=np.int64), pixel.shape[1] * pixel.shape[2])
    per_image = np.bincount(image * num + pixel.reshape(-1), minlength=b * num).reshape(b, num)
    per_image[:, 0] = 0
    cat = layout.labelcat().astype(np.int64)
    scalar_cat = onehot @ cat
    present = ((per_image @ cat + scalar_cat) > 0).astype(np.int64)
    return Labels(pixel, onehot, scalar_cat, present, per_image)


def image_counts(labels: Labels, valid: np.ndarray) -> dict[str, np.ndarray]:
    """The layer-independent counts of a batch (``labels``, ``images``, ``category_images``)."""
    npix = labels.pixel.shape[2]
    return {
        "labels": labels.per_image.sum(0) + labels.scalar.sum(0) * npix,
        "images": np.asarray(int(valid.sum()), np.int64),
        "category_images": labels.present.sum(0),
    }


def upsampled_cells(
    acts: np.ndarray,
    n: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    u: np.ndarray,
    rows: AxisCells,
    cols: AxisCells,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PIL's bilinear upsampling of ``acts`` (B, h, w, U) at the output pixels of cells
    ``(n, i, j, u)`` (K each), bit for bit.

    Returns:
      ``up`` float32 (K, RY, RX) values, ``y`` (K, RY) and ``x`` (K, RX) output rows
      and columns, ``inside`` bool (K, RY, RX) (a cell has up to RY x RX pixels).
    """
    h, w = acts.shape[1:3]
    i2, j2 = np.minimum(i + 1, h - 1), np.minimum(j + 1, w - 1)
    corner = [acts[n, r, c, u].astype(np.float64) for r, c in ((i, j), (i, j2), (i2, j), (i2, j2))]
    dy, dx = np.arange(rows.span), np.arange(cols.span)
    y_ok = dy < rows.count[i][:, None]  # (K, RY)
    x_ok = dx < cols.count[j][:, None]  # (K, RX)
    y = np.where(y_ok, rows.start[i][:, None] + dy, 0)
    x = np.where(x_ok, cols.start[j][:, None] + dx, 0)
    cw0, cw1 = cols.w_first[x], cols.w_second[x]
    # PIL: horizontal pass (float64 sums stored as float32), then the vertical pass.
    top = (cw0 * corner[0][:, None] + cw1 * corner[1][:, None]).astype(np.float32)
    bottom = (cw0 * corner[2][:, None] + cw1 * corner[3][:, None]).astype(np.float32)
    rw0, rw1 = rows.w_first[y][:, :, None], rows.w_second[y][:, :, None]
    up = (rw0 * top[:, None, :].astype(np.float64) + rw1 * bottom[:, None, :]).astype(np.float32)
    return up, y, x, y_ok[:, :, None] & x_ok[:, None, :]


def layer_counts(
    acts: np.ndarray,
    cells: np.ndarray,
    thresholds: np.ndarray,
    rows: AxisCells,
    cols: AxisCells,
    labels: Labels,
    layout: LabelLayout,
) -> dict[str, np.ndarray]:
    """The counts of one layer and batch (see :mod:`~cnnvis_jax.dissection.tally`).

    Args:
      acts: float32 (B, h, w, U) activations.
      cells: bool (B, h, w, U) cells that may exceed the threshold.
      thresholds: float32 (U,).
      rows, cols: :func:`axis_cells` of ``h -> sh`` and ``w -> sw``.
      labels: the batch's :class:`Labels`.
      layout: the label layout.
    """
    b, h, w, units = acts.shape
    num, cats = layout.num_labels, len(layout.categories)
    sw = layout.seg_size[1]
    n, i, j, u = np.unravel_index(np.flatnonzero(cells), cells.shape)
    up, y, x, inside = upsampled_cells(acts, n, i, j, u, rows, cols)
    hit = (up > thresholds[u][:, None, None]) & inside
    k, ry, rx = np.nonzero(hit)
    hn, hu = n[k], u[k]
    pair = hn * units + hu
    act = np.bincount(pair, minlength=b * units).reshape(b, units)
    lab = labels.pixel[hn, :, y[k, ry] * sw + x[k, rx]]  # (hits, Ly)
    lab_cat = layout.label_category[lab]
    scored = lab > 0
    unit_label = np.bincount((hu[:, None] * num + lab)[scored], minlength=units * num).reshape(
        units, num
    )
    in_cat = scored & (lab_cat >= 0)
    overlap = np.bincount(
        (pair[:, None] * cats + lab_cat)[in_cat], minlength=b * units * cats
    ).reshape(b, units, cats)
    overlap = overlap + labels.scalar_cat[:, None, :]
    return {
        "both": unit_label + act.T @ labels.scalar,
        "units": act.sum(0),
        "units_cat_lite": np.einsum("nu,nuc->uc", act, (overlap > 0).astype(np.int64)),
        "units_cat_original": act.T @ labels.present,
    }


__all__ = [
    "AxisCells",
    "Labels",
    "axis_cells",
    "batch_labels",
    "compiled_cells",
    "host_cells",
    "image_counts",
    "layer_counts",
    "sparse_applies",
    "upsampled_cells",
]
