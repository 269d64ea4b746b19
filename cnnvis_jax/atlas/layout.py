"""A 2-D layout of activation vectors and the grid of atlas cells over it.

:func:`embed` places every vector in the unit square: the vectors are scaled to unit
length (the layout follows their *direction*, as Lucid's atlas, whose UMAP uses the
cosine metric), reduced by PCA to at most ``pca_dims`` dimensions, laid out by
t-SNE (scikit-learn, Barnes-Hut, PCA initialization, ``random_state=seed``), and
normalized as Lucid's ``normalize_layout`` does: each axis clipped to its 1st..99th
percentile widened by 10 % on both sides, then scaled to [0, 1]. The same vectors and
seed give the same layout.

:func:`bin_cells` overlays a ``G x G`` grid on that square (Lucid's
``bin_laid_out_activations``): every cell holding at least ``min_points`` points
becomes one atlas cell, its direction the mean of its points' (unscaled) vectors, its
concept the majority label of its points and its distinctive concept the label its
points over-represent most (the largest lift:
:func:`cnnvis_jax.atlas.labels.distinctive`). Cells are addressed as ``(row, col)`` of
the atlas picture: column = the x bin, row 0 at the top = the largest y bin, so the
picture and the scatter plot of the layout (y upwards) line up.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cnnvis_jax.atlas.labels import MIN_COUNT, distinctive, majority
from cnnvis_jax.errors import InputError

__all__ = ["Cells", "Layout", "assign_cells", "bin_cells", "embed", "normalize_layout"]

PCA_DIMS = 50
"""Dimensions kept by PCA before t-SNE."""
PERPLEXITY = 30.0
"""t-SNE perplexity (lowered to ``(P - 1) / 3`` for fewer than 91 points)."""
MIN_LAYOUT_POINTS = 4
"""Fewest points t-SNE lays out."""


class Layout(NamedTuple):
    """Where the vectors lie in 2-D.

    Attributes:
      points: float64 (P, 2) in [0, 1] (x, y), the normalized layout.
      tsne: float64 (P, 2), t-SNE's raw coordinates.
      pca_variance: fraction of the (unit-scaled) vectors' variance the PCA kept.
      kl_divergence: t-SNE's final Kullback-Leibler divergence.
      perplexity: the perplexity used.
    """

    points: np.ndarray
    tsne: np.ndarray
    pca_variance: float
    kl_divergence: float
    perplexity: float


class Cells(NamedTuple):
    """The non-empty cells of a ``G x G`` grid over a layout (M of them).

    Attributes:
      cell: int32 (M, 2) ``(row, col)`` of each cell in the atlas picture (row 0 at
        the top), in row-major order.
      direction: float32 (M, C), the mean activation vector of the cell's points.
      count: int64 (M,), points in the cell (each >= ``min_points``).
      label: int32 (M,), the majority concept label of the cell's points (0 = none).
      share: float32 (M,), the fraction of the cell's points carrying ``label``.
      distinctive: int32 (M,), the label with the largest lift among those held by at
        least ``min_count`` of the cell's points (0 = none qualifies).
      lift: float32 (M,), its lift ``(share of the cell's points carrying it) / (share
        of all P points carrying it)`` (0 where ``distinctive`` is 0).
      member: int64 (P,), the cell (0..M-1) of every point, -1 when its grid square
        holds fewer than ``min_points`` points.
      grid: G.
    """

    cell: np.ndarray
    direction: np.ndarray
    count: np.ndarray
    label: np.ndarray
    share: np.ndarray
    distinctive: np.ndarray
    lift: np.ndarray
    member: np.ndarray
    grid: int


def normalize_layout(layout: np.ndarray, low: float = 1.0, high: float = 99.0,
                     margin: float = 0.1) -> np.ndarray:  # fmt: skip
    """float64 (P, 2) ``layout`` with each axis clipped to its ``low``..``high``
    percentile range widened by ``margin`` of it on both sides, then scaled to [0, 1]
    (a constant axis becomes 0.5)."""
    layout = np.asarray(layout, np.float64)
    lo = np.percentile(layout, low, axis=0)
    hi = np.percentile(layout, high, axis=0)
    lo, hi = lo - margin * (hi - lo), hi + margin * (hi - lo)
    clipped = np.clip(layout, lo, hi)
    clipped = clipped - clipped.min(axis=0)
    span = clipped.max(axis=0)
    return np.where(span > 0, clipped / np.where(span > 0, span, 1.0), 0.5)


def embed(vectors: np.ndarray, *, seed: int = 0, pca_dims: int = PCA_DIMS,
          perplexity: float = PERPLEXITY) -> Layout:  # fmt: skip
    """The 2-D layout of ``vectors`` (P, C) (see the module docstring).

    Raises:
      InputError: fewer than :data:`MIN_LAYOUT_POINTS` vectors, or an all-zero vector
        (it has no direction; drop silent positions first).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    vectors = np.asarray(vectors, np.float64)
    n = len(vectors)
    if n < MIN_LAYOUT_POINTS:
        raise InputError(
            f"a layout needs at least {MIN_LAYOUT_POINTS} activation vectors, got {n}; use "
            "more images or points."
        )
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(norms > 0):
        raise InputError("an all-zero activation vector has no direction; drop it before embed.")
    unit = vectors / norms
    dims = max(1, min(int(pca_dims), unit.shape[1], n))
    pca = PCA(n_components=dims, svd_solver="full", random_state=seed)
    reduced = pca.fit_transform(unit)
    used = min(float(perplexity), (n - 1) / 3.0)
    tsne = TSNE(n_components=2, perplexity=used, init="pca", learning_rate="auto",
                random_state=seed)  # fmt: skip
    raw = tsne.fit_transform(reduced)
    return Layout(
        points=normalize_layout(raw),
        tsne=np.asarray(raw, np.float64),
        pca_variance=float(np.sum(pca.explained_variance_ratio_)),
        kl_divergence=float(tsne.kl_divergence_),
        perplexity=used,
    )


def assign_cells(points: np.ndarray, grid: int) -> np.ndarray:
    """int64 (P, 2) ``(row, col)`` of every point of a [0, 1]^2 layout (P, 2) in a
    ``grid x grid`` atlas: ``col = floor(x * G)``, ``row = G - 1 - floor(y * G)``,
    clipped to the grid (x = 1 or y = 1 falls into the last bin)."""
    points = np.asarray(points, np.float64)
    bins = np.clip(np.floor(points * grid), 0, grid - 1).astype(np.int64)
    return np.stack([grid - 1 - bins[:, 1], bins[:, 0]], axis=-1)


def bin_cells(points: np.ndarray, vectors: np.ndarray, labels: np.ndarray, grid: int,
              *, min_points: int, num_labels: int,
              min_count: int = MIN_COUNT) -> Cells:  # fmt: skip
    """The atlas cells of a layout (see the module docstring).

    Args:
      points: (P, 2) layout in [0, 1]^2.
      vectors: (P, C) activation vectors.
      labels: int (P,) concept labels in ``0..num_labels-1``.
      grid: G, cells per side.
      min_points: fewest points a cell needs to be kept.
      num_labels: one more than the largest label number.
      min_count: fewest of a cell's points a label needs to be its distinctive label.

    Raises:
      InputError: ``grid``, ``min_points`` or ``min_count`` below 1; mismatched
        lengths.
    """
    if int(grid) < 1 or int(min_points) < 1:
        raise InputError(f"grid and min_points must be at least 1, got {grid} and {min_points}.")
    points = np.asarray(points)
    vectors = np.asarray(vectors, np.float32)
    if not (len(points) == len(vectors) == len(labels)):
        raise InputError(
            f"points, vectors and labels differ in length ({len(points)}, {len(vectors)}, "
            f"{len(labels)})."
        )
    where = assign_cells(points, grid)
    flat = where[:, 0] * grid + where[:, 1]
    counts = np.bincount(flat, minlength=grid * grid)
    kept = np.flatnonzero(counts >= min_points)  # row-major order
    index = np.full(grid * grid, -1, np.int64)
    index[kept] = np.arange(len(kept))
    member = index[flat]
    sums = np.zeros((len(kept), vectors.shape[1]), np.float64)
    inside = member >= 0
    np.add.at(sums, member[inside], vectors[inside])
    count = counts[kept].astype(np.int64)
    label, share = majority(labels, member, len(kept), num_labels)
    special, lift = distinctive(labels, member, len(kept), num_labels, min_count=min_count)
    return Cells(
        cell=np.stack([kept // grid, kept % grid], axis=-1).astype(np.int32),
        direction=(sums / np.maximum(count, 1)[:, None]).astype(np.float32),
        count=count,
        label=label,
        share=share,
        distinctive=special,
        lift=lift,
        member=member,
        grid=int(grid),
    )
