"""Regularizers: penalties inside the objective, and steps applied after each update.

**Penalties** are subtracted from the objective (the loop maximizes
``objective - sum(penalties)``); each maps the image ``(B, H, W, 3)`` in [0, 1] to
``(B,)``. They see the image centred on the model's mean colour and measured in
0-255 units (``x255``), the space of the published constants:

* :class:`L2` -- ``weight * sum(x255 ** 2)`` (Simonyan et al.'s ``lambda ||I||^2``);
* :class:`AlphaNorm` -- ``weight * sum(|x255| ** alpha)`` (Mahendran & Vedaldi);
* :class:`TotalVariation` -- ``weight * sum(((dx)^2 + (dy)^2) ** (beta / 2))``.

**Steps** (``step(params, grad, i, ctx) -> params``) act on the parameters after
the optimizer's update, in the order given, as in Yosinski et al.'s loop:

* :class:`Decay` -- ``params *= 1 - rate`` (L2 decay; for a generator, code decay);
* :class:`Blur` -- every ``every`` steps (at ``i % every == 0``) a per-channel
  Gaussian blur of standard deviation ``radius`` (scipy's ``gaussian_filter``:
  ``truncate=4``, reflected borders);
* :class:`SmallNorm` -- zero the pixels whose colour norm is below the
  ``percentile``-th percentile of the image;
* :class:`SmallContribution` -- zero the pixels whose contribution
  ``|sum_c grad * (-x)|`` is below the ``percentile``-th percentile;
* :class:`ClipParams` -- the parameterization's projection (pixel range [0, 255]
  around the mean; code bounds of a generator).

Numbers are data (sweepable); loop structure (``every``, kernel width) is static.
A percentile or radius of 0 turns its step off.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.am._tree import pytree_dataclass

__all__ = [
    "L2",
    "AlphaNorm",
    "Blur",
    "ClipParams",
    "Decay",
    "SmallContribution",
    "SmallNorm",
    "StepContext",
    "TotalVariation",
    "gaussian_blur",
    "tv_denoise",
]


class StepContext(NamedTuple):
    """What a step may need besides params and gradient: the parameterization and
    the model's input contract (static)."""

    param: Any
    contract: Any


# --- penalties ----------------------------------------------------------------------------


def _centred255(images, contract):
    from cnnvis_jax.am.params import mean255

    return images * 255.0 - jnp.asarray(mean255(contract))


@pytree_dataclass
class L2:
    """``weight * sum(x255 ** 2)`` per image."""

    weight: Any

    def __call__(self, images, contract):
        x = _centred255(images, contract)
        return self.weight * jnp.sum(jnp.square(x), axis=(1, 2, 3))


@pytree_dataclass
class AlphaNorm:
    """``weight * sum(|x255| ** alpha)`` per image."""

    weight: Any
    alpha: Any = 6.0

    def __call__(self, images, contract):
        x = _centred255(images, contract)
        return self.weight * jnp.sum(jnp.abs(x) ** self.alpha, axis=(1, 2, 3))


@pytree_dataclass
class TotalVariation:
    """``weight * sum(((x[i+1,j]-x[i,j])^2 + (x[i,j+1]-x[i,j])^2) ** (beta/2))`` in
    0-255 units per image (Mahendran & Vedaldi's ``TV^beta``)."""

    weight: Any
    beta: Any = 2.0

    def __call__(self, images, contract):
        x = images * 255.0
        dy = x[:, 1:, :-1] - x[:, :-1, :-1]
        dx = x[:, :-1, 1:] - x[:, :-1, :-1]
        sq = jnp.square(dy) + jnp.square(dx)
        # the tiny offset keeps the gradient finite at 0 for beta < 2
        return self.weight * jnp.sum((sq + 1e-8) ** (self.beta / 2.0), axis=(1, 2, 3))


# --- steps ---------------------------------------------------------------------------------


@pytree_dataclass
class Decay:
    """``params *= 1 - rate``."""

    rate: Any

    def __call__(self, params, grad, i, ctx):
        return params * (1.0 - self.rate)


def _gaussian_kernel(sigma, width: int):
    taps = jnp.arange(-width, width + 1, dtype=jnp.float32)
    sigma = jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-6)
    k = jnp.exp(-0.5 * jnp.square(taps / sigma))
    return k / k.sum()


def gaussian_blur(x, sigma, width: int):
    """Per-channel Gaussian blur of (B, H, W, C), as scipy's ``gaussian_filter``
    with ``mode="reflect"``: ``width`` taps each side (scipy: ``int(4 sigma + 0.5)``)."""
    if width <= 0:
        return x
    k = _gaussian_kernel(sigma, width)
    pad = ((0, 0), (width, width), (width, width), (0, 0))
    xp = jnp.pad(x, pad, mode="symmetric")  # scipy's reflect: d c b a | a b c d
    h, w = x.shape[1:3]
    rows = sum(k[t] * xp[:, t : t + h, :, :] for t in range(2 * width + 1))
    return sum(k[t] * rows[:, :, t : t + w, :] for t in range(2 * width + 1))


@pytree_dataclass(static=("every", "width"))
class Blur:
    """Gaussian blur of std ``radius`` every ``every`` steps (``width`` taps a side;
    default from the radius as scipy does)."""

    radius: Any
    every: int = 1
    width: int = -1

    def __post_init__(self):
        if self.width < 0 and not isinstance(self.radius, jax.core.Tracer):
            object.__setattr__(self, "width", int(4.0 * float(np.max(self.radius)) + 0.5))

    def taps(self) -> int:
        return max(self.width, 0)

    def __call__(self, params, grad, i, ctx):
        if self.every <= 0:
            return params
        blurred = gaussian_blur(params, self.radius, self.taps())
        on = (i % self.every == 0) & (jnp.asarray(self.radius) > 0)
        return jnp.where(on, blurred, params)


def _percentile_mask(values, pct):
    """(B, H, W) True where below each image's ``pct``-th percentile (off at pct 0)."""
    flat = values.reshape(values.shape[0], -1)
    cut = jax.vmap(lambda v: jnp.percentile(v, pct))(flat)
    return (values < cut[:, None, None]) & (jnp.asarray(pct) > 0)


@pytree_dataclass
class SmallNorm:
    """Zero pixels whose colour norm is below the ``percentile``-th percentile."""

    percentile: Any

    def __call__(self, params, grad, i, ctx):
        small = _percentile_mask(jnp.linalg.norm(params, axis=-1), self.percentile)
        return jnp.where(small[..., None], 0.0, params)


@pytree_dataclass
class SmallContribution:
    """Zero pixels whose ``|sum_c grad * (-x)|`` is below the ``percentile``-th percentile."""

    percentile: Any

    def __call__(self, params, grad, i, ctx):
        benefit = jnp.abs(jnp.sum(grad * -params, axis=-1))
        small = _percentile_mask(benefit, self.percentile)
        return jnp.where(small[..., None], 0.0, params)


@pytree_dataclass
class ClipParams:
    """The parameterization's own projection (pixel range or code bounds)."""

    def __call__(self, params, grad, i, ctx):
        return ctx.param.clip(params, ctx.contract)


# --- TV denoising (MFV) ---------------------------------------------------------------------


def tv_denoise(image, weight, iterations: int = 50):
    """Total-variation denoising of (B, H, W, C), per channel: the minimizer of
    ``TV(u) + weight * ||u - f||^2`` (skimage's ``denoise_tv_bregman`` energy, whose
    lambda is ``2 * weight``), found with Chambolle's projection algorithm
    (``iterations`` fixed steps, step size 1/8). Smaller ``weight`` denoises more."""
    f = image
    theta = 1.0 / (2.0 * jnp.maximum(jnp.asarray(weight, f.dtype), 1e-12))  # ROF lambda
    tau = 0.125

    def grad(u):
        gy = jnp.concatenate([u[:, 1:] - u[:, :-1], jnp.zeros_like(u[:, :1])], axis=1)
        gx = jnp.concatenate([u[:, :, 1:] - u[:, :, :-1], jnp.zeros_like(u[:, :, :1])], axis=2)
        return gy, gx

    def div(py, px):
        dy = jnp.concatenate([py[:, :1], py[:, 1:-1] - py[:, :-2], -py[:, -2:-1]], axis=1)
        dx = jnp.concatenate(
            [px[:, :, :1], px[:, :, 1:-1] - px[:, :, :-2], -px[:, :, -2:-1]], axis=2
        )
        return dy + dx

    def body(_, p):
        py, px = p
        gy, gx = grad(div(py, px) - f / theta)
        norm = jnp.sqrt(gy * gy + gx * gx)
        return ((py + tau * gy) / (1 + tau * norm), (px + tau * gx) / (1 + tau * norm))

    zeros = jnp.zeros_like(f)
    py, px = jax.lax.fori_loop(0, iterations, body, (zeros, zeros))
    return f - theta * div(py, px)
