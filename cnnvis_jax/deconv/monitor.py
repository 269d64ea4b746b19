"""Training monitoring (Zeiler & Fergus 2014, Fig. 4): the same units through training.

Given a run directory of :func:`cnnvis_jax.train.train` (``RUN/snapshots/
epoch_NNN.safetensors``), :func:`monitor_run` shows, per layer, the DeconvNet
projections of chosen units at every saved epoch, and measures when each layer's
patterns stop changing.

Which images and positions. The units' top images are chosen **once, on the final
weights** (the latest snapshot), with :func:`~cnnvis_jax.deconv.top_activations`,
and every epoch projects the activation at the same image and the same position.
Zeiler & Fergus instead took each epoch's own strongest activation; we fix them
because (i) the projections of different epochs are then pictures of the same
input pixels through different weights, so they can be compared pixel by pixel
(the similarity below is meaningful), and a change in the picture is a change in
what the unit computes, not a different winning image; (ii) the final weights
define the pattern the unit ends up detecting, which is what "the pattern stops
changing" is measured against; (iii) one top-k pass over the data serves all
epochs. The activation at that position is recorded per epoch too; where it is
zero the unit does not respond to that image yet, and its projection is zero.

What "stops changing" means. For every layer, unit and top image, the **projection
similarity** of epoch ``e`` is the cosine similarity between the flattened
projection (H*W*3) at ``e`` and at the final epoch (0 when either is zero). For
layers with weights of their own, the **filter similarity** is the cosine
similarity between the unit's weights (``kernel[..., unit]`` flattened) at ``e``
and at the final epoch. A layer's similarity at ``e`` is the mean over its units
and top images (for projections: over the pairs whose final projection is not
zero, i.e. where the unit responds to its image with the final weights). The layer is **stable from** the first saved epoch ``e`` at which
the similarity is at least ``threshold`` (default 0.9) and stays so at every later
saved epoch; the final epoch always qualifies, so "stable from the last epoch"
means the layer was still changing at the previous snapshot.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cnnvis_jax.deconv.diagnosis import layer_kernel
from cnnvis_jax.deconv.figures import FILL
from cnnvis_jax.deconv.projection import check_units, project_top, projectable_layer, ruled_model
from cnnvis_jax.deconv.topk import TopK, crop_patches, cut_windows, field_boxes, top_activations
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model
from cnnvis_jax.report.files import write_json

__all__ = [
    "LayerMonitor",
    "Monitoring",
    "cosine",
    "monitor_figure",
    "monitor_record",
    "monitor_run",
    "load_snapshots",
    "snapshot_paths",
    "stable_from",
]

_SNAPSHOT = re.compile(r"epoch_(\d+)\.safetensors")


def snapshot_paths(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(epoch, path), ...]`` of ``run_dir/snapshots/epoch_NNN.safetensors``, by epoch.

    Raises:
      InputError: ``run_dir`` is not a directory or holds fewer than two snapshots.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(
            f"training run directory {run_dir} does not exist; pass the --out folder of "
            "`cnnvis train`."
        )
    found = []
    folder = run_dir / "snapshots"
    if folder.is_dir():
        for path in folder.iterdir():
            match = _SNAPSHOT.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), path))
    found.sort()
    if len(found) < 2:
        raise InputError(
            f"{run_dir} holds {len(found)} snapshot(s) in snapshots/epoch_NNN.safetensors; "
            "monitoring compares at least two epochs: train with `cnnvis train --snapshots "
            "1 2 5 ...`."
        )
    return found


def cosine(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Cosine similarity of ``a`` and ``b`` along ``axis`` (0 where either is zero)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    dot = np.sum(a * b, axis=axis)
    norm = np.sqrt(np.sum(a * a, axis=axis) * np.sum(b * b, axis=axis))
    return np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 0.0)


def stable_from(epochs: Sequence[int], similarity: Sequence[float], threshold: float) -> int:
    """The first of ``epochs`` from which ``similarity`` stays ``>= threshold``.

    ``similarity[i]`` belongs to ``epochs[i]``; the last epoch is returned when the
    second-to-last value is below the threshold.
    """
    epochs = list(epochs)
    first = epochs[-1]
    for epoch, value in zip(reversed(epochs[:-1]), reversed(list(similarity)[:-1])):
        if not value >= threshold:
            break
        first = epoch
    return first


class LayerMonitor(NamedTuple):
    """One layer through training (numpy arrays; E epochs, U units, k top images).

    Attributes:
      layer: canonical layer name; ``units`` the units.
      image_index: int64 (U, k), top images of the final weights.
      position: int32 (U, k, 2), their maxima in the layer's grid (-1: fully connected).
      projections: float32 (E, U, k, H, W, 3), projections at each epoch.
      activation: float32 (E, U, k), the projected activation at each epoch.
      projection_similarity: float64 (E, U, k), cosine similarity to the final epoch.
      filter_similarity: float64 (E, U), or ``None`` for layers without weights.
      patches: float32 (U, k, Sh, Sw, 3), receptive-field crops of the top images.
    """

    layer: str
    units: tuple[int, ...]
    image_index: np.ndarray
    position: np.ndarray
    projections: np.ndarray
    activation: np.ndarray
    projection_similarity: np.ndarray
    filter_similarity: np.ndarray | None
    patches: np.ndarray


class Monitoring(NamedTuple):
    """:func:`monitor_run`'s result: ``epochs`` (E,), ``layers`` in the order asked,
    and the settings used."""

    run: str
    epochs: tuple[int, ...]
    layers: dict[str, LayerMonitor]
    threshold: float
    rule: str
    pool: str
    images: int

    def summary(self) -> dict[str, Any]:
        """The strict-JSON record (:func:`monitor_record`)."""
        return monitor_record(self)

    def save(self, out_dir: str | os.PathLike, *, model: Model) -> Path:
        """Write ``out_dir/monitor.png`` (:func:`monitor_figure`, drawn with ``model``,
        the run's final network) and ``out_dir/monitor.json``; returns the folder."""
        from cnnvis_jax.report.grid import save_png

        out = Path(out_dir)
        save_png(monitor_figure(model, self), out / "monitor.png")
        write_json(out / "monitor.json", self.summary())
        return out


def _random_active(topk: TopK, n_units: int, seed: int) -> TopK:
    """``topk`` restricted to ``n_units`` random units with a positive top value
    (fewer when fewer are active), in ascending unit order."""
    active = np.flatnonzero(topk.values[:, 0] > 0)
    if active.size == 0:
        raise InputError(
            f"no unit of layer {topk.layer!r} is active on the data with the final weights; "
            "name the units to monitor explicitly."
        )
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(active, min(int(n_units), active.size), replace=False))
    return TopK(
        topk.values[rows],
        topk.image_index[rows],
        topk.position[rows],
        topk.layer,
        tuple(topk.units[r] for r in rows),
    )


def load_snapshots(paths: list[tuple[int, Path]]) -> tuple[Model, list[Any]]:
    """``(final model, [params per snapshot])`` of :func:`snapshot_paths`' files; all
    snapshots must describe the same network."""
    from cnnvis_jax.train import load_trained

    models = [load_trained(path) for _, path in paths]
    final = models[-1]
    for (epoch, path), model in zip(paths, models):
        if model.layers != final.layers:
            raise InputError(
                f"snapshot {path} (epoch {epoch}) describes another network than the final "
                "one; a run directory holds one training run."
            )
    return final, [m.params for m in models]


def monitor_run(
    run_dir: str | os.PathLike,
    source: Any,
    layers: Sequence[str],
    units: Sequence[int] | None = None,
    *,
    k: int = 1,
    rule: str = "deconvnet",
    pool: str = "switches",
    threshold: float = 0.9,
    n_units: int = 8,
    seed: int = 0,
    batch_size: int = 64,
    indices: Sequence[int] | None = None,
    progress: bool = True,
) -> tuple[Model, Monitoring]:
    """Projections of the same units at every saved epoch of a training run.

    Args:
      run_dir: a :func:`cnnvis_jax.train.train` run directory with at least two
        snapshots.
      source: the data source in which the final weights' top images are found.
      layers: layer names or aliases (spatial or fully connected).
      units: channel indices used for every layer. By default ``n_units`` units per
        layer drawn at random (``seed``) among those active on some image of
        ``source`` with the final weights (Zeiler & Fergus show a random subset;
        a dead unit has nothing to project).
      k: top images per unit.
      rule, pool: see :func:`~cnnvis_jax.deconv.project`.
      threshold: similarity from which a layer counts as stable.
      batch_size, indices, progress: see :func:`~cnnvis_jax.deconv.top_activations`.

    Returns:
      ``(final_model, Monitoring)``; ``final_model`` is the latest snapshot's
      :class:`~cnnvis_jax.Model` (for figures).

    Raises:
      InputError: a missing run or fewer than two snapshots; unknown layers, units
        out of range, a bad rule or pool, ``threshold`` outside [-1, 1], ``n_units < 1``,
        no active unit in a layer (with default units), fewer than ``k`` images.
    """
    if not -1.0 <= float(threshold) <= 1.0:
        raise InputError(f"threshold is a cosine similarity in [-1, 1], got {threshold}.")
    if not layers:
        raise InputError("name at least one layer to monitor (e.g. conv1).")
    if int(n_units) < 1:
        raise InputError(f"n_units must be at least 1, got {n_units}.")
    paths = snapshot_paths(run_dir)
    epochs = tuple(e for e, _ in paths)
    final, all_params = load_snapshots(paths)
    ruled_model(final, rule, pool)  # fail fast on a bad rule or pool
    names = list(dict.fromkeys(projectable_layer(final, n).name for n in layers))
    if units is not None:
        for name in names:
            check_units(final, name, units)
    results = {}
    count = len(source) if indices is None else len(indices)
    for name in names:
        topk = top_activations(
            final, source, name, units, k=k, batch_size=batch_size, indices=indices,
            progress=progress,
        )  # fmt: skip
        if units is None:
            topk = _random_active(topk, n_units, seed)
        per_epoch = [
            project_top(
                final,
                source,
                topk,
                params=params,
                rule=rule,
                pool=pool,
                batch_size=batch_size,
                progress=progress,
            )  # fmt: skip
            for params in all_params
        ]
        projections = np.stack([p.projections for p in per_epoch])
        activation = np.stack([p.values for p in per_epoch])
        flat = projections.reshape(*projections.shape[:3], -1)
        projection_similarity = cosine(flat, flat[-1:])
        kernels = [layer_kernel(final, params, name) for params in all_params]
        filter_similarity = None
        if kernels[-1] is not None:
            units_ = np.asarray(topk.units)
            per_unit = np.stack([np.moveaxis(kern[..., units_], -1, 0) for kern in kernels])
            per_unit = per_unit.reshape(len(epochs), units_.size, -1)
            filter_similarity = cosine(per_unit, per_unit[-1:])
        patches = crop_patches(source, topk, final, fill=FILL)
        results[name] = LayerMonitor(
            name,
            topk.units,
            topk.image_index,
            topk.position,
            projections,
            activation,
            projection_similarity,
            filter_similarity,
            patches.images,
        )
    monitoring = Monitoring(str(run_dir), epochs, results, float(threshold), rule, pool, count)
    return final, monitoring


def _responsive(mon: LayerMonitor) -> np.ndarray:
    """bool (U, k): pairs whose final projection is non-zero (the unit responds)."""
    final = mon.projections[-1].reshape(*mon.projections.shape[1:3], -1)
    return np.any(final != 0, axis=-1)


def _layer_summary(mon: LayerMonitor, epochs: tuple[int, ...], threshold: float) -> dict:
    responsive = _responsive(mon)
    if responsive.any():
        projection = mon.projection_similarity[:, responsive].mean(axis=1)
        stable = stable_from(epochs, projection, threshold)
    else:
        projection, stable = np.full(len(epochs), np.nan), None
    summary = {
        "projection_similarity": {
            str(e): None if np.isnan(v) else round(float(v), 4) for e, v in zip(epochs, projection)
        },
        "projection_pairs": int(responsive.sum()),
        "projection_stable_from": stable,
        "filter_similarity": None,
        "filter_stable_from": None,
    }
    if mon.filter_similarity is not None:
        filters = mon.filter_similarity.mean(axis=1)
        summary["filter_similarity"] = {str(e): round(float(v), 4) for e, v in zip(epochs, filters)}
        summary["filter_stable_from"] = stable_from(epochs, filters, threshold)
    return summary


def monitor_record(monitoring: Monitoring) -> dict[str, Any]:
    """The machine-readable record of a :class:`Monitoring` (JSON-ready): settings,
    per layer the units, top images, per-epoch similarities (layer means and per
    unit) and activations, and ``summary``: per layer the mean similarities and the
    epoch from which each stays above the threshold."""
    epochs = monitoring.epochs
    layers = {}
    for name, mon in monitoring.layers.items():
        entry = _layer_summary(mon, epochs, monitoring.threshold)
        entry["units"] = list(mon.units)
        entry["top_images"] = {
            str(u): [
                {
                    "image_index": int(mon.image_index[i, j]),
                    "position": None if mon.position[i, j, 0] < 0 else
                    [int(v) for v in mon.position[i, j]],
                    "activation_by_epoch": {
                        str(e): round(float(mon.activation[t, i, j]), 5)
                        for t, e in enumerate(epochs)
                    },
                    "projection_similarity_by_epoch": {
                        str(e): round(float(mon.projection_similarity[t, i, j]), 4)
                        for t, e in enumerate(epochs)
                    },
                }
                for j in range(mon.image_index.shape[1])
            ]
            for i, u in enumerate(mon.units)
        }  # fmt: skip
        if mon.filter_similarity is not None:
            entry["filter_similarity_by_unit"] = {
                str(u): {str(e): round(float(mon.filter_similarity[t, i]), 4)
                         for t, e in enumerate(epochs)}
                for i, u in enumerate(mon.units)
            }  # fmt: skip
        layers[name] = entry
    summary = [
        {
            "layer": name,
            "projection_stable_from": entry["projection_stable_from"],
            "filter_stable_from": entry["filter_stable_from"],
            "projection_pairs": entry["projection_pairs"],
            "projection_similarity": entry["projection_similarity"],
            "filter_similarity": entry["filter_similarity"],
        }
        for name, entry in layers.items()
    ]
    return {
        "run": monitoring.run,
        "epochs": list(epochs),
        "reference_epoch": epochs[-1],
        "threshold": monitoring.threshold,
        "rule": monitoring.rule,
        "pool": monitoring.pool,
        "images_searched": monitoring.images,
        "summary": summary,
        "layers": layers,
    }


def _fit(tiles: np.ndarray, size: int) -> np.ndarray:
    """(M, h, w, 3) float tiles resized to (M, size, size, 3) (nearest when enlarging)."""
    from PIL import Image

    if tiles.shape[1:3] == (size, size):
        return tiles
    enlarge = max(tiles.shape[1:3]) < size
    method = Image.NEAREST if enlarge else Image.BILINEAR
    out = [
        np.asarray(
            Image.fromarray((np.clip(t, 0, 1) * 255 + 0.5).astype(np.uint8)).resize(
                (size, size), method
            ),
            np.float32,
        )
        / 255.0
        for t in tiles
    ]
    return np.stack(out)


def monitor_figure(model: Model, monitoring: Monitoring, *, tile: int = 48) -> np.ndarray:
    """One uint8 picture of every monitored layer.

    Per layer a title line (layer, the epoch from which it is stable) and one row per
    (unit, top image): the projection at each saved epoch (each min-max rescaled,
    cut to the unit's receptive-field window, labelled with the epoch and its
    similarity to the final epoch), then the image patch. Tiles are ``tile`` pixels.
    """
    from PIL import Image, ImageDraw, ImageFont

    from cnnvis_jax.report.grid import image_grid, rescale_each

    epochs = monitoring.epochs
    font = ImageFont.load_default()
    blocks = []
    for name, mon in monitoring.layers.items():
        n_epochs, n_units, k = mon.projections.shape[:3]
        h, w = mon.projections.shape[3:5]
        flat = mon.projections.reshape(-1, h, w, 3)
        positions = np.broadcast_to(mon.position[None], (n_epochs, n_units, k, 2)).reshape(-1, 2)
        clipped, full = field_boxes(model, name, positions)
        shown = _fit(cut_windows(rescale_each(flat), clipped, full, FILL), tile)
        shown = shown.reshape(n_epochs, n_units * k, tile, tile, 3)
        patches = _fit(mon.patches.reshape(-1, *mon.patches.shape[2:]), tile)
        tiles, labels = [], []
        for row in range(n_units * k):
            unit = mon.units[row // k]
            for t, epoch in enumerate(epochs):
                tiles.append(shown[t, row])
                similarity = mon.projection_similarity[t, row // k, row % k]
                labels.append(f"u{unit} e{epoch}" if t == 0 else f"e{epoch} {similarity:.2f}")
            tiles.append(patches[row])
            labels.append(f"#{int(mon.image_index[row // k, row % k])}")
        grid = image_grid(np.stack(tiles), ncols=n_epochs + 1, labels=labels)
        summary = _layer_summary(mon, epochs, monitoring.threshold)
        title = f"{name}: projections stable from epoch {summary['projection_stable_from']}"
        if summary["filter_stable_from"] is not None:
            title += f", filters from {summary['filter_stable_from']}"
        head = Image.new("RGB", (max(grid.shape[1], 6 * len(title) + 8), 16), "white")
        ImageDraw.Draw(head).text((2, 2), title, fill=(0, 0, 0), font=font)
        blocks += [np.asarray(head), grid]
    width = max(b.shape[1] for b in blocks)
    height = sum(b.shape[0] for b in blocks) + 4 * len(blocks)
    canvas = np.full((height, width, 3), 255, np.uint8)
    y = 0
    for block in blocks:
        canvas[y : y + block.shape[0], : block.shape[1]] = block
        y += block.shape[0] + 4
    return canvas
