"""Sanity checks for saliency maps and activation maximization (Adebayo et al. 2018).

A visualization that explains a trained model should depend on what the model
learned. Two randomization tests check that:

* **Model parameter randomization** (:func:`cascading_randomization`): the weights
  of the parameterized layers are re-drawn from their initial distribution from the
  top layer down, one layer at a time, cumulatively (after step ``k`` the top ``k``
  layers are random; ``cumulative=False`` re-draws one layer at a time instead,
  Adebayo's *independent* randomization). After each step every method's outputs on
  a fixed set of images are compared with the trained model's.
* **Data randomization** (:func:`data_randomization`): the outputs of a normally
  trained model are compared with those of the same architecture trained on
  shuffled labels (``TrainConfig(shuffle_labels=True)``, see
  :mod:`cnnvis_jax.train`).

A method whose outputs barely change in either test does not explain the model.

Methods (:data:`METHODS`):

* ``gradient``, ``deconvnet``, ``guided``: the saliency map of an image is the
  gradient of the target unit (default: the class logit the *trained* model
  predicts for the image; the same target on every randomized model) with respect
  to the image in [0, 1], under that backward rule at every ReLU
  (:func:`cnnvis_jax.rules.model_with_rules`; max-pools keep their switches). The
  colour axis is reduced as in Adebayo et al.'s code: the *signed* map is the sum
  over the three channels, the *absolute* map the sum of the channels' absolute
  values.
* ``am``: activation-maximization images of the target classes rendered with
  :func:`cnnvis_jax.am.render` (same recipe, steps and key on every model). An
  image's deviation from its own per-channel mean plays the role of the gradient:
  the signed map is the channel sum of that deviation, the absolute map the
  channel sum of its absolute value.

Metrics, per image (per rendered class for ``am``), then averaged over images
(``nanmean``):

* ``spearman``: Spearman rank correlation of the signed maps (ties get average
  ranks, as ``scipy.stats.spearmanr``);
* ``spearman_abs``: Spearman rank correlation of the absolute maps;
* ``ssim``: structural similarity (Wang et al. 2004) of the absolute maps after
  Adebayo's visualization normalization (:func:`normalize_map`: minimum to 0, 99th
  percentile to 1, clipped), computed by :func:`ssim`: Gaussian window with sigma
  1.5 truncated at 3.5 sigma (11x11), ``K1 = 0.01``, ``K2 = 0.03``, data range 1,
  population (co)variances, mean over the positions where the window fits inside
  the map (``skimage.metrics.structural_similarity(a, b, data_range=1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``).

A Spearman correlation is undefined (NaN) when one map is constant (e.g. a
randomized network whose gradient is zero everywhere); means skip those images and
:meth:`SanityResult.summary` counts them as ``undefined``.

Re-drawing a layer (:func:`randomize_layers`): the parameter leaves of a layer are
those whose path in ``model.params`` starts with the layer's name or one of its
aliases (``params["conv1"]["kernel"]`` belongs to ``conv1``; ``features.0.kernel``
to the layer aliased ``features.0``). Each floating leaf gets a fresh draw of its
initializer: leaves of rank >= 2 (kernels, HWIO or (in, out) as in Flax) a He
normal draw ``N(0, 2 / fan_in)`` with ``fan_in`` the product of all axes but the
last; rank <= 1 leaves their initial value, ones for normalization ``scale`` and
``var`` leaves and zeros for everything else (biases, ``mean``). The draw for the
layer at catalog position ``i`` uses ``fold_in(key, i)``, so a layer gets the same
new weights at every step of a cascade and for the same key.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.errors import InputError, did_you_mean
from cnnvis_jax.evaluate.path import ranks
from cnnvis_jax.model import Model, check_images
from cnnvis_jax.prng import raw_key

__all__ = [
    "METHODS",
    "METRICS",
    "RULE_METHODS",
    "SSIM_SIGMA",
    "SSIM_TRUNCATE",
    "SaliencyMaps",
    "SanityResult",
    "cascading_randomization",
    "data_randomization",
    "layer_parameters",
    "normalize_map",
    "parameterized_layers",
    "randomize_layers",
    "saliency",
    "spearman",
    "ssim",
]

RULE_METHODS = ("gradient", "deconvnet", "guided")
"""Methods that are input gradients under a backward rule of :mod:`cnnvis_jax.rules`."""

METHODS = (*RULE_METHODS, "am")
"""Valid method names."""

METRICS = ("spearman", "spearman_abs", "ssim")
"""Per-image similarity measures between a method's outputs on two models."""

SSIM_SIGMA = 1.5
"""Standard deviation (pixels) of SSIM's Gaussian window (Wang et al. 2004)."""

SSIM_TRUNCATE = 3.5
"""SSIM's Gaussian window radius in standard deviations (11x11 taps at sigma 1.5)."""

SSIM_K1, SSIM_K2 = 0.01, 0.03
"""SSIM's stabilizing constants: ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2`` (L the data range)."""

NORMALIZE_PERCENTILE = 99.0
"""Percentile of the absolute map mapped to 1 by :func:`normalize_map` (Adebayo et al.)."""

_ONES = ("scale", "var")
"""Rank <= 1 leaf names whose initial value is one (normalization layers)."""


# --- layers and their parameters ---------------------------------------------------------


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _owners(model: Model) -> tuple[list[tuple[str, ...]], list[str | None]]:
    """Per parameter leaf (in ``tree_flatten`` order): its path names, and the canonical
    catalog layer that owns it (the longest path prefix that is a name or alias)."""
    names: dict[str, str] = {}
    for layer in model.layers:
        for name in (layer.name, *layer.aliases):
            names.setdefault(name, layer.name)
    paths, owners = [], []
    for path, _ in jax.tree_util.tree_flatten_with_path(model.params)[0]:
        parts = tuple(_key_name(k) for k in path)
        owner = None
        for j in range(len(parts), 0, -1):
            owner = names.get(".".join(parts[:j]))
            if owner is not None:
                break
        paths.append(parts)
        owners.append(owner)
    return paths, owners


def _is_float(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def layer_parameters(model: Model) -> dict[str, tuple[str, ...]]:
    """Parameterized catalog layers (bottom to top) and the dotted paths of their
    floating parameter leaves, e.g. ``{"conv1": ("conv1.bias.value", ...), ...}``."""
    paths, owners = _owners(model)
    leaves = jax.tree_util.tree_leaves(model.params)
    found: dict[str, list[str]] = {}
    for parts, owner, leaf in zip(paths, owners, leaves):
        if owner is not None and _is_float(leaf):
            found.setdefault(owner, []).append(".".join(parts))
    return {n: tuple(found[n]) for n in model.layer_names if n in found}


def parameterized_layers(model: Model) -> tuple[str, ...]:
    """Catalog layers that own floating parameters, bottom to top (see the module
    docstring for how leaves are matched to layers)."""
    return tuple(layer_parameters(model))


def _check_layers(model: Model, layers: Sequence[str] | str | None) -> tuple[str, ...]:
    """``layers`` as canonical names, top to bottom; every one must own parameters."""
    owned = parameterized_layers(model)
    if not owned:
        raise InputError(
            f"no parameter of model {model.name!r} belongs to a catalog layer (a leaf belongs "
            "to a layer when its path starts with the layer's name or alias); name the "
            "parameter groups after the layers (params['fc'] for layer 'fc')."
        )
    if layers is None:
        return owned[::-1]
    if isinstance(layers, str):
        layers = (layers,)
    if len(layers) == 0:
        raise InputError(f"layers is empty; pass None for every parameterized layer: {owned}.")
    canonical = []
    for name in layers:
        c = model.resolve(name)
        if c not in owned:
            raise InputError(
                f"layer {name!r} of model {model.name!r} has no parameters to randomize; "
                + did_you_mean(name, owned)
            )
        if c not in canonical:
            canonical.append(c)
    order = {n: i for i, n in enumerate(model.layer_names)}
    return tuple(sorted(canonical, key=lambda n: -order[n]))


def _initial(key: jax.Array, name: str, leaf: jax.Array) -> jax.Array:
    """A fresh draw of a leaf's initializer (see the module docstring)."""
    leaf = jnp.asarray(leaf)
    if leaf.ndim >= 2:
        fan_in = int(np.prod(leaf.shape[:-1]))
        std = np.sqrt(2.0 / max(fan_in, 1))
        return (std * jax.random.normal(key, leaf.shape, jnp.float32)).astype(leaf.dtype)
    value = 1.0 if name in _ONES else 0.0
    return jnp.full(leaf.shape, value, leaf.dtype)


def randomize_layers(
    model: Model,
    layers: Sequence[str] | str,
    key: Any = 0,
    *,
    init: Callable[[jax.Array, str, jax.Array], jax.Array] | None = None,
) -> Model:
    """``model`` with the parameters of ``layers`` re-drawn; every other leaf untouched.

    Args:
      model: the network.
      layers: layer names or aliases that own parameters (:func:`parameterized_layers`).
      key: PRNG key or int seed. The layer at catalog position ``i`` draws from
        ``fold_in(key, i)`` and its ``j``-th leaf from ``fold_in(fold_in(key, i), j)``,
        so the same key gives the same weights whatever other layers are re-drawn.
      init: ``init(key, leaf_name, leaf) -> new leaf`` (same shape and dtype) in place
        of the default (He normal for rank >= 2, initial values otherwise);
        ``leaf_name`` is the last path name that is not ``value`` (``"kernel"``).

    Returns:
      The model with new params (same structure, shapes and dtypes).

    Raises:
      InputError: an unknown layer, or one without parameters.
    """
    chosen = set(_check_layers(model, layers))
    base = raw_key(key)
    paths, owners = _owners(model)
    leaves, treedef = jax.tree_util.tree_flatten(model.params)
    index = {n: i for i, n in enumerate(model.layer_names)}
    draw = init or _initial
    counts: dict[str, int] = {}
    new = []
    for parts, owner, leaf in zip(paths, owners, leaves):
        if owner not in chosen or not _is_float(leaf):
            new.append(leaf)
            continue
        j = counts.get(owner, 0)
        counts[owner] = j + 1
        leaf_key = jax.random.fold_in(jax.random.fold_in(base, index[owner]), j)
        name = next((p for p in reversed(parts) if p != "value"), "")
        value = draw(leaf_key, name, leaf)
        if np.shape(value) != np.shape(leaf):
            raise InputError(
                f"init returned shape {np.shape(value)} for {'.'.join(parts)} of shape "
                f"{np.shape(leaf)}; return an array of the leaf's shape."
            )
        new.append(jnp.asarray(value, leaf.dtype))
    return model.replace(params=jax.tree_util.tree_unflatten(treedef, new))


# --- similarity measures -----------------------------------------------------------------


def _pearson(a: jax.Array, b: jax.Array) -> jax.Array:
    a = a - jnp.mean(a)
    b = b - jnp.mean(b)
    den = jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))
    return jnp.where(den > 0, jnp.sum(a * b) / jnp.where(den > 0, den, 1.0), jnp.nan)


def _spearman_pairs(a: jax.Array, b: jax.Array) -> jax.Array:
    """(N, P) x (N, P) -> (N,) rank correlations (NaN where a map is constant or holds
    a non-finite value)."""

    def one(x, y):
        finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))
        return jnp.where(finite, _pearson(ranks(x), ranks(y)), jnp.nan)

    return jax.vmap(one)(a, b)


def _gaussian_window(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-(x**2) / (2.0 * sigma**2))
    return (w / w.sum()).astype(np.float32)


def _valid_filter(x: jax.Array, w: np.ndarray) -> jax.Array:
    """Separable 'valid' filtering of (N, H, W) with the 1-D window ``w`` on both axes."""
    k = len(w)
    h, wd = x.shape[1] - k + 1, x.shape[2] - k + 1
    rows = sum(float(w[i]) * x[:, i : i + h, :] for i in range(k))
    return sum(float(w[i]) * rows[:, :, i : i + wd] for i in range(k))


def _ssim_pairs(a: jax.Array, b: jax.Array, data_range: float) -> jax.Array:
    """(N, H, W) x (N, H, W) -> (N,) mean SSIM (see the module docstring)."""
    w = _gaussian_window(SSIM_SIGMA, SSIM_TRUNCATE)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    # (co)variances of values shifted by each map's mean: the same numbers, with less
    # float32 cancellation in E[x^2] - E[x]^2 (exactly 0 on constant maps)
    shift_a = jnp.mean(a, axis=(1, 2), keepdims=True)
    shift_b = jnp.mean(b, axis=(1, 2), keepdims=True)
    a, b = a - shift_a, b - shift_b
    m_a, m_b = _valid_filter(a, w), _valid_filter(b, w)
    var_a = _valid_filter(a * a, w) - m_a * m_a
    var_b = _valid_filter(b * b, w) - m_b * m_b
    cov = _valid_filter(a * b, w) - m_a * m_b
    mu_a, mu_b = m_a + shift_a, m_b + shift_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return jnp.mean(num / den, axis=(1, 2))


def _ssim_window() -> int:
    return 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1


def _check_pairs(a: Any, b: Any, what: str, min_rank: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise InputError(
            f"{what} needs two arrays of one shape (N, ...), got {a.shape} and {b.shape}."
        )
    if a.ndim < min_rank or a.shape[0] == 0 or a[0].size == 0:
        raise InputError(
            f"{what} needs a non-empty batch of maps with the pair axis first, got shape "
            f"{a.shape}; add a batch axis with x[None] for one map."
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError(f"{what} got non-finite values; clean the maps (np.nan_to_num) first.")
    return a, b


def spearman(a: Any, b: Any) -> np.ndarray:
    """Spearman rank correlation of each pair of maps.

    Args:
      a, b: float arrays (N, ...) of one shape; pair ``n`` is ``(a[n], b[n])``,
        flattened.

    Returns:
      float32 (N,): the Pearson correlation of the ranks (ties averaged); NaN where
      one of the two maps is constant.
    """
    a, b = _check_pairs(a, b, "spearman", 2)
    return np.asarray(_spearman_jit(a.reshape(len(a), -1), b.reshape(len(b), -1)))


def ssim(a: Any, b: Any, *, data_range: float = 1.0) -> np.ndarray:
    """Mean structural similarity of each pair of maps (see the module docstring).

    Args:
      a, b: float arrays (N, H, W) of one shape, H and W at least 11 (the window).
      data_range: L, the value range of the maps (1 for maps in [0, 1]).

    Returns:
      float32 (N,) in [-1, 1]; 1 for identical maps.
    """
    a, b = _check_pairs(a, b, "ssim", 3)
    if a.ndim != 3:
        raise InputError(f"ssim needs (N, H, W) maps, got shape {a.shape}; reduce colour first.")
    win = _ssim_window()
    if min(a.shape[1:]) < win:
        raise InputError(
            f"maps of {a.shape[1]}x{a.shape[2]} are smaller than SSIM's {win}x{win} window; "
            f"use maps at least {win} pixels on a side."
        )
    if not data_range > 0:
        raise InputError(f"data_range must be > 0, got {data_range}.")
    return np.asarray(_ssim_jit(a, b, float(data_range)))


def _normalize(x: jax.Array) -> jax.Array:
    """(N, H, W) absolute maps -> [0, 1] (Adebayo et al.'s visualization scaling)."""
    flat = x.reshape(x.shape[0], -1)
    low = jnp.min(flat, axis=1)
    high = jnp.percentile(flat, NORMALIZE_PERCENTILE, axis=1)
    span = high - low
    scaled = (x - low[:, None, None]) / jnp.where(span > 0, span, 1.0)[:, None, None]
    return jnp.where(span[:, None, None] > 0, jnp.clip(scaled, 0.0, 1.0), 0.0)


def normalize_map(maps: Any) -> np.ndarray:
    """Absolute maps (N, H, W) scaled to [0, 1] per map: the minimum goes to 0, the 99th
    percentile to 1, values above are clipped; a constant map becomes all zeros."""
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise InputError(f"normalize_map needs maps of shape (N, H, W), got {maps.shape}.")
    return np.asarray(_normalize_jit(maps))


_spearman_jit = jax.jit(_spearman_pairs)
_ssim_jit = jax.jit(_ssim_pairs, static_argnums=2)
_normalize_jit = jax.jit(_normalize)


@jax.jit
def _compare(ref_signed, ref_abs, signed, absolute):
    """Per-image (spearman, spearman_abs, ssim) of two sets of (N, H, W) maps."""
    n = ref_signed.shape[0]
    sp = _spearman_pairs(ref_signed.reshape(n, -1), signed.reshape(n, -1))
    sp_abs = _spearman_pairs(ref_abs.reshape(n, -1), absolute.reshape(n, -1))
    ss = _ssim_pairs(_normalize(ref_abs), _normalize(absolute), 1.0)
    return sp, sp_abs, ss


# --- method outputs ----------------------------------------------------------------------


class SaliencyMaps(NamedTuple):
    """One method's outputs on a batch (numpy arrays).

    Attributes:
      signed: float32 (N, H, W), the channel sum of the gradient (``am``: of the
        image's deviation from its per-channel mean).
      absolute: float32 (N, H, W), the channel sum of absolute values.
      targets: int32 (N,), the target unit (class) of each map.
      images: float32 (N, H, W, 3) for ``am`` (the rendered images), else None.
    """

    signed: np.ndarray
    absolute: np.ndarray
    targets: np.ndarray
    images: np.ndarray | None = None


def _target_layer(model: Model, layer: str | None) -> str:
    if layer is None:
        if model.logits_layer is None:
            raise InputError(
                f"model {model.name!r} has no logits layer to take target classes from; "
                "pass layer='NAME' (a layer whose channels are the target units)."
            )
        return model.logits_layer
    return model.resolve(layer)


def _check_images(model: Model, images: Any) -> np.ndarray:
    if images is None or np.size(images) == 0:
        raise InputError(
            "images is empty; pass at least one image as float (N, H, W, 3) in [0, 1]."
        )
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    check_images(images, model.input)
    return images.astype(np.float32)


def _check_targets(model: Model, layer: str, targets: Any, n: int | None) -> np.ndarray:
    array = np.asarray(targets)
    if array.ndim == 0:
        array = array[None]
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(
            f"classes must be a non-empty 1-D integer array, got shape {array.shape} and "
            f"dtype {array.dtype}."
        )
    if n is not None and array.size != n:
        raise InputError(
            f"classes has {array.size} entries for {n} images; give one target per image."
        )
    for unit in np.unique(array):
        model.check_unit(layer, int(unit))
    return array.astype(np.int32)


def _unit_scores(act: jax.Array) -> jax.Array:
    """(N, C) scores of a layer's channels; spatial layers are averaged over positions."""
    return act if act.ndim == 2 else act.reshape(act.shape[0], -1, act.shape[-1]).mean(axis=1)


@functools.partial(jax.jit, static_argnames=("layer",))
def _predict(model: Model, images: jax.Array, *, layer: str) -> jax.Array:
    return jnp.argmax(_unit_scores(model.apply(model.params, images, (layer,))[layer]), -1)


@functools.partial(jax.jit, static_argnames=("layer",))
def _saliency_core(ruled: Model, images: jax.Array, targets: jax.Array, *, layer: str):
    """(signed, absolute) channel sums of the ruled input gradient, each (N, H, W)."""

    def total(x):
        scores = _unit_scores(ruled.apply(ruled.params, x, (layer,))[layer])
        return jnp.sum(jnp.take_along_axis(scores, targets[:, None], axis=1))

    g = jax.grad(total)(images)
    return jnp.sum(g, axis=-1), jnp.sum(jnp.abs(g), axis=-1)


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _padded(array: np.ndarray, size: int) -> np.ndarray:
    if len(array) == size:
        return array
    pad = np.repeat(array[-1:], size - len(array), axis=0)
    return np.concatenate([array, pad])


def _top_units(model: Model, images: np.ndarray, layer: str, batch_size: int) -> np.ndarray:
    """The top unit of ``layer`` per image (int32 (N,)), in fixed-size batches."""
    size = min(batch_size, len(images))
    out = []
    for start, stop in _batches(len(images), size):
        chunk = _padded(images[start:stop], size)
        out.append(np.asarray(_predict(model, jnp.asarray(chunk), layer=layer))[: stop - start])
    return np.concatenate(out).astype(np.int32)


def _rule_maps(model: Model, images: np.ndarray, targets: np.ndarray, rule: str, layer: str,
               batch_size: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    from cnnvis_jax.deconv.projection import ruled_model

    ruled = ruled_model(model, rule, "switches")
    size = min(batch_size, len(images))
    signed, absolute = [], []
    for start, stop in _batches(len(images), size):
        s, a = _saliency_core(
            ruled,
            jnp.asarray(_padded(images[start:stop], size)),
            jnp.asarray(_padded(targets[start:stop], size)),
            layer=layer,
        )
        signed.append(np.asarray(s)[: stop - start])
        absolute.append(np.asarray(a)[: stop - start])
    return np.concatenate(signed), np.concatenate(absolute)


def _am_objectives(model: Model, layer: str, classes: np.ndarray):
    from cnnvis_jax.am import objectives as obj

    if model.layer(layer).spatial:
        return [obj.channel(layer, int(c)) for c in classes]
    return [obj.class_logit(int(c), layer) for c in classes]


def _am_maps(model: Model, classes: np.ndarray, layer: str, recipe: Any, steps: int | None,
             key: Any) -> SaliencyMaps:  # fmt: skip
    from cnnvis_jax.am.render import render

    out = render(model, _am_objectives(model, layer, classes), recipe, key=key, steps=steps)
    images = np.asarray(out.images[:, 0], np.float32)  # (U, H, W, 3)
    centred = images - images.mean(axis=(1, 2), keepdims=True)
    return SaliencyMaps(centred.sum(-1), np.abs(centred).sum(-1), classes.astype(np.int32), images)


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; " + did_you_mean(str(method), METHODS))
    return method


def saliency(
    model: Model,
    images: Any,
    method: str,
    *,
    classes: Any = None,
    layer: str | None = None,
    batch_size: int = 32,
    am_recipe: Any = "lucid",
    am_steps: int | None = 64,
    am_key: Any = 0,
) -> SaliencyMaps:
    """One method's maps for ``images`` (see the module docstring).

    Args:
      model: the network.
      images: float (N, H, W, 3) in [0, 1] at the model's input size (uint8 is
        divided by 255). For ``am`` only their count matters when ``classes`` is
        None (the rendered classes are then the distinct predicted ones).
      method: one of :data:`METHODS`.
      classes: int (N,) target units (for ``am``: (U,) classes to render); default
        the top unit of ``layer`` per image on ``model``.
      layer: the layer of the target units; default the logits layer. A spatial
        layer's unit is its mean over positions.
      batch_size: images per compiled gradient call (the last batch is padded).
      am_recipe, am_steps, am_key: :func:`cnnvis_jax.am.render`'s recipe (a
        :class:`~cnnvis_jax.am.Recipe` or preset name), step count (None: the
        recipe's) and key.

    Returns:
      :class:`SaliencyMaps` with (N, H, W) maps ((U, H, W) for ``am``).
    """
    _check_method(method)
    target = _target_layer(model, layer)
    if method == "am":
        if classes is None:
            x = _check_images(model, images)
            classes = np.unique(_top_units(model, x, target, batch_size))
        classes = _check_targets(model, target, classes, None)
        return _am_maps(model, classes, target, am_recipe, am_steps, am_key)
    x = _check_images(model, images)
    if classes is None:
        classes = _top_units(model, x, target, batch_size)
    targets = _check_targets(model, target, classes, len(x))
    signed, absolute = _rule_maps(model, x, targets, method, target, batch_size)
    return SaliencyMaps(signed, absolute, targets)


# --- the result --------------------------------------------------------------------------


class SanityResult(NamedTuple):
    """Outputs of a randomization test (numpy arrays; a pytree).

    ``S`` steps: step 0 is the reference (the trained model compared with itself),
    step ``s`` a randomized or shuffled-label model. ``N_m`` is the number of maps of
    method ``m`` (images, or rendered classes for ``am``).

    Attributes:
      kind: ``"cascading"``, ``"independent"`` or ``"data"``.
      steps: S labels: ``"original"``, then the lowest randomized layer of each step
        (the x axis "randomized down to layer"); for ``data``: ``"trained"`` and the
        other model's label (``"shuffled labels"``).
      randomized: per step, the layers re-drawn (empty for the reference and for
        ``data``).
      methods: the methods, in order.
      spearman, spearman_abs, ssim: method -> float32 (S, N_m) per-map measures.
      examples: method -> float32 (S, K, H, W), normalized absolute maps of the first
        K maps (what :meth:`save` draws).
      inputs: float32 (K, H, W, 3), the first K images.
      am_images: float32 (S, U, H, W, 3), the rendered images (empty without ``am``).
      targets: int32 (N,), the target unit per image (from the trained model).
      am_classes: int32 (U,), the rendered classes (empty without ``am``).
      layer: the layer of the target units.
      models: names of the compared models (trained, other).
    """

    kind: str
    steps: tuple[str, ...]
    randomized: tuple[tuple[str, ...], ...]
    methods: tuple[str, ...]
    spearman: dict[str, np.ndarray]
    spearman_abs: dict[str, np.ndarray]
    ssim: dict[str, np.ndarray]
    examples: dict[str, np.ndarray]
    inputs: np.ndarray
    am_images: np.ndarray
    targets: np.ndarray
    am_classes: np.ndarray
    layer: str
    models: tuple[str, str]

    def curves(self) -> dict[str, dict[str, np.ndarray]]:
        """method -> metric -> float64 (S,): the mean over maps at each step (NaN maps
        skipped; NaN when every map of a step is undefined)."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for m in self.methods:
            out[m] = {}
            for metric in METRICS:
                values = np.asarray(getattr(self, metric)[m], np.float64)
                finite = np.isfinite(values)
                count = finite.sum(axis=1)
                total = np.where(finite, values, 0.0).sum(axis=1)
                out[m][metric] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready record: per method, per step, the mean of each metric and the
        number of maps whose Spearman correlation is undefined."""
        curves = self.curves()
        table = {}
        for m in self.methods:
            rows = []
            for s, label in enumerate(self.steps):
                undefined = int(
                    np.sum(~np.isfinite(self.spearman[m][s]))
                    + np.sum(~np.isfinite(self.spearman_abs[m][s]))
                )
                rows.append({
                    "step": label,
                    "randomized": list(self.randomized[s]),
                    **{metric: float(curves[m][metric][s]) for metric in METRICS},
                    "maps": int(self.spearman[m].shape[1]),
                    "undefined": undefined,
                })  # fmt: skip
            table[m] = rows
        return {
            "kind": self.kind,
            "models": list(self.models),
            "layer": self.layer,
            "steps": list(self.steps),
            "methods": list(self.methods),
            "images": int(len(self.targets)),
            "targets": self.targets.tolist(),
            "am_classes": self.am_classes.tolist(),
            "curves": table,
        }

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``results.json`` (:meth:`summary` plus the per-map measures),
        ``sanity.png`` (one curve per method and metric, x axis: randomized down to
        layer) and ``maps.png`` (example maps per step; absent with ``examples=0`` and
        no ``am``) into ``out_dir``; returns the folder."""
        from cnnvis_jax.report.files import write_json

        out = Path(out_dir)
        record = self.summary()
        record["per_map"] = {
            m: {metric: getattr(self, metric)[m] for metric in METRICS} for m in self.methods
        }
        write_json(out / "results.json", record)  # undefined correlations become null
        _plot_curves(self, out / "sanity.png")
        _plot_maps(self, out / "maps.png")
        return out


def _plot_curves(result: SanityResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnvis_jax.report.files import save_figure

    curves = result.curves()
    titles = {
        "spearman_abs": "Spearman rank correlation (absolute)",
        "spearman": "Spearman rank correlation (signed)",
        "ssim": "SSIM (normalized absolute maps)",
    }
    width = max(9.0, 1.0 + 0.55 * len(result.steps) * 3)
    fig, axes = plt.subplots(1, 3, figsize=(width, 3.6), sharey=True)
    x = np.arange(len(result.steps))
    xlabel = "trained vs." if result.kind == "data" else "randomized down to layer"
    for ax, metric in zip(axes, ("spearman_abs", "spearman", "ssim")):
        for m in result.methods:
            ax.plot(x, curves[m][metric], "o-", label=m)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(x, result.steps, rotation=60, ha="right")
        ax.set(title=titles[metric], xlabel=xlabel, ylim=(-0.3, 1.05))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("similarity to the trained model's output")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"{result.kind} randomization: {result.models[0]} vs. {result.models[1]}")
    fig.tight_layout()
    save_figure(fig, path)


def _plot_maps(result: SanityResult, path: Path) -> bool:
    """Example outputs per step: a row per (method, image) with the input first
    (normalized absolute maps in grey; for ``am`` the rendered images of the first two
    classes). Returns False (nothing written) when there is nothing to show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnvis_jax.report.files import save_figure

    rows = []  # (label, input image or None, per-step tiles)
    for m in result.methods:
        if m == "am":
            for k in range(min(2, result.am_images.shape[1])):
                rows.append((f"am class {int(result.am_classes[k])}", None, result.am_images[:, k]))
        else:
            for k in range(result.examples[m].shape[1]):
                rows.append((f"{m} #{k}", result.inputs[k], result.examples[m][:, k]))
    if not rows:
        return False
    n_cols = len(result.steps) + 1
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(1.3 * n_cols, 1.35 * len(rows)), squeeze=False
    )
    for r, (label, first, tiles) in enumerate(rows):
        if first is not None:
            axes[r, 0].imshow(np.clip(first, 0, 1))
            axes[r, 0].set_ylabel(label, fontsize=7)
        else:
            axes[r, 0].text(0.5, 0.5, label, ha="center", va="center", fontsize=7)
            axes[r, 0].set_axis_off()
        for s in range(len(result.steps)):
            axes[r, s + 1].imshow(tiles[s], cmap="gray", vmin=0, vmax=1)
            if r == 0:
                axes[r, s + 1].set_title(result.steps[s], fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("input", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return True


# --- the tests ---------------------------------------------------------------------------


def _check_methods(methods: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    if not methods:
        raise InputError(f"methods is empty; choose some of {', '.join(METHODS)}.")
    for m in methods:
        _check_method(m)
    if len(set(methods)) != len(methods):
        raise InputError(f"methods repeat: {methods}; give each method once.")
    return methods


class _Setup(NamedTuple):
    images: np.ndarray
    layer: str
    targets: np.ndarray
    am_classes: np.ndarray


def _setup(model, images, methods, classes, layer, am_classes, batch_size) -> _Setup:
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    x = _check_images(model, images)
    win = _ssim_window()
    if min(x.shape[1:3]) < win:
        raise InputError(
            f"images of {x.shape[1]}x{x.shape[2]} are smaller than SSIM's {win}x{win} "
            f"window; use a model input of at least {win} pixels on a side."
        )
    target = _target_layer(model, layer)
    if classes is None:
        targets = _top_units(model, x, target, int(batch_size))
    else:
        targets = _check_targets(model, target, classes, len(x))
    chosen = np.zeros(0, np.int32)
    if "am" in methods:
        if am_classes is None:
            chosen = np.unique(targets).astype(np.int32)
        else:
            chosen = _check_targets(model, target, am_classes, None)
    return _Setup(x, target, targets, chosen)


def _run(
    kind: str,
    reference: Model,
    variants: list[tuple[str, tuple[str, ...], Model]],
    setup: _Setup,
    methods: tuple[str, ...],
    *,
    batch_size: int,
    am_recipe: Any,
    am_steps: int | None,
    am_key: Any,
    examples: int,
    progress: bool,
    names: tuple[str, str],
) -> SanityResult:
    from cnnvis_jax.progress import progress_bar

    k = max(0, min(int(examples), len(setup.images)))
    steps = [("original" if kind != "data" else "trained", (), reference), *variants]

    def maps_of(model: Model, method: str) -> SaliencyMaps:
        if method == "am":
            return _am_maps(model, setup.am_classes, setup.layer, am_recipe, am_steps, am_key)
        s, a = _rule_maps(model, setup.images, setup.targets, method, setup.layer, batch_size)
        return SaliencyMaps(s, a, setup.targets)

    per: dict[str, dict[str, list]] = {m: {x: [] for x in (*METRICS, "ex")} for m in methods}
    am_images = []
    with progress_bar(len(steps) * len(methods), f"sanity {kind}", enabled=progress,
                      unit="map set") as bar:  # fmt: skip
        refs = {}
        for _, _, model in steps:
            for m in methods:
                out = maps_of(model, m)
                if m not in refs:
                    refs[m] = out
                ref = refs[m]
                sp, sp_abs, ss = _compare(ref.signed, ref.absolute, out.signed, out.absolute)
                per[m]["spearman"].append(np.asarray(sp))
                per[m]["spearman_abs"].append(np.asarray(sp_abs))
                per[m]["ssim"].append(np.asarray(ss))
                shown = out.absolute[:k]
                per[m]["ex"].append(np.asarray(_normalize_jit(shown)) if len(shown) else shown)
                if m == "am":
                    am_images.append(out.images)
                bar.update(1)
    h, w = setup.images.shape[1:3]
    return SanityResult(
        kind=kind,
        steps=tuple(label for label, _, _ in steps),
        randomized=tuple(r for _, r, _ in steps),
        methods=methods,
        spearman={m: np.stack(per[m]["spearman"]).astype(np.float32) for m in methods},
        spearman_abs={m: np.stack(per[m]["spearman_abs"]).astype(np.float32) for m in methods},
        ssim={m: np.stack(per[m]["ssim"]).astype(np.float32) for m in methods},
        examples={m: np.stack(per[m]["ex"]).astype(np.float32) for m in methods},
        inputs=setup.images[:k],
        am_images=(
            np.stack(am_images) if am_images else np.zeros((len(steps), 0, h, w, 3), np.float32)
        ),
        targets=setup.targets,
        am_classes=setup.am_classes,
        layer=setup.layer,
        models=names,
    )


def cascading_randomization(
    model: Model,
    images: Any,
    *,
    methods: Sequence[str] = RULE_METHODS,
    key: Any = 0,
    layers: Sequence[str] | None = None,
    cumulative: bool = True,
    classes: Any = None,
    layer: str | None = None,
    am_classes: Any = None,
    am_recipe: Any = "lucid",
    am_steps: int | None = 64,
    am_key: Any = 0,
    batch_size: int = 32,
    examples: int = 3,
    progress: bool = False,
) -> SanityResult:
    """Adebayo et al.'s model parameter randomization test.

    Args:
      model: the trained network.
      images: float (N, H, W, 3) in [0, 1] at the model's input size (uint8 is
        divided by 255).
      methods: some of :data:`METHODS`.
      key: PRNG key or int seed of the new weights (:func:`randomize_layers`).
      layers: the layers to randomize (names or aliases), default every
        parameterized layer (:func:`parameterized_layers`); they are always taken
        from the top of the network down.
      cumulative: True: step ``k`` randomizes the top ``k`` of ``layers`` (cascading);
        False: step ``k`` randomizes only the ``k``-th (independent).
      classes: int (N,) target units; default the trained model's prediction.
      layer: layer of the target units (default the logits layer).
      am_classes: classes rendered for ``am`` (default the distinct targets).
      am_recipe, am_steps, am_key: the rendering recipe (or preset name), its step
        count (None: the recipe's) and key, the same on every model.
      batch_size: images per compiled gradient call.
      examples: maps kept per method for the figure (the first images).
      progress: show a progress bar.

    Returns:
      A :class:`SanityResult` with ``1 + len(layers)`` steps.

    Raises:
      InputError: unknown method or layer, a layer without parameters, empty or
        malformed images, targets out of range.
    """
    methods = _check_methods(methods)
    order = _check_layers(model, layers)
    setup = _setup(model, images, methods, classes, layer, am_classes, batch_size)
    variants = []
    for i, name in enumerate(order):
        chosen = order[: i + 1] if cumulative else (name,)
        variants.append((name, chosen, randomize_layers(model, chosen, key)))
    return _run(
        "cascading" if cumulative else "independent",
        model,
        variants,
        setup,
        methods,
        batch_size=int(batch_size),
        am_recipe=am_recipe,
        am_steps=am_steps,
        am_key=am_key,
        examples=examples,
        progress=progress,
        names=(model.name, f"{model.name} (randomized)"),
    )


def data_randomization(
    model: Model,
    shuffled_model: Model,
    images: Any,
    *,
    methods: Sequence[str] = RULE_METHODS,
    classes: Any = None,
    layer: str | None = None,
    am_classes: Any = None,
    am_recipe: Any = "lucid",
    am_steps: int | None = 64,
    am_key: Any = 0,
    batch_size: int = 32,
    examples: int = 3,
    progress: bool = False,
    label: str = "shuffled labels",
) -> SanityResult:
    """Adebayo et al.'s data randomization test: ``model`` (trained on true labels)
    against ``shuffled_model`` (the same architecture trained on shuffled labels).

    Targets default to ``model``'s predictions and are the same for both models.
    Arguments as :func:`cascading_randomization`; ``label`` names the second model
    (any two trainings of one architecture can be compared). Returns a
    :class:`SanityResult` of kind ``"data"`` with two steps (``trained``, ``label``).

    Raises:
      InputError: as :func:`cascading_randomization`, and when the two models do not
        share layers, input contract and parameter structure.
    """
    methods = _check_methods(methods)
    if not isinstance(shuffled_model, Model) or not isinstance(model, Model):
        raise InputError("data_randomization needs two cnnvis_jax Models (trained, shuffled).")
    same_tree = jax.tree_util.tree_structure(model.params) == jax.tree_util.tree_structure(
        shuffled_model.params
    )
    shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(model.params)]
    other = [np.shape(x) for x in jax.tree_util.tree_leaves(shuffled_model.params)]
    if (
        model.layer_names != shuffled_model.layer_names
        or model.input != shuffled_model.input
        or not same_tree
        or shapes != other
    ):
        raise InputError(
            f"models {model.name!r} and {shuffled_model.name!r} differ in layers, input or "
            "parameter shapes; compare two trainings of one architecture (same variant)."
        )
    setup = _setup(model, images, methods, classes, layer, am_classes, batch_size)
    return _run(
        "data",
        model,
        [(str(label), (), shuffled_model)],
        setup,
        methods,
        batch_size=int(batch_size),
        am_recipe=am_recipe,
        am_steps=am_steps,
        am_key=am_key,
        examples=examples,
        progress=progress,
        names=(model.name, f"{shuffled_model.name} ({label})"),
    )
