"""The custom-VJP replacements :mod:`cnnvis_jax.rules` substitutes for single
operations: a ReLU with a backward rule (gradient, deconvnet, guided, redirected,
LRP's pass), a max-pool routing to the window centre or to its switches without
select-and-scatter, and a convolution whose input gradient reads an explicitly
transposed kernel. Each builder takes the equation it replaces.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from cnnvis_jax._jaxpr_scan import _bind, _inexact
from cnnvis_jax.conv_grad import phase_kernel, phase_split_applies, strided_input_gradient

# --- the rules at one ReLU ----------------------------------------------------------


def _gradient(x: jax.Array, g: jax.Array) -> jax.Array:
    return jnp.where(x > 0, g, jnp.zeros_like(g))


def _deconvnet(x: jax.Array, g: jax.Array) -> jax.Array:
    del x
    return jnp.maximum(g, jnp.zeros_like(g))


def _guided(x: jax.Array, g: jax.Array) -> jax.Array:
    return jnp.where(x > 0, jnp.maximum(g, jnp.zeros_like(g)), jnp.zeros_like(g))


def _redirected(x: jax.Array, g: jax.Array) -> jax.Array:
    plain = _gradient(x, g)
    redirected = jnp.where((x > 0) | (g > 0), g, jnp.zeros_like(g))
    passes = jnp.any(plain != 0, axis=tuple(range(1, g.ndim)), keepdims=True)
    return jnp.where(passes, plain, redirected)


def _pass(x: jax.Array, g: jax.Array) -> jax.Array:
    del x
    return g


_RULE_FNS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "pass": _pass,  # LRP's rule at activations (LayerRules.activation)
    "gradient": _gradient,
    "deconvnet": _deconvnet,
    "guided": _guided,
    "redirected": _redirected,
}


@functools.cache
def _ruled_relu(rule: str, x_first: bool) -> Callable[[jax.Array], jax.Array]:
    """``x -> max(x, 0)`` (operands in the traced order) whose VJP is ``rule``."""
    backward = _RULE_FNS[rule]

    def forward(x):
        zero = lax.full_like(x, 0)
        return lax.max(x, zero) if x_first else lax.max(zero, x)

    forward.__name__ = forward.__qualname__ = f"{rule}_relu"  # shows in jaxprs
    relu = jax.custom_vjp(forward)
    relu.defvjp(lambda x: (forward(x), x), lambda x, g: (backward(x, g),))
    return relu


# --- centre unpooling ----------------------------------------------------------------


def _center_max_pool(eqn) -> Callable[[jax.Array], jax.Array]:
    """The ``reduce_window_max`` of ``eqn`` whose VJP routes to each window's centre."""
    params = eqn.params
    in_aval, out_aval = eqn.invars[0].aval, eqn.outvars[0].aval
    strides = tuple(params["window_strides"])
    start = [
        (k - 1) // 2 * d for k, d in zip(params["window_dimensions"], params["window_dilation"])
    ]
    limit = [s + (n - 1) * st + 1 for s, n, st in zip(start, out_aval.shape, strides)]
    config = [(lo, hi, b - 1) for (lo, hi), b in zip(params["padding"], params["base_dilation"])]

    def centres(x):  # linear: output position o reads padded input at o * stride + centre
        padded = lax.pad(x, jnp.zeros((), x.dtype), config)
        return lax.slice(padded, start, limit, strides)

    def forward(x):
        return _bind(eqn, [x])[0]

    def backward(_, g):
        if 0 in out_aval.shape:
            return (jnp.zeros(in_aval.shape, in_aval.dtype),)
        example = jax.ShapeDtypeStruct(in_aval.shape, in_aval.dtype)
        return tuple(jax.linear_transpose(centres, example)(g))

    forward.__name__ = forward.__qualname__ = "center_max_pool"
    pool = jax.custom_vjp(forward)
    pool.defvjp(lambda x: (forward(x), None), backward)
    return pool


# --- switch unpooling without select-and-scatter ------------------------------------


def _switch_max_pool(eqn) -> Callable[[jax.Array], jax.Array] | None:
    """The ``reduce_window_max`` of ``eqn`` with its own VJP, routing each window's
    cotangent to the window's first maximum (row-major) exactly as JAX's rule does.

    JAX differentiates a max-pool with XLA's select-and-scatter, which XLA:CPU runs
    as a scalar loop (20x the forward pool for AlexNet's first pool). Here each
    window tap is one dense comparison with the pooled output (in window order, so
    ties go to the first maximum) and one strided placement of the selected
    cotangents; the placements are added in the order select-and-scatter adds them
    (windows in row-major order), so the values are bit-identical. Dilated pools
    keep JAX's rule (returns None).
    """
    params = eqn.params
    if any(d != 1 for d in (*params["base_dilation"], *params["window_dilation"])):
        return None
    window, strides = tuple(params["window_dimensions"]), tuple(params["window_strides"])
    padding = tuple(tuple(p) for p in params["padding"])
    taps = list(itertools.product(*[range(k) for k in window]))
    x_shape = tuple(eqn.invars[0].aval.shape)
    padded_shape = [n + lo + hi for n, (lo, hi) in zip(x_shape, padding)]

    def forward(x):
        return _bind(eqn, [x])[0]

    def first_maxima(x, y):
        """bool (taps, *y.shape): which tap holds each window's first maximum (the
        switches; a residual, computed once per forward)."""
        padded = lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(lo, hi, 0) for lo, hi in padding])
        taken = jnp.zeros(y.shape, bool)
        hits = []
        for tap in taps:  # in window order: ties go to the first maximum
            limit = [t + (o - 1) * s + 1 for t, o, s in zip(tap, y.shape, strides)]
            hits.append((lax.slice(padded, tap, limit, strides) == y) & ~taken)
            taken = taken | hits[-1]
        return jnp.stack(hits)

    def backward(hits, g):
        zero = jnp.zeros((), g.dtype)
        total = jnp.zeros(padded_shape, g.dtype)
        for i in reversed(range(len(taps))):  # later taps belong to earlier windows
            place = [
                (t, n - t - (o - 1) * s - 1, s - 1)
                for t, o, s, n in zip(taps[i], g.shape, strides, padded_shape)
            ]
            total = total + lax.pad(jnp.where(hits[i], g, zero), zero, place)
        start = [lo for lo, _ in padding]
        return (lax.slice(total, start, [lo + n for lo, n in zip(start, x_shape)]),)

    def forward_with_switches(x):
        y = forward(x)
        if 0 in y.shape:
            return y, jnp.zeros((len(taps), *y.shape), bool)
        return y, first_maxima(x, y)

    forward.__name__ = forward.__qualname__ = "switch_max_pool"
    pool = jax.custom_vjp(forward)
    pool.defvjp(forward_with_switches, backward)
    return pool


# --- convolutions with an explicitly transposed kernel -------------------------------


def _explicit_conv(eqn) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
    """The ``conv_general_dilated`` of ``eqn`` with a layout-friendly input gradient.

    JAX's input gradient of a convolution is a convolution whose kernel is the
    forward kernel reversed, read with its input and output feature axes swapped.
    XLA:CPU copies such a kernel into its native layout when the program is
    straight-line, but not inside a ``while`` loop (``lax.scan``), where the
    convolution then falls back to a generic loop nest several times slower. Here
    the swap is done on the kernel itself (kept apart from the convolution by an
    optimization barrier), so the gradient convolution reads its kernel in the
    native layout everywhere. A strided convolution's input gradient is computed
    by phases instead (:mod:`~cnnvis_jax.conv_grad`), without the zeros of the
    dilated cotangent. Values are the same convolution sums; the forward pass and
    the kernel gradient are JAX's own. Grouped convolutions keep JAX's rule
    (returns None).
    """
    params = dict(eqn.params)
    if params.get("feature_group_count", 1) != 1 or params.get("batch_group_count", 1) != 1:
        return None
    if not all(_inexact(v) for v in eqn.invars):
        return None
    numbers = params["dimension_numbers"]
    out_axis, in_axis = numbers.rhs_spec[0], numbers.rhs_spec[1]
    perm = list(range(len(numbers.rhs_spec)))
    perm[out_axis], perm[in_axis] = in_axis, out_axis
    swapped = numbers._replace(rhs_spec=(in_axis, out_axis, *numbers.rhs_spec[2:]))
    strides = tuple(params["window_strides"])
    phase_split = phase_split_applies(params)

    def conv_with(x, w, dimension_numbers):
        return _bind(eqn, [x, w], {**params, "dimension_numbers": dimension_numbers})[0]

    def conv(x, w):
        return conv_with(x, w, numbers)

    def gradient_kernel(w):
        """The kernel the input gradient reads; a residual, computed once per forward."""
        kernel = phase_kernel(w, numbers.rhs_spec, strides) if phase_split else w.transpose(perm)
        return lax.optimization_barrier(kernel)

    def input_gradient(x, kernel, g):
        if phase_split:
            return strided_input_gradient(
                g, kernel, numbers, strides, params["padding"], x.shape, params.get("precision")
            ).astype(x.dtype)
        _, pull_x = jax.vjp(lambda x: conv_with(x, kernel, swapped), x)
        return pull_x(g)[0]

    def backward(residuals, g):
        x, w, kernel = residuals
        _, pull_w = jax.vjp(lambda w: conv(x, w), w)
        return input_gradient(x, kernel, g), pull_w(g)[0]

    conv.__name__ = conv.__qualname__ = "conv_explicit_transpose"
    explicit = jax.custom_vjp(conv)
    explicit.defvjp(lambda x, w: (conv(x, w), (x, w, gradient_kernel(w))), backward)
    return explicit
