"""Image priors of regularized inversion: the α-norm and the TV^β norm.

All functions take one canvas ``u`` of shape (H, W, C) (or a batch (..., H, W, C))
in the reference units of the inversion variable (mean-subtracted pixel values on
the 0-255 scale, see :mod:`cnnvis_jax.inversion.regularized`) and return a scalar
(per leading batch index for batched input).

Two conventions, each exactly as the published code computes it:

* CVPR'15 (deep-goggle ``invert_nn.m``): sums over every value,
  ``Σ_{c,i,j} (d1² + d2²)^{β/2}`` and ``Σ x^α``.
* IJCV'16 (nnpreimage ``layers/tv.m``, ``layers/l2.m``): both divided by the number
  of pixels ``H·W``, and the α-norm taken of each pixel's colour vector,
  ``Σ_{i,j} (Σ_c x²)^{α/2} / (H·W)``.

``d1``/``d2`` are forward differences along the width and the height; at the last
column/row the difference is 0 (the code repeats the last entry).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "alpha_norm_pixels",
    "alpha_norm_values",
    "forward_differences",
    "project_pixel_norm",
    "tv_beta",
]


def forward_differences(u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(d1, d2)``: differences to the right neighbour (width) and to the lower one
    (height), 0 at the last column/row; both of ``u``'s shape (..., H, W, C)."""
    right = jnp.concatenate([u[..., :, 1:, :], u[..., :, -1:, :]], axis=-2)
    down = jnp.concatenate([u[..., 1:, :, :], u[..., -1:, :, :]], axis=-3)
    return right - u, down - u


def tv_beta(u: jax.Array, beta: float, *, per_pixel: bool = False) -> jax.Array:
    """TV^β: ``Σ_{c,i,j} (d1² + d2²)^{β/2}``, divided by ``H·W`` when ``per_pixel``.

    Shape (..., H, W, C) -> (...). For β = 2 this is a plain sum of squares
    (smooth everywhere); for 1 < β < 2 the gradient is taken as its limit 0 where
    both differences vanish (the last pixel always), where a plain power gives NaN.
    """
    d1, d2 = forward_differences(u)
    v = d1 * d1 + d2 * d2
    if beta != 2:  # v^(β/2) with the gradient's limit (0 for β > 1) where v = 0
        positive = v > 0
        v = jnp.where(positive, jnp.where(positive, v, 1.0) ** (beta / 2), 0.0)
    total = jnp.sum(v, axis=(-3, -2, -1))
    return total / (u.shape[-3] * u.shape[-2]) if per_pixel else total


def alpha_norm_values(u: jax.Array, alpha: float) -> jax.Array:
    """CVPR'15 α-norm: ``Σ |x|^α`` over every value; (..., H, W, C) -> (...).

    (The code writes ``x.^α``; for the published even α = 6 the two agree.)
    """
    a = jnp.abs(u)
    return jnp.sum(a**alpha, axis=(-3, -2, -1))


def alpha_norm_pixels(u: jax.Array, alpha: float) -> jax.Array:
    """IJCV'16 α-norm: ``Σ_{i,j} (Σ_c x²)^{α/2} / (H·W)``; (..., H, W, C) -> (...)."""
    n = jnp.sum(u * u, axis=-1)
    return jnp.sum(n ** (alpha / 2), axis=(-2, -1)) / (u.shape[-3] * u.shape[-2])


def project_pixel_norm(u: jax.Array, bound: float) -> jax.Array:
    """Scale every pixel whose colour-vector norm exceeds ``bound`` back onto it
    (IJCV'16's B+ box constraint: ``x · min(B+/‖x_ij‖, 1)``); shape kept."""
    n = jnp.sqrt(jnp.sum(u * u, axis=-1, keepdims=True))
    return u * jnp.minimum(bound / jnp.maximum(n, 1e-12), 1.0)
