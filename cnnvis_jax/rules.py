"""Backward rules: the same forward pass with a different VJP at every ReLU.

:func:`with_rules` transforms any JAX function ``fn(*args)``. It traces ``fn`` with
:func:`jax.make_jaxpr` and re-evaluates the jaxpr with a small interpreter that
replaces each ReLU by a :func:`jax.custom_vjp` function implementing the rule. The
forward values are exactly those of ``fn``; only reverse-mode derivatives change.
With ``x`` the ReLU input and ``g`` the incoming cotangent, the rules are:

==============  ==========================================================
``gradient``    ``g * [x > 0]`` (relu'(0) = 0, as in PyTorch)
``deconvnet``   ``max(g, 0)`` (Zeiler & Fergus 2014; ignores the forward mask)
``guided``      ``max(g, 0) * [x > 0]`` (Springenberg et al. 2015)
``redirected``  Lucid's redirected ReLU for activation maximization (below)
==============  ==========================================================

``redirected``, per example (the leading axis of the ReLU input is the batch axis;
a rank-0 input is one example): when the plain gradient ``g * [x > 0]`` is
non-zero anywhere in the example, it is used unchanged; when it is zero everywhere
(the unit is dead for that example and nothing would flow back) the example gets
``g * [x > 0 or g > 0]`` instead: below the kink only the part of the signal that
raises ``x`` passes. The sign convention is gradient *ascent*: ``g`` is the
derivative of the quantity being maximized, so ``g > 0`` asks for a larger ``x``.
This is Lucid's ``redirected_relu_grad`` (lucid/misc/redirected_relu_grad.py) with
three differences: Lucid minimizes a loss, so its ``grad > 0`` is our ``g < 0``;
relu'(0) is 0 here (Lucid passes the gradient at ``x == 0``); and the choice is made
per example along the leading axis (Lucid's ``tf.where`` broadcasts its per-example
norm against the last axis, which only agrees for batch size 1). Lucid switches back
to the plain gradient after 16 optimization steps; here that schedule belongs to
the caller (use ``redirected`` for the first steps, then ``gradient``).

Recognized ReLUs: ``jax.nn.relu`` (a ``custom_jvp_call`` whose body computes
``max(x, 0)``, matched by its body, not by its name) and ``max`` with a zero on
either side (``jnp.maximum(x, 0)``, ``lax.max(0., x)``, a broadcast zero array such
as ``jnp.zeros_like(x)``, or a constant all-zero array), wherever they occur: reused
several times, called functionally, inside ``jit``/``pjit``, ``closed_call``,
``remat``/``checkpoint``, ``custom_jvp``/``custom_vjp`` functions and ``scan``,
``cond`` and ``while`` bodies. Integer ReLUs are left alone (they have no
derivative). ``jnp.where(x > 0, x, 0)``, ``x * (x > 0)`` and other activations
(leaky ReLU, GELU, ...) are not ReLUs here; in ``relu6`` the ``max(x, 0)`` part
follows the rule and the clip at 6 keeps its derivative.

Other operations are re-bound unchanged, so they keep JAX's derivatives. A call
whose body contains no ReLU is re-bound as it is (a ``custom_jvp``/``custom_vjp``
function keeps its own derivative); one whose body contains a ReLU is entered:
``jit`` and ``closed_call`` bodies are inlined, ``remat`` bodies are re-wrapped in
:func:`jax.checkpoint` with the same policy, a ``custom_jvp``/``custom_vjp``
function is replaced by its primal body (its own derivative rule is dropped in
favour of the rules at its ReLUs), and any other operation with sub-jaxprs
(``scan``, ``cond``, ``while``) is re-bound with its bodies replaced by their ruled
versions of the same signature. Applying :func:`with_rules` to a function that
already went through it replaces the inner rule by the outer one.

Convolutions (``conv_general_dilated`` without feature or batch groups) that the
interpreter meets can be re-bound (``explicit_conv_transpose=True``) with the same
forward and the same derivative values, but with an input gradient that reads an
explicitly transposed kernel. Inside ``lax.scan`` loops XLA:CPU otherwise runs
JAX's transposed-kernel convolution on a slow generic path (an ascent step on
ConceptNet: 1.6x one straight-line forward+backward; 0.65x with the explicit
kernel). Strided convolutions then take their input gradient by phases
(:mod:`~cnnvis_jax.conv_grad`), and max-pools with switches route their cotangents
with dense operations instead of XLA's select-and-scatter (bit-identical values;
4x faster for AlexNet's first pool on CPU). :func:`model_for_input_gradients`
applies only this.

Max-pooling (``reduce_window_max``, which ``lax.reduce_window(x, -inf, lax.max,
...)`` and Flax's ``max_pool`` produce) keeps Zeiler's switches by default: JAX
sends each window's cotangent to one maximum. ``pool="center"`` is the ablation
that discards the switches (Mahendran & Vedaldi 2016): each window's cotangent goes
to the window's centre tap, index ``(k - 1) // 2`` along every axis of a ``k``-tap
window (input offset ``(k - 1) // 2 * dilation`` from the window's start). For odd
``k`` that is the centre; for even ``k`` it is the first of the two middle taps, so
a 2x2 window routes to its top-left pixel. A centre that falls in padding (or in a
hole of a base-dilated input) receives nothing. ``jnp.max`` over reshaped windows
is not a max-pool here.

Layer-wise relevance propagation (LRP): ``rule`` may be a :class:`LayerRules` (see
:mod:`cnnvis_jax.lrp` for composites and maps of models). The cotangent that flows
back is then the relevance, and besides ReLUs (relevance passes unchanged, zennit's
Pass, or ``activation="gradient"``) the interpreter replaces *layers* by functions
whose VJP is an LRP rule, computed as zennit's rules compute it. Activations are the
values that depend on the ``data_argnums`` arguments; the rest are parameters, which
get zero cotangents at layers. Layers, numbered in forward order:

* ``conv``: ``conv_general_dilated`` of an activation with a parameter kernel (no
  batch groups); ``dense``: ``dot_general`` with one activation operand and no batch
  axes. The layer's output ``z`` includes its affine epilogue, the single-use chain
  of ``add``/``sub``/``mul``/``div``/``neg`` with parameter operands that follows
  (multipliers must vary only along the output features): the bias and a batch norm
  in evaluation mode, merged as zennit's batch-norm canonizers merge it (kernel
  ``w * s``, bias the epilogue applied to zero). With ``batch_norm="pass"`` only the
  ``add`` operations (the bias) belong to the layer.
* ``pool``: ``reduce_window_sum`` with a window of 1 along the first and last axes,
  and ``reduce_sum`` over neither of them (sum and average pools of NHWC maps), with
  the ``mul``/``div`` that follows (a mean's division) and the pools that directly
  follow (averages over one axis after the other form one pool).
* ``sum``: ``add`` of two activations of one shape (residual connections; zennit's
  Sum layer after its ResNet canonizers).

An elementwise ``add``/``sub``/``mul``/``div`` of an activation and a parameter vector
along the last axis that belongs to no layer (a batch norm after no layer, or left
out by ``"pass"``) passes relevance unchanged (zennit's Pass at batch norms); every
other operation (max-pools included) keeps its derivative. With ``x`` the layer
input, ``w`` its kernel, ``b`` its bias, ``z = x w + b``, ``R`` the incoming
cotangent, ``s(v) = v + epsilon * sign(v)`` (sign +1 at 0), ``J_w^T`` the transpose
of ``x -> x w`` and ``+``/``-`` positive and negative parts, the rules give:

==============  ============================================================================
``zero``        ``x * J_w^T (R / z)`` (0 where z == 0)
``epsilon``     ``x * J_w^T (R / s(z))``; ``norm`` is the same (zennit's Norm)
``zplus``       ``x+ * J_{w+}^T g + x- * J_{w-}^T g``, ``g = R / s(x+ w+ + b+ + x- w-)``
``alpha_beta``  ``alpha`` times the z-plus share minus ``beta`` times the share of
                ``x+ w- + b- + x- w+`` (same pattern)
``gamma``       ``u = w + gamma w+``, ``d = w + gamma w-``: ``g1 = [z > 0] R / s(x+ u +
                b + gamma b+ + x- d)``, ``g2 = [z < 0] R / s(x+ d + b + gamma b- + x- u)``,
                ``x+ * (J_u^T g1 + J_d^T g2) + x- * (J_d^T g1 + J_u^T g2)``
``zbox``        bounds ``l <= x <= h``: ``g = R / s(z - (l w+ + b+) - (h w- + b-))``,
                ``x * J_w^T g - (l * J_{w+}^T g + h * J_{w-}^T g)``
``flat``        ``J_1^T (R / s(1 1))``: all-ones input and kernel, no bias
``wsquare``     ``J_{w^2}^T (R / s(1 w^2 + b^2))``
``gradient``    the layer's own VJP
==============  ============================================================================

At pools and sums ``norm``, ``epsilon`` and ``zero`` use the layer's own transpose,
``x * J^T (R / s(z))`` per operand. Where a layer input is known to be non-negative
(a ReLU output, or a max-pool, reshape, slice or concatenation of such) its negative
half is skipped, which changes no value. Layers inside ``scan``, ``cond`` or
``while`` bodies are refused (:class:`InputError`). :func:`lrp_sites` lists the
layers of a function and where its outputs come from.

The transformed function composes with :func:`jax.jit`, :func:`jax.vmap`,
:func:`jax.vjp` and first-order :func:`jax.grad`. Forward-mode differentiation
(:func:`jax.jvp`, :func:`jax.jacfwd`) through a replaced ReLU is not available
(:func:`jax.custom_vjp` functions only have a reverse rule), nor are derivatives of
the rules themselves (second order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnvis_jax.conv_grad import phase_kernel, phase_split_applies, strided_input_gradient
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import ApplyFn, Model
from cnnvis_jax.receptive_field import _CALL_PARAMS

try:  # public home of the jaxpr types since jax 0.4.2x
    from jax.extend.core import ClosedJaxpr, Jaxpr, Literal
except ImportError:  # pragma: no cover - older jax
    from jax.core import ClosedJaxpr, Jaxpr, Literal  # type: ignore[no-redef]

__all__ = [
    "ACTIVATION_RULES",
    "BATCH_NORM_MODES",
    "LAYER_KINDS",
    "LRP_RULES",
    "POOLS",
    "RULES",
    "RULES_BY_KIND",
    "LRPLayout",
    "LayerRule",
    "LayerRules",
    "SiteInfo",
    "lrp_sites",
    "model_for_input_gradients",
    "model_with_rules",
    "relu_count",
    "with_rules",
]

RULES = ("gradient", "deconvnet", "guided", "redirected")
"""Valid ``rule`` names of :func:`with_rules`."""

POOLS = ("switches", "center")
"""Valid ``pool`` names: max-pool cotangents to the argmax, or to the window centre."""

_CACHE_SIZE = 16
"""Traced programs kept per transformed function (one per argument shapes/dtypes)."""


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


# --- recognizing ReLUs in a jaxpr ---------------------------------------------------

_INLINED_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call"})
_REMAT = frozenset({"remat", "remat2", "checkpoint"})
_CUSTOM_JVP = frozenset({"custom_jvp_call", "custom_jvp_call_jaxpr"})
_CUSTOM_VJP = frozenset({"custom_vjp_call", "custom_vjp_call_jaxpr"})
_CALLS = _INLINED_CALLS | _REMAT | _CUSTOM_JVP | _CUSTOM_VJP
"""Calls whose body takes the operands as they are; entered when they hold a ReLU."""
_ZERO_PRESERVING = frozenset(
    {"broadcast_in_dim", "convert_element_type", "reshape", "squeeze", "expand_dims", "copy"}
)
"""Primitives whose output is all zeros when their first operand is."""

_Closed = tuple[Jaxpr, Sequence[Any]]
_Zeros = frozenset
"""Variables of one jaxpr known to hold only zeros."""


def _open(jaxpr) -> _Closed:
    """(open jaxpr, const values) of a Jaxpr or ClosedJaxpr."""
    if isinstance(jaxpr, ClosedJaxpr):
        return jaxpr.jaxpr, jaxpr.consts
    return jaxpr, ()


def _inexact(v) -> bool:
    return jnp.issubdtype(v.aval.dtype, jnp.inexact)


def _is_zero(v, zeros: _Zeros) -> bool:
    if isinstance(v, Literal):
        value = np.asarray(v.val)
        return value.dtype != object and bool(np.all(value == 0))
    return v in zeros


def _concrete_zero(value) -> bool:
    if isinstance(value, jax.core.Tracer):
        return False
    array = np.asarray(value)
    return array.dtype != object and bool(np.all(array == 0))


def _relu_operand(eqn, zeros: _Zeros) -> int | None:
    """Index of ``x`` when ``eqn`` is ``max(x, 0)`` or ``max(0, x)``, else None."""
    if eqn.primitive.name != "max" or len(eqn.invars) != 2 or not _inexact(eqn.outvars[0]):
        return None
    out_shape = tuple(eqn.outvars[0].aval.shape)
    for k in (0, 1):
        x, other = eqn.invars[k], eqn.invars[1 - k]
        if (
            not isinstance(x, Literal)
            and _is_zero(other, zeros)
            and not _is_zero(x, zeros)
            and tuple(x.aval.shape) == out_shape
        ):
            return k
    return None


def _body(eqn):
    """The sub-jaxpr of a call-like equation (jit, remat, custom_jvp/vjp, ...)."""
    for key in _CALL_PARAMS:
        if isinstance(eqn.params.get(key), (Jaxpr, ClosedJaxpr)):
            return eqn.params[key]
    raise KeyError(f"{eqn.primitive.name} has no body among params {sorted(eqn.params)}")


class _Analysis:
    """Static facts about one traced program, memoized per (sub-)jaxpr.

    ``zero_in`` is a tuple of flags, one per input variable of the jaxpr, saying
    which inputs are known to be all zeros (zero arrays passed into a ``jit``).
    Memo keys use the ids of the jaxpr and its consts; the memo keeps them alive so
    the ids stay unique.
    """

    def __init__(self):
        self._memo: dict[tuple, tuple[Any, Any]] = {}

    def memo(self, kind: str, jaxpr, consts, extra: tuple, compute: Callable[[], Any]):
        key = (kind, id(jaxpr), tuple(map(id, consts)), extra)
        if key not in self._memo:
            self._memo[key] = ((jaxpr, consts), compute())
        return self._memo[key][1]

    def zeros(self, jaxpr: Jaxpr, consts: Sequence[Any], zero_in: tuple) -> _Zeros:
        """Variables of ``jaxpr`` that hold only zeros."""

        def compute():
            wanted = {  # constants worth checking: a full scan of a weight array is not
                id(v)
                for eqn in jaxpr.eqns
                if eqn.primitive.name in _ZERO_PRESERVING | _INLINED_CALLS | {"max"}
                for v in eqn.invars
            }
            found = {
                v for v, c in zip(jaxpr.constvars, consts) if id(v) in wanted and _concrete_zero(c)
            }
            found |= {v for v, flag in zip(jaxpr.invars, zero_in) if flag}
            for eqn in jaxpr.eqns:
                name = eqn.primitive.name
                if name in _ZERO_PRESERVING and eqn.invars and _is_zero(eqn.invars[0], found):
                    found.add(eqn.outvars[0])
                elif name in _INLINED_CALLS:
                    inner, inner_consts = _open(_body(eqn))
                    flags = tuple(_is_zero(v, found) for v in eqn.invars)
                    inner_zeros = self.zeros(inner, inner_consts, flags)
                    found |= {
                        out
                        for out, v in zip(eqn.outvars, inner.outvars)
                        if _is_zero(v, inner_zeros)
                    }
            return frozenset(found)

        return self.memo("zeros", jaxpr, consts, zero_in, compute)

    def is_relu_body(self, closed) -> bool:
        """Whether a one-input, one-output jaxpr computes exactly ``max(x, 0)``."""
        jaxpr, consts = _open(closed)

        def compute():
            if len(jaxpr.invars) != 1 or len(jaxpr.outvars) != 1:
                return False
            zeros = self.zeros(jaxpr, consts, (False,))
            relu_out = set()
            for eqn in jaxpr.eqns:
                name = eqn.primitive.name
                k = _relu_operand(eqn, zeros)
                if k is not None and eqn.invars[k] is jaxpr.invars[0]:
                    relu_out.add(eqn.outvars[0])
                elif name in _ZERO_PRESERVING and eqn.outvars[0] in zeros:
                    continue
                elif (
                    name in _INLINED_CALLS
                    and list(eqn.invars) == list(jaxpr.invars)
                    and len(eqn.outvars) == 1
                    and self.is_relu_body(_body(eqn))
                ):
                    relu_out.add(eqn.outvars[0])
                else:
                    return False
            return jaxpr.outvars[0] in relu_out

        return self.memo("relu_body", jaxpr, consts, (), compute)

    def is_relu_call(self, eqn) -> bool:
        """Whether ``eqn`` is a ``custom_jvp`` call of a ReLU (``jax.nn.relu``)."""
        return (
            eqn.primitive.name in _CUSTOM_JVP
            and len(eqn.invars) == 1
            and len(eqn.outvars) == 1
            and _inexact(eqn.outvars[0])
            and self.is_relu_body(_body(eqn))
        )

    def relu_operand(self, eqn, zeros: _Zeros) -> int | None:
        """Index of the ReLU input among ``eqn.invars``, or None when it is no ReLU."""
        if self.is_relu_call(eqn):
            return 0
        return _relu_operand(eqn, zeros)

    def count(self, jaxpr: Jaxpr, consts: Sequence[Any], zero_in: tuple) -> tuple[int, int, int]:
        """(ReLU sites, max-pool sites, candidate LRP layers) in ``jaxpr`` and its
        sub-jaxprs; candidates are the primitives an LRP layer can start with."""

        def compute():
            zeros = self.zeros(jaxpr, consts, zero_in)
            relus = pools = layers = 0
            for eqn in jaxpr.eqns:
                if self.relu_operand(eqn, zeros) is not None:
                    relus += 1
                elif eqn.primitive.name == "reduce_window_max" and _inexact(eqn.outvars[0]):
                    pools += 1
                elif eqn.primitive.name in _LAYER_CORES:
                    layers += 1
                else:
                    for sub in _sub_jaxprs(eqn, zeros):
                        r, p, n = self.count(sub.jaxpr, sub.consts, sub.flags)
                        relus, pools, layers = relus + r, pools + p, layers + n
            return relus, pools, layers

        return self.memo("count", jaxpr, consts, zero_in, compute)


class _Sub(NamedTuple):
    """One sub-jaxpr of an equation: where it sits in the params, and what it knows."""

    key: str  # the param holding it
    index: int | None  # position in a tuple of jaxprs (cond branches), else None
    jaxpr: Jaxpr
    consts: Sequence[Any]
    flags: tuple  # zero flags of its inputs


def _sub_jaxprs(eqn, zeros: _Zeros) -> list[_Sub]:
    """Every sub-jaxpr in ``eqn``'s params, with the zero flags of its inputs.

    Zeros are passed on where inputs map to operands one to one (calls, ``cond``
    branches after the index, ``scan`` consts); loop carries are never assumed zero.
    """
    operand_zeros = tuple(_is_zero(v, zeros) for v in eqn.invars)
    name = eqn.primitive.name
    subs = []
    for key, value in eqn.params.items():
        if isinstance(value, (Jaxpr, ClosedJaxpr)):
            found = [(None, value)]
        elif isinstance(value, (tuple, list)):
            found = [(i, v) for i, v in enumerate(value) if isinstance(v, (Jaxpr, ClosedJaxpr))]
        else:
            continue
        for index, sub in found:
            jaxpr, consts = _open(sub)
            n = len(jaxpr.invars)
            flags = (False,) * n
            if name == "cond":
                flags = operand_zeros[1:]
            elif name == "scan":
                n_consts = eqn.params.get("num_consts", 0)  # newer jax: no zero knowledge
                flags = operand_zeros[:n_consts] + (False,) * (n - n_consts)
            elif name != "while" and n == len(operand_zeros):
                flags = operand_zeros
            subs.append(_Sub(key, index, jaxpr, consts, flags if len(flags) == n else (False,) * n))
    return subs


# --- layer-wise relevance propagation: rules ----------------------------------------

LRP_RULES = (
    "zero", "epsilon", "gamma", "zplus", "alpha_beta", "zbox", "flat", "wsquare", "norm",
    "gradient",
)  # fmt: skip
"""Names of the :class:`LayerRule` rules (formulas in the module docstring)."""

LAYER_KINDS = ("conv", "dense", "pool", "sum")
"""Kinds of layers LRP rules apply to: convolutions, dense layers (``dot_general``),
sum/average pools and sums of two activations (residual connections)."""

RULES_BY_KIND = {
    "conv": LRP_RULES,
    "dense": LRP_RULES,
    "pool": ("norm", "epsilon", "zero", "gradient"),
    "sum": ("norm", "epsilon", "zero", "gradient"),
}
"""The rules each kind of layer accepts: parameter rules need a kernel."""

ACTIVATION_RULES = ("pass", "gradient")
"""What a ReLU does to relevance under LRP: pass it unchanged, or mask it."""

BATCH_NORM_MODES = ("merge", "pass")
"""How an affine epilogue after a conv/dense layer (batch norm) is treated."""

_LAYER_CORES = frozenset({"conv_general_dilated", "dot_general", "reduce_window_sum", "reduce_sum"})
"""Primitives an LRP layer starts with (sums of activations are ``add``)."""
_EPILOGUE_OPS = frozenset({"add", "sub", "mul", "div", "neg"})
_SAME_VALUES = frozenset(
    {"reshape", "squeeze", "expand_dims", "convert_element_type", "copy", "transpose"}
)
"""Primitives that only move or retype values: a layer seen through them is the same layer."""
_KEEPS_NONNEGATIVE = _SAME_VALUES | {
    "slice", "dynamic_slice", "broadcast_in_dim", "reduce_window_max", "concatenate", "rev",
}  # fmt: skip
"""Primitives whose output is non-negative when all their float operands are."""


def _nested_tuple(value) -> float | tuple:
    """A hashable copy of a number or an array: a float or nested tuples of floats."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return float(array)
    return tuple(_nested_tuple(row) for row in array)


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """One LRP rule with its parameters, as zennit defines it (see the module docstring).

    Attributes:
      name: one of :data:`LRP_RULES`.
      epsilon: the epsilon of ``"epsilon"``; the stabilizer of every other rule
        (added to each denominator with the denominator's sign, +1 for zero).
      gamma: weight of the added positive (or negative) parameter parts of ``"gamma"``.
      alpha, beta: weights of the positive and negative parts of ``"alpha_beta"``
        (non-negative, ``alpha - beta == 1``).
      low, high: bounds of the layer input for ``"zbox"``: numbers, or arrays that
        broadcast against the input (per channel for NHWC input: shape ``(C,)``).
    """

    name: str
    epsilon: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    low: float | tuple | None = None
    high: float | tuple | None = None

    def __post_init__(self):
        if self.name not in LRP_RULES:
            raise InputError(
                f"unknown LRP rule {self.name!r}; valid rules: {', '.join(LRP_RULES)}."
            )
        if not float(self.epsilon) >= 0:
            raise InputError(f"LRP {self.name!r}: epsilon must be >= 0, got {self.epsilon}.")
        if self.name == "alpha_beta" and (
            self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-12
        ):
            raise InputError(
                f"LRP alpha_beta needs alpha, beta >= 0 with alpha - beta == 1, got "
                f"alpha={self.alpha}, beta={self.beta}."
            )
        if self.name == "zbox":
            if self.low is None or self.high is None:
                raise InputError("LRP zbox needs the input bounds low and high.")
            object.__setattr__(self, "low", _nested_tuple(self.low))
            object.__setattr__(self, "high", _nested_tuple(self.high))

    def applies_to(self, kind: str) -> bool:
        """Whether this rule is defined for layers of ``kind`` (see :data:`RULES_BY_KIND`)."""
        return self.name in RULES_BY_KIND[kind]


@dataclasses.dataclass(frozen=True)
class LayerRules:
    """LRP as the ``rule`` of :func:`with_rules`: which rule every layer gets.

    Layers are numbered in the order the forward pass meets them (site 0 is the
    first). A layer's rule is, in this order: its entry in ``sites``; ``first`` when
    it is the first layer whose kind is in ``first_kinds`` (that layer takes the
    first slot even when ``sites`` overrides its rule, as in zennit); else the rule
    for its kind (``conv``, ``dense``, ``pool`` or ``sum``). Hashable, so it can be a
    static argument of :func:`jax.jit`.

    Attributes:
      conv, dense, pool, sum: the rule per kind (see :data:`LAYER_KINDS`).
      first: the rule of the first layer of a kind in ``first_kinds`` (None: none).
      first_kinds: kinds that count for ``first``.
      sites: ``((site index, rule), ...)`` overrides.
      activation: ``"pass"`` (zennit's Pass: relevance crosses ReLUs unchanged) or
        ``"gradient"`` (masked by ``x > 0``).
      batch_norm: ``"merge"``: an affine epilogue after a conv/dense layer (bias,
        batch norm in evaluation mode, scalings) is part of the layer, as if merged
        into its kernel and bias (zennit's batch-norm canonizers); ``"pass"``: only
        the bias adds belong to the layer, the rest passes relevance unchanged
        (zennit's composites without canonizers).
    """

    conv: LayerRule
    dense: LayerRule
    pool: LayerRule = LayerRule("norm")
    sum: LayerRule = LayerRule("norm")
    first: LayerRule | None = None
    first_kinds: tuple[str, ...] = ("conv", "dense")
    sites: tuple[tuple[int, LayerRule], ...] = ()
    activation: str = "pass"
    batch_norm: str = "merge"

    def __post_init__(self):
        for kind in LAYER_KINDS:
            rule = getattr(self, kind)
            if not isinstance(rule, LayerRule):
                raise InputError(f"LayerRules.{kind} must be a LayerRule, got {rule!r}.")
            _check_applies(rule, kind, f"{kind} layers")
        unknown = [k for k in self.first_kinds if k not in LAYER_KINDS]
        if unknown:
            raise InputError(f"unknown layer kind {unknown[0]!r}; kinds: {', '.join(LAYER_KINDS)}.")
        if self.activation not in ACTIVATION_RULES:
            raise InputError(
                f"unknown activation rule {self.activation!r}; valid: {', '.join(ACTIVATION_RULES)}."
            )
        if self.batch_norm not in BATCH_NORM_MODES:
            raise InputError(
                f"unknown batch_norm mode {self.batch_norm!r}; valid: {', '.join(BATCH_NORM_MODES)}."
            )
        object.__setattr__(self, "first_kinds", tuple(self.first_kinds))
        object.__setattr__(self, "sites", tuple((int(i), r) for i, r in self.sites))

    def rule_for(self, kind: str, index: int, first: bool) -> LayerRule:
        """The rule of layer ``index`` of ``kind`` (``first``: it takes the first slot)."""
        override = dict(self.sites).get(index)
        if override is not None:
            return override
        if first and self.first is not None:
            return self.first
        return getattr(self, kind)


def _check_applies(rule: LayerRule, kind: str, where: str) -> None:
    if not rule.applies_to(kind):
        raise InputError(
            f"LRP rule {rule.name!r} is not defined for {where} (a {kind} layer); the rules "
            f"that apply there: {', '.join(RULES_BY_KIND[kind])}."
        )


class SiteInfo(NamedTuple):
    """One layer LRP rules apply to, as :func:`lrp_sites` finds it.

    Attributes:
      index: position in forward order (the key of :attr:`LayerRules.sites`).
      kind: one of :data:`LAYER_KINDS`.
      ops: the primitives that make up the layer (core first, then its epilogue:
        bias add, batch norm, the division of a mean).
      input_shape, output_shape: shapes of the layer input and output ``z``.
    """

    index: int
    kind: str
    ops: tuple[str, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


class LRPLayout(NamedTuple):
    """The LRP layers of a function and where its outputs come from.

    Attributes:
      sites: the layers in forward order.
      outputs: ``fn``'s output structure with, per leaf, the index of the layer whose
        output it is (seen through ReLUs, reshapes and passed batch norms) or, when it
        comes from no such layer, the name of the operation that produced it
        (``"max_pool"``, ``"input"``, a primitive name).
    """

    sites: tuple[SiteInfo, ...]
    outputs: Any


# --- layer-wise relevance propagation: finding the layers in a jaxpr ----------------


def _is_var(v) -> bool:
    return not isinstance(v, Literal)


def _shape(v) -> tuple[int, ...]:
    return tuple(np.shape(v.val)) if isinstance(v, Literal) else tuple(v.aval.shape)


class _Step(NamedTuple):
    """One operation of a layer's affine epilogue (bias add, batch norm, ...)."""

    index: int  # equation index in the jaxpr
    position: int  # operand position of the running value
    scale: tuple | None  # mul/div of a conv/dense layer: (source var, rank-matched shape)


class _Site(NamedTuple):
    """A layer found in a jaxpr: a core equation and its epilogue."""

    kind: str
    core: int  # equation index of the conv / dot_general / pool sum / add
    steps: tuple[_Step, ...]
    data_positions: tuple[int, ...]  # core operands that carry activations
    nonnegative_input: bool  # the activation operand is >= 0 (a ReLU output)
    inputs: tuple  # every variable the layer reads, in a fixed order
    output: Any  # the variable holding z


class _Plan(NamedTuple):
    """What LRP does with each equation of one jaxpr."""

    data: frozenset  # variables that depend on the activations
    sites: dict  # index of the layer's last equation -> _Site (evaluated there)
    inside: frozenset  # the layer's other equation indices (skipped)
    passes: dict  # equation index -> operand position whose cotangent passes unchanged


class _Graph:
    """Producers, consumers and use counts of the variables of one jaxpr."""

    def __init__(self, jaxpr: Jaxpr):
        self.producer: dict[Any, int] = {}
        self.consumers: dict[Any, list[int]] = defaultdict(list)
        self.uses: Counter = Counter()
        for i, eqn in enumerate(jaxpr.eqns):
            for v in eqn.invars:
                if _is_var(v):
                    self.uses[v] += 1
                    self.consumers[v].append(i)
            for v in eqn.outvars:
                self.producer[v] = i
        for v in jaxpr.outvars:
            if _is_var(v):
                self.uses[v] += 1


def _data_vars(analysis: _Analysis, jaxpr: Jaxpr, consts, data_in: tuple) -> frozenset:
    """Variables of ``jaxpr`` that depend on the inputs flagged in ``data_in``.

    Call bodies are followed exactly; other operations with sub-jaxprs (loops,
    branches) conservatively make every output depend on any flagged operand.
    """

    def compute():
        data = {v for v, flag in zip(jaxpr.invars, data_in) if flag}
        for eqn in jaxpr.eqns:
            flags = tuple(_is_var(v) and v in data for v in eqn.invars)
            if not any(flags):
                continue
            if eqn.primitive.name in _CALLS:
                inner, inner_consts = _open(_body(eqn))
                if len(inner.invars) == len(flags):
                    inner_data = _data_vars(analysis, inner, inner_consts, flags)
                    data.update(
                        out
                        for out, v in zip(eqn.outvars, inner.outvars)
                        if _is_var(v) and v in inner_data
                    )
                    continue
            data.update(eqn.outvars)
        return frozenset(data)

    return analysis.memo("data", jaxpr, consts, data_in, compute)


def _nonnegative_vars(analysis: _Analysis, jaxpr: Jaxpr, zeros: _Zeros) -> set:
    """Variables known to be >= 0: ReLU outputs and what max-pools, reshapes, slices
    and concatenations make of them."""
    found = set()
    for eqn in jaxpr.eqns:
        if analysis.relu_operand(eqn, zeros) is not None:
            found.add(eqn.outvars[0])
        elif eqn.primitive.name in _KEEPS_NONNEGATIVE:
            floats = [v for v in eqn.invars if _is_var(v) and _inexact(v)]
            if floats and all(v in found for v in floats):
                found.update(eqn.outvars)
    return found


def _per_feature(operand, features: frozenset, rank: int, graph: _Graph, eqns) -> tuple | None:
    """(source, shape) when ``operand`` only varies along the ``features`` axes of a
    rank-``rank`` output: ``source`` (a variable or literal) reshaped to ``shape``
    (rank ``rank``, size 1 off ``features``) holds its values; None otherwise."""
    source, shape = operand, _shape(operand)
    producer = graph.producer.get(operand) if _is_var(operand) else None
    if producer is not None and eqns[producer].primitive.name == "broadcast_in_dim":
        source = eqns[producer].invars[0]
        dims = tuple(eqns[producer].params["broadcast_dimensions"])
        inner = _shape(source)
        shape = tuple(inner[dims.index(k)] if k in dims else 1 for k in range(rank))
    if len(shape) == 0:
        return source, ()
    if len(shape) != rank or any(d != 1 for k, d in enumerate(shape) if k not in features):
        return None
    return source, shape


def _dense_feature_axes(eqn, position: int) -> frozenset:
    """Output axes of a ``dot_general`` (no batch axes) that belong to the kernel."""
    (lhs_contract, rhs_contract), _ = eqn.params["dimension_numbers"]
    contract = (lhs_contract, rhs_contract)
    x_free = len(_shape(eqn.invars[position])) - len(contract[position])
    w_free = len(_shape(eqn.invars[1 - position])) - len(contract[1 - position])
    start = x_free if position == 0 else 0
    return frozenset(range(start, start + w_free))


def _core_of(eqn, data: frozenset) -> tuple[str, tuple[int, ...], frozenset | None] | None:
    """(kind, activation operand positions, feature axes) when ``eqn`` starts a layer."""
    if len(eqn.outvars) != 1 or not _inexact(eqn.outvars[0]):
        return None
    flags = [_is_var(v) and v in data for v in eqn.invars]
    name, params = eqn.primitive.name, eqn.params
    out_shape = _shape(eqn.outvars[0])
    rank = len(out_shape)
    if name == "conv_general_dilated":
        if flags[0] and not flags[1] and params.get("batch_group_count", 1) == 1:
            return "conv", (0,), frozenset({params["dimension_numbers"].out_spec[1]})
    elif name == "dot_general":
        _, (lhs_batch, rhs_batch) = params["dimension_numbers"]
        if sum(flags) == 1 and not tuple(lhs_batch) and not tuple(rhs_batch):
            position = flags.index(True)
            return "dense", (position,), _dense_feature_axes(eqn, position)
    elif name == "reduce_window_sum":
        window = params["window_dimensions"]
        if flags[0] and rank >= 3 and window[0] == 1 and window[-1] == 1:
            return "pool", (0,), None
    elif name == "reduce_sum":
        in_rank, axes = len(_shape(eqn.invars[0])), tuple(params["axes"])
        if flags[0] and in_rank >= 3 and 0 not in axes and in_rank - 1 not in axes:
            return "pool", (0,), None
    elif name == "add":
        if len(flags) == 2 and all(flags) and all(_shape(v) == out_shape for v in eqn.invars):
            return "sum", (0, 1), None
    return None


def _epilogue(eqn, kind, features, data, graph: _Graph, eqns, batch_norm) -> tuple[_Step, ...]:
    """The operations after a layer's core that belong to the layer: its affine
    epilogue, and for a pool the pools that directly follow (an average over one
    axis after the other is one pool, as zennit sees a 2-d average pool)."""
    if kind == "sum":
        return ()
    if kind == "pool":
        allowed = frozenset({"mul", "div"})  # the division of a mean
    else:
        allowed = _EPILOGUE_OPS if batch_norm == "merge" else frozenset({"add"})
    steps: list[_Step] = []
    current = eqn.outvars[0]
    rank = len(_shape(current))
    while graph.uses[current] == 1 and len(graph.consumers[current]) == 1:
        index = graph.consumers[current][0]
        nxt = eqns[index]
        name = nxt.primitive.name
        if kind == "pool":
            moves = _moves_to_pool(current, data, graph, eqns)
            if moves:
                steps += [_Step(i, 0, None) for i in moves]
                current = eqns[moves[-1]].outvars[0]
                continue
        if name not in allowed or len(nxt.outvars) != 1:
            break
        out = nxt.outvars[0]
        if _shape(out) != _shape(current) or out.aval.dtype != current.aval.dtype:
            break
        positions = [k for k, v in enumerate(nxt.invars) if v is current]
        others = [v for k, v in enumerate(nxt.invars) if v is not current]
        if len(positions) != 1 or any(_is_var(o) and o in data for o in others):
            break
        if name == "div" and positions[0] != 0:
            break
        scale = None
        if name in ("mul", "div") and features is not None:
            scale = _per_feature(others[0], features, rank, graph, eqns)
            if scale is None:
                break
        steps.append(_Step(index, positions[0], scale))
        current = out
    return tuple(steps)


def _moves_to_pool(current, data: frozenset, graph: _Graph, eqns) -> list[int]:
    """Equation indices from ``current`` (single uses only) through value-moving
    operations (reshape, transpose, ...) to a pool, that pool included; [] if the
    chain reaches no pool."""
    path = []
    while graph.uses[current] == 1 and len(graph.consumers[current]) == 1:
        index = graph.consumers[current][0]
        eqn = eqns[index]
        path.append(index)
        core = _core_of(eqn, data)
        if core is not None and core[0] == "pool":
            return path
        if eqn.primitive.name not in _SAME_VALUES or len(eqn.outvars) != 1:
            return []
        current = eqn.outvars[0]
    return []


def _site_inputs(eqn, steps: tuple[_Step, ...], eqns) -> tuple:
    """Every variable a layer reads, once each, in a fixed order."""
    found: list = []
    candidates = list(eqn.invars)
    for step in steps:
        candidates += [v for k, v in enumerate(eqns[step.index].invars) if k != step.position]
        if step.scale is not None:
            candidates.append(step.scale[0])
    for v in candidates:
        if _is_var(v) and not any(v is u for u in found):
            found.append(v)
    return tuple(found)


def _pass_position(eqn, data: frozenset, graph: _Graph, eqns) -> int | None:
    """Operand position of the activation when ``eqn`` is an elementwise affine
    operation with a per-channel vector (a batch norm outside a layer): its
    relevance passes unchanged, as zennit's Pass rule at batch norms."""
    name = eqn.primitive.name
    if name not in ("add", "sub", "mul", "div") or len(eqn.outvars) != 1:
        return None
    if not _inexact(eqn.outvars[0]):
        return None
    flags = [_is_var(v) and v in data for v in eqn.invars]
    if sum(flags) != 1:
        return None
    position = flags.index(True)
    if name in ("sub", "div") and position != 0:
        return None
    out_shape = _shape(eqn.outvars[0])
    if _shape(eqn.invars[position]) != out_shape:
        return None
    rank = len(out_shape)
    channels = _per_feature(eqn.invars[1 - position], frozenset({rank - 1}), rank, graph, eqns)
    if channels is None:
        return None
    _, shape = channels
    return position if len(shape) > 0 and shape[-1] > 1 else None


def _lrp_plan(
    analysis: _Analysis, jaxpr: Jaxpr, consts, zero_in: tuple, data_in: tuple, batch_norm: str
) -> _Plan:
    """The layers, epilogues and passing operations of ``jaxpr`` (memoized)."""

    def compute():
        zeros = analysis.zeros(jaxpr, consts, zero_in)
        data = _data_vars(analysis, jaxpr, consts, data_in)
        graph = _Graph(jaxpr)
        nonnegative = _nonnegative_vars(analysis, jaxpr, zeros)
        sites, claimed, passes = {}, set(), {}
        for i, eqn in enumerate(jaxpr.eqns):
            if i in claimed:
                continue
            core = _core_of(eqn, data)
            if core is not None:
                kind, positions, features = core
                steps = _epilogue(eqn, kind, features, data, graph, jaxpr.eqns, batch_norm)
                last = steps[-1].index if steps else i  # the epilogue's operands exist by then
                output = jaxpr.eqns[last].outvars[0]
                sites[last] = _Site(
                    kind,
                    i,
                    steps,
                    positions,
                    all(eqn.invars[p] in nonnegative for p in positions),
                    _site_inputs(eqn, steps, jaxpr.eqns),
                    output,
                )
                claimed.update(step.index for step in steps)
                continue
            position = _pass_position(eqn, data, graph, jaxpr.eqns)
            if position is not None:
                passes[i] = position
        inside = frozenset(claimed | {site.core for site in sites.values()}) - set(sites)
        return _Plan(data, sites, inside, passes)

    return analysis.memo("lrp", jaxpr, consts, (zero_in, data_in, batch_norm), compute)


# --- layer-wise relevance propagation: the rules at one layer ------------------------


def _zero_cotangent(value):
    if jnp.issubdtype(jnp.result_type(value), jnp.inexact):
        return jnp.zeros_like(value)
    return np.zeros(np.shape(value), jax.dtypes.float0)


def _apply_steps(steps: tuple[_Step, ...], eqns, read, y):
    """Run a layer's epilogue on ``y`` (other operands read with ``read``)."""
    for step in steps:
        eqn = eqns[step.index]
        operands = [y if k == step.position else read(v) for k, v in enumerate(eqn.invars)]
        y = _bind(eqn, operands)[0]
    return y


def _site_forward(site: _Site, eqns, read, data_values: Sequence | None = None):
    """z of a layer: its core on the activations (``data_values`` in place of the
    traced ones when given), then its epilogue."""
    core = eqns[site.core]
    operands = [read(v) for v in core.invars]
    for position, value in zip(site.data_positions, data_values or ()):
        operands[position] = value
    return _apply_steps(site.steps, eqns, read, _bind(core, operands)[0])


def _stabilize(v: jax.Array, epsilon: float) -> jax.Array:
    """``v + epsilon * sign(v)`` with sign +1 at zero (zennit's stabilizer)."""
    return v + jnp.where(v < 0, -epsilon, epsilon).astype(v.dtype)


def _normalized(r: jax.Array, z: jax.Array, rule: LayerRule) -> jax.Array:
    """``r / z``: stabilized by ``rule.epsilon``; for ``"zero"`` unstabilized, with 0 where z == 0."""
    if rule.name == "zero":
        nonzero = z != 0
        return jnp.where(nonzero, r / jnp.where(nonzero, z, jnp.ones_like(z)), jnp.zeros_like(r))
    return r / _stabilize(z, rule.epsilon)


class _Layer(NamedTuple):
    """A conv/dense layer as the rules see it (batch norm merged into ``w`` and ``bias``)."""

    apply: Callable[[jax.Array, jax.Array], jax.Array]  # (x, w) -> x * w, without bias
    x: jax.Array  # the layer input
    w: jax.Array  # the kernel
    bias: jax.Array | None  # broadcasts against z; None when the layer adds none
    z: jax.Array  # the layer output (forward value)
    nonnegative: bool  # x >= 0 everywhere, so its negative part vanishes


def _modified(layer: _Layer, x: jax.Array, w: jax.Array):
    """``(x * w, pull)``: the layer without bias on modified input and kernel, and
    the transpose ``g -> J_x^T g`` of that linear map."""
    y, pull = jax.vjp(lambda v: layer.apply(v, w), x)
    return y, lambda g: pull(g)[0]


def _with_bias(y: jax.Array, bias: jax.Array | None) -> jax.Array:
    return y if bias is None else y + bias


def _positive(a):
    return None if a is None else jnp.maximum(a, 0)


def _negative(a):
    return None if a is None else jnp.minimum(a, 0)


def _epsilon_rule(layer: _Layer, r: jax.Array, rule: LayerRule) -> jax.Array:
    """zero / epsilon / norm: ``x * J^T (r / stab(x * w + b))``."""
    y, pull = _modified(layer, layer.x, layer.w)
    return layer.x * pull(_normalized(r, _with_bias(y, layer.bias), rule))


def _zplus_rule(layer: _Layer, r: jax.Array, rule: LayerRule) -> jax.Array:
    """z-plus: ``x+ * J_{w+}^T g + x- * J_{w-}^T g``, ``g = r / stab(x+ w+ + b+ + x- w-)``."""
    x_pos = jnp.maximum(layer.x, 0)
    y_pos, pull_pos = _modified(layer, x_pos, jnp.maximum(layer.w, 0))
    z = _with_bias(y_pos, _positive(layer.bias))
    if layer.nonnegative:
        g = r / _stabilize(z, rule.epsilon)
        return x_pos * pull_pos(g)
    x_neg = jnp.minimum(layer.x, 0)
    y_neg, pull_neg = _modified(layer, x_neg, jnp.minimum(layer.w, 0))
    g = r / _stabilize(z + y_neg, rule.epsilon)
    return x_pos * pull_pos(g) + x_neg * pull_neg(g)


def _gamma_rule(layer: _Layer, r: jax.Array, rule: LayerRule) -> jax.Array:
    """Generalized gamma: where z > 0, positive contributions (x+ with w + gamma w+,
    x- with w + gamma w-, bias b + gamma b+) share the relevance; where z < 0 the
    negative ones (x+ with w + gamma w-, x- with w + gamma w+, b + gamma b-)."""
    gamma, w, bias = rule.gamma, layer.w, layer.bias
    w_up, w_down = w + gamma * jnp.maximum(w, 0), w + gamma * jnp.minimum(w, 0)
    b_up = None if bias is None else bias + gamma * jnp.maximum(bias, 0)
    b_down = None if bias is None else bias + gamma * jnp.minimum(bias, 0)
    x_pos = jnp.maximum(layer.x, 0)
    y_up, pull_pos_up = _modified(layer, x_pos, w_up)
    y_down, pull_pos_down = _modified(layer, x_pos, w_down)
    den_pos, den_neg = _with_bias(y_up, b_up), _with_bias(y_down, b_down)
    if not layer.nonnegative:
        x_neg = jnp.minimum(layer.x, 0)
        y_neg_down, pull_neg_down = _modified(layer, x_neg, w_down)
        y_neg_up, pull_neg_up = _modified(layer, x_neg, w_up)
        den_pos, den_neg = den_pos + y_neg_down, den_neg + y_neg_up
    zero = jnp.zeros_like(r)
    g_pos = jnp.where(layer.z > 0, r, zero) / _stabilize(den_pos, rule.epsilon)
    g_neg = jnp.where(layer.z < 0, r, zero) / _stabilize(den_neg, rule.epsilon)
    if layer.nonnegative:
        return x_pos * pull_pos_up(g_pos) + x_pos * pull_pos_down(g_neg)
    return (
        x_pos * pull_pos_up(g_pos)
        + x_neg * pull_neg_down(g_pos)
        + x_pos * pull_pos_down(g_neg)
        + x_neg * pull_neg_up(g_neg)
    )


def _alpha_beta_rule(layer: _Layer, r: jax.Array, rule: LayerRule) -> jax.Array:
    """alpha-beta: ``alpha`` times the z-plus share minus ``beta`` times the share of
    the negative contributions (x+ w- + b- + x- w+)."""
    w_pos, w_neg = jnp.maximum(layer.w, 0), jnp.minimum(layer.w, 0)
    x_pos = jnp.maximum(layer.x, 0)
    x_neg = None if layer.nonnegative else jnp.minimum(layer.x, 0)

    def share(w_same, w_cross, bias):
        y, pull = _modified(layer, x_pos, w_same)
        z, pulls = _with_bias(y, bias), [(x_pos, pull)]
        if x_neg is not None:
            y_neg, pull_neg = _modified(layer, x_neg, w_cross)
            z, pulls = z + y_neg, pulls + [(x_neg, pull_neg)]
        g = r / _stabilize(z, rule.epsilon)
        terms = [x * pull_x(g) for x, pull_x in pulls]
        return terms[0] if len(terms) == 1 else terms[0] + terms[1]

    positive = share(w_pos, w_neg, _positive(layer.bias))
    if rule.beta == 0:
        return rule.alpha * positive
    return rule.alpha * positive - rule.beta * share(w_neg, w_pos, _negative(layer.bias))


def _zbox_rule(layer: _Layer, r: jax.Array, rule: LayerRule) -> jax.Array:
    """z-box: ``z = x w + b - (l w+ + b+) - (h w- + b-)`` for input bounds l <= x <= h;
    ``R = x J_w^T g - (l J_{w+}^T g + h J_{w-}^T g)``, ``g = r / stab(z)``."""
    x, w = layer.x, layer.w
    low = jnp.broadcast_to(jnp.asarray(rule.low, x.dtype), x.shape)
    high = jnp.broadcast_to(jnp.asarray(rule.high, x.dtype), x.shape)
    y, pull = _modified(layer, x, w)
    y_low, pull_low = _modified(layer, low, jnp.maximum(w, 0))
    y_high, pull_high = _modified(layer, high, jnp.minimum(w, 0))
    z = _with_bias(y, layer.bias) - (
        _with_bias(y_low, _positive(layer.bias)) + _with_bias(y_high, _negative(layer.bias))
    )
    g = r / _stabilize(z, rule.epsilon)
    return x * pull(g) - (low * pull_low(g) + high * pull_high(g))


def _flat_rule(layer: _Layer, r: jax.Array, rule: LayerRule) -> jax.Array:
    """flat: relevance spread evenly over each output's receptive field:
    ``J_1^T (r / stab(1 * 1))`` with an all-ones input and kernel and no bias."""
    ones = jnp.ones_like(layer.x)
    y, pull = _modified(layer, ones, jnp.ones_like(layer.w))
    return pull(r / _stabilize(y, rule.epsilon))


def _wsquare_rule(layer: _Layer, r: jax.Array, rule: LayerRule) -> jax.Array:
    """w-square: ``J_{w^2}^T (r / stab(1 * w^2 + b^2))`` (zennit squares the bias too)."""
    w_square = layer.w * layer.w
    y, pull = _modified(layer, jnp.ones_like(layer.x), w_square)
    bias = None if layer.bias is None else layer.bias * layer.bias
    return pull(r / _stabilize(_with_bias(y, bias), rule.epsilon))


_LINEAR_RULES: dict[str, Callable[[_Layer, jax.Array, LayerRule], jax.Array]] = {
    "zero": _epsilon_rule,
    "epsilon": _epsilon_rule,
    "norm": _epsilon_rule,
    "zplus": _zplus_rule,
    "gamma": _gamma_rule,
    "alpha_beta": _alpha_beta_rule,
    "zbox": _zbox_rule,
    "flat": _flat_rule,
    "wsquare": _wsquare_rule,
}


def _core_apply(core, position: int, explicit_conv: bool) -> Callable:
    """``(x, w) -> core(x, w)`` with the operands in the equation's order."""
    if explicit_conv and core.primitive.name == "conv_general_dilated":
        conv = _explicit_conv(core)
        if conv is not None:
            return conv

    def apply(x, w):
        operands = [x, w] if position == 0 else [w, x]
        return _bind(core, operands)[0]

    return apply


def _merged_scale(site: _Site, eqns, read):
    """Product of the epilogue's multipliers (rank-matched to z), or None."""
    scale = None
    for step in site.steps:
        name = eqns[step.index].primitive.name
        if name == "neg" or (name == "sub" and step.position == 1):
            factor = -1.0
        elif name in ("mul", "div"):
            source, shape = step.scale
            value = jnp.reshape(jnp.asarray(read(source)), shape)
            factor = value if name == "mul" else 1.0 / value
        else:
            continue
        scale = factor if scale is None else scale * factor
    return scale


def _kernel_scale(core, position: int, scale, kernel_rank: int):
    """``scale`` (per output feature, rank-matched to z) laid out along the kernel."""
    scale = jnp.asarray(scale)
    if scale.ndim == 0:
        return scale
    shape = [1] * kernel_rank
    if core.primitive.name == "conv_general_dilated":
        vector = scale.reshape(-1)
        shape[core.params["dimension_numbers"].rhs_spec[0]] = vector.shape[0]
        return vector.reshape(shape)
    (lhs_contract, rhs_contract), _ = core.params["dimension_numbers"]
    w_contract = tuple(rhs_contract if position == 0 else lhs_contract)
    free_axes = [a for a in range(kernel_rank) if a not in w_contract]
    x_free = len(_shape(core.invars[position])) - (kernel_rank - len(free_axes))
    free = scale.shape[x_free:] if position == 0 else scale.shape[: len(free_axes)]
    for axis, size in zip(free_axes, free):
        shape[axis] = size
    return scale.reshape(shape)


def _linear_relevance(site: _Site, eqns, rule: LayerRule, read, z, r, explicit_conv: bool):
    """Relevance at the input of a conv/dense layer under ``rule``."""
    core = eqns[site.core]
    position = site.data_positions[0]
    x, w = read(core.invars[position]), read(core.invars[1 - position])
    scale = _merged_scale(site, eqns, read)
    if scale is not None:
        w = w * _kernel_scale(core, position, scale, w.ndim)
    adds = any(eqns[s.index].primitive.name in ("add", "sub") for s in site.steps)
    bias = _apply_steps(site.steps, eqns, read, jnp.zeros_like(z)) if adds else None
    layer = _Layer(
        _core_apply(core, position, explicit_conv), x, w, bias, z, site.nonnegative_input
    )
    return _LINEAR_RULES[rule.name](layer, r, rule)


def _site_relevance(site: _Site, eqns, rule: LayerRule, read, z, r, explicit_conv: bool) -> tuple:
    """Relevance at each activation operand of a layer (the core's data positions)."""
    if site.kind in ("conv", "dense") and rule.name != "gradient":
        return (_linear_relevance(site, eqns, rule, read, z, r, explicit_conv),)
    core = eqns[site.core]
    xs = [read(core.invars[p]) for p in site.data_positions]
    z_again, pull = jax.vjp(lambda *v: _site_forward(site, eqns, read, v), *xs)
    if rule.name == "gradient":
        return tuple(pull(r))
    g = _normalized(r, z_again, rule)
    return tuple(x * c for x, c in zip(xs, pull(g)))


def _site_function(site: _Site, eqns, rule: LayerRule, explicit_conv: bool) -> Callable:
    """``f(*values of site.inputs) -> z``: the layer's forward, with ``rule`` as VJP.

    The relevance goes to the activation operands; every other input (kernels,
    biases, batch-norm statistics) gets a zero cotangent.
    """
    core = eqns[site.core]

    def reader(values):
        local = {id(v): value for v, value in zip(site.inputs, values)}
        return lambda v: v.val if isinstance(v, Literal) else local[id(v)]

    def forward(*values):
        return _site_forward(site, eqns, reader(values))

    def forward_with_residuals(*values):
        z = forward(*values)
        return z, (values, z)

    def backward(residuals, r):
        values, z = residuals
        relevance = _site_relevance(site, eqns, rule, reader(values), z, r, explicit_conv)
        cotangents = [_zero_cotangent(v) for v in values]
        for position, part in zip(site.data_positions, relevance):
            k = next(i for i, v in enumerate(site.inputs) if v is core.invars[position])
            cotangents[k] = cotangents[k] + part.astype(cotangents[k].dtype)
        return tuple(cotangents)

    forward.__name__ = forward.__qualname__ = f"lrp_{site.kind}_{rule.name}"  # shows in jaxprs
    layer = jax.custom_vjp(forward)
    layer.defvjp(forward_with_residuals, backward)
    return layer


def _passing(eqn, position: int) -> Callable:
    """``eqn`` as a function of its variable operands whose cotangent reaches the
    operand at ``position`` unchanged (zennit's Pass) and no other operand."""
    variables = [k for k, v in enumerate(eqn.invars) if _is_var(v)]

    def forward(*values):
        operands = [v.val if isinstance(v, Literal) else None for v in eqn.invars]
        for k, value in zip(variables, values):
            operands[k] = value
        return _bind(eqn, operands)[0]

    def backward(values, g):
        return tuple(
            g if k == position else _zero_cotangent(value) for k, value in zip(variables, values)
        )

    forward.__name__ = forward.__qualname__ = f"lrp_pass_{eqn.primitive.name}"
    passing = jax.custom_vjp(forward)
    passing.defvjp(lambda *values: (forward(*values), values), backward)
    return passing


class _Record:
    """What a tracing run of the interpreter learns: the layers, and which layer
    (or operation) each traced value comes from. Values are keyed by id and kept
    alive until the record is dropped, so ids stay unique."""

    def __init__(self):
        self.sites: list[SiteInfo] = []
        self._origins: dict[int, Any] = {}
        self._alive: list = []

    def set(self, value, origin, *, replace: bool = True) -> None:
        if replace or id(value) not in self._origins:
            self._origins[id(value)] = origin
            self._alive.append(value)

    def origin(self, value, default="input"):
        return self._origins.get(id(value), default)


# --- the interpreter ----------------------------------------------------------------


def _bind(eqn, invals: Sequence[Any], params: dict | None = None) -> list[Any]:
    """Evaluate ``eqn`` (with ``params`` in place of its own) as ``jax.core.eval_jaxpr`` does."""
    bind_params = eqn.primitive.get_bind_params(eqn.params if params is None else params)
    subfuns: tuple = ()
    if isinstance(bind_params, tuple):  # older jax: (subfuns, params)
        subfuns, bind_params = bind_params
    manager = getattr(getattr(eqn, "ctx", None), "manager", None) or contextlib.nullcontext()
    with manager:
        out = eqn.primitive.bind(*subfuns, *invals, **bind_params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _struct(aval) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=getattr(aval, "weak_type", False))


class _Interpreter:
    """Evaluates a jaxpr, replacing ReLUs (and max-pools for ``pool="center"``).

    Equations without a ReLU below them are re-bound unchanged. Calls that hold one
    are inlined (``jit``, ``closed_call``, ``custom_jvp``/``custom_vjp``) or
    re-wrapped (``remat`` via :func:`jax.checkpoint`); any other operation with
    sub-jaxprs (``scan``, ``cond``, ``while``, ...) is re-bound with each sub-jaxpr
    replaced by its ruled version, traced once per program and kept in the analysis.
    """

    def __init__(
        self,
        rule: str,
        pool: str,
        analysis: _Analysis,
        explicit_conv: bool = False,
        *,
        lrp: LayerRules | None = None,
        record: _Record | None = None,
    ):
        self.rule = rule if lrp is None else lrp.activation
        self.pool, self.analysis = pool, analysis
        self.explicit_conv = explicit_conv
        self.lrp, self.record = lrp, record
        self.site_count = 0  # LRP layers met so far, in forward order
        self.first_taken = False  # whether a layer took LayerRules.first's slot

    def eval(
        self,
        jaxpr: Jaxpr,
        consts: Sequence[Any],
        args: Sequence[Any],
        zero_in: tuple,
        data_in: tuple | None = None,
    ):
        """Evaluate ``jaxpr`` on ``args``; ``data_in`` flags the inputs that carry
        activations (used by LRP to tell layer inputs from parameters)."""
        zeros = self.analysis.zeros(jaxpr, consts, zero_in)
        plan = None
        if self.lrp is not None:
            data_in = tuple(data_in) if data_in is not None else (False,) * len(jaxpr.invars)
            plan = _lrp_plan(self.analysis, jaxpr, consts, zero_in, data_in, self.lrp.batch_norm)
        env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, args))

        def read(v):
            return v.val if isinstance(v, Literal) else env[v]

        for i, eqn in enumerate(jaxpr.eqns):
            if plan is not None and i in plan.inside:
                continue
            if plan is not None and i in plan.sites:
                site = plan.sites[i]
                env[site.output] = self._site(site, jaxpr.eqns, [read(v) for v in site.inputs])
                continue
            invals = [read(v) for v in eqn.invars]
            if plan is not None and i in plan.passes:
                position = plan.passes[i]
                variables = [value for v, value in zip(eqn.invars, invals) if _is_var(v)]
                outs = [_passing(eqn, position)(*variables)]
                self._inherit(outs, invals[position])
            else:
                outs = self._eqn(eqn, invals, zeros, plan)
            env.update(zip(eqn.outvars, outs))
        return [read(v) for v in jaxpr.outvars]

    def _eqn(self, eqn, invals: list, zeros: _Zeros, plan: _Plan | None = None) -> list:
        k = self.analysis.relu_operand(eqn, zeros)
        if k is not None:
            outs = [_ruled_relu(self.rule, k == 0)(invals[k])]
            self._inherit(outs, invals[k])
            return outs
        name = eqn.primitive.name
        outs = self._eqn_unruled(eqn, invals, zeros, plan)
        if self.record is not None:
            if name in _SAME_VALUES:
                self._inherit(outs, invals[0])
            else:  # an entered call has recorded its outputs already
                origin = "max_pool" if name == "reduce_window_max" else name
                for out in outs:
                    self.record.set(out, origin, replace=name not in _CALLS)
        return outs

    def _eqn_unruled(self, eqn, invals: list, zeros: _Zeros, plan: _Plan | None) -> list:
        name = eqn.primitive.name
        if name == "reduce_window_max" and _inexact(eqn.outvars[0]):
            if self.pool == "center":
                return [_center_max_pool(eqn)(invals[0])]
            if self.explicit_conv and (pool := _switch_max_pool(eqn)) is not None:
                return [pool(invals[0])]
        if (
            self.explicit_conv
            and name == "conv_general_dilated"
            and (conv := _explicit_conv(eqn)) is not None
        ):
            return [conv(*invals)]
        subs = _sub_jaxprs(eqn, zeros)
        inline_all = self.lrp is not None and name in _INLINED_CALLS | _REMAT
        subs = [sub for sub in subs if inline_all or self._reaches(sub)]
        if not subs:
            return _bind(eqn, invals)
        flags = tuple(_is_zero(v, zeros) for v in eqn.invars)
        data = None if plan is None else tuple(_is_var(v) and v in plan.data for v in eqn.invars)
        jaxpr, consts = _open(_body(eqn)) if name in _CALLS else (None, ())
        if name in _REMAT:
            body = functools.partial(self.eval, jaxpr, consts, zero_in=flags, data_in=data)
            policy, prevent_cse = eqn.params.get("policy"), eqn.params.get("prevent_cse", True)
            remat = jax.checkpoint(lambda *a: body(a), prevent_cse=prevent_cse, policy=policy)
            return list(remat(*invals))
        if name in _CALLS:
            return self.eval(jaxpr, consts, invals, flags, data)
        if self.lrp is not None and any(
            self.analysis.count(sub.jaxpr, sub.consts, sub.flags)[2] for sub in subs
        ):
            raise InputError(
                f"LRP rules apply to layers in straight-line code, but a {name!r} operation "
                "holds a convolution, dense layer or sum pool; compute the network without "
                "loops or branches around its layers."
            )
        return self._rebuild(eqn, invals, subs)

    def _inherit(self, outs: list, source) -> None:
        """Record that ``outs`` come from the same layer as ``source``."""
        if self.record is not None:
            for out in outs:
                self.record.set(out, self.record.origin(source))

    def _site(self, site: _Site, eqns, values: list):
        """Evaluate an LRP layer with its rule as VJP."""
        index = self.site_count
        self.site_count += 1
        first = False
        if not self.first_taken and site.kind in self.lrp.first_kinds:
            self.first_taken = first = True
        rule = self.lrp.rule_for(site.kind, index, first)
        _check_applies(rule, site.kind, f"layer {index}")
        out = _site_function(site, eqns, rule, self.explicit_conv)(*values)
        if self.record is not None:
            core = eqns[site.core]
            ops = (core.primitive.name, *(eqns[s.index].primitive.name for s in site.steps))
            x = core.invars[site.data_positions[0]]
            self.record.sites.append(
                SiteInfo(index, site.kind, ops, _shape(x), _shape(site.output))
            )
            self.record.set(out, index)
        return out

    def _reaches(self, sub: _Sub) -> bool:
        relus, pools, layers = self.analysis.count(sub.jaxpr, sub.consts, sub.flags)
        lrp_layers = self.lrp is not None and layers > 0
        return relus > 0 or (self.pool == "center" and pools > 0) or lrp_layers

    def _rebuild(self, eqn, invals: list, subs: list[_Sub]) -> list:
        """Re-bind ``eqn`` with the sub-jaxprs in ``subs`` replaced by ruled ones."""
        params = dict(eqn.params)
        try:
            for sub in subs:
                ruled = self._ruled_jaxpr(sub, closed=not isinstance(params[sub.key], Jaxpr))
                if sub.index is None:
                    params[sub.key] = ruled
                else:
                    seq = list(params[sub.key])
                    seq[sub.index] = ruled
                    params[sub.key] = type(params[sub.key])(seq)
            return _bind(eqn, invals, params)
        except InputError:
            raise
        except Exception as err:
            raise InputError(
                f"with_rules could not rebuild a {eqn.primitive.name!r} operation that holds a "
                f"ReLU ({type(err).__name__}: {err}); apply with_rules to the function inside "
                "it, or move the ReLU out of it."
            ) from err

    def _ruled_jaxpr(self, sub: _Sub, closed: bool):
        """``sub`` with this interpreter's rules, as a jaxpr of the same signature."""

        def compute():
            def ruled(*args):
                return self.eval(sub.jaxpr, sub.consts, args, sub.flags)

            new = jax.make_jaxpr(ruled)(*(_struct(v.aval) for v in sub.jaxpr.invars))
            if closed or isinstance(new, Jaxpr):  # newer jax: one Jaxpr type with consts
                return new
            if new.consts:
                raise InputError("the ruled body needs constants, which an open jaxpr cannot hold")
            return new.jaxpr

        key = (self.rule, self.pool, self.explicit_conv, self.lrp, closed, sub.flags)
        return self.analysis.memo("ruled", sub.jaxpr, sub.consts, key, compute)


# --- public API -----------------------------------------------------------------------


class _Traced(NamedTuple):
    jaxpr: Jaxpr
    consts: Sequence[Any]
    out_tree: Any
    analysis: _Analysis
    relus: int
    layers: int  # candidate LRP layers


def _aval(leaf) -> jax.ShapeDtypeStruct:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    typeof = getattr(jax, "typeof", None) or jax.core.get_aval
    try:
        aval = typeof(leaf)
        return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type)
    except (TypeError, AttributeError):
        raise InputError(
            f"with_rules traces its function, so every argument leaf must be an array, got "
            f"{type(leaf).__name__}; bind static arguments first, e.g. "
            "with_rules(functools.partial(fn, layers=...), rule)."
        ) from None


def _trace(fn: Callable, in_tree, structs: Sequence[jax.ShapeDtypeStruct]) -> _Traced:
    def flat_fn(*leaves):
        args, kwargs = jax.tree_util.tree_unflatten(in_tree, leaves)
        return fn(*args, **kwargs)

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*structs)
    analysis = _Analysis()
    jaxpr, consts = closed.jaxpr, closed.consts
    relus, _, layers = analysis.count(jaxpr, consts, (False,) * len(jaxpr.invars))
    out_tree = jax.tree_util.tree_structure(out_shape)
    return _Traced(jaxpr, consts, out_tree, analysis, relus, layers)


def _data_argnums(data_argnums: int | Sequence[int]) -> tuple[int, ...]:
    argnums = (data_argnums,) if isinstance(data_argnums, int) else tuple(data_argnums)
    if not all(isinstance(i, int) for i in argnums):
        raise InputError(f"data_argnums must be ints, got {data_argnums!r}.")
    return argnums


def _data_flags(args: tuple, kwargs: dict, argnums: tuple[int, ...]) -> tuple[bool, ...]:
    """One flag per leaf of ``(args, kwargs)``: whether it belongs to a data argument."""
    wanted = set()
    for i in argnums:
        if not -len(args) <= i < len(args):
            raise InputError(
                f"data_argnums {i} is out of range for {len(args)} positional arguments; "
                "LRP needs the position of the activations argument (e.g. 1 for fn(params, x))."
            )
        wanted.add(i % len(args))
    flags: list[bool] = []
    for i, arg in enumerate(args):
        flags += [i in wanted] * len(jax.tree_util.tree_leaves(arg))
    return tuple(flags) + (False,) * len(jax.tree_util.tree_leaves(kwargs))


def _check_rule(rule: str | LayerRules, pool: str) -> None:
    if isinstance(rule, LayerRules):
        rule = "gradient"  # the pool check below still applies
    if rule not in RULES:
        raise InputError(
            f"unknown backward rule {rule!r}; valid rules: {', '.join(RULES)}. "
            "('gradient' is plain saliency, 'deconvnet' Zeiler & Fergus, 'guided' guided "
            "backpropagation, 'redirected' the redirected ReLU for activation maximization; "
            "for layer-wise relevance propagation pass a LayerRules.)"
        )
    if pool not in POOLS:
        raise InputError(
            f"unknown pool mode {pool!r}; valid modes: {', '.join(POOLS)} ('switches' "
            "routes max-pool gradients to the argmax, 'center' to the window centre)."
        )


def with_rules(
    fn: Callable[..., Any],
    rule: str | LayerRules,
    *,
    pool: str = "switches",
    require_relu: bool = True,
    explicit_conv_transpose: bool = False,
    data_argnums: int | Sequence[int] = 0,
) -> Callable[..., Any]:
    """``fn`` with the same forward values and ``rule``'s VJP at every ReLU.

    Args:
      fn: any JAX function of arrays (pytrees of arrays, positional or keyword).
        Static arguments (strings, layer tuples) must be bound first, e.g. with
        :func:`functools.partial`.
      rule: one of :data:`RULES` (see the module docstring for the formulas), or a
        :class:`LayerRules` for layer-wise relevance propagation: then the rules act
        at every conv/dense layer, sum pool and residual sum as well, ReLUs follow
        ``LayerRules.activation``, and the cotangent that flows back is the relevance.
      pool: ``"switches"`` (max-pool cotangents go to the argmax, JAX's own VJP) or
        ``"center"`` (to each window's centre tap; see the module docstring).
      require_relu: when True (default), calling the result on a function without
        any ReLU raises :class:`InputError`, because no rule would change anything
        and a silent plain gradient is usually a mistake (an activation that is not
        a ReLU). When False such a function gives its plain gradients (with
        ``pool="center"`` its max-pools still route to the centre).
      explicit_conv_transpose: re-bind the convolutions met on the way so that
        their input gradient reads an explicitly transposed kernel (by phases when
        strided), and route max-pool switches without select-and-scatter (same
        values; see the module docstring). Use it for input gradients on CPU,
        above all inside ``lax.scan``, ``lax.map`` or ``while`` loops.
      data_argnums: for LRP, the positional arguments that carry activations (the
        network input); everything else (parameters) is a layer's kernel, bias or
        batch-norm statistics, and gets zero cotangents at LRP layers.

    Returns:
      A function with ``fn``'s signature and output structure. It traces ``fn`` with
      :func:`jax.make_jaxpr` on the first call for each argument structure, shapes
      and dtypes, and keeps the last few traced programs (unless ``fn`` closes over
      values of an enclosing trace, which are only valid for that trace).

    Raises:
      InputError: for an unknown ``rule`` or ``pool`` (immediately); when called,
        for a function without ReLU (unless ``require_relu=False``; with LRP: without
        ReLU or layer), for arguments that are not arrays, for a ReLU inside an
        operation the interpreter cannot enter (for example ``shard_map``), and with
        LRP for a layer inside a loop or branch, or a rule its layer does not define.
    """
    _check_rule(rule, pool)
    if not callable(fn):
        raise InputError(f"with_rules needs a function, got {type(fn).__name__}.")
    lrp = rule if isinstance(rule, LayerRules) else None
    argnums = _data_argnums(data_argnums)
    cache: dict[tuple, _Traced] = {}

    def traced(args, kwargs) -> tuple[_Traced, list]:
        leaves, in_tree = jax.tree_util.tree_flatten((args, kwargs))
        structs = tuple(_aval(leaf) for leaf in leaves)
        key = (in_tree, tuple((s.shape, s.dtype, s.weak_type) for s in structs))
        entry = cache.get(key)
        if entry is None:
            entry = _trace(fn, in_tree, structs)
            sums = any(eqn.primitive.name == "add" for eqn in entry.jaxpr.eqns)
            if lrp is not None and entry.relus == entry.layers == 0 and not sums and require_relu:
                name = getattr(fn, "__name__", type(fn).__name__)
                raise InputError(
                    f"{name} contains no ReLU and no convolution, dense layer or sum pool, "
                    "so LRP rules change nothing. Pass require_relu=False to accept plain "
                    "gradients."
                )
            if lrp is None and entry.relus == 0 and require_relu:
                name = getattr(fn, "__name__", type(fn).__name__)
                raise InputError(
                    f"{name} contains no ReLU, so the {rule!r} rule changes nothing. "
                    "with_rules recognizes jax.nn.relu and max(x, 0) (jnp.maximum, lax.max); "
                    "other activations (leaky_relu, gelu, where-based ReLUs) keep their "
                    "gradients. Pass require_relu=False to accept plain gradients."
                )
            if not any(isinstance(c, jax.core.Tracer) for c in entry.consts):
                if len(cache) >= _CACHE_SIZE:
                    cache.pop(next(iter(cache)))
                cache[key] = entry
        return entry, leaves

    @functools.wraps(fn)
    def ruled(*args, **kwargs):
        entry, leaves = traced(args, kwargs)
        relu_rule = rule if lrp is None else lrp.activation
        interpreter = _Interpreter(
            relu_rule, pool, entry.analysis, explicit_conv_transpose, lrp=lrp
        )
        flags = (False,) * len(leaves)
        data = _data_flags(args, kwargs, argnums) if lrp is not None else None
        outs = interpreter.eval(entry.jaxpr, entry.consts, leaves, flags, data)
        return jax.tree_util.tree_unflatten(entry.out_tree, outs)

    ruled.rule, ruled.pool = rule, pool
    return ruled


def lrp_sites(
    fn: Callable[..., Any],
    *args,
    data_argnums: int | Sequence[int] = 0,
    batch_norm: str = "merge",
    **kwargs,
) -> LRPLayout:
    """The layers LRP rules act on in ``fn(*args, **kwargs)``, and where its outputs come from.

    ``args`` may be arrays or :class:`jax.ShapeDtypeStruct`; nothing is computed,
    ``fn`` is traced once. Layers are numbered as :class:`LayerRules` numbers them
    (forward order); ``data_argnums`` and ``batch_norm`` as in :func:`with_rules`
    and :class:`LayerRules`. Use it to name layers: an output that is a layer's
    output (or its ReLU, reshape, ...) gives that layer's index.
    """
    leaves, in_tree = jax.tree_util.tree_flatten((args, kwargs))
    structs = [_aval(leaf) for leaf in leaves]
    traced = _trace(fn, in_tree, structs)
    data = _data_flags(args, kwargs, _data_argnums(data_argnums))
    gradient = LayerRule("gradient")
    rules = LayerRules(gradient, gradient, gradient, gradient, batch_norm=batch_norm)
    record = _Record()
    origins: list = []

    def run(*values):
        for value in values:
            record.set(value, "input")
        interpreter = _Interpreter(
            "gradient", "switches", traced.analysis, lrp=rules, record=record
        )
        outs = interpreter.eval(traced.jaxpr, traced.consts, values, (False,) * len(values), data)
        origins.extend(record.origin(out, "constant") for out in outs)
        return outs

    jax.make_jaxpr(run)(*structs)
    return LRPLayout(tuple(record.sites), jax.tree_util.tree_unflatten(traced.out_tree, origins))


def relu_count(fn: Callable[..., Any], *args, **kwargs) -> int:
    """Number of ReLU sites :func:`with_rules` would replace in ``fn(*args, **kwargs)``.

    Sites are counted in the traced program, not in the executed one: a ReLU in a
    ``scan`` body counts once however many steps the scan takes, and every branch
    of a ``cond`` counts. ``args`` may be arrays or :class:`jax.ShapeDtypeStruct`.
    """
    leaves, in_tree = jax.tree_util.tree_flatten((args, kwargs))
    return _trace(fn, in_tree, [_aval(leaf) for leaf in leaves]).relus


# --- Model convenience -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RuledApply:
    """``apply_fn`` of a :class:`Model` with a backward rule (see :func:`model_with_rules`).

    Hashable and compared by its fields, so two models wrapped the
    same way hit the same :func:`jax.jit` cache. ``layers`` stays static: each
    requested layer tuple gets its own transformed function.
    """

    apply_fn: ApplyFn
    rule: str | LayerRules
    pool: str = "switches"
    explicit_conv_transpose: bool = False
    _ruled: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __call__(self, params: Any, x: jax.Array, layers: tuple[str, ...]) -> dict[str, jax.Array]:
        layers = tuple(layers)
        ruled = self._ruled.get(layers)
        if ruled is None:
            # Shallow layers may have no ReLU on their path: plain gradients are right there.
            ruled = with_rules(
                functools.partial(_apply_layers, self.apply_fn, layers),
                self.rule,
                pool=self.pool,
                require_relu=False,
                explicit_conv_transpose=self.explicit_conv_transpose,
                data_argnums=1,  # (params, x): relevance flows to x
            )
            self._ruled[layers] = ruled
        return ruled(params, x)


def _apply_layers(apply_fn: ApplyFn, layers: tuple[str, ...], params, x):
    return apply_fn(params, x, layers)


def model_with_rules(
    model: Model,
    rule: str | LayerRules,
    *,
    pool: str = "switches",
    require_relu: bool = True,
    explicit_conv_transpose: bool = False,
) -> Model:
    """``model`` whose activations have ``rule``'s VJP at every ReLU.

    The catalog, input contract, parameters and name are unchanged; only
    ``apply_fn`` is wrapped (a :class:`RuledApply`; ``explicit_conv_transpose`` as
    in :func:`with_rules`). Wrapping a wrapped model
    replaces its rule. With ``require_relu`` (default) the whole network is traced
    once here and a model without any ReLU raises :class:`InputError`; layers whose
    own path has no ReLU (e.g. the first convolution) still give plain gradients.
    With a :class:`LayerRules` (LRP) the cotangent reaching the normalized input is
    the relevance; see :func:`cnnvis_jax.lrp.relevance` for maps in image space.

    Example::

        guided = model_with_rules(model, "guided")
        grads = jax.grad(lambda im: guided.apply(guided.params, im, "conv5")["conv5"][..., 3].sum())(images)
    """
    _check_rule(rule, pool)
    if not isinstance(model, Model):
        raise InputError(f"model_with_rules needs a cnnvis_jax Model, got {type(model).__name__}.")
    base = model.apply_fn.apply_fn if isinstance(model.apply_fn, RuledApply) else model.apply_fn
    if require_relu and not isinstance(rule, LayerRules):
        h, w = model.input.size
        example = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
        whole = functools.partial(_apply_layers, base, model.layer_names)
        if relu_count(whole, model.params, example) == 0:
            raise InputError(
                f"model {model.name!r} contains no ReLU, so the {rule!r} rule changes nothing; "
                "with_rules recognizes jax.nn.relu and max(x, 0). Pass require_relu=False to "
                "use plain gradients."
            )
    return model.replace(apply_fn=RuledApply(base, rule, pool, explicit_conv_transpose))


def model_for_input_gradients(model: Model) -> Model:
    """``model`` with plain gradients, set up for optimization loops over its input.

    The same forward values and the same gradient values as ``model``, computed with
    ``explicit_conv_transpose`` (see :func:`with_rules`): explicitly transposed
    kernels, which keep XLA:CPU on its fast convolution path inside ``lax.scan``
    loops (activation maximization, inversion), strided convolutions' input
    gradients by phases, and max-pool switches routed without select-and-scatter. A
    model that already carries a backward rule keeps its rule and pool.
    """
    ruled = model.apply_fn if isinstance(model.apply_fn, RuledApply) else None
    if ruled is not None and ruled.explicit_conv_transpose:
        return model
    rule, pool = (ruled.rule, ruled.pool) if ruled is not None else ("gradient", "switches")
    return model_with_rules(
        model, rule, pool=pool, require_relu=False, explicit_conv_transpose=True
    )
