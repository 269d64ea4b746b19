"""Zeiler & Fergus figures: per unit, the top-k projections next to their image patches.

:func:`deconv_layer` runs the whole pipeline for one layer (top-k over a source,
the projections at the recorded maxima, the receptive-field patches, the figure);
:func:`save_outputs` writes ``<layer>.png`` and ``results.json``.

Figure layout: one row per unit; the k projections (each min-max rescaled on its
own, then cut to the unit's receptive-field window), a blank tile, then the k
image patches of the same windows. Projection tiles are captioned with the
activation (the first one with the unit), patches with the image index.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from cnnvis_jax.deconv.projection import Projection, project_top, ruled_model
from cnnvis_jax.deconv.topk import (
    Patches,
    TopK,
    crop_patches,
    cut_windows,
    field_boxes,
    top_activations,
)
from cnnvis_jax.model import Model
from cnnvis_jax.report.files import write_json
from cnnvis_jax.report.grid import image_grid, rescale_each, save_png

__all__ = [
    "DeconvResult",
    "deconv_layer",
    "layer_figure",
    "proven_dead",
    "results_record",
    "save_outputs",
    "write_results",
]

FILL = 0.5
"""Grey shown where a receptive field reaches outside the image."""


class DeconvResult(NamedTuple):
    """Everything :func:`deconv_layer` computed for one layer.

    Attributes:
      topk: per-unit top images (values, image_index, position).
      projection: projections (U, k, H, W, 3) at those images and positions.
      patches: receptive-field crops (U, k, Sh, Sw, 3) and boxes (U, k, 4).
      figure: uint8 (height, width, 3) picture (see the module docstring).
      rule, pool: the backward rule and pooling mode used.
      dead: the units silent on the data that are also provably dead (no image in
        the input range activates them, :mod:`cnnvis_jax.bounds`); None when the
        network could not be bounded.
    """

    topk: TopK
    projection: Projection
    patches: Patches
    figure: np.ndarray
    rule: str
    pool: str
    dead: tuple[int, ...] | None = ()

    def summary(self) -> dict[str, Any]:
        """``{layer, rule, pool, units, top_activation (per unit), silent_units,
        dead_units}`` (``dead_units``: the silent ones proven dead; None when the
        network could not be bounded)."""
        top = np.asarray(self.topk.values)[:, 0]
        return {
            "layer": self.topk.layer,
            "rule": self.rule,
            "pool": self.pool,
            "units": [int(u) for u in self.topk.units],
            "top_activation": [float(v) for v in top],
            "silent_units": [int(u) for u, v in zip(self.topk.units, top) if not v > 0],
            "dead_units": None if self.dead is None else [int(u) for u in self.dead],
        }

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``<layer>.png`` and ``results.json`` into ``out_dir`` (see
        :func:`save_outputs`); returns the folder."""
        save_outputs(out_dir, self)
        return Path(out_dir)


def _resize_tiles(tiles: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tiles.shape[1:3] == tuple(size):
        return tiles
    out = [
        np.asarray(
            Image.fromarray((np.clip(t, 0, 1) * 255 + 0.5).astype(np.uint8)).resize(
                (size[1], size[0]), Image.BILINEAR
            ),
            np.float32,
        )
        / 255.0
        for t in tiles
    ]
    return np.stack(out)


def layer_figure(
    model: Model,
    topk: TopK,
    projection: Projection,
    patches: Patches,
    *,
    min_tile: int = 64,
    dead: Sequence[int] = (),
) -> np.ndarray:
    """The Zeiler & Fergus grid of one layer as a uint8 (height, width, 3) picture; a
    unit at most 0 on every image is a grey row labelled "silent on data", or "dead"
    when it is one of ``dead`` (proven: no input activates it).

    Args:
      model: the network (for the receptive-field windows of the projections).
      topk: from :func:`~cnnvis_jax.deconv.top_activations`.
      projection: from :func:`~cnnvis_jax.deconv.project_top` for ``topk``.
      patches: from :func:`~cnnvis_jax.deconv.crop_patches` for ``topk``.
      min_tile: tiles smaller than this many pixels are enlarged by an integer
        factor (pixel repetition).
    """
    n_units, k = np.shape(topk.image_index)
    h, w = projection.projections.shape[2:4]
    shown = rescale_each(projection.projections.reshape(n_units * k, h, w, 3))
    clipped, full = field_boxes(model, topk.layer, np.asarray(topk.position).reshape(-1, 2))
    projected = cut_windows(shown, clipped, full, FILL)
    crops = _resize_tiles(patches.images.reshape(n_units * k, *patches.images.shape[2:]),
                          projected.shape[1:3])  # fmt: skip
    tile_h, tile_w = projected.shape[1:3]
    blank = np.ones((1, tile_h, tile_w, 3), np.float32)
    tiles, labels = [], []
    for u, unit in enumerate(topk.units):
        rows = slice(u * k, (u + 1) * k)
        if not np.any(topk.values[u] > 0):  # no image excites it: nothing to project
            grey = np.full((k, tile_h, tile_w, 3), 0.5, np.float32)
            tiles += [grey, blank, grey]
            why = "dead (proven)" if int(unit) in set(int(d) for d in dead) else "silent on data"
            labels += [f"u{unit} {why}"] + [""] * (2 * k)
            continue
        tiles += [projected[rows], blank, crops[rows]]
        labels += [
            f"u{unit} {v:.3g}" if j == 0 else f"{v:.3g}" for j, v in enumerate(topk.values[u])
        ]
        labels += [""] + [f"#{int(i)}" for i in topk.image_index[u]]
    scale = max(1, -(-min_tile // max(tile_h, tile_w)))
    return image_grid(np.concatenate(tiles), ncols=2 * k + 1, labels=labels, scale=scale)


def results_record(topk: TopK, boxes: np.ndarray) -> dict[str, list[dict[str, Any]]]:
    """``{unit: [{image_index, activation, position, box}, ...]}`` in rank order.

    ``position`` is ``[row, col]`` in the layer's grid (``None`` for fully connected
    layers); ``box`` the clipped receptive-field window ``[top, left, bottom, right]``
    in the model's input pixels (bottom/right exclusive).
    """
    record: dict[str, list[dict[str, Any]]] = {}
    for u, unit in enumerate(topk.units):
        entries = []
        for j in range(np.shape(topk.image_index)[1]):
            row, col = (int(v) for v in topk.position[u, j])
            entries.append(
                {
                    "image_index": int(topk.image_index[u, j]),
                    "activation": float(topk.values[u, j]),
                    "position": None if row < 0 else [row, col],
                    "box": [int(v) for v in boxes[u, j]],
                }
            )
        record[str(unit)] = entries
    return record


def write_results(path: str | os.PathLike, topk: TopK, boxes: np.ndarray) -> Path:
    """Write :func:`results_record` as JSON to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, results_record(topk, boxes))
    return path


def deconv_layer(
    model: Model,
    source: Any,
    layer: str,
    units: Sequence[int] | np.ndarray | None = None,
    *,
    k: int = 9,
    rule: str = "deconvnet",
    pool: str = "switches",
    batch_size: int = 64,
    indices: Sequence[int] | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
) -> DeconvResult:
    """Top-k images of each unit over ``source``, their projections, patches and figure.

    See :func:`~cnnvis_jax.deconv.top_activations` (``units``, ``k``, ``batch_size``,
    ``indices``) and :func:`~cnnvis_jax.deconv.project` (``rule``, ``pool``). The
    rule and pool are checked before the data set is streamed. ``checkpoint``: a
    folder for the resumable state of the pass over the data (``topk.npz``) and of
    the projections (``project.npz``); delete it once the result is stored.
    """
    ruled_model(model, rule, pool)  # fail fast on a bad rule or pool
    folder = None if checkpoint is None else Path(checkpoint)
    topk = top_activations(
        model, source, layer, units, k=k, batch_size=batch_size, indices=indices,
        progress=progress, checkpoint=folder and folder / "topk.npz",
    )  # fmt: skip
    projection = project_top(model, source, topk, rule=rule, pool=pool, batch_size=batch_size,
                             progress=progress, checkpoint=folder and folder / "project.npz")  # fmt: skip
    patches = crop_patches(source, topk, model, fill=FILL)
    dead = proven_dead(model, topk.layer, [u for u, v in zip(topk.units, np.asarray(topk.values)[:, 0])
                                           if not v > 0])  # fmt: skip
    figure = layer_figure(model, topk, projection, patches, dead=dead or ())
    return DeconvResult(topk, projection, patches, figure, rule, pool, dead)


def proven_dead(model: Model, layer: str, units: Sequence[int]) -> tuple[int, ...] | None:
    """Those of ``units`` (e.g. silent on some data) that no image can activate, by
    :func:`cnnvis_jax.bounds.upper_bounds`; None when the network cannot be bounded."""
    from cnnvis_jax.bounds import dead_units

    if not len(units):
        return ()
    dead = dead_units(model, layer)
    return None if dead is None else tuple(int(u) for u in units if dead[int(u)])


def _file_stem(layer: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", layer)


def save_outputs(out_dir: str | os.PathLike, result: DeconvResult) -> tuple[Path, Path]:
    """Write ``out_dir/<layer>.png`` and ``out_dir/results.json``; return both paths."""
    out_dir = Path(out_dir)
    png = save_png(result.figure, out_dir / f"{_file_stem(result.topk.layer)}.png")
    record = write_results(out_dir / "results.json", result.topk, result.patches.boxes)
    return png, record
