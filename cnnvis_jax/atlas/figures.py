"""Pictures of an atlas and of neuron groups (uint8 arrays and matplotlib figures).

* :func:`atlas_picture`: the ``G x G`` atlas, each cell's rendered image at its
  ``(row, col)`` with its concept under it; cells without enough points are grey.
* :class:`Caption`: a tile's caption, ``majority · distinctive xLIFT`` (e.g.
  ``sky · car x3.1``; the majority concept alone when the distinctive one is the same
  or none), shortened to fit the tile (``sky/car x3``).
* :func:`layout_figure`: the 2-D layout as a scatter plot, points coloured by their
  concept (the ten most frequent get their own colour, the rest are "other"), with
  the atlas grid drawn over it.
* :func:`groups_picture`: one row per neuron group: its rendered image, then its top
  image regions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from cnnvis_jax.report.grid import image_grid

__all__ = ["Caption", "atlas_picture", "caption_chars", "groups_picture", "layout_figure"]

EMPTY_CELL = 0.85
"""Grey level of atlas cells that hold too few points."""
LEGEND_CONCEPTS = 10
SEPARATOR = " · "
"""Between the majority and the distinctive concept in a caption."""
TIGHT_SEPARATOR = "/"
"""The same where space is short (a middle dot without spaces is hard to see)."""


def caption_chars(width: int) -> int:
    """Characters of a caption that :func:`cnnvis_jax.report.grid.image_grid` draws
    under a tile ``width`` pixels wide (it cuts the rest)."""
    return max(int(width) // 6, 4)


def _lift_text(lift: float, digits: int) -> str:
    return f"x{lift:.{digits}f}"


class Caption(NamedTuple):
    """The caption of a tile labelled by concepts.

    Attributes:
      concept: the majority concept's name.
      distinctive: the distinctive concept's name ("none" for none).
      lift: its lift.
      prefix: text put first (e.g. ``"2: "`` for group 2).
    """

    concept: str
    distinctive: str = "none"
    lift: float = 0.0
    prefix: str = ""

    def text(self, chars: int | None = None) -> str:
        """``prefix + "concept · distinctive xLIFT"`` (lift with one decimal), or
        ``prefix + concept`` when the distinctive concept is none or the same. With
        ``chars``, the first of these forms that fits: that one, then
        ``concept/distinctive xLIFT``, then the lift rounded to a whole number, then
        the longer of the two names cut one character at a time (each keeps at least
        one); failing all, ``prefix + concept`` cut to ``chars``."""
        head = self.prefix + self.concept
        if self.distinctive in ("none", "", self.concept):
            return head if chars is None else head[:chars]
        forms = [
            (SEPARATOR, _lift_text(self.lift, 1)),
            (TIGHT_SEPARATOR, _lift_text(self.lift, 1)),
            (TIGHT_SEPARATOR, _lift_text(self.lift, 0)),
        ]
        full = f"{head}{forms[0][0]}{self.distinctive} {forms[0][1]}"
        if chars is None:
            return full
        for separator, lift in forms:
            text = f"{head}{separator}{self.distinctive} {lift}"
            if len(text) <= chars:
                return text
        separator, lift = forms[-1]
        room = chars - len(self.prefix) - len(separator) - len(lift) - 1
        first, second = self.concept, self.distinctive
        while len(first) + len(second) > room and max(len(first), len(second)) > 1:
            if len(first) >= len(second):
                first = first[:-1]
            else:
                second = second[:-1]
        text = f"{self.prefix}{first}{separator}{second} {lift}"
        return text if len(text) <= chars else head[:chars]


def _resized(tiles: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 (N, h, w, 3) tiles in [0, 1] resized to (N, *size, 3) (bilinear)."""
    from PIL import Image

    tiles = np.asarray(tiles, np.float32)
    if tiles.shape[1:3] == tuple(size):
        return tiles
    out = np.empty((len(tiles), *size, 3), np.float32)
    for n, tile in enumerate(tiles):
        picture = Image.fromarray((np.clip(tile, 0, 1) * 255 + 0.5).astype(np.uint8))
        resized = picture.resize((size[1], size[0]), Image.BILINEAR)
        out[n] = np.asarray(resized, np.float32) / 255.0
    return out


def _atlas_scale(grid: int) -> int:
    """Tile enlargement of a ``grid x grid`` atlas picture."""
    return 2 if grid <= 8 else 1


def _fitted(label: str | Caption, width: int) -> str:
    """``label`` as drawn under a tile ``width`` pixels wide."""
    return label.text(caption_chars(width)) if isinstance(label, Caption) else str(label)


def atlas_picture(images: np.ndarray, cells: np.ndarray, grid: int,
                  labels: Sequence[str | Caption]) -> np.ndarray:  # fmt: skip
    """uint8 picture of an atlas.

    Args:
      images: float32 (M, H, W, 3) in [0, 1], one rendered image per cell.
      cells: int (M, 2) ``(row, col)`` of each cell (row 0 at the top).
      grid: G, cells per side.
      labels: M captions (the cells' concepts): strings, or :class:`Caption` fitted
        to the tile width.

    Returns:
      uint8 (Ph, Pw, 3): G x G tiles (enlarged twice for G <= 8), captions under them.
    """
    images = np.asarray(images, np.float32)
    size = images.shape[1:3]
    scale = _atlas_scale(grid)
    tiles = np.full((grid * grid, *size, 3), EMPTY_CELL, np.float32)
    captions = [""] * (grid * grid)
    for m, (row, col) in enumerate(np.asarray(cells)):
        tiles[row * grid + col] = images[m]
        captions[row * grid + col] = _fitted(labels[m], size[1] * scale)
    return image_grid(tiles, ncols=grid, labels=captions, scale=scale)


def layout_figure(points: np.ndarray, labels: np.ndarray, names: dict[int, str], grid: int,
                  *, title: str):  # fmt: skip
    """A matplotlib figure: the layout ``points`` (P, 2) in [0, 1]^2 coloured by concept.

    Args:
      points: (P, 2) layout (x, y).
      labels: int (P,) label numbers (0 = none).
      names: label number -> name.
      grid: G (grid lines every 1 / G).
      title: the figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = np.asarray(points)
    labels = np.asarray(labels)
    numbers, counts = np.unique(labels[labels > 0], return_counts=True)
    shown = numbers[np.argsort(-counts, kind="stable")][:LEGEND_CONCEPTS]
    palette = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8.5, 7))
    rest = ~np.isin(labels, shown)
    if rest.any():
        ax.scatter(points[rest, 0], points[rest, 1], s=3, color="0.7", linewidths=0,
                   label="other / none")  # fmt: skip
    for n, number in enumerate(shown):
        on = labels == number
        ax.scatter(points[on, 0], points[on, 1], s=3, color=palette(n), linewidths=0,
                   label=f"{names.get(int(number), str(number))} ({int(on.sum())})")  # fmt: skip
    for edge in np.linspace(0.0, 1.0, grid + 1):
        ax.axhline(edge, color="0.85", linewidth=0.4, zorder=0)
        ax.axvline(edge, color="0.85", linewidth=0.4, zorder=0)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=3,
              frameon=False)  # fmt: skip
    fig.tight_layout()
    return fig


def groups_picture(rendered: np.ndarray | None, patches: np.ndarray,
                   captions: Sequence[str | Caption]) -> np.ndarray:  # fmt: skip
    """uint8 picture of k neuron groups, one row each.

    Args:
      rendered: float32 (k, H, W, 3) rendered group images, or None.
      patches: float32 (k, m, Sh, Sw, 3) top image regions (resized to the rendered
        size, or to Sh x Sw without renders).
      captions: k captions under each row's first tile: strings, or :class:`Caption`
        fitted to the tile width.

    Returns:
      uint8 picture: per row the rendered image (when given) then the m regions.
    """
    patches = np.asarray(patches, np.float32)
    k, m = patches.shape[:2]
    size = rendered.shape[1:3] if rendered is not None else patches.shape[2:4]
    rows = []
    labels = []
    for g in range(k):
        regions = _resized(patches[g], size)
        tiles = regions if rendered is None else np.concatenate([rendered[g : g + 1], regions])
        rows.append(tiles)
        labels += [_fitted(captions[g], size[1] * 2)]
        labels += [f"top {i + 1}" for i in range(len(tiles) - 1)]
    tiles = np.concatenate(rows)
    return image_grid(tiles, ncols=len(rows[0]), labels=labels, scale=2)
