"""Design diagnosis (Zeiler & Fergus 2014, Sec. 4.1): dead units, first-layer filter
frequencies, and aliasing caused by a strided first layer.

Zeiler & Fergus looked at AlexNet's first two layers and saw (i) first-layer filters
that are "a mix of extremely high and low frequency information, with little
coverage of the mid frequencies", some of them dead (flat), and (ii) "aliasing
artifacts caused by the large stride 4 used in the 1st layer convolutions" in the
layer-2 visualizations. Their fix (ZFNet) was a 7x7 first layer with stride 2
instead of 11x11 with stride 4, which gave "more distinctive features and fewer
dead features". The three measures here turn those observations into numbers:

* :func:`dead_units` -- a unit is **dead** when it is never active over the data:
  its activation is ``<= 0`` at every position of every image (for a ReLU output:
  exactly zero everywhere). Also reported per unit: the largest activation and the
  fraction of images in which the unit is positive somewhere.

* :func:`filter_spectrum` -- spectral energy of each first-layer filter by
  frequency band. Each filter ``(kh, kw, 3)`` is zero-padded to ``size x size``,
  its power spectrum ``|DFT|^2`` is summed over the input channels, and the energy
  is split by radial frequency ``r = sqrt(fy^2 + fx^2)`` in cycles per input pixel
  (Nyquist is 0.5): ``dc`` (r = 0), ``low`` (0 < r <= 1/8), ``mid``
  (1/8 < r <= 1/4), ``high`` (r > 1/4). ``above_nyquist`` is the fraction of the
  filter's energy at ``max(|fy|, |fx|) > 1/(2s)`` for the layer's stride ``s``:
  what the strided sampling of that filter's (linear) response folds back.

* :func:`aliasing` -- the aliasing measure of the input of the layer after the
  first strided layer ``L`` (stride ``s``; for ConceptNet and AlexNet ``conv1``,
  its ReLU output). The strided layer computes, at every ``s``-th pixel, the
  samples of a *dense* feature map ``D`` (the same layer evaluated at stride 1;
  the ReLU is pointwise, so sampling commutes with it). Sampling at stride ``s``
  represents frequencies up to the Nyquist frequency ``1/(2s)`` cycles per pixel
  on each axis; the energy of ``D`` beyond it is folded back onto lower
  frequencies (aliased) in the map that the next layer receives. ``D`` is
  obtained exactly from the model itself: the input shifted by ``(dy, dx)``,
  ``0 <= dy, dx < s`` (edge-replicated), gives the polyphase component
  ``D[s*i + dy, s*j + dx]`` of the layer's output, and the ``s^2`` components are
  interleaved. For every image and unit, ``D`` minus its mean is multiplied by a
  2-D Hann window (to suppress the image border) and its power spectrum ``P`` is
  taken; the **aliasing fraction** is

      sum P[max(|fy|, |fx|) > 1/(2s)]  /  sum P[(fy, fx) != 0]

  summed over images (and, for the layer value, over units: an energy-weighted
  mean). 0 means that sampling loses nothing; a white-noise map gives
  ``1 - 1/s^2`` (0.75 at stride 2, 0.94 at stride 4).

  The same construction applies to any deeper layer with total stride ``S`` (the
  layer after, ``conv2``, has ``S = 2s`` behind ConceptNet's pool1): shifting the
  input by a multiple of ``S`` shifts its map by whole cells, so interleaving the
  ``S^2`` input phases gives the map the network would compute at every pixel. An
  alias-free pipeline (each stage low-passed below its grid's Nyquist frequency)
  gives a map band-limited to ``1/(2S)``; the fraction above it measures the
  phase-dependent (shift-variant) content that all strided stages up to that layer
  have folded in. Pass ``layer="conv2"`` to :func:`aliasing` for it.

All measures are computed with jitted, fixed-shape functions over batches of a
data source (the last batch padded and masked).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.errors import InputError
from cnnvis_jax.features import iterate_batches, to_model_input
from cnnvis_jax.model import LayerInfo, Model
from cnnvis_jax.progress import progress_bar
from cnnvis_jax.report.files import write_json

__all__ = [
    "BANDS",
    "Aliasing",
    "DeadUnits",
    "Diagnosis",
    "FilterSpectrum",
    "aliasing",
    "dead_units",
    "default_dead_layers",
    "dense_map",
    "diagnose",
    "diagnosis_figure",
    "diagnosis_record",
    "filter_spectrum",
    "first_layer_filters",
    "first_strided_layer",
    "layer_kernel",
]

BANDS = {"dc": (0.0, 0.0), "low": (0.0, 0.125), "mid": (0.125, 0.25), "high": (0.25, np.inf)}
"""Radial frequency bands (cycles per input pixel): ``dc`` is r = 0, the others
``lo < r <= hi``."""


# --- dead units -------------------------------------------------------------------------


class DeadUnits(NamedTuple):
    """Activity of the units of one layer over a data set (numpy arrays).

    Attributes:
      layer: canonical layer name.
      max_activation: float32 (C,), the largest activation of each unit over all
        images and positions.
      active_fraction: float32 (C,), the fraction of images in which the unit is
        positive at some position.
      dead: int (D,), units never active (``max_activation <= 0``), ascending.
      images: number of images seen.
    """

    layer: str
    max_activation: np.ndarray
    active_fraction: np.ndarray
    dead: np.ndarray
    images: int


def default_dead_layers(model: Model) -> tuple[str, ...]:
    """The survey's ``convN`` and ``fcN`` layers of ``model`` except its logits (the
    taps after a ReLU in the zoo networks); all non-logit layers when none match."""
    names = [
        n
        for n in model.layer_names
        if re.fullmatch(r"(conv|fc)\d+(_\d+)?", n) and n != model.logits_layer
    ]
    return tuple(names or [n for n in model.layer_names if n != model.logits_layer])


def _image_maxima(model: Model, images_uint8, *, layers: tuple[str, ...]):
    out = model.apply(model.params, to_model_input(model, images_uint8), layers)
    return {
        n: (jnp.max(a, axis=tuple(range(1, a.ndim - 1))) if a.ndim > 2 else a).astype(jnp.float32)
        for n, a in out.items()
    }


@functools.lru_cache(maxsize=16)
def _compiled_maxima(layers: tuple[str, ...]):
    return jax.jit(functools.partial(_image_maxima, layers=layers))


def dead_units(
    model: Model,
    source: Any,
    layers: Sequence[str] | None = None,
    *,
    batch_size: int = 64,
    indices: Sequence[int] | None = None,
    progress: bool = True,
) -> dict[str, DeadUnits]:
    """Per layer, the units never active over ``source`` (one forward per batch).

    Args:
      model: the network (its own ``params``).
      source: random-access data source (uint8 images, resized on device).
      layers: layer names or aliases (default :func:`default_dead_layers`).
      batch_size: images per forward pass (the last batch is padded and masked).
      indices: the source indices to use (default: all).

    Returns:
      ``{layer: DeadUnits}`` in the order given.

    Raises:
      InputError: an unknown layer, an empty source or index list.
    """
    names = tuple(dict.fromkeys(model.resolve(n) for n in (layers or default_dead_layers(model))))
    if not names:
        raise InputError(f"model {model.name!r} has no layer to check for dead units.")
    fn = _compiled_maxima(names)
    count = len(source) if indices is None else len(indices)
    peak = {n: np.full(model.layer(n).channels, -np.inf, np.float32) for n in names}
    active = {n: np.zeros(model.layer(n).channels, np.int64) for n in names}
    with progress_bar(count, "dead units", enabled=progress) as bar:
        for _, valid, batch in iterate_batches(source, batch_size, indices):
            out = fn(model, batch["image"])
            for n in names:
                maxima = np.asarray(out[n])[valid]
                peak[n] = np.maximum(peak[n], maxima.max(axis=0))
                active[n] += (maxima > 0).sum(axis=0)
            bar.update(int(valid.sum()))
    return {
        n: DeadUnits(
            n,
            peak[n],
            (active[n] / count).astype(np.float32),
            np.flatnonzero(peak[n] <= 0),
            count,
        )
        for n in names
    }


# --- first-layer filters ------------------------------------------------------------------


def _path_name(path) -> str:
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return ".".join(p for p in parts if p != "value")


def _layer_names_for_params(model: Model, layer: str) -> set[str]:
    """Module names that may hold ``layer``'s weights: the layer and its aliases, and
    those of its pre-activation / post-ReLU companion (``conv1_pre`` <-> ``conv1``)."""
    info = model.layer(layer)
    base = info.name[: -len("_pre")] if info.name.endswith("_pre") else info.name
    names = {info.name, base}
    for companion in (base, base + "_pre"):
        if companion in model.layer_names:
            names.update(model.layer(companion).aliases)
    return names


def layer_kernel(model: Model, params: Any, layer: str) -> np.ndarray | None:
    """The weight array of the module computing ``layer``, or ``None``.

    Looks for a parameter named ``<module>.kernel`` whose module is the layer, one
    of its aliases, or its ``_pre`` companion, with the layer's channel count last
    (``(kh, kw, C_in, C)`` for convolutions, ``(D, C)`` for dense layers). Layers
    without weights of their own (pools) give ``None``.
    """
    wanted = {f"{n}.kernel" for n in _layer_names_for_params(model, layer)}
    channels = model.layer(layer).channels
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if _path_name(path) in wanted and np.ndim(leaf) >= 2 and np.shape(leaf)[-1] == channels:
            return np.asarray(leaf)
    return None


def first_layer_filters(model: Model, params: Any = None) -> tuple[str, np.ndarray, int]:
    """``(layer, filters (kh, kw, 3, C), stride)`` of the model's first layer.

    The first layer is the first of the catalog; its filters are found by
    :func:`layer_kernel`, else as the only 4-D parameter with 3 input channels and
    the layer's channel count. The stride is the layer's receptive-field stride.

    Raises:
      InputError: when the first layer has no such filters or unequal strides.
    """
    params = model.params if params is None else params
    info = model.layers[0]
    kernel = layer_kernel(model, params, info.name)
    if kernel is None:
        found = [
            np.asarray(leaf)
            for leaf in jax.tree_util.tree_leaves(params)
            if np.ndim(leaf) == 4 and np.shape(leaf)[2] == 3 and np.shape(leaf)[3] == info.channels
        ]
        kernel = found[0] if len(found) == 1 else None
    if kernel is None or kernel.ndim != 4 or kernel.shape[2] != 3 or info.receptive_field is None:
        raise InputError(
            f"cannot find the RGB filters (kh, kw, 3, C) of the first layer {info.name!r} of "
            f"model {model.name!r}; pass them to filter_spectrum(filters, stride) directly."
        )
    sy, sx = info.receptive_field.stride
    if sy != sx:
        raise InputError(f"first layer {info.name!r} has unequal strides {(sy, sx)}.")
    return info.name, kernel, int(sy)


class FilterSpectrum(NamedTuple):
    """Spectral energy of filters by frequency band (numpy arrays, C filters).

    Attributes:
      fractions: float64 (C, 4), energy fraction in the bands of :data:`BANDS`
        (columns ``dc, low, mid, high``; rows sum to 1).
      dominant: (C,) str, the band among ``low, mid, high`` with the most energy
        (``dc`` counts as ``low``: a flat colour filter is a low-frequency one).
      above_nyquist: float64 (C,), energy fraction at ``max(|fy|, |fx|) > 1/(2s)``.
      rms: float64 (C,), root mean square of each filter's weights.
      stride: the ``s`` above.
    """

    fractions: np.ndarray
    dominant: np.ndarray
    above_nyquist: np.ndarray
    rms: np.ndarray
    stride: int


def _frequencies(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    return np.broadcast_to(fy, (h, w)), np.broadcast_to(fx, (h, w))


def filter_spectrum(filters: Any, stride: int = 1, *, size: int = 64) -> FilterSpectrum:
    """Band energies of ``filters`` (kh, kw, C_in, C) (see the module docstring).

    Args:
      filters: convolution kernels, HWIO.
      stride: the layer's stride ``s`` (for ``above_nyquist``).
      size: DFT size (the filters are zero-padded to ``size x size``).

    Raises:
      InputError: filters that are not 4-D, larger than ``size``, or ``stride < 1``.
    """
    filters = np.asarray(filters, np.float64)
    if filters.ndim != 4:
        raise InputError(f"filters must be (kh, kw, C_in, C), got shape {filters.shape}.")
    if max(filters.shape[:2]) > size:
        raise InputError(f"filters of size {filters.shape[:2]} exceed the DFT size {size}.")
    if int(stride) < 1:
        raise InputError(f"stride must be >= 1, got {stride}.")
    power = np.abs(np.fft.fft2(filters, s=(size, size), axes=(0, 1))) ** 2
    power = power.sum(axis=2)  # (size, size, C)
    fy, fx = _frequencies(size, size)
    radius = np.hypot(fy, fx)
    total = np.maximum(power.sum(axis=(0, 1)), 1e-30)
    fractions = np.stack(
        [
            power[(radius > lo) & (radius <= hi) if hi > 0 else radius == 0].sum(axis=0) / total
            for lo, hi in BANDS.values()
        ],
        axis=-1,
    )
    beyond = np.maximum(np.abs(fy), np.abs(fx)) > 0.5 / int(stride)
    names = np.array(["low", "mid", "high"])
    lumped = np.concatenate([fractions[:, :2].sum(-1, keepdims=True), fractions[:, 2:]], -1)
    return FilterSpectrum(
        fractions,
        names[np.argmax(lumped, axis=-1)],
        power[beyond].sum(axis=0) / total,
        np.sqrt(np.mean(filters**2, axis=(0, 1, 2))),
        int(stride),
    )


# --- aliasing -----------------------------------------------------------------------------


def first_strided_layer(model: Model) -> LayerInfo:
    """The layer whose output the layer after a strided first layer receives.

    That is the first layer of the catalog with a stride above 1, or, when later
    layers share exactly its receptive field (``conv1_pre`` -> ``conv1``, the ReLU
    output), the last of those.
    """
    chosen = None
    for info in model.layers:
        rf = info.receptive_field
        if chosen is None:
            if rf is not None and max(rf.stride) > 1:
                chosen = info
        elif rf == chosen.receptive_field:
            chosen = info
        else:
            break
    if chosen is None:
        raise InputError(f"model {model.name!r} has no strided layer to measure aliasing on.")
    return chosen


class Aliasing(NamedTuple):
    """Aliasing of one strided layer's output over a data set (numpy arrays).

    Attributes:
      layer: canonical layer name; ``stride``: its stride ``s``.
      fraction: the energy-weighted aliasing fraction over images and units.
      per_unit: float64 (C,), each unit's aliasing fraction over the images (NaN for
        units whose dense map is constant on every image).
      spectrum: float64 (Hd, Wd), mean power spectrum of the dense maps over images
        and units, normalized to sum 1, zero frequency at the centre (fftshift).
      images: number of images.
    """

    layer: str
    stride: int
    fraction: float
    per_unit: np.ndarray
    spectrum: np.ndarray
    images: int


def dense_map(model: Model, images01, layer: str, stride: int):
    """``layer`` of ``model`` evaluated at every input pixel: float (N, s*h, s*w, C).

    ``images01`` are float (N, H, W, 3) in [0, 1] at the model's size. Component
    ``(dy, dx)`` comes from the input shifted up/left by ``(dy, dx)`` pixels (the
    bottom/right edge replicated), so ``dense[:, s*i + dy, s*j + dx]`` is the
    layer's output at ``(i, j)`` for that shifted input: in the interior it equals
    the layer evaluated at stride 1; within the layer's padding of the border a
    shifted input meets zero padding (top, left) or replicated pixels (bottom,
    right) instead of image pixels. Traceable (use in jit).
    """
    n, h, w, _ = images01.shape
    s = stride
    padded = jnp.pad(images01, ((0, 0), (0, s - 1), (0, s - 1), (0, 0)), mode="edge")
    shifted = jnp.concatenate(
        [padded[:, dy : dy + h, dx : dx + w] for dy in range(s) for dx in range(s)]
    )
    out = model.apply(model.params, shifted, (layer,))[layer]
    _, oh, ow, c = out.shape
    out = out.reshape(s, s, n, oh, ow, c).transpose(2, 3, 0, 4, 1, 5)
    return out.reshape(n, oh * s, ow * s, c)


def _alias_step(model: Model, images_uint8, valid, *, layer: str, stride: int):
    dense = dense_map(model, to_model_input(model, images_uint8), layer, stride)
    dense = dense.astype(jnp.float32)
    _, hd, wd, _ = dense.shape
    window = jnp.asarray(np.outer(np.hanning(hd), np.hanning(wd)), jnp.float32)
    centred = dense - jnp.mean(dense, axis=(1, 2), keepdims=True)
    power = jnp.abs(jnp.fft.fft2(centred * window[None, :, :, None], axes=(1, 2))) ** 2
    power = power * valid[:, None, None, None]
    fy, fx = _frequencies(hd, wd)
    beyond = jnp.asarray(np.maximum(np.abs(fy), np.abs(fx)) > 0.5 / stride)
    nonzero = jnp.asarray((fy != 0) | (fx != 0))
    total = jnp.sum(jnp.where(nonzero[None, :, :, None], power, 0.0), axis=(0, 1, 2))
    high = jnp.sum(jnp.where(beyond[None, :, :, None], power, 0.0), axis=(0, 1, 2))
    spectrum = jnp.sum(power, axis=(0, 3))
    return total, high, spectrum


@functools.lru_cache(maxsize=16)
def _compiled_alias(layer: str, stride: int):
    return jax.jit(functools.partial(_alias_step, layer=layer, stride=stride))


def aliasing(
    model: Model,
    source: Any,
    layer: str | None = None,
    *,
    batch_size: int = 16,
    indices: Sequence[int] | None = None,
    progress: bool = True,
) -> Aliasing:
    """The aliasing fraction of a strided layer over ``source`` (module docstring).

    Args:
      model: the network (its own ``params``).
      source: random-access data source (uint8 images, resized on device).
      layer: a spatial layer with equal strides above 1 (default
        :func:`first_strided_layer`).
      batch_size: images per step; each step runs the layer on ``s^2`` shifted
        copies of the batch.
      indices: the source indices to use (default: all).

    Raises:
      InputError: an unknown, non-spatial or unstrided layer; an empty source.
    """
    info = first_strided_layer(model) if layer is None else model.layer(layer)
    rf = info.receptive_field
    if not info.spatial or rf is None:
        raise InputError(f"layer {info.name!r} is not spatial; aliasing needs a feature map.")
    sy, sx = rf.stride
    if sy != sx or sy < 2:
        raise InputError(
            f"layer {info.name!r} has stride {(sy, sx)}; the aliasing measure needs a layer "
            "with equal strides above 1 (e.g. the first strided convolution)."
        )
    fn = _compiled_alias(info.name, int(sy))
    count = len(source) if indices is None else len(indices)
    total = high = spectrum = None
    with progress_bar(count, f"aliasing {info.name}", enabled=progress) as bar:
        for _, valid, batch in iterate_batches(source, batch_size, indices):
            t, h, s = (np.asarray(a, np.float64) for a in fn(model, batch["image"], valid))
            total = t if total is None else total + t
            high = h if high is None else high + h
            spectrum = s if spectrum is None else spectrum + s
            bar.update(int(valid.sum()))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_unit = np.where(total > 0, high / total, np.nan)
    fraction = float(high.sum() / total.sum()) if total.sum() > 0 else float("nan")
    spectrum = np.fft.fftshift(spectrum / max(spectrum.sum(), 1e-30))
    return Aliasing(info.name, int(sy), fraction, per_unit, spectrum, count)


# --- the whole diagnosis, its record and figure ---------------------------------------------


class Diagnosis(NamedTuple):
    """:func:`diagnose`'s results: ``dead`` per layer, the first layer's filters and
    their spectrum (``filters`` is ``None`` when the model's first layer has no RGB
    kernel to read), and the aliasing of the first strided layer."""

    model: str
    dead: dict[str, DeadUnits]
    filter_layer: str | None
    filters: np.ndarray | None
    spectrum: FilterSpectrum | None
    aliasing: Aliasing

    def summary(self) -> dict[str, Any]:
        """The strict-JSON record (:func:`diagnosis_record`)."""
        return diagnosis_record(self)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``out_dir/diagnosis.json`` (:meth:`summary`) and ``out_dir/diagnosis.png``
        (:func:`diagnosis_figure`); returns the folder."""
        from cnnvis_jax.report.grid import save_png

        out = Path(out_dir)
        write_json(out / "diagnosis.json", self.summary())
        save_png(diagnosis_figure(self), out / "diagnosis.png")
        return out


def diagnose(
    model: Model,
    source: Any,
    *,
    layers: Sequence[str] | None = None,
    alias_layer: str | None = None,
    batch_size: int = 64,
    indices: Sequence[int] | None = None,
    progress: bool = True,
) -> Diagnosis:
    """Dead units of ``layers``, first-layer filter spectra and the aliasing fraction.

    See :func:`dead_units`, :func:`first_layer_filters`/:func:`filter_spectrum` and
    :func:`aliasing` (run with ``batch_size // 4`` images per step, at least 1).
    """
    dead = dead_units(
        model, source, layers, batch_size=batch_size, indices=indices, progress=progress
    )
    try:
        filter_layer, filters, stride = first_layer_filters(model)
        spectrum = filter_spectrum(filters, stride)
    except InputError:
        filter_layer, filters, spectrum = None, None, None
    alias = aliasing(
        model,
        source,
        alias_layer,
        batch_size=max(1, batch_size // 4),
        indices=indices,
        progress=progress,
    )
    return Diagnosis(model.name, dead, filter_layer, filters, spectrum, alias)


def _rounded(values: np.ndarray, digits: int = 4) -> list:
    return [None if not np.isfinite(v) else round(float(v), digits) for v in np.asarray(values)]


def diagnosis_record(diagnosis: Diagnosis) -> dict[str, Any]:
    """The machine-readable record of a :class:`Diagnosis` (JSON-ready)."""
    dead = {
        name: {
            "units": int(d.max_activation.size),
            "dead": [int(u) for u in d.dead],
            "dead_count": int(d.dead.size),
            "dead_fraction": round(d.dead.size / d.max_activation.size, 4),
            "images": d.images,
            "active_fraction": _rounded(d.active_fraction),
            "max_activation": _rounded(d.max_activation),
        }
        for name, d in diagnosis.dead.items()
    }
    record: dict[str, Any] = {"model": diagnosis.model, "dead_units": dead}
    if diagnosis.spectrum is not None:
        s = diagnosis.spectrum
        names, counts = np.unique(s.dominant, return_counts=True)
        record["first_layer_filters"] = {
            "layer": diagnosis.filter_layer,
            "shape": list(diagnosis.filters.shape),
            "stride": s.stride,
            "bands_cycles_per_pixel": {
                k: [lo, None if hi == np.inf else hi] for k, (lo, hi) in BANDS.items()
            },  # fmt: skip
            "mean_band_fraction": dict(zip(BANDS, _rounded(s.fractions.mean(axis=0)))),
            "dominant_band_count": {
                k: int(counts[names == k].sum()) for k in ("low", "mid", "high")
            },
            "mean_above_stride_nyquist": round(float(s.above_nyquist.mean()), 4),
            "band_fraction": {k: _rounded(s.fractions[:, i]) for i, k in enumerate(BANDS)},
            "dominant_band": [str(b) for b in s.dominant],
            "rms": _rounded(s.rms, 6),
        }
    a = diagnosis.aliasing
    record["aliasing"] = {
        "layer": a.layer,
        "stride": a.stride,
        "nyquist_cycles_per_pixel": 0.5 / a.stride,
        "fraction": round(a.fraction, 4),
        "mean_unit_fraction": round(float(np.nanmean(a.per_unit)), 4)
        if np.isfinite(a.per_unit).any()
        else None,
        "per_unit": _rounded(a.per_unit),
        "images": a.images,
        "definition": "energy of the dense (stride-1) feature map above the stride's Nyquist "
        "frequency max(|fy|,|fx|) > 1/(2s), over its non-DC energy (Hann window, mean "
        "removed), summed over images and units",
    }
    return record


def _spectrum_picture(spectrum: np.ndarray, stride: int, size: int = 192) -> np.ndarray:
    """The log mean power spectrum as an RGB picture with the Nyquist square in red."""
    logp = np.log10(np.maximum(spectrum, spectrum.max() * 1e-6))
    grey = (logp - logp.min()) / max(np.ptp(logp), 1e-12)
    h, w = grey.shape
    scale = max(1, size // max(h, w))
    rgb = np.repeat(grey[..., None], 3, axis=-1).repeat(scale, 0).repeat(scale, 1)
    cy, cx = h // 2, w // 2  # zero frequency after fftshift
    half_h, half_w = h / (2 * stride), w / (2 * stride)
    top, bottom = int(round((cy - half_h) * scale)), int(round((cy + half_h) * scale))
    left, right = int(round((cx - half_w) * scale)), int(round((cx + half_w) * scale))
    red = np.array([1.0, 0.0, 0.0])
    rgb[max(top, 0), left:right] = red
    rgb[min(bottom, rgb.shape[0] - 1), left:right] = red
    rgb[top:bottom, max(left, 0)] = red
    rgb[top:bottom, min(right, rgb.shape[1] - 1)] = red
    return rgb


def diagnosis_figure(diagnosis: Diagnosis, *, tile: int = 40) -> np.ndarray:
    """uint8 picture: the first-layer filters (each min-max rescaled, labelled with
    the dominant band ``L``/``M``/``H``, ``x`` for dead units), the mean power spectrum of the
    dense strided-layer maps (log scale, zero frequency at the centre, the stride's
    Nyquist square in red) and a bar per layer of the dead-unit fraction."""
    from PIL import Image, ImageDraw, ImageFont

    from cnnvis_jax.report.grid import image_grid, rescale_each, to_uint8

    font = ImageFont.load_default()
    panels = []

    def titled(picture: np.ndarray, title: str) -> np.ndarray:
        picture = to_uint8(picture)
        canvas = Image.new("RGB", (max(picture.shape[1], 6 * len(title) + 8), picture.shape[0] + 16),
                           "white")  # fmt: skip
        canvas.paste(Image.fromarray(picture), (0, 16))
        ImageDraw.Draw(canvas).text((2, 2), title, fill=(0, 0, 0), font=font)
        return np.asarray(canvas)

    if diagnosis.filters is not None:
        filters = np.moveaxis(diagnosis.filters, -1, 0)  # (C, kh, kw, 3)
        dead_first = set()
        for name, d in diagnosis.dead.items():
            if name.replace("_pre", "") == (diagnosis.filter_layer or "").replace("_pre", ""):
                dead_first = {int(u) for u in d.dead}
        labels = [
            f"{u} {b[0].upper()}{' x' if u in dead_first else ''}"
            for u, b in enumerate(diagnosis.spectrum.dominant)
        ]
        scale = max(1, tile // max(filters.shape[1:3]))
        grid = image_grid(rescale_each(filters), ncols=12, labels=labels, scale=scale)
        panels.append(
            titled(grid, f"{diagnosis.filter_layer} filters, dominant band L/M/H (x: dead unit)")
        )
    a = diagnosis.aliasing
    panels.append(
        titled(
            _spectrum_picture(a.spectrum, a.stride),
            f"{a.layer} dense spectrum, aliasing {a.fraction:.3f}",
        )
    )
    rows = list(diagnosis.dead.items())
    bars = Image.new("RGB", (260, 14 * len(rows) + 4), "white")
    draw = ImageDraw.Draw(bars)
    for i, (name, d) in enumerate(rows):
        fraction = d.dead.size / d.max_activation.size
        y = 2 + 14 * i
        draw.text((2, y), f"{name[:8]}", fill=(0, 0, 0), font=font)
        if d.dead.size:
            draw.rectangle((60, y + 2, 60 + int(120 * fraction), y + 10), fill=(200, 40, 40))
        draw.text((186, y), f"{d.dead.size}/{d.max_activation.size}", fill=(0, 0, 0), font=font)
    panels.append(titled(np.asarray(bars), "dead units per layer"))
    height = sum(p.shape[0] for p in panels) + 8 * len(panels)
    width = max(p.shape[1] for p in panels)
    canvas = np.full((height, width, 3), 255, np.uint8)
    y = 0
    for p in panels:
        canvas[y : y + p.shape[0], : p.shape[1]] = p
        y += p.shape[0] + 8
    return canvas
