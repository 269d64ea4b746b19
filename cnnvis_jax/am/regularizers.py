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
A percentile or radius of 0 turns its step off. The priors themselves (TV^β,
α-norm, L2, blur, TV denoising) are those of :mod:`cnnvis_jax.preimage.priors`,
shared with inversion.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.am._tree import pytree_dataclass
from cnnvis_jax.preimage import priors
from cnnvis_jax.preimage.priors import gaussian_blur

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
        return self.weight * priors.l2(_centred255(images, contract))


@pytree_dataclass
class AlphaNorm:
    """``weight * sum(|x255| ** alpha)`` per image."""

    weight: Any
    alpha: Any = 6.0

    def __call__(self, images, contract):
        return self.weight * priors.alpha_norm(_centred255(images, contract), self.alpha)


@pytree_dataclass
class TotalVariation:
    """``weight * sum(((x[i+1,j]-x[i,j])^2 + (x[i,j+1]-x[i,j])^2) ** (beta/2))`` in
    0-255 units per image (Mahendran & Vedaldi's ``TV^beta``)."""

    weight: Any
    beta: Any = 2.0

    def __call__(self, images, contract):
        # the pixels with both neighbours; the tiny offset keeps the gradient finite
        # at 0 for beta < 2
        tv = priors.tv_beta(images * 255.0, self.beta, edge="valid", eps=1e-8)
        return self.weight * tv


# --- steps ---------------------------------------------------------------------------------


@pytree_dataclass
class Decay:
    """``params *= 1 - rate``."""

    rate: Any

    def __call__(self, params, grad, i, ctx):
        return params * (1.0 - self.rate)


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
