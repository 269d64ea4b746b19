"""One panel of scores for the visualizations of a layer's units by several presets.

:func:`compare_presets` renders each preset for the units (``seeds`` visualizations
per unit), finds the units' natural references once, and scores every rendering
with :func:`score`: activation ratio, plausibility, diversity among seeds,
transferability to other models (class units), the path-similarity check
(:mod:`cnnvis_jax.evaluate.path`) and the path-completeness check at the unit's input
layer (:mod:`cnnvis_jax.evaluate.completeness`). :class:`Panel` holds the scores per preset, unit
and visualization, with :meth:`Panel.table` (one row per preset) and
:meth:`Panel.save` (``results.json``, ``table.csv``, ``panel.png``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cnnvis_jax.errors import InputError
from cnnvis_jax.evaluate import scores
from cnnvis_jax.model import Model

__all__ = ["Panel", "compare_presets", "render_preset", "score"]


class Panel(NamedTuple):
    """Scores of P presets' visualizations of U units, V per unit (numpy arrays).

    Attributes:
      layer: the canonical layer name; units: the U units.
      presets: the P preset names, in order.
      images: float32 (P, U, V, H, W, 3), the scored images at the model's input size.
      activation_ratio, plausibility: float32 (P, U, V) (see :mod:`.scores`).
      diversity: float32 (P, U), NaN when V < 2.
      transferability: float32 (P, U, V), or None (not a class layer, no models).
      path: per preset and unit, the :class:`~cnnvis_jax.evaluate.path.PathSimilarity`.
      completeness: per preset and unit, the
        :class:`~cnnvis_jax.evaluate.completeness.PathCompleteness` at the unit's input
        layer, or None where none of the unit's top images drives it.
      feature_layer: the layer plausibility and diversity compare features in.
      seconds: ``{"render": {preset: s}, "references": s, "scores": s}``.
    """

    layer: str
    units: tuple[int, ...]
    presets: tuple[str, ...]
    images: np.ndarray
    activation_ratio: np.ndarray
    plausibility: np.ndarray
    diversity: np.ndarray
    transferability: np.ndarray | None
    path: tuple
    completeness: tuple
    feature_layer: str
    seconds: dict

    def table(self) -> list[dict[str, Any]]:
        """One row per preset: means over units and visualizations (NaN-aware), the
        fraction of units whose every visualization passes the path check, and the
        fraction passing the completeness check (of the units it applies to)."""
        rows = []
        for p, name in enumerate(self.presets):
            row = {
                "preset": name,
                "activation_ratio": _mean(self.activation_ratio[p]),
                "plausibility": _mean(self.plausibility[p]),
                "diversity": _mean(self.diversity[p]),
                "transferability": None
                if self.transferability is None
                else _mean(self.transferability[p]),
                "path_pass_rate": float(np.mean([c.passed for c in self.path[p]])),
                "completeness_pass_rate": _mean(
                    [float(c.passed) for c in self.completeness[p] if c is not None]
                ),
                "render_seconds": self.seconds["render"].get(name),
            }
            rows.append(row)
        return rows

    def record(self) -> dict[str, Any]:
        """Everything as plain data (strict JSON once non-finite numbers are nulls)."""
        units = []
        for p, name in enumerate(self.presets):
            for i, unit in enumerate(self.units):
                units.append({
                    "preset": name,
                    "unit": unit,
                    "activation_ratio": self.activation_ratio[p, i].tolist(),
                    "plausibility": self.plausibility[p, i].tolist(),
                    "diversity": float(self.diversity[p, i]),
                    "transferability": None if self.transferability is None
                    else self.transferability[p, i].tolist(),
                    "path": self.path[p][i].summary(),
                    "completeness": None if self.completeness[p][i] is None
                    else self.completeness[p][i].summary(),
                })  # fmt: skip
        return {
            "layer": self.layer,
            "units": list(self.units),
            "feature_layer": self.feature_layer,
            "table": self.table(),
            "per_unit": units,
            "seconds": self.seconds,
        }

    def figure(self, *, scale: int = 2) -> np.ndarray:
        """uint8 picture: one row per preset, one tile per unit (its first
        visualization), captioned ``unit ratio/plausibility`` and a path mark."""
        from cnnvis_jax.report.grid import image_grid

        tiles, labels = [], []
        for p, name in enumerate(self.presets):
            for i, unit in enumerate(self.units):
                tiles.append(self.images[p, i, 0])
                mark = "ok" if self.path[p][i].passed else "FAIL"
                check = self.completeness[p][i]
                mark += "" if check is None else ("/ok" if check.passed else "/FAIL")
                labels.append(f"{name} {unit} {self.activation_ratio[p, i, 0]:.2f}/"
                              f"{self.plausibility[p, i, 0]:.2f} {mark}")  # fmt: skip
        return image_grid(np.stack(tiles), ncols=len(self.units), labels=labels, scale=scale)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``results.json`` (:meth:`record`), ``table.csv`` (:meth:`table`) and
        ``panel.png`` (:meth:`figure`) into ``out_dir``; returns the folder."""
        from cnnvis_jax.report.files import write_csv, write_json
        from cnnvis_jax.report.grid import save_png

        out = Path(out_dir)
        write_json(out / "results.json", self.record())
        write_csv(out / "table.csv", self.table())
        save_png(self.figure(), out / "panel.png")
        return out


def _mean(values) -> float | None:
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def score(
    model: Model,
    renders: Mapping[str, np.ndarray],
    references: scores.References,
    *,
    transfer_models: Sequence[Model] = (),
    feature_layer: str | None = None,
    seconds: dict | None = None,
) -> Panel:
    """Score each preset's visualizations (``renders[name]``: float32 (U, V, H, W, 3)
    at the model's input size, units as in ``references``).

    Raises:
      InputError: transfer models for a layer that is not the model's logits layer
        (transferability scores class visualizations); images of other units.
    """
    from cnnvis_jax.evaluate.completeness import path_completeness
    from cnnvis_jax.evaluate.path import path_similarity

    def completeness_of(unit: int, images: np.ndarray, top: np.ndarray):
        try:
            return path_completeness(model, layer, unit, images, top, layers="input")
        except InputError:  # no top image drives the unit: nothing to compare with
            return None

    if not renders:
        raise InputError("no renderings to score; pass at least one preset.")
    layer = references.layer
    if transfer_models and layer != model.logits_layer:
        raise InputError(
            f"transferability scores class visualizations, but layer {layer!r} is not the "
            f"model's logits layer ({model.logits_layer}); score that layer or drop the "
            "transfer models."
        )
    feature = scores.feature_layer(model, layer) if feature_layer is None else feature_layer
    start = time.perf_counter()
    names = tuple(renders)
    ratio, plaus, div, trans, path, complete = [], [], [], [], [], []
    for name in names:
        images = np.asarray(renders[name], np.float32)
        ratio.append(scores.activation_ratio(model, images, references))
        plaus.append(scores.plausibility(model, images, references, layer=feature))
        div.append(scores.diversity(model, images, feature) if images.shape[1] > 1
                   else np.full(len(references.units), np.nan, np.float32))  # fmt: skip
        if transfer_models:
            trans.append(scores.transferability(transfer_models, references.units, images))
        path.append(tuple(
            path_similarity(model, layer, unit, images[i], references.top_images[i],
                            references.random_images)
            for i, unit in enumerate(references.units)
        ))  # fmt: skip
        complete.append(tuple(
            completeness_of(unit, images[i], references.top_images[i])
            for i, unit in enumerate(references.units)
        ))  # fmt: skip
    timing = dict(seconds or {})
    timing["scores"] = time.perf_counter() - start
    return Panel(
        layer=layer,
        units=tuple(references.units),
        presets=names,
        images=np.stack([np.asarray(renders[n], np.float32) for n in names]),
        activation_ratio=np.stack(ratio),
        plausibility=np.stack(plaus),
        diversity=np.stack(div),
        transferability=np.stack(trans) if trans else None,
        path=tuple(path),
        completeness=tuple(complete),
        feature_layer=feature,
        seconds=timing,
    )


def render_preset(
    model: Model,
    layer: str,
    units: Sequence[int],
    preset: str,
    *,
    seeds: int = 2,
    steps: int | None = None,
    key: int = 0,
    generator=None,
    spectrum=None,
    before_relu: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """``seeds`` visualizations of each unit by a preset, float32 (U, seeds, H, W, 3)
    at the model's input size (a larger canvas is brought to it the way the render
    scored it: MACO's canvas resized, a generator's output centre-cropped).

    ``before_relu``: maximize the unit before its ReLU when the model has that tap
    (:func:`~cnnvis_jax.am.render.objective_layer`, as the survey does), so that a
    unit at 0 on the random start still gets a gradient; the scores read the unit
    after its ReLU either way."""
    from cnnvis_jax.am.presets import preset as get_preset
    from cnnvis_jax.am.render import input_view, objective_layer, objectives_for_units, render

    recipe = get_preset(preset, generator=generator, spectrum=spectrum)
    if recipe.anchor is not None:
        raise InputError(
            "accentuate visualizes a unit in a given image, not from scratch; score it with "
            "score() on its renderings, or pick another preset."
        )
    target = objective_layer(model, layer) if before_relu else layer
    objectives = objectives_for_units(model, target, units, recipe.objective)
    result = render(model, objectives, recipe, key=key, seeds=seeds, steps=steps,
                    progress=progress, desc=f"{preset} {layer}")  # fmt: skip
    if seeds == 1:  # leading axes (U,), batch 1
        images = result.images[:, :1]
    else:  # leading axes (1 recipe, S, U), batch 1
        images = np.moveaxis(result.images[0, :, :, 0], 0, 1)
    u, s = images.shape[:2]
    flat = np.asarray(input_view(recipe, images.reshape(u * s, *images.shape[2:]),
                                 model.input.size))  # fmt: skip
    return flat.reshape(u, s, *flat.shape[1:]).astype(np.float32)


def compare_presets(
    model: Model,
    layer: str,
    units: Sequence[int],
    presets: Sequence[str],
    source: Any,
    *,
    seeds: int = 2,
    steps: int | None = None,
    key: int = 0,
    k: int = 16,
    n_random: int = 64,
    count: int | None = None,
    generator=None,
    spectrum=None,
    transfer_models: Sequence[Model] = (),
    before_relu: bool = True,
    progress: bool = False,
) -> Panel:
    """Render ``presets`` for ``units`` of ``layer`` and score them against the
    first ``count`` images of ``source`` (see the module docstring; ``before_relu``
    as :func:`render_preset`). The panel's
    ``seconds`` say how long rendering, the natural references and the scores took.

    Raises:
      InputError: no presets, or one given twice; what :func:`render_preset`,
        :func:`scores.natural_references` and :func:`score` refuse.
    """
    presets = list(presets)
    if not presets or len(set(presets)) != len(presets):
        raise InputError(f"presets must be distinct and at least one, got {presets}.")
    info = model.layer(layer)
    for unit in units:
        model.check_unit(info.name, int(unit))
    start = time.perf_counter()
    references = scores.natural_references(model, source, info.name, units, k=k,
                                           n_random=n_random, count=count, progress=progress)  # fmt: skip
    seconds: dict[str, Any] = {"references": time.perf_counter() - start, "render": {}}
    renders = {}
    for name in presets:
        start = time.perf_counter()
        renders[name] = render_preset(model, info.name, units, name, seeds=seeds, steps=steps,
                                      key=key, generator=generator, spectrum=spectrum,
                                      before_relu=before_relu, progress=progress)  # fmt: skip
        seconds["render"][name] = time.perf_counter() - start
    return score(model, renders, references, transfer_models=transfer_models, seconds=seconds)
