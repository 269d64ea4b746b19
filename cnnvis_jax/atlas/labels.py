"""Concept labels of layer positions and of groups of positions.

A layer position ``(i, j)`` of an ``H x W`` grid is labelled from an image's concept
mask (``h x w`` pixels, one or more layers) by the *block majority* of its
footprint: the mask pixels ``[i*h//H, (i+1)*h//H) x [j*w//W, (j+1)*w//W)``, the tile
of the image that lies closest to that position when the dissection upsamples the
layer's map to the mask (:mod:`cnnvis_jax.dissection.upsample`: bilinear, so each
mask pixel follows mostly the position whose tile holds it). Label 0 ("none") is not
counted; a footprint with no labelled pixel gets 0; ties go to the smaller label
number. The receptive field is not used: at conv4 of the default model it spans 57
of the 64 pixels, so its majority would be the background almost everywhere.

A set of positions (a group: an atlas cell, or the positions an NMF group dominates)
gets two labels from its position labels:

* :func:`majority`: the most frequent label, ignoring 0, ties to the smaller number.
  Frequent concepts (sky, wall) win it in most groups.
* :func:`distinctive`: the label with the largest *lift*, the factor by which the
  group over-represents it::

      lift(g, c) = (n[g, c] / n[g]) / (N[c] / N)

  with ``n[g, c]`` the group's positions labelled ``c``, ``n[g]`` all the group's
  positions (labelled or not), ``N[c]`` all positions labelled ``c`` and ``N`` all
  positions (in a group or not). Only labels held by at least ``min_count``
  (:data:`MIN_COUNT`, 3) of the group's positions compete, so a concept seen once
  cannot win by chance; 0 ("none") never does. Ties go to the smaller number; a group
  where no label qualifies gets 0 with lift 0. A lift of 1 is the data set's rate; the
  distinctive label equals the majority one when that also has the largest lift.
"""

from __future__ import annotations

import numpy as np

from cnnvis_jax.errors import InputError

__all__ = ["MIN_COUNT", "block_majority", "distinctive", "majority"]

MIN_COUNT = 3
"""Fewest of a group's positions a label needs to be its distinctive label."""


def _footprint_index(size: int, cells: int) -> np.ndarray:
    """int64 (size,): the cell ``0..cells-1`` whose footprint holds each pixel
    (pixel ``p`` belongs to cell ``c`` when ``c*size//cells <= p < (c+1)*size//cells``)."""
    starts = (np.arange(cells + 1) * size) // cells
    return np.searchsorted(starts, np.arange(size), side="right") - 1


def block_majority(masks: np.ndarray, grid: tuple[int, int], num_labels: int) -> np.ndarray:
    """The label of every position of an ``H x W`` layer grid (see the module docstring).

    Args:
      masks: int (B, L, h, w) label numbers in ``0..num_labels-1`` (0 = none; L mask
        layers, e.g. Broden's several part layers), with ``h >= H`` and ``w >= W``.
      grid: (H, W), the layer's spatial size.
      num_labels: one more than the largest label number.

    Returns:
      int32 (B, H, W): the most frequent non-zero label of each position's footprint
      (over all L layers), 0 where none; ties to the smaller number.

    Raises:
      InputError: masks that are not 4-D, smaller than the grid, or hold labels
        outside ``0..num_labels-1``.
    """
    masks = np.asarray(masks)
    if masks.ndim != 4:
        raise InputError(f"masks must be (B, L, h, w) label numbers, got shape {masks.shape}.")
    rows, cols = (int(v) for v in grid)
    b, _, h, w = masks.shape
    if h < rows or w < cols:
        raise InputError(
            f"masks of {h}x{w} pixels are smaller than the layer grid {rows}x{cols}; label "
            "a layer with fewer positions or use larger masks."
        )
    if masks.size and (masks.min() < 0 or masks.max() >= num_labels):
        raise InputError(
            f"mask labels must be in 0..{num_labels - 1}, got {int(masks.min())}.."
            f"{int(masks.max())}; the masks do not match the vocabulary."
        )
    cell = _footprint_index(h, rows)[:, None] * cols + _footprint_index(w, cols)[None, :]
    image = np.arange(b)[:, None, None, None]
    key = (image * (rows * cols) + cell[None, None]) * num_labels + masks.astype(np.int64)
    counts = np.bincount(key.reshape(-1), minlength=b * rows * cols * num_labels)
    counts = counts.reshape(b * rows * cols, num_labels)
    counts[:, 0] = 0
    best = counts.argmax(axis=1)  # first maximum: the smaller label number
    best[counts.max(axis=1) == 0] = 0
    return best.reshape(b, rows, cols).astype(np.int32)


def _group_counts(labels: np.ndarray, groups: np.ndarray, n_groups: int,
                  num_labels: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Validated int64 (P,) ``labels`` and int64 (G, L) counts of each label (0
    included) in each group; positions in group -1 are not counted.

    Raises:
      InputError: ``labels`` and ``groups`` not 1-D of one length; labels outside
        ``0..num_labels-1``; groups outside ``-1..n_groups-1``.
    """
    labels = np.asarray(labels, np.int64)
    groups = np.asarray(groups, np.int64)
    if labels.shape != groups.shape or labels.ndim != 1:
        raise InputError(
            f"labels and groups must be 1-D of one length, got {labels.shape} and {groups.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
        raise InputError(
            f"labels must be in 0..{num_labels - 1}, got {int(labels.min())}.."
            f"{int(labels.max())}; the labels do not match the vocabulary."
        )
    if groups.size and (groups.min() < -1 or groups.max() >= n_groups):
        raise InputError(
            f"groups must be in -1..{n_groups - 1}, got {int(groups.min())}..{int(groups.max())}."
        )
    inside = groups >= 0
    counts = np.bincount(
        groups[inside] * num_labels + labels[inside], minlength=n_groups * num_labels
    ).reshape(n_groups, num_labels)
    return labels, counts


def majority(labels: np.ndarray, groups: np.ndarray, n_groups: int,
             num_labels: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The dominant label of each group of positions, and the share it holds.

    Args:
      labels: int (P,) label numbers in ``0..num_labels-1`` (0 = none).
      groups: int (P,) group of each position in ``0..n_groups-1``; -1 = in no group.
      n_groups: G, the number of groups.
      num_labels: one more than the largest label number.

    Returns:
      ``(label, share)``: int32 (G,) the most frequent non-zero label of each group
      (ties to the smaller number; 0 when the group has no labelled position), and
      float32 (G,) the fraction of the group's positions (labelled or not) carrying
      it (0 for an empty group).

    Raises:
      InputError: ``labels`` and ``groups`` not 1-D of one length; labels outside
        ``0..num_labels-1``; groups outside ``-1..n_groups-1``.
    """
    _, counts = _group_counts(labels, groups, n_groups, num_labels)
    sizes = counts.sum(axis=1)
    counts[:, 0] = 0
    best = counts.argmax(axis=1)
    top = counts[np.arange(n_groups), best]
    best[top == 0] = 0
    share = np.where(sizes > 0, top / np.maximum(sizes, 1), 0.0)
    return best.astype(np.int32), share.astype(np.float32)


def distinctive(labels: np.ndarray, groups: np.ndarray, n_groups: int, num_labels: int, *,
                min_count: int = MIN_COUNT) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The label each group over-represents most, and by how much (see the module
    docstring for the lift).

    Args:
      labels: int (P,) label numbers in ``0..num_labels-1`` (0 = none).
      groups: int (P,) group of each position in ``0..n_groups-1``; -1 = in no group
        (still counted in the overall rates ``N[c] / N``).
      n_groups: G, the number of groups.
      num_labels: one more than the largest label number.
      min_count: fewest of a group's positions a label needs to compete.

    Returns:
      ``(label, lift)``: int32 (G,) the non-zero label with the largest
      ``lift = (n[g, c] / n[g]) / (N[c] / N)`` among those held by at least
      ``min_count`` of the group's positions (ties to the smaller number; 0 when none
      qualifies), and float32 (G,) its lift (0 where the label is 0).

    Raises:
      InputError: ``min_count`` below 1; see :func:`majority`.
    """
    if int(min_count) < 1:
        raise InputError(f"min_count must be at least 1, got {min_count}.")
    labels, counts = _group_counts(labels, groups, n_groups, num_labels)
    total = np.bincount(labels, minlength=num_labels)
    sizes = counts.sum(axis=1)
    # n[g, c] / N[c] orders the labels of one group as the lift does; equal fractions
    # divide to equal floats, so exact ties stay ties and go to the smaller number
    ratio = np.divide(counts, total, out=np.zeros(counts.shape), where=total > 0)
    ratio[counts < int(min_count)] = -np.inf
    ratio[:, 0] = -np.inf
    best = ratio.argmax(axis=1)
    top = ratio[np.arange(n_groups), best]
    found = np.isfinite(top)
    best[~found] = 0
    lift = np.zeros(n_groups)
    lift[found] = top[found] * len(labels) / sizes[found]
    return best.astype(np.int32), lift.astype(np.float32)
