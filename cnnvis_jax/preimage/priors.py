"""Image priors of the pre-image problems, one set with each published variant as an option.

Each prior maps images or canvases ``(..., H, W, C)`` to ``(...)`` (one value per
leading index). Units are the caller's: activation maximization passes the image
centred on the model's mean in 0-255 units, inversion its variable ``u`` (the same
units), so the published constants apply unchanged.

* :func:`tv_beta` -- ``TV^β = Σ (d1² + d2²)^{β/2}`` (Mahendran & Vedaldi), with the
  two edge conventions in use: ``edge="replicate"`` (the MATLAB code: the difference
  at the last row/column is 0, every pixel counted) and ``edge="valid"`` (only the
  ``(H-1) × (W-1)`` pixels that have both neighbours, as Lucid-style code does), and
  the two ways of keeping the gradient finite where both differences vanish for
  β < 2: its limit 0 (``eps=0``) or a small offset ``eps`` inside the power;
  ``per_pixel`` divides by ``H·W`` (IJCV'16).
* :func:`alpha_norm` -- ``Σ |x|^α`` over every value (CVPR'15, Simonyan's L2 for
  α = 2) or, with ``over="pixels"``, ``Σ_ij (Σ_c x²)^{α/2}`` of each pixel's colour
  vector (IJCV'16), optionally divided by ``H·W``.
* :func:`l2` -- ``Σ x²`` (the α-norm with α = 2).
* :func:`project_pixel_norm` -- IJCV'16's B+ box: pixels whose colour norm exceeds
  the bound are scaled back onto it.
* :func:`gaussian_blur` -- Yosinski et al.'s blur step (scipy's ``gaussian_filter``).
* :func:`tv_denoise` -- MFV's TV denoising step (the minimizer of
  ``TV(u) + w ||u - f||²``, Chambolle's algorithm).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "alpha_norm",
    "forward_differences",
    "gaussian_blur",
    "l2",
    "project_pixel_norm",
    "tv_beta",
    "tv_denoise",
]


def forward_differences(u: jax.Array, edge: str = "replicate") -> tuple[jax.Array, jax.Array]:
    """``(d1, d2)``: differences to the right neighbour (width) and to the lower one
    (height). ``edge="replicate"``: shape of ``u``, 0 at the last column/row;
    ``edge="valid"``: the ``(..., H-1, W-1, C)`` pixels with both neighbours."""
    if edge == "replicate":
        right = jnp.concatenate([u[..., :, 1:, :], u[..., :, -1:, :]], axis=-2)
        down = jnp.concatenate([u[..., 1:, :, :], u[..., -1:, :, :]], axis=-3)
        return right - u, down - u
    if edge == "valid":
        corner = u[..., :-1, :-1, :]
        return u[..., :-1, 1:, :] - corner, u[..., 1:, :-1, :] - corner
    raise ValueError(f"edge must be 'replicate' or 'valid', got {edge!r}.")


def tv_beta(
    u: jax.Array, beta, *, edge: str = "replicate", eps: float = 0.0, per_pixel: bool = False
) -> jax.Array:
    """``Σ (d1² + d2² + eps)^{β/2}`` over pixels and channels; (..., H, W, C) -> (...).

    With ``eps=0`` and β ≠ 2 the gradient is taken as its limit 0 (β > 1) where both
    differences vanish (the last pixel always, with ``edge="replicate"``), where a
    plain power gives NaN. ``per_pixel`` divides by ``H·W`` of ``u``.
    """
    d1, d2 = forward_differences(u, edge)
    v = d1 * d1 + d2 * d2
    if eps:
        v = (v + eps) ** (beta / 2.0)
    elif not (isinstance(beta, int | float) and beta == 2):
        positive = v > 0
        v = jnp.where(positive, jnp.where(positive, v, 1.0) ** (beta / 2.0), 0.0)
    total = jnp.sum(v, axis=(-3, -2, -1))
    return total / (u.shape[-3] * u.shape[-2]) if per_pixel else total


def alpha_norm(u: jax.Array, alpha, *, over: str = "values", per_pixel: bool = False) -> jax.Array:
    """``Σ |x|^α`` (``over="values"``) or ``Σ_ij (Σ_c x²)^{α/2}`` (``over="pixels"``);
    (..., H, W, C) -> (...); ``per_pixel`` divides by ``H·W``."""
    if over == "values":
        total = jnp.sum(jnp.abs(u) ** alpha, axis=(-3, -2, -1))
    elif over == "pixels":
        total = jnp.sum(jnp.sum(u * u, axis=-1) ** (alpha / 2.0), axis=(-2, -1))
    else:
        raise ValueError(f"over must be 'values' or 'pixels', got {over!r}.")
    return total / (u.shape[-3] * u.shape[-2]) if per_pixel else total


def l2(u: jax.Array) -> jax.Array:
    """``Σ x²`` over pixels and channels; (..., H, W, C) -> (...)."""
    return jnp.sum(jnp.square(u), axis=(-3, -2, -1))


def project_pixel_norm(u: jax.Array, bound) -> jax.Array:
    """Scale every pixel whose colour-vector norm exceeds ``bound`` back onto it
    (``x · min(bound/‖x_ij‖, 1)``); shape kept."""
    n = jnp.sqrt(jnp.sum(u * u, axis=-1, keepdims=True))
    return u * jnp.minimum(bound / jnp.maximum(n, 1e-12), 1.0)


def _gaussian_kernel(sigma, width: int):
    taps = jnp.arange(-width, width + 1, dtype=jnp.float32)
    sigma = jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-6)
    k = jnp.exp(-0.5 * jnp.square(taps / sigma))
    return k / k.sum()


def gaussian_blur(x: jax.Array, sigma, width: int) -> jax.Array:
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


def tv_denoise(image: jax.Array, weight, iterations: int = 50) -> jax.Array:
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
