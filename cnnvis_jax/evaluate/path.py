"""Path similarity: are a unit's visualizations processed like its natural top images?

The sanity check of Geirhos, Zimmermann, Bilodeau, Brendel & Kim (2023), "Don't trust
your eyes: on the (un)reliability of feature visualizations". If a feature
visualization explains what a unit responds to in natural images, the network should
process it along a path similar to the one the natural images that drive the unit take:
at every layer up to the unit's own, its activation pattern should resemble theirs. The
paper compares, layer by layer, the Spearman rank correlation of activation patterns
for three pairings: natural images of the unit's class among themselves, the
visualization versus those images, and natural images of *other* classes versus them.
It finds that for Inception-V1 visualizations are, through most of the network, no
more similar to the class's images than unrelated natural images are, and proposes the
comparison as a sanity check.

What is computed here, for a unit (layer ``L``, channel ``u``) of a
:class:`~cnnvis_jax.Model`:

* *Activation pattern* of an image at layer ``l``: the channel vector after global
  spatial averaging, ``mean_{h,w} a_l(x)[h, w, :]`` (C_l,), so that where a feature
  appears does not matter; a fully connected layer's activation is its pattern.
* *Similarity* of two patterns: Spearman's rank correlation over the C_l channels
  (ties get their average rank, as ``scipy.stats.spearmanr``). A constant pattern
  (e.g. all channels 0) carries no ranking; its correlation with anything is defined
  as 0 (where Spearman's coefficient is undefined).
* With V visualizations, the unit's K top natural images and R random natural images,
  per layer ``l``:

  - ``s_vis(l)``: mean correlation over the V*K (visualization, top image) pairs;
  - ``s_random(l)``: mean over the R*K (random image, top image) pairs;
  - ``s_top(l)``: mean over the K*(K-1) ordered pairs of distinct top images.

* Layers (default): every spatial layer of the catalog from the first through ``L``;
  when ``L`` is fully connected, every layer through ``L`` (fully connected ones
  included), so the unit's own layer always closes the curve.
* Pass/fail, fixed before any result was looked at: the visualization *passes* when
  ``s_vis(l) >= s_random(l)`` at every layer. This is the brief's rule and the
  paper's criterion made strict: the paper draws the three curves and reads a failure
  where the visualization is no closer to the unit's images than unrelated natural
  images are; it publishes no numeric threshold, so any margin would be ours.

* Patterns (``patterns=``): ``"raw"`` (the default, the paper's) correlates the
  channel means as they are. ``"standardized"`` first z-scores every channel by the
  mean and standard deviation of the *random* natural images' patterns at that layer
  (a channel they never vary gets 0), ``z = (p - mean_random) / std_random``, so that the
  correlation sees which channels an image drives *more or less than natural images
  usually do* instead of the channel magnitudes every image shares.
* Tolerance (``tolerance=``, default 0): the rule becomes ``s_vis(l) >= s_random(l) -
  tolerance`` at every layer.

What the check can tell, measured (``experiments/fooling_default.py``, results in
``experiments/results/fooling_default`` and ``fooling_heldout``): on the default
model with the fooling circuit of :mod:`cnnvis_jax.evaluate.fooling`, none of raw,
standardized, or standardized with tolerance 0.1 (a rule chosen because it separated
the first run's units) separates fooled from original units on held-out units and a
held-out target picture: a fooled visualization that shows a natural-looking drawing
is processed much like natural images, and original visualizations often fail. The
check measures how natural a visualization's path is, not whether it is faithful.
:mod:`cnnvis_jax.evaluate.completeness` asks instead whether the unit's response is
produced through the layers below it, and separates the two on the same runs.

Choices the paper leaves open, made here: the paper's "natural images of the class"
(it checks the logits of an ImageNet classifier) become the unit's top-k natural
images by its *channel mean* activation (the quantity the ``channel`` objective
maximizes; see :func:`top_images`), and its "images of other classes" become random
natural images (drawn by :func:`path_check` from the images that are not in the top
k). Top images are compared with each other only across distinct images (no self
pairs); a visualization or random image that is also a top image is not excluded.

Every image set goes through one jitted forward (:func:`activation_patterns`); the
correlations are one jitted function of the patterns.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model, check_images
from cnnvis_jax.prng import raw_key

__all__ = [
    "PATTERNS",
    "PathSimilarity",
    "activation_patterns",
    "default_layers",
    "path_check",
    "path_similarity",
    "plot_path_similarity",
    "ranks",
    "spearman",
    "spearman_matrix",
    "top_images",
]


class PathSimilarity(NamedTuple):
    """Result of :func:`path_similarity` for one unit (numpy arrays, L = len(layers)).

    Attributes:
      layer: the unit's layer (canonical name).
      unit: the unit (channel) index.
      layers: the layers compared, in forward order (the curve's x axis).
      s_vis: float64 (L,), mean Spearman correlation, visualizations vs top images.
      s_random: float64 (L,), random natural images vs top images.
      s_top: float64 (L,), top images vs each other (distinct pairs).
      passed: ``s_vis >= s_random - tolerance`` at every layer.
      failing_layers: the layers where ``s_vis < s_random - tolerance``.
      patterns: ``"raw"`` or ``"standardized"`` (see the module docstring).
      tolerance: the rule's allowance, ``s_vis >= s_random - tolerance``.
      unit_activation: the unit's mean channel activation over each image set,
        ``{"visualizations", "top", "random"}`` (is the visualization driving it?).
      counts: ``{"visualizations": V, "top": K, "random": R}``.
    """

    layer: str
    unit: int
    layers: tuple[str, ...]
    s_vis: np.ndarray
    s_random: np.ndarray
    s_top: np.ndarray
    passed: bool
    failing_layers: tuple[str, ...]
    unit_activation: dict[str, float]
    counts: dict[str, int]
    patterns: str = "raw"
    tolerance: float = 0.0

    @property
    def margin(self) -> np.ndarray:
        """float64 (L,), ``s_vis - s_random`` (negative where the check fails)."""
        return self.s_vis - self.s_random

    def summary(self) -> dict[str, Any]:
        """Strict-JSON-able record: the curves per layer, the rule and the verdict."""
        return {
            "layer": self.layer,
            "unit": int(self.unit),
            "passed": bool(self.passed),
            "rule": f"s_vis >= s_random - {self.tolerance:g} at every layer",
            "patterns": self.patterns,
            "tolerance": float(self.tolerance),
            "failing_layers": list(self.failing_layers),
            "min_margin": float(np.min(self.margin)),
            "layers": [
                {
                    "layer": name,
                    "s_vis": float(self.s_vis[i]),
                    "s_random": float(self.s_random[i]),
                    "s_top": float(self.s_top[i]),
                }
                for i, name in enumerate(self.layers)
            ],
            "unit_activation": {k: float(v) for k, v in self.unit_activation.items()},
            "counts": {k: int(v) for k, v in self.counts.items()},
        }


# --- rank correlation ----------------------------------------------------------------


def ranks(x: jax.Array) -> jax.Array:
    """Average ranks (1..C) along the last axis; tied values share their mean rank.

    ``x`` (..., C) float -> float32 (..., C); the same ranks as
    ``scipy.stats.rankdata(x, axis=-1)``.
    """
    x = jnp.asarray(x, jnp.float32)

    def one(v):
        s = jnp.sort(v)
        lo = jnp.searchsorted(s, v, side="left")
        hi = jnp.searchsorted(s, v, side="right")
        return (lo + hi + 1).astype(jnp.float32) / 2.0

    flat = x.reshape(-1, x.shape[-1])
    return jax.vmap(one)(flat).reshape(x.shape)


def _standardized_ranks(x: jax.Array) -> jax.Array:
    """Ranks of (N, C) rows centred and scaled to unit root-mean-square (a constant
    row becomes all zeros, so its correlations are 0)."""
    r = ranks(x)
    r = r - r.mean(axis=-1, keepdims=True)
    scale = jnp.sqrt(jnp.mean(r * r, axis=-1, keepdims=True))
    return jnp.where(scale > 0, r / jnp.where(scale > 0, scale, 1.0), 0.0)


@jax.jit
def spearman_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
    """Spearman rank correlation of every row of ``a`` (N, C) with every row of ``b``
    (M, C): float32 (N, M). A constant row correlates 0 with everything."""
    za, zb = _standardized_ranks(a), _standardized_ranks(b)
    return za @ zb.T / a.shape[-1]


@jax.jit
def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
    """Spearman rank correlation of ``a`` and ``b`` (..., C) along the last axis
    (broadcast over the leading axes): float32 (...)."""
    a, b = jnp.broadcast_arrays(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    za = _standardized_ranks(a.reshape(-1, a.shape[-1]))
    zb = _standardized_ranks(b.reshape(-1, b.shape[-1]))
    return jnp.mean(za * zb, axis=-1).reshape(a.shape[:-1])


# --- activation patterns --------------------------------------------------------------


def default_layers(model: Model, layer: str) -> tuple[str, ...]:
    """The layers the check compares for a unit of ``layer`` (see the module docstring):
    the spatial layers from the first through ``layer``; every layer through ``layer``
    when it is fully connected."""
    name = model.resolve(layer)
    names = model.layer_names
    upto = model.layers[: names.index(name) + 1]
    if model.layer(name).spatial:
        return tuple(info.name for info in upto if info.spatial)
    return tuple(info.name for info in upto)


@functools.partial(jax.jit, static_argnames=("layers",))
def _patterns(model: Model, images: jax.Array, layers: tuple[str, ...]):
    acts = model.apply(model.params, images, layers)
    return {
        n: (a.mean(axis=(1, 2)) if a.ndim == 4 else a.reshape(a.shape[0], -1))
        for n, a in acts.items()
    }


def activation_patterns(
    model: Model, images: Any, layers: Sequence[str] | str
) -> dict[str, np.ndarray]:
    """Activation patterns of ``images`` (N, H, W, 3) in [0, 1] at ``layers``.

    One jitted forward. Returns ``{layer: float32 (N, C_layer)}``: spatial layers
    averaged over positions, fully connected layers as they are.
    """
    if isinstance(layers, str):
        layers = (layers,)
    layers = tuple(model.resolve(n) for n in layers)
    images = _as_images(images, model, "images")
    return {n: np.asarray(v) for n, v in _patterns(model, images, layers).items()}


def _as_images(images: Any, model: Model, what: str) -> jax.Array:
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[0] == 0:
        raise InputError(f"{what} is empty; pass at least one image (N, H, W, 3).")
    try:
        check_images(arr, model.input)
    except InputError as e:
        raise InputError(f"{what}: {e}") from None
    return jnp.asarray(arr, jnp.float32)


# --- the check -------------------------------------------------------------------------

PATTERNS = ("raw", "standardized")


def _standardize(vis: tuple, top: tuple, rnd: tuple) -> tuple[tuple, tuple, tuple]:
    """z-score every layer's patterns by the random images' channel mean and standard
    deviation (a channel with no spread among them becomes 0 in every set)."""
    out = ([], [], [])
    for layer in zip(vis, top, rnd):
        mean = layer[2].mean(axis=0)
        std = layer[2].std(axis=0)
        safe = jnp.where(std > 0, std, 1.0)
        for dst, src in zip(out, layer):
            dst.append(jnp.where(std > 0, (src - mean) / safe, 0.0))
    return tuple(tuple(o) for o in out)


@jax.jit
def _curves(vis: tuple, top: tuple, rnd: tuple):
    """The three curves from per-layer pattern tuples (tuples, not dicts: a jitted
    dict comes back in sorted-key order, which is not the forward order)."""
    out_vis, out_rnd, out_top = [], [], []
    for pv, pt, pr in zip(vis, top, rnd):
        zv = _standardized_ranks(pv)
        zt = _standardized_ranks(pt)
        zr = _standardized_ranks(pr)
        c = zt.shape[-1]
        k = zt.shape[0]
        tt = zt @ zt.T / c
        out_vis.append(jnp.mean(zv @ zt.T / c))
        out_rnd.append(jnp.mean(zr @ zt.T / c))
        out_top.append((jnp.sum(tt) - jnp.trace(tt)) / (k * (k - 1)))
    return jnp.stack(out_vis), jnp.stack(out_rnd), jnp.stack(out_top)


def _check_layers(model: Model, layer: str, layers) -> tuple[str, tuple[str, ...]]:
    name = model.resolve(layer)
    if layers is None:
        return name, default_layers(model, name)
    if isinstance(layers, str):
        layers = (layers,)
    chosen = tuple(dict.fromkeys(model.resolve(n) for n in layers))
    if not chosen:
        raise InputError("layers is empty; pass at least one layer name or None for the default.")
    order = model.layer_names
    deepest = order.index(name)
    for n in chosen:
        if order.index(n) > deepest:
            raise InputError(
                f"layer {n!r} comes after the unit's layer {name!r}; the check compares "
                f"layers at or below it, so drop {n!r} from layers."
            )
    return name, tuple(sorted(chosen, key=order.index))


def path_similarity(
    model: Model,
    layer: str,
    unit: int,
    visualizations: Any,
    top: Any,
    random: Any,
    *,
    layers: Sequence[str] | None = None,
    patterns: str = "raw",
    tolerance: float = 0.0,
) -> PathSimilarity:
    """Path similarity of a unit's visualizations (see the module docstring).

    Args:
      model: the network.
      layer: the unit's layer (name or alias).
      unit: the channel index.
      visualizations: float (V, H, W, 3) in [0, 1], the unit's visualizations.
      top: float (K, H, W, 3) in [0, 1], its top natural images (K >= 2).
      random: float (R, H, W, 3) in [0, 1], random natural images.
      layers: the layers compared, at or below ``layer`` (default
        :func:`default_layers`).
      patterns: ``"raw"`` channel means, or ``"standardized"`` by the random images'
        channel statistics (needs at least 2 random images).
      tolerance: >= 0; pass when ``s_vis >= s_random - tolerance`` at every layer.

    Returns:
      A :class:`PathSimilarity` (curves, pass/fail, ``summary()``).

    Raises:
      InputError: unknown layer or a layer after ``layer``; unit out of range; image
        sets of the wrong shape, empty, or fewer than two top images; unknown
        ``patterns``, or one random image with ``"standardized"``.
    """
    if patterns not in PATTERNS:
        raise InputError(f"patterns must be one of {', '.join(PATTERNS)}, got {patterns!r}.")
    if not np.isfinite(tolerance) or tolerance < 0:
        raise InputError(f"tolerance must be a finite number >= 0, got {tolerance!r}.")
    if not isinstance(model, Model):
        raise InputError(f"path_similarity needs a cnnvis_jax Model, got {type(model).__name__}.")
    name, compared = _check_layers(model, layer, layers)
    model.check_unit(name, unit)
    vis = _as_images(visualizations, model, "visualizations")
    tops = _as_images(top, model, "top images")
    rnd = _as_images(random, model, "random images")
    if tops.shape[0] < 2:
        raise InputError(
            f"path similarity needs at least 2 top images (their similarity to each other "
            f"is a curve), got {tops.shape[0]}; pass more top images."
        )
    if patterns == "standardized" and rnd.shape[0] < 2:
        raise InputError(
            "standardized patterns need at least 2 random images (their channel spread "
            f"is the scale), got {rnd.shape[0]}; pass more random images or patterns='raw'."
        )
    forward = tuple(dict.fromkeys((*compared, name)))
    pv, pt, pr = (_patterns(model, x, forward) for x in (vis, tops, rnd))
    sets = tuple(tuple(p[n] for n in compared) for p in (pv, pt, pr))
    if patterns == "standardized":
        sets = _standardize(*sets)
    s_vis, s_rnd, s_top = _curves(*sets)
    s_vis, s_rnd, s_top = (np.asarray(s, np.float64) for s in (s_vis, s_rnd, s_top))
    failing = tuple(n for n, v, r in zip(compared, s_vis, s_rnd) if not v >= r - tolerance)
    return PathSimilarity(
        layer=name,
        unit=int(unit),
        layers=compared,
        s_vis=s_vis,
        s_random=s_rnd,
        s_top=s_top,
        passed=not failing,
        failing_layers=failing,
        unit_activation={
            "visualizations": float(np.mean(pv[name][:, int(unit)])),
            "top": float(np.mean(pt[name][:, int(unit)])),
            "random": float(np.mean(pr[name][:, int(unit)])),
        },
        counts={"visualizations": vis.shape[0], "top": tops.shape[0], "random": rnd.shape[0]},
        patterns=patterns,
        tolerance=float(tolerance),
    )


def top_images(
    model: Model, layer: str, unit: int, images: Any, k: int, *, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` images of ``images`` (N, H, W, 3) in [0, 1] with the largest channel
    mean of the unit (ties: the smaller index first).

    The forward runs in batches of ``batch_size`` (the last one padded, so one
    compiled program serves every batch). Returns ``(images (k, H, W, 3), indices
    int64 (k,), values float32 (k,))``, values in decreasing order.

    Raises:
      InputError: fewer than ``k`` images, ``k`` < 1, unit or layer invalid.
    """
    name = model.resolve(layer)
    model.check_unit(name, unit)
    arr = np.asarray(images)
    if int(k) < 1:
        raise InputError(f"k must be at least 1, got {k}.")
    if arr.ndim != 4 or arr.shape[0] < int(k):
        count = arr.shape[0] if arr.ndim == 4 else 0
        raise InputError(
            f"need at least k={int(k)} natural images to pick the top {int(k)}, got {count}; "
            "pass more natural images or a smaller k."
        )
    _as_images(arr[:1], model, "natural images")
    n = arr.shape[0]
    size = min(int(batch_size), n)
    values = []
    for start in range(0, n, size):
        chunk = arr[start : start + size].astype(np.float32)
        pad = size - chunk.shape[0]
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        values.append(np.asarray(_patterns(model, jnp.asarray(chunk), (name,))[name])[: size - pad])
    score = np.concatenate(values)[:, int(unit)]
    order = np.lexsort((np.arange(n), -score))[: int(k)]
    return arr[order].astype(np.float32), order.astype(np.int64), score[order].astype(np.float32)


def path_check(
    model: Model,
    layer: str,
    unit: int,
    visualizations: Any,
    natural: Any,
    *,
    k: int = 16,
    n_random: int = 64,
    key: jax.Array | int = 0,
    layers: Sequence[str] | None = None,
    patterns: str = "raw",
    tolerance: float = 0.0,
) -> PathSimilarity:
    """:func:`path_similarity` with the natural image sets drawn from one pool.

    The top ``k`` of ``natural`` (N, H, W, 3) by the unit's channel mean are the top
    images; ``n_random`` images drawn without replacement (``key``) from the other
    N - k are the random ones.

    Raises:
      InputError: as :func:`path_similarity`; N < k + n_random.
    """
    arr = np.asarray(natural)
    count = arr.shape[0] if arr.ndim == 4 else 0
    if int(n_random) < 1:
        raise InputError(f"n_random must be at least 1, got {n_random}.")
    if count < int(k) + int(n_random):
        raise InputError(
            f"need at least k + n_random = {int(k) + int(n_random)} natural images "
            f"(k={int(k)} top, {int(n_random)} random), got {count}; pass more natural "
            "images or lower k / n_random."
        )
    top, index, _ = top_images(model, layer, unit, arr, k)
    rest = np.setdiff1d(np.arange(count), index)
    pick = np.asarray(jax.random.permutation(raw_key(key), rest.shape[0]))[: int(n_random)]
    random = arr[np.sort(rest[pick])].astype(np.float32)
    return path_similarity(
        model,
        layer,
        unit,
        visualizations,
        top,
        random,
        layers=layers,
        patterns=patterns,
        tolerance=tolerance,
    )


# --- figure ----------------------------------------------------------------------------


def plot_path_similarity(
    results: PathSimilarity | Sequence[PathSimilarity],
    path: str | os.PathLike,
    *,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
) -> Path:
    """Draw the three curves of every result (one panel per unit) into a PNG at
    ``path``, written atomically (:func:`cnnvis_jax.report.files.save_figure`).

    Each panel: ``s_top`` (top images vs each other), ``s_vis`` (visualizations vs top)
    and ``s_random`` (random natural vs top) over the layers, layers where the check
    fails shaded; the title says PASS or FAIL. Returns the path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnvis_jax.report.files import save_figure

    if isinstance(results, PathSimilarity):
        results = [results]
    results = list(results)
    if not results:
        raise InputError("plot_path_similarity needs at least one result.")
    if titles is not None and len(titles) != len(results):
        raise InputError(
            f"titles has {len(titles)} entries for {len(results)} results; pass one per result."
        )
    lowest = min(float(np.min([r.s_vis, r.s_random, r.s_top])) for r in results)
    ncols = max(1, min(int(ncols), len(results)))
    nrows = -(-len(results) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False, sharey=True
    )
    for i, ax in enumerate(axes.ravel()):
        if i >= len(results):
            ax.axis("off")
            continue
        res = results[i]
        x = np.arange(len(res.layers))
        for j, name in enumerate(res.layers):
            if name in res.failing_layers:
                ax.axvspan(j - 0.5, j + 0.5, color="tab:red", alpha=0.12, lw=0)
        ax.plot(x, res.s_top, "o-", color="tab:green", label="top vs top")
        ax.plot(x, res.s_vis, "s-", color="tab:blue", label="visualization vs top")
        ax.plot(x, res.s_random, "^--", color="tab:gray", label="random vs top")
        ax.set_xticks(x, res.layers, rotation=60, ha="right", fontsize=7)
        verdict = "PASS" if res.passed else "FAIL"
        title = titles[i] if titles is not None else f"{res.layer}:{res.unit}"
        ax.set_title(f"{title}  [{verdict}]", fontsize=9)
        ax.set_ylim(min(-0.2, lowest - 0.05), 1.02)
        ax.grid(alpha=0.3)
        if i % ncols == 0:
            ax.set_ylabel("mean Spearman rho")
    axes.ravel()[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)
