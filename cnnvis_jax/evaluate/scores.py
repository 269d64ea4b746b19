"""Scores of unit visualizations against the unit's natural images.

A visualization of unit ``u`` of layer ``L`` is scored by comparing it with the data:
the unit's top-``k`` natural images (the exact streaming top-k of
:func:`cnnvis_jax.deconv.top_activations`, ranked by the unit's maximum over
positions) and ``R`` random natural images as a baseline. Every score takes images in
[0, 1] at the model's input size, float32 ``(U, V, H, W, 3)``: ``V`` visualizations
per unit (seeds, facets).

=====================  =============================================================
score                   formula (per unit ``u`` and visualization ``x``)
=====================  =============================================================
activation ratio        ``m_u(x) / mean_t m_u(t)`` over the top images ``t``, where
                        ``m_u`` is the unit's maximum over positions (its value for a
                        fully connected layer). 1: as strong as the unit's best
                        natural images on average. (Fel et al. 2023 compare
                        visualizations by the activation they reach; relative to the
                        data it is comparable across units.)
plausibility            ``(s(x) - s_random) / (s_top - s_random)`` with ``s(y) = mean_t
                        cos(phi(y), phi(t))`` over the top images, ``phi`` the
                        feature layer's activations (the layer below ``L``) averaged
                        over positions; ``s_top`` the mean of ``s`` over the top
                        images themselves (so a copy of a top image scores like it),
                        ``s_random`` the mean over random images. 1: as close to the
                        top images as they are to each other; 0: no closer than
                        random natural images. (MACO's
                        plausibility, Fel et al. 2023 Sec. 4.1: similarity to the
                        natural images of the target in the model's own
                        representation; here normalized by the two baselines.)
transferability         ``mean_m softmax(f_m(x))_c`` over other models ``m`` trained
                        on the same data, for a class unit ``c`` of the logits layer
                        (Fel et al. 2023: the class probability other networks give
                        the visualization).
diversity               ``1 - mean_{a != b} cos(phi(x_a), phi(x_b))`` over the ``V``
                        visualizations of a unit (seeds, facets), ``phi`` as above
                        (Lucid's diversity objective measured instead of optimized;
                        Nguyen et al. 2016 compare facets the same way). 0: all alike.
=====================  =============================================================

The path-similarity check (Geirhos et al. 2023) is :mod:`cnnvis_jax.evaluate.path`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model

__all__ = [
    "References",
    "activation_ratio",
    "diversity",
    "feature_layer",
    "natural_references",
    "plausibility",
    "transferability",
    "unit_maxima",
]


class References(NamedTuple):
    """A layer's units' natural images (numpy, float32 in [0, 1], model input size).

    Attributes:
      layer: the canonical layer name.
      units: the units, in the order of the leading axis (U,).
      top_images: (U, K, H, W, 3), each unit's top-k images, best first.
      top_values: (U, K), the unit's maximum over positions on them.
      top_index: (U, K), their indices in the source.
      random_images: (R, H, W, 3), random natural images (the baseline).
      random_index: (R,), their indices in the source.
    """

    layer: str
    units: tuple[int, ...]
    top_images: np.ndarray
    top_values: np.ndarray
    top_index: np.ndarray
    random_images: np.ndarray
    random_index: np.ndarray


def natural_references(
    model: Model,
    source: Any,
    layer: str,
    units: Sequence[int],
    *,
    k: int = 16,
    n_random: int = 64,
    count: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> References:
    """The top-``k`` images of each unit among the first ``count`` images of
    ``source`` (all by default) and ``n_random`` random ones (drawn with ``seed``).

    Raises:
      InputError: fewer images than ``k`` or than ``n_random`` (the message says how
        many there are), an unknown layer or unit.
    """
    from cnnvis_jax.deconv.topk import _images_at, top_activations

    total = len(source) if count is None else min(int(count), len(source))
    if total < max(int(k), int(n_random)):
        need = max(int(k), int(n_random))
        raise InputError(
            f"the data set has {total} images, fewer than the {need} natural images the "
            f"scores need (k={k}, random={n_random}); lower k / n_random or use more images."
        )
    if int(k) < 2 or int(n_random) < 1:
        raise InputError(f"need k >= 2 top images and >= 1 random image, got {k}, {n_random}.")
    indices = np.arange(total)
    top = top_activations(model, source, layer, units, k=int(k), indices=indices,
                          progress=progress)  # fmt: skip
    size = tuple(model.input.size)
    flat = top.image_index.reshape(-1)
    top_images = _images_at(source, flat, size).reshape(*top.image_index.shape, *size, 3)
    chosen = np.sort(np.random.default_rng(seed).choice(total, int(n_random), replace=False))
    return References(
        layer=top.layer,
        units=tuple(int(u) for u in top.units),
        top_images=top_images.astype(np.float32),
        top_values=np.asarray(top.values, np.float32),
        top_index=np.asarray(top.image_index),
        random_images=_images_at(source, chosen, size).astype(np.float32),
        random_index=chosen,
    )


def feature_layer(model: Model, layer: str) -> str:
    """The layer below ``layer`` in the model's catalog (pre-activation taps skipped):
    the feature space of plausibility and diversity."""
    names = [info.name for info in model.layers if not info.name.endswith("_pre")]
    name = model.layer(layer).name
    if name not in names or names.index(name) == 0:
        raise InputError(
            f"layer {name!r} has no layer below it to compare features in; score a deeper "
            "layer or pass feature_layer=..."
        )
    return names[names.index(name) - 1]


@functools.partial(jax.jit, static_argnames=("layer",))
def _maxima(model: Model, images, units, *, layer: str):
    a = model.apply(model.params, images, (layer,))[layer]
    if a.ndim == 4:
        a = jnp.max(a, axis=(1, 2))
    return a[:, units]


def unit_maxima(model: Model, layer: str, units: Sequence[int], images) -> np.ndarray:
    """float32 (N, U): each unit's maximum over positions on images (N, H, W, 3)."""
    units = np.asarray(units, np.int32)
    out = [_maxima(model, jnp.asarray(images[s : s + 256]), units, layer=model.layer(layer).name)
           for s in range(0, len(images), 256)]  # fmt: skip
    return np.concatenate([np.asarray(o) for o in out]).astype(np.float32)


def _features(model: Model, layer: str, images) -> np.ndarray:
    """float64 (N, C): ``layer``'s activations averaged over positions (the path
    check's activation patterns), 256 images per forward."""
    from cnnvis_jax.evaluate.path import activation_patterns

    name = model.resolve(layer)
    out = [activation_patterns(model, images[s : s + 256], name)[name]
           for s in range(0, len(images), 256)]  # fmt: skip
    return np.concatenate(out).astype(np.float64)


def _unit_images(images, references: References | None = None) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 5 or images.shape[-1] != 3:
        raise InputError(
            f"visualizations must be (units, per unit, H, W, 3), got shape {images.shape}."
        )
    if references is not None and images.shape[0] != len(references.units):
        raise InputError(
            f"{images.shape[0]} units of visualizations but {len(references.units)} units of "
            "natural references; pass both for the same units, in the same order."
        )
    return images


def activation_ratio(model: Model, images, references: References) -> np.ndarray:
    """float32 (U, V): each visualization's unit maximum over the mean of the unit's
    top natural images' (see the module docstring). A unit whose top images are all
    at 0 gets NaN."""
    images = _unit_images(images, references)
    u, v = images.shape[:2]
    values = unit_maxima(model, references.layer, references.units,
                         images.reshape(u * v, *images.shape[2:]))  # fmt: skip
    mine = values.reshape(u, v, u)[np.arange(u), :, np.arange(u)]  # each unit's own (U, V)
    reference = references.top_values.astype(np.float64).mean(1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(reference > 0, mine / reference, np.nan).astype(np.float32)


def _cosine(a, b) -> np.ndarray:
    """(N, M) cosine similarities of rows of ``a`` (N, C) and ``b`` (M, C); 0 for a zero row."""
    na = np.linalg.norm(a, axis=-1, keepdims=True)
    nb = np.linalg.norm(b, axis=-1, keepdims=True)
    return (a / np.where(na > 0, na, 1.0)) @ (b / np.where(nb > 0, nb, 1.0)).T


def plausibility(model: Model, images, references: References, *,
                 layer: str | None = None) -> np.ndarray:  # fmt: skip
    """float32 (U, V): normalized similarity to the unit's top natural images in the
    feature layer (default: the layer below the unit's; see the module docstring). The
    top images themselves average 1, the random images 0; NaN where the two baselines
    coincide."""
    images = _unit_images(images, references)
    layer = feature_layer(model, references.layer) if layer is None else model.layer(layer).name
    u, v = images.shape[:2]
    k = references.top_images.shape[1]
    vis = _features(model, layer, images.reshape(u * v, *images.shape[2:])).reshape(u, v, -1)
    top = _features(model, layer, references.top_images.reshape(u * k, *images.shape[2:]))
    top = top.reshape(u, k, -1)
    rand = _features(model, layer, references.random_images)
    out = np.empty((u, v), np.float64)
    for i in range(u):
        s_vis = _cosine(vis[i], top[i]).mean(1)
        s_rand = _cosine(rand, top[i]).mean()
        s_top = _cosine(top[i], top[i]).mean()
        span = s_top - s_rand
        out[i] = (s_vis - s_rand) / span if abs(span) > 1e-12 else np.nan
    return out.astype(np.float32)


def diversity(model: Model, images, layer: str) -> np.ndarray:
    """float32 (U,): ``1 - mean pairwise cosine`` of each unit's V >= 2 visualizations
    in ``layer``'s position-averaged features (0: identical)."""
    images = _unit_images(images)
    u, v = images.shape[:2]
    if v < 2:
        raise InputError(f"diversity compares a unit's visualizations; need >= 2, got {v}.")
    feats = _features(model, model.layer(layer).name, images.reshape(u * v, *images.shape[2:]))
    feats = feats.reshape(u, v, -1)
    out = np.empty(u, np.float64)
    for i in range(u):
        sims = _cosine(feats[i], feats[i])
        out[i] = 1.0 - (sims.sum() - np.trace(sims)) / (v * (v - 1))
    return out.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("layer",))
def _probabilities(model: Model, images, *, layer: str):
    logits = model.apply(model.params, images, (layer,))[layer]
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def transferability(models: Sequence[Model], classes: Sequence[int], images) -> np.ndarray:
    """float32 (U, V): the mean over ``models`` of the probability each gives class
    ``classes[u]`` for unit ``u``'s visualizations (U, V, H, W, 3).

    Raises:
      InputError: no models; a model without a classifier (logits layer) or with too
        few classes.
    """
    images = _unit_images(images)
    if not models:
        raise InputError("transferability needs other models trained on the same data.")
    u, v = images.shape[:2]
    if len(classes) != u:
        raise InputError(f"{len(classes)} classes for {u} units of visualizations.")
    total = np.zeros((u, v), np.float64)
    flat = images.reshape(u * v, *images.shape[2:])
    for m in models:
        if m.logits_layer is None:
            raise InputError(
                "a transfer model has no classifier (logits layer); pass classification models."
            )
        n_classes = m.layer(m.logits_layer).channels
        if max(classes) >= n_classes:
            raise InputError(f"class {max(classes)} is outside a transfer model's {n_classes}.")
        p = np.concatenate([np.asarray(_probabilities(m, jnp.asarray(flat[s : s + 256]),
                                                      layer=m.logits_layer))
                            for s in range(0, len(flat), 256)])  # fmt: skip
        total += p.reshape(u, v, -1)[np.arange(u), :, np.asarray(classes)]
    return (total / len(models)).astype(np.float32)
