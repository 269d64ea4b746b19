"""The input gradient of a strided convolution as one dense stride-1 convolution.

JAX's input gradient of a convolution with stride ``s`` is a convolution of the
cotangent dilated by ``s`` (``s - 1`` zeros between neighbours): for AlexNet's
11 x 11 / 4 first layer, 15 of every 16 multiply-adds read a zero, and on XLA:CPU
that gradient costs four times the forward convolution.

Splitting the input positions by phase removes the zeros. Per spatial axis, with
kernel size ``K``, stride ``s``, low padding ``p`` and ``M = ceil(K / s)``, the
forward pass ``y[o] = sum_k w[k] x[o s + k - p]`` has the input gradient

    gx[q s + r - p] = sum_{m < M} g[q - m] w[r + s m]          (r = 0 .. s - 1)

(``w`` zero beyond ``K``): for each phase ``r`` a stride-1 convolution of ``g`` with
the sub-kernel ``w[r::s]``. All phases are computed as the output channels of one
convolution (``s^d * C_in`` of them, kernel ``M^d``), then interleaved
(depth-to-space) and cropped to the input. The sums are the same products as
JAX's rule, without the zero terms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def phase_split_applies(params: dict) -> bool:
    """Whether :func:`strided_input_gradient` computes the input gradient of a
    ``conv_general_dilated`` with these parameters: a stride above 1, no dilation,
    no negative padding, one group."""
    strides = tuple(params["window_strides"])
    return (
        any(s > 1 for s in strides)
        and all(d == 1 for d in params.get("lhs_dilation") or (1,) * len(strides))
        and all(d == 1 for d in params.get("rhs_dilation") or (1,) * len(strides))
        and all(lo >= 0 and hi >= 0 for lo, hi in params["padding"])
        and params.get("feature_group_count", 1) == 1
        and params.get("batch_group_count", 1) == 1
    )


def phase_kernel(w: jax.Array, rhs_spec: Sequence[int], strides: Sequence[int]) -> jax.Array:
    """The phases' sub-kernels of ``w`` as one stride-1 kernel.

    Args:
      w: the forward kernel, laid out as ``rhs_spec`` (out feature axis, in feature
        axis, spatial axes).
      rhs_spec: the kernel's dimension numbers.
      strides: the forward strides (one per spatial axis).

    Returns:
      (M_1, ..., M_d, C_out, s_1 * ... * s_d * C_in): spatial taps flipped, the
      cotangent's features as inputs, the phases (row-major) times the forward input
      features as outputs.
    """
    d = len(strides)
    wt = jnp.transpose(w, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))  # (K..., Cin, Cout)
    sizes = wt.shape[:d]
    c_in, c_out = wt.shape[d], wt.shape[d + 1]
    taps = [-(-k // s) for k, s in zip(sizes, strides)]
    wt = jnp.pad(wt, [(0, m * s - k) for m, s, k in zip(taps, strides, sizes)] + [(0, 0)] * 2)
    wt = wt.reshape(*[n for m, s in zip(taps, strides) for n in (m, s)], c_in, c_out)
    wt = jnp.flip(wt, axis=tuple(2 * i for i in range(d)))
    order = [2 * i for i in range(d)] + [2 * d + 1] + [2 * i + 1 for i in range(d)] + [2 * d]
    return jnp.transpose(wt, order).reshape(*taps, c_out, math.prod(strides) * c_in)


def strided_input_gradient(
    g: jax.Array,
    kernel: jax.Array,
    numbers: lax.ConvDimensionNumbers,
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    input_shape: Sequence[int],
    precision=None,
) -> jax.Array:
    """The input gradient of ``conv_general_dilated`` (see the module docstring).

    Args:
      g: the cotangent of the convolution's output, laid out as ``numbers.out_spec``.
      kernel: :func:`phase_kernel` of the forward kernel.
      numbers: the forward convolution's dimension numbers.
      strides, padding: the forward convolution's (``padding`` as (low, high) pairs).
      input_shape: the forward input's shape.
      precision: passed to the convolution.

    Returns:
      The gradient with respect to the forward input (``input_shape``, its layout).
    """
    lhs_spec, _, out_spec = numbers
    d = len(strides)
    gt = jnp.transpose(g, (out_spec[0], *out_spec[2:], out_spec[1]))  # (N, O..., Cout)
    taps = kernel.shape[:d]
    sizes = [input_shape[a] for a in lhs_spec[2:]]
    pads = []
    for m, s, (low, _), size, o in zip(taps, strides, padding, sizes, gt.shape[1 : 1 + d]):
        pads.append((m - 1, max(0, -(-(low + size) // s) - o)))
    spatial = tuple(range(1, d + 1))
    canonical = lax.ConvDimensionNumbers(
        (0, d + 1, *spatial), (d + 1, d, *range(d)), (0, d + 1, *spatial)
    )
    y = lax.conv_general_dilated(
        gt, kernel, (1,) * d, pads, dimension_numbers=canonical, precision=precision
    )
    n, phases = y.shape[0], y.shape[1 : 1 + d]
    y = y.reshape(n, *phases, *strides, -1)
    interleave = [0] + [a for i in range(d) for a in (1 + i, 1 + d + i)] + [1 + 2 * d]
    y = jnp.transpose(y, interleave).reshape(n, *[q * s for q, s in zip(phases, strides)], -1)
    y = y[(slice(None), *[slice(low, low + size) for (low, _), size in zip(padding, sizes)])]
    return jnp.transpose(y, np.argsort([lhs_spec[0], *lhs_spec[2:], lhs_spec[1]]))


__all__ = ["phase_kernel", "phase_split_applies", "strided_input_gradient"]
