"""Activation atlas (Carter et al. 2019, Lucid's ``activation_atlas`` recipe).

1. *Collect*: ``points`` spatial activation vectors of a layer, sampled with a seed
   over ``images`` images (:func:`cnnvis_jax.atlas.collect.collect`), each with the
   concept of its position (the block majority of the image's ``category`` mask over
   the position's footprint: :mod:`cnnvis_jax.atlas.labels`). Positions where every
   unit is silent (all-zero vectors, no direction) are dropped.
2. *Lay out*: unit-scaled vectors -> PCA (50 dims) -> t-SNE (``random_state=seed``)
   -> the unit square (:func:`cnnvis_jax.atlas.layout.embed`).
3. *Bin*: a ``G x G`` grid over the square; every cell with at least ``min_points``
   points becomes the mean of its vectors, the majority of their concepts and their
   distinctive concept, the one they over-represent most (largest lift among those
   held by at least :data:`~cnnvis_jax.atlas.labels.MIN_COUNT` points:
   :func:`cnnvis_jax.atlas.labels.distinctive`; :func:`cnnvis_jax.atlas.layout.bin_cells`).
4. *Render*: every cell's mean vector as an :func:`cnnvis_jax.am.direction` objective
   with cosine power :data:`~cnnvis_jax.atlas.directions.COSINE_POWER` (2, Lucid's
   atlas), all cells in ONE vmapped :func:`cnnvis_jax.am.render` call, by default
   with the ``lucid`` preset for :data:`~cnnvis_jax.atlas.directions.ATLAS_STEPS`
   (128) steps, as Lucid's ``render_icons``.

The same model, data, arguments and seed give the same atlas (NumPy's seeded
generator, scikit-learn's ``random_state``, a PRNG key from the seed). Bad requests
(unknown layer, ``G * G`` above the points to collect, bad counts or preset) fail
with :class:`~cnnvis_jax.errors.InputError` before any work.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cnnvis_jax.atlas.collect import Samples, collect, pixel_category, planned_points
from cnnvis_jax.atlas.directions import (
    ATLAS_STEPS,
    COSINE_POWER,
    check_recipe,
    render_directions,
)
from cnnvis_jax.atlas.labels import MIN_COUNT
from cnnvis_jax.atlas.layout import MIN_LAYOUT_POINTS, PCA_DIMS, Cells, Layout, bin_cells, embed
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model

__all__ = ["Atlas", "activation_atlas", "check_atlas", "label_names"]

GRID = 16
IMAGES = 1000
POINTS = 8000
MIN_POINTS = 5
"""Fewest points a cell needs to be rendered (Lucid keeps cells with more than 5)."""


def label_names(source: Any) -> dict[int, str]:
    """Label number -> name of ``source``'s vocabulary (empty without one)."""
    vocabulary = getattr(source, "vocabulary", None)
    if vocabulary is None:
        return {}
    return {lab.number: lab.name for lab in vocabulary.labels}


@dataclasses.dataclass(frozen=True)
class Atlas:
    """An activation atlas (numpy arrays; P kept points, M rendered cells).

    Attributes:
      layer: canonical layer name.
      samples: the collected :class:`~cnnvis_jax.atlas.collect.Samples` (silent
        positions dropped), P of them.
      layout: their :class:`~cnnvis_jax.atlas.layout.Layout`.
      cells: the :class:`~cnnvis_jax.atlas.layout.Cells` (M of them) of the grid.
      images: float32 (M, H, W, 3) in [0, 1], each cell's rendered image.
      activation: float32 (M,), each image's direction objective (no transforms; the
        image the recipe outputs, its best or its last).
      names: label number -> name of every label of the data set.
      settings: the arguments that made it (strict-JSON ready).
      seconds: wall-clock seconds per phase: ``collect``, ``layout``, ``render``.
    """

    layer: str
    samples: Samples
    layout: Layout
    cells: Cells
    images: np.ndarray
    activation: np.ndarray
    names: dict[int, str]
    settings: dict[str, Any]
    seconds: dict[str, float]

    @property
    def grid(self) -> int:
        return self.cells.grid

    def concept(self, label: int) -> str:
        """The name of label number ``label`` ("none" for 0)."""
        return self.names.get(int(label), "none") if label else "none"

    def cell_records(self) -> list[dict[str, Any]]:
        """Per rendered cell: ``{row, col, points, concept, concept_share, distinctive,
        lift, activation, direction_norm}`` (``distinctive``: the concept with the
        largest lift, "none" when no concept qualifies; ``lift``: its lift, 0 then)."""
        norms = np.linalg.norm(self.cells.direction, axis=1)
        return [
            {
                "row": int(row),
                "col": int(col),
                "points": int(self.cells.count[m]),
                "concept": self.concept(self.cells.label[m]),
                "concept_share": float(self.cells.share[m]),
                "distinctive": self.concept(self.cells.distinctive[m]),
                "lift": float(self.cells.lift[m]),
                "activation": float(self.activation[m]),
                "direction_norm": float(norms[m]),
            }
            for m, (row, col) in enumerate(self.cells.cell)
        ]

    def _ranked(self, labels: np.ndarray) -> dict[str, int]:
        """Cells per concept name of ``labels`` (M,), most first, then by name."""
        concepts: dict[str, int] = {}
        for label in labels:
            name = self.concept(label)
            concepts[name] = concepts.get(name, 0) + 1
        return dict(sorted(concepts.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self) -> dict[str, Any]:
        """Counts, layout diagnostics, cells per majority concept and per distinctive
        concept (most first, then by name) and timings."""
        in_cells = int((self.cells.member >= 0).sum())
        return {
            "layer": self.layer,
            "grid": self.grid,
            "points": int(len(self.samples.vectors)),
            "points_in_rendered_cells": in_cells,
            "cells_rendered": int(len(self.cells.cell)),
            "cells_empty": int(self.grid * self.grid - len(self.cells.cell)),
            "pca_variance": self.layout.pca_variance,
            "tsne_kl_divergence": self.layout.kl_divergence,
            "tsne_perplexity": self.layout.perplexity,
            "cells_per_concept": self._ranked(self.cells.label),
            "cells_per_distinctive_concept": self._ranked(self.cells.distinctive),
            "settings": self.settings,
            "seconds": self.seconds,
        }

    def save(self, out_dir: str | os.PathLike, *,
             more_seconds: dict[str, float] | None = None) -> dict[str, float]:  # fmt: skip
        """Write ``atlas.png`` (the grid of rendered cells, each captioned with its
        majority concept, then its distinctive one and lift when they differ:
        :class:`~cnnvis_jax.atlas.figures.Caption`),
        ``layout.png`` (the layout coloured by concept), ``cells.json`` (per cell) and
        ``results.json`` (:meth:`summary`, its ``seconds`` with ``figure`` and
        ``more_seconds`` added) into ``out_dir``, atomically, as strict JSON. Returns
        those seconds per phase."""
        from cnnvis_jax.atlas.figures import Caption, atlas_picture, layout_figure
        from cnnvis_jax.report.files import save_figure, write_json
        from cnnvis_jax.report.grid import save_png

        out = Path(out_dir)
        start = time.perf_counter()
        captions = [Caption(self.concept(label), self.concept(special), float(lift))
                    for label, special, lift in zip(self.cells.label, self.cells.distinctive,
                                                    self.cells.lift)]  # fmt: skip
        save_png(atlas_picture(self.images, self.cells.cell, self.grid, captions),
                 out / "atlas.png")  # fmt: skip
        title = (f"{self.layer}: {len(self.samples.vectors)} activations, t-SNE layout, "
                 f"{self.grid}x{self.grid} grid, coloured by {self.settings['category']}")  # fmt: skip
        save_figure(layout_figure(self.layout.points, self.samples.label, self.names,
                                  self.grid, title=title), out / "layout.png")  # fmt: skip
        seconds = {**self.seconds, "figure": time.perf_counter() - start, **(more_seconds or {})}
        write_json(out / "cells.json", self.cell_records())
        write_json(out / "results.json", {**self.summary(), "seconds": seconds})
        return seconds


def check_atlas(model: Model, layer: str, *, grid: int, images: int, points: int,
                min_points: int, recipe: Any = "lucid", steps: int | None = None) -> int:  # fmt: skip
    """Validate an atlas request before any work; returns the points to collect.

    Raises:
      InputError: unknown layer; counts below 1; a preset that cannot render
        directions; ``grid * grid`` above the points to collect (or fewer points than
        a layout needs).
    """
    planned = planned_points(model, layer, images, points)
    for name, value in (("grid", grid), ("min_points", min_points)):
        if int(value) < 1:
            raise InputError(f"{name} must be at least 1, got {value}.")
    if steps is not None and int(steps) < 1:
        raise InputError(f"steps must be at least 1, got {steps}.")
    check_recipe(recipe)
    if grid * grid > planned:
        raise InputError(
            f"a {grid}x{grid} grid has {grid * grid} cells but only {planned} activations "
            f"would be collected; lower --grid to at most {int(np.sqrt(planned))} or raise "
            "--points/--images."
        )
    if planned < MIN_LAYOUT_POINTS:
        raise InputError(
            f"only {planned} activations would be collected; a layout needs at least "
            f"{MIN_LAYOUT_POINTS}: raise --points/--images."
        )
    return planned


def activation_atlas(
    model: Model,
    source: Any,
    layer: str,
    *,
    grid: int = GRID,
    images: int = IMAGES,
    points: int = POINTS,
    min_points: int = MIN_POINTS,
    category: str = "object",
    recipe: Any = "lucid",
    steps: int | None = ATLAS_STEPS,
    cosine_power: float = COSINE_POWER,
    seed: int = 0,
    pca_dims: int = PCA_DIMS,
    samples: Samples | None = None,
    progress: bool = False,
) -> Atlas:
    """The activation atlas of ``layer`` over ``source`` (see the module docstring).

    Args:
      model: the network.
      source: data source; its ``category`` masks (when it has a vocabulary) label
        the points.
      layer: layer name or alias (spatial, or fully connected as 1 x 1).
      grid: G, cells per side.
      images: images read (the first ones of ``source``).
      points: activation vectors sampled among their ``images * H * W`` positions.
      min_points: fewest points a cell needs to be rendered.
      category: pixel-level concept category labelling the points.
      recipe: preset name (:data:`~cnnvis_jax.atlas.directions.ATLAS_PRESETS`) or
        Recipe.
      steps: render steps (None: the recipe's own).
      cosine_power: exponent of the direction objectives' cosine factor.
      seed: seeds the position sample, PCA, t-SNE and the render's PRNG key.
      pca_dims: dimensions kept before t-SNE.
      samples: already collected samples of ``layer`` (skips the collection).
      progress: show progress bars.

    Returns:
      An :class:`Atlas`.

    Raises:
      InputError: see :func:`check_atlas`; a data set without ``category`` masks;
        fewer non-silent activations than cells.
    """
    info = model.layer(layer)
    wanted = len(samples.vectors) if samples is not None else points
    check_atlas(model, info.name, grid=grid, images=images if samples is None else wanted,
                points=wanted, min_points=min_points, recipe=recipe, steps=steps)  # fmt: skip
    recipe_data = check_recipe(recipe)
    if samples is None:
        pixel_category(source, category)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    if samples is None:
        samples = collect(model, source, info.name, images=images, points=points, seed=seed,
                          category=category, progress=progress)  # fmt: skip
    collected = len(samples.vectors)
    samples = samples.take(np.linalg.norm(samples.vectors, axis=1) > 0)
    if grid * grid > len(samples.vectors):
        raise InputError(
            f"only {len(samples.vectors)} of {collected} activations are not all zero, fewer "
            f"than the {grid * grid} cells of a {grid}x{grid} grid; lower --grid or raise "
            "--points/--images."
        )
    seconds["collect"] = time.perf_counter() - clock
    clock = time.perf_counter()
    layout = embed(samples.vectors, seed=seed, pca_dims=pca_dims)
    names = label_names(source)
    num_labels = max(names, default=0) + 1
    cells = bin_cells(layout.points, samples.vectors, samples.label, grid,
                      min_points=min_points, num_labels=num_labels)  # fmt: skip
    seconds["layout"] = time.perf_counter() - clock
    if len(cells.cell) == 0:
        raise InputError(
            f"no cell of the {grid}x{grid} grid holds {min_points} points; lower --grid or "
            "--min-points, or raise --points."
        )
    clock = time.perf_counter()
    rendered = render_directions(model, info.name, cells.direction, recipe_data, key=seed,
                                 steps=steps, cosine_power=cosine_power, progress=progress,
                                 desc=f"atlas {info.name}")  # fmt: skip
    seconds["render"] = time.perf_counter() - clock
    best = recipe_data.output == "best"
    chosen = rendered.best_activation if best else rendered.final_activation
    settings = {
        "layer": info.name, "grid": int(grid), "images": int(images), "points": int(points),
        "points_collected": int(collected), "silent_dropped": int(collected - len(samples.vectors)),
        "min_points": int(min_points), "distinctive_min_count": MIN_COUNT,
        "category": category,
        "recipe": recipe if isinstance(recipe, str) else recipe_data.name,
        "steps": int(steps if steps is not None else recipe_data.steps),
        "cosine_power": float(cosine_power), "seed": int(seed), "pca_dims": int(pca_dims),
    }  # fmt: skip
    return Atlas(
        layer=info.name,
        samples=samples,
        layout=layout,
        cells=cells,
        images=np.asarray(rendered.images[:, 0], np.float32),
        activation=np.asarray(chosen[:, 0], np.float32),
        names=names,
        settings=settings,
        seconds=seconds,
    )
