"""The survey's figures on ``vgg16-hed`` with natural images, in one call.

:func:`run_gallery` writes into ``out``:

* ``edges.png``: HED's own edge maps of the images (the conversion check, seen);
* ``units.json`` part of ``gallery.json``: per layer, the units shown, chosen as
  the ``units`` channels with the largest maximal activation over the images (so
  no dead unit is shown; ties by smaller index);
* ``am_<layer>.png``: activation maximization of those units under an AM preset
  (default ``lucid``: Fourier + decorrelated colour, transforms, channel objective);
* ``deconv_<layer>.png``: DeconvNet (Zeiler & Fergus) projections of the same
  units' top images, next to the image patches;
* ``inversion.png``: one image and its regularized reconstructions (default
  ``mahendran2016``) from the last conv layer of every block;
* ``gallery.json`` (what was computed, activations, feature errors, timings) and
  ``index.html``.

Everything runs at the model's input size (build it at the size wanted); the step
counts can be lowered for a quick gallery on a CPU. A run into a folder holding the
gallery of the same model, size and images keeps the figures of the parts it does
not draw itself, so the parts can be drawn one run at a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cnnvis_jax import interrupt
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model
from cnnvis_jax.report import html
from cnnvis_jax.report.files import write_json, write_text
from cnnvis_jax.report.grid import image_grid, save_png

GALLERY_LAYERS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
"""The last conv layer (ReLU) of each VGG16 block."""

PARTS = ("edges", "deconv", "am", "inversion")


@dataclasses.dataclass(frozen=True)
class GalleryConfig:
    """What :func:`run_gallery` draws.

    Attributes:
      layers: layers of the AM and DeconvNet figures.
      inversion_layers: layers the one image is reconstructed from (None: ``layers``).
      units: units per layer (the most strongly responding ones).
      top: DeconvNet top images per unit.
      am_preset, am_steps: the AM preset and its step count (None: the preset's).
      inversion_preset, inversion_steps: the inversion preset and steps (None: its own).
      inversion_image: index into the source of the image to invert.
      seed: PRNG seed of AM and inversion.
      parts: which of :data:`PARTS` to draw.
      batch_size: images per forward pass when streaming the source.
    """

    layers: tuple[str, ...] = GALLERY_LAYERS
    inversion_layers: tuple[str, ...] | None = None
    units: int = 4
    top: int = 3
    am_preset: str = "lucid"
    am_steps: int | None = None
    inversion_preset: str = "mahendran2016"
    inversion_steps: int | None = None
    inversion_image: int = 0
    seed: int = 0
    parts: tuple[str, ...] = PARTS
    batch_size: int = 8

    def __post_init__(self):
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown:
            raise InputError(f"unknown gallery parts {unknown}; choose from {', '.join(PARTS)}.")
        for name in ("units", "top", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("am_steps", "inversion_steps"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise InputError(f"{name} must be at least 1, got {value}.")


class ArraySource:
    """A source over in-memory uint8 images (N, H, W, 3), e.g. from ``--images``."""

    vocabulary = None
    class_names: tuple[str, ...] = ()

    def __init__(self, images: np.ndarray, names: Sequence[str] | None = None):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise InputError(
                f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}."
            )
        self.images = images
        self.names = tuple(names) if names is not None else tuple(map(str, range(len(images))))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        n, i = len(self), int(index)
        if not -n <= i < n:
            raise IndexError(f"index {index} out of range for {n} images.")
        i %= n
        return {"image": self.images[i], "pixel": {}, "scalar": {}, "target": -1, "index": i}


def _image01(source: Any, index: int, size: tuple[int, int]) -> np.ndarray:
    from cnnvis_jax.data.imageio import resize_crop

    image = np.asarray(source[index]["image"])
    if image.shape[:2] != tuple(size):
        image = resize_crop(image, size)
    return image.astype(np.float32) / 255.0


def choose_units(
    model: Model,
    source: Any,
    layer: str,
    count: int,
    *,
    batch_size: int = 8,
    indices: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` units of ``layer`` with the largest maximal activation over
    ``source`` (its ``indices``, default all; descending, ties by smaller index):
    ``(units (count,), maxima (count,))``."""
    from cnnvis_jax.deconv import top_activations

    top = top_activations(model, source, layer, None, k=1, batch_size=batch_size,
                          indices=indices, progress=False)  # fmt: skip
    maxima = np.asarray(top.values[:, 0])
    order = np.lexsort((np.arange(len(maxima)), -maxima))[: min(count, len(maxima))]
    return np.asarray(top.units)[order], maxima[order]


def _edges_figure(model: Model, source: Any, out: Path, names: Sequence[str], weights) -> dict:
    from cnnvis_jax.hub.edges import head_params, hed_edges
    from cnnvis_jax.hub.vgg16_hed import read_weights

    _, head = read_weights(weights)
    params = head_params(head)
    images = np.stack([_image01(source, i, model.input.size) for i in range(len(source))])
    fused = np.concatenate(
        [
            np.asarray(hed_edges(model, params, images[i : i + 4]).fused)
            for i in range(0, len(images), 4)
        ]
    )
    maps = np.repeat(1.0 - fused[..., None], 3, axis=-1)  # dark edges on white
    tiles = np.stack([t for pair in zip(images, maps) for t in pair])
    labels = [t for name in names for t in (name, "edges")]
    save_png(image_grid(tiles, ncols=8, labels=labels), out / "edges.png")
    return {"mean_edge_probability": [float(f.mean()) for f in fused]}


def _am_figure(model, layer, units, config: GalleryConfig, out: Path, progress: bool) -> dict:
    from cnnvis_jax.am import objectives_for_units, preset, render

    recipe = preset(config.am_preset)
    objectives = objectives_for_units(model, layer, [int(u) for u in units], kind=recipe.objective)
    result = render(
        model, objectives, recipe, key=int(config.seed), steps=config.am_steps,
        progress=progress, desc=f"AM {layer}", checkpoint=out / _CHECKPOINTS / f"am_{layer}.npz",
    )  # fmt: skip
    images = np.clip(result.images[:, 0], 0, 1)
    labels = [f"{layer} u{int(u)}" for u in units]
    save_png(image_grid(images, ncols=len(units), labels=labels), out / f"am_{layer}.png")
    return {
        "preset": config.am_preset,
        "objective": recipe.objective,
        "steps": int(config.am_steps or recipe.steps),
        "start_activation": result.start_activation[:, 0].tolist(),
        "final_activation": result.final_activation[:, 0].tolist(),
        "best_activation": result.best_activation[:, 0].tolist(),
    }


def _deconv_figure(model, source, layer, units, config: GalleryConfig, out: Path, progress):
    from cnnvis_jax.deconv import deconv_layer

    k = min(config.top, len(source))
    result = deconv_layer(
        model, source, layer, [int(u) for u in units], k=k, rule="deconvnet",
        batch_size=config.batch_size, progress=progress,
        checkpoint=out / _CHECKPOINTS / f"deconv_{layer}",
    )  # fmt: skip
    save_png(result.figure, out / f"deconv_{layer}.png")
    return {
        "top_images": np.asarray(result.topk.image_index).tolist(),
        "top_values": np.asarray(result.topk.values).tolist(),
    }


def _inversion_figure(model, source, config: GalleryConfig, out: Path, names, progress) -> dict:
    layers = tuple(config.inversion_layers or config.layers)
    from cnnvis_jax.inversion import features_of, invert_layers

    index = int(config.inversion_image)
    if not 0 <= index < len(source):
        raise InputError(f"inversion image {index} is out of range (0..{len(source) - 1}).")
    image = _image01(source, index, model.input.size)
    results = invert_layers(
        model, features_of(model, image[None], layers), preset=config.inversion_preset,
        key=jax.random.key(config.seed), steps=config.inversion_steps, progress=progress,
        checkpoint=out / _CHECKPOINTS / "inversion",
    )  # fmt: skip
    tiles, labels, errors = [image], [f"original ({names[index]})"], {}
    for layer in layers:
        result = results[model.resolve(layer)]
        best, error = result.best()
        tiles.append(np.clip(best[0], 0, 1))
        labels.append(f"from {layer}")
        errors[layer] = float(error[0])
    save_png(image_grid(np.stack(tiles), ncols=len(tiles), labels=labels), out / "inversion.png")
    return {
        "image": names[index],
        "preset": config.inversion_preset,
        "steps": config.inversion_steps,
        "feature_error": errors,
    }


def _page(record: dict) -> str:
    parts = [
        f"<p>{html.esc(record['model'])} at {record['size'][0]}x{record['size'][1]} px on "
        f"{len(record['images'])} images: {html.esc(', '.join(record['images']))}. Units "
        "per layer: the most strongly responding ones on these images.</p>"
    ]
    if "edges" in record:
        parts.append(html.figure("edges.png", "HED's edge head on the converted weights"))
    for layer, info in record["layers"].items():
        parts.append(f"<h2>{html.esc(layer)}</h2>")
        if "am" in info:
            parts.append(
                html.figure(
                    f"am_{layer}.png", f"AM ({info['am']['preset']}) of units {info['units']}"
                )
            )
        if "deconv" in info:
            parts.append(html.figure(f"deconv_{layer}.png", "DeconvNet projections and patches"))
    if "inversion" in record:
        inv = record["inversion"]
        parts.append("<h2>inversion</h2>")
        parts.append(
            html.figure("inversion.png", f"{inv['preset']} reconstructions of {inv['image']}")
        )
        parts.append(
            html.table(
                ["layer", "feature error"],
                [[k, f"{v:.3f}"] for k, v in inv["feature_error"].items()],
            )
        )
    if record.get("missing"):
        parts.append(f"<p>Not drawn: {html.esc('; '.join(record['missing']))}</p>")
    return html.page(f"gallery: {record['model']}", "".join(parts))


def run_gallery(
    model: Model,
    source: Any,
    out: str | os.PathLike,
    config: GalleryConfig = GalleryConfig(),
    *,
    names: Sequence[str] | None = None,
    weights: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Draw the gallery of ``model`` on ``source`` into ``out`` (see the module doc).

    ``model`` should be built at the size wanted (``load_vgg16_hed(size=...)``);
    ``source`` images are resized to it. ``names`` label the images (default the
    source's ``names`` or indices). The ``edges`` part needs ``vgg16-hed``; its
    head is read from ``weights`` (the file the model came from; default the cache).
    Returns the record written to ``gallery.json``.

    The work resumes: ``gallery.json`` is rewritten after every figure, a call with
    the same settings keeps the figures an earlier (interrupted) call finished, and
    the figure in progress resumes from its checkpoint (``out/.gallery-checkpoint``).
    Ctrl-C or SIGTERM stop at the next saved point with
    :class:`~cnnvis_jax.interrupt.Interrupted`.
    """
    with interrupt.graceful():
        record = _run_gallery(model, source, Path(out), config, names, weights, progress)
    shutil.rmtree(Path(out) / _CHECKPOINTS, ignore_errors=True)
    return record


def _run_gallery(model, source, out: Path, config: GalleryConfig, names, weights, progress):
    out.mkdir(parents=True, exist_ok=True)
    inversion_layers = tuple(config.inversion_layers or config.layers)
    for layer in (*config.layers, *inversion_layers):
        model.resolve(layer)  # unknown layers fail before any work
    names = list(names or getattr(source, "names", None) or map(str, range(len(source))))
    record: dict[str, Any] = {
        "model": model.name,
        "size": list(model.input.size),
        "images": names,
        "config": dataclasses.asdict(config),
        "layers": {},
        "seconds": {},
        "missing": [],
    }
    previous = _previous(out, record)
    finished = previous.get("config") == record["config"]  # an interrupted run of these settings

    def done(entry: dict, key: str, png: str) -> bool:
        """Whether ``entry[key]`` is a figure an earlier call drew and kept."""
        return key in entry and (out / png).is_file()

    for key in ("edges", "inversion"):
        if key in previous and (key not in config.parts or finished):
            if done(previous, key, f"{key}.png"):
                record[key] = previous[key]
    parts = set(config.parts)
    if "edges" in parts and "edges" not in record:
        if model.name == "vgg16-hed":
            start = time.perf_counter()
            record["edges"] = _edges_figure(model, source, out, names, weights)
            record["seconds"]["edges"] = time.perf_counter() - start
            _saved(out, record)
        else:
            record["missing"].append(f"edges: only vgg16-hed has HED's edge head, not {model.name}")
    for layer in config.layers:
        start = time.perf_counter()
        units, maxima = choose_units(
            model, source, layer, config.units, batch_size=config.batch_size
        )
        info: dict[str, Any] = {"units": units.tolist(), "max_activation": maxima.tolist()}
        record["layers"][layer] = info
        kept = previous.get("layers", {}).get(layer, {})
        if kept.get("units") == info["units"]:  # figures of an earlier run
            info.update({k: v for k, v in kept.items()
                         if k in ("am", "deconv") and (finished or k not in parts)
                         and done(kept, k, f"{k}_{layer}.png")})  # fmt: skip
        record["seconds"][f"units_{layer}"] = time.perf_counter() - start
        if "deconv" in parts and "deconv" not in info:
            start = time.perf_counter()
            info["deconv"] = _deconv_figure(model, source, layer, units, config, out, progress)
            record["seconds"][f"deconv_{layer}"] = time.perf_counter() - start
            _saved(out, record)
        if "am" in parts and "am" not in info:
            start = time.perf_counter()
            info["am"] = _am_figure(model, layer, units, config, out, progress)
            record["seconds"][f"am_{layer}"] = time.perf_counter() - start
            _saved(out, record)
    if "inversion" in parts and "inversion" not in record:
        start = time.perf_counter()
        record["inversion"] = _inversion_figure(model, source, config, out, names, progress)
        record["seconds"]["inversion"] = time.perf_counter() - start
    _write(out, record)
    return record


def _saved(out: Path, record: dict) -> None:
    """Write the record of the figures drawn so far, then stop if interrupted."""
    _write(out, record)
    interrupt.check("gallery")


def _previous(out: Path, record: dict) -> dict:
    """The record of an earlier run into ``out`` on the same model, size and images
    (its figures of parts not drawn now are kept), else ``{}``."""
    try:
        old = json.loads((out / "gallery.json").read_text())
    except (OSError, ValueError):
        return {}
    same = all(old.get(k) == record[k] for k in ("model", "size", "images"))
    return old if same and isinstance(old, dict) else {}


_CHECKPOINTS = ".gallery-checkpoint"
"""Folder (inside the output folder) of the figure in progress's resumable state."""


def _write(out: Path, record: dict) -> None:
    write_json(out / "gallery.json", record)
    write_text(out / "index.html", _page(record))


__all__ = ["GALLERY_LAYERS", "PARTS", "ArraySource", "GalleryConfig", "choose_units", "run_gallery"]
