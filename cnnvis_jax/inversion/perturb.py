"""Perturbations of features before inverting them (Dosovitskiy & Brox, Sec. 5).

Each works on a batch ``features`` float (N, ...) image by image and returns the
same shape; the norms are L2 norms over one image's features. They apply to both
methods: pass the perturbed features as the target of regularized inversion or
to a decoder.

* :func:`binarize` — keep the sign pattern (``sign(f)``: non-zero ReLU outputs
  become 1) and scale it so each image's L2 norm is unchanged.
* :func:`dropout` — zero a random half of the values (exactly ``round(rate·D)`` per
  image), rescale the rest so the L2 norm is unchanged.
* :func:`drop_least` — zero the least important half of the units, importance =
  mean activation over a data set (:func:`unit_importance`), and rescale to keep
  the L2 norm (as dropout, so that only *which* values survive differs).
* :func:`channel_group` — keep one channel group, zero the others (no rescaling:
  the reference uses groups to ask what one half of the filters encodes).

An image whose kept values are all zero stays all zero (nothing to rescale).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.catalog import PERTURBATIONS  # one list, shared with the command line
from cnnvis_jax.errors import InputError
from cnnvis_jax.inversion import masks as _masks

__all__ = [
    "PERTURBATIONS",
    "binarize",
    "channel_group",
    "drop_least",
    "dropout",
    "make_perturbation",
    "unit_importance",
]


def _norms(x: jax.Array) -> jax.Array:
    """L2 norm per image, shaped to broadcast against ``x``."""
    axes = tuple(range(1, x.ndim))
    return jnp.sqrt(jnp.sum(x * x, axis=axes, keepdims=True))


def _rescale(kept: jax.Array, original: jax.Array) -> jax.Array:
    n_kept = _norms(kept)
    return jnp.where(
        n_kept > 0, kept * (_norms(original) / jnp.where(n_kept > 0, n_kept, 1.0)), 0.0
    )


@jax.jit
def binarize(features: jax.Array) -> jax.Array:
    """``sign(f) · ‖f‖ / sqrt(#non-zero)`` per image: signs kept, L2 norm kept."""
    f = jnp.asarray(features, jnp.float32)
    return _rescale(jnp.sign(f), f)


@jax.jit
def dropout(features: jax.Array, key: jax.Array, rate: float = 0.5) -> jax.Array:
    """Zero ``round(rate · D)`` random values of each image (D values per image) and
    rescale the rest to the image's original L2 norm."""
    f = jnp.asarray(features, jnp.float32)
    n, d = f.shape[0], int(np.prod(f.shape[1:]))
    drop = jnp.round(rate * d)
    scores = jax.random.uniform(key, (n, d))
    ranks = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    kept = jnp.where((ranks >= drop).reshape(f.shape), f, 0.0)
    return _rescale(kept, f)


def unit_importance(features: np.ndarray) -> np.ndarray:
    """Mean activation per unit (channel) over images (and positions): (N, ..., C) -> (C,)."""
    f = np.asarray(features, np.float64)
    return f.reshape(-1, f.shape[-1]).mean(axis=0).astype(np.float32)


def drop_least(features: jax.Array, importance: np.ndarray, fraction: float = 0.5) -> jax.Array:
    """Zero the ``fraction`` of units (channels) with the lowest ``importance`` (C,)
    in every image and rescale the rest to the original L2 norm."""
    f = jnp.asarray(features, jnp.float32)
    importance = np.asarray(importance)
    if importance.shape != (f.shape[-1],):
        raise InputError(
            f"importance has shape {importance.shape}; it needs one value per unit ({f.shape[-1]},)."
        )
    drop = int(round(fraction * f.shape[-1]))
    order = np.argsort(importance, kind="stable")
    keep = np.ones(f.shape[-1], np.float32)
    keep[order[:drop]] = 0.0
    return _rescale(f * jnp.asarray(keep), f)


def channel_group(features: jax.Array, group: int, groups: int = 2) -> jax.Array:
    """Keep channel group ``group`` of ``groups`` (see :func:`.masks.channel_group`)."""
    f = jnp.asarray(features, jnp.float32)
    return f * jnp.asarray(_masks.channel_group(f.shape[1:], group, groups))


def make_perturbation(
    name: str | None, *, key: jax.Array | None = None, importance: dict | None = None
) -> Callable[[str, np.ndarray], np.ndarray] | None:
    """``transform(layer, features) -> features`` for a perturbation name (or None).

    ``dropout`` needs ``key``; ``drop-least`` needs ``importance`` ({layer: (C,)}).
    """
    if name is None or name == "none":
        return None
    if name == "binarize":
        return lambda layer, f: np.asarray(binarize(f))
    if name == "dropout":
        if key is None:
            raise InputError("the dropout perturbation needs a PRNG key.")
        return lambda layer, f: np.asarray(dropout(f, jax.random.fold_in(key, len(layer))))
    if name == "drop-least":
        if importance is None:
            raise InputError("drop-least needs the units' mean activations (unit_importance).")
        return lambda layer, f: np.asarray(drop_least(f, importance[layer]))
    raise InputError(f"unknown perturbation {name!r}; choose one of {', '.join(PERTURBATIONS)}.")
