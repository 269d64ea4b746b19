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
    "POOLS",
    "RULES",
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


_RULE_FNS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
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

    def count(self, jaxpr: Jaxpr, consts: Sequence[Any], zero_in: tuple) -> tuple[int, int]:
        """(ReLU sites, max-pool sites) in ``jaxpr`` and its sub-jaxprs."""

        def compute():
            zeros = self.zeros(jaxpr, consts, zero_in)
            relus = pools = 0
            for eqn in jaxpr.eqns:
                if self.relu_operand(eqn, zeros) is not None:
                    relus += 1
                elif eqn.primitive.name == "reduce_window_max" and _inexact(eqn.outvars[0]):
                    pools += 1
                else:
                    for sub in _sub_jaxprs(eqn, zeros):
                        r, p = self.count(sub.jaxpr, sub.consts, sub.flags)
                        relus, pools = relus + r, pools + p
            return relus, pools

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

    def __init__(self, rule: str, pool: str, analysis: _Analysis, explicit_conv: bool = False):
        self.rule, self.pool, self.analysis = rule, pool, analysis
        self.explicit_conv = explicit_conv

    def eval(self, jaxpr: Jaxpr, consts: Sequence[Any], args: Sequence[Any], zero_in: tuple):
        zeros = self.analysis.zeros(jaxpr, consts, zero_in)
        env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, args))

        def read(v):
            return v.val if isinstance(v, Literal) else env[v]

        for eqn in jaxpr.eqns:
            outs = self._eqn(eqn, [read(v) for v in eqn.invars], zeros)
            env.update(zip(eqn.outvars, outs))
        return [read(v) for v in jaxpr.outvars]

    def _eqn(self, eqn, invals: list, zeros: _Zeros) -> list:
        k = self.analysis.relu_operand(eqn, zeros)
        if k is not None:
            return [_ruled_relu(self.rule, k == 0)(invals[k])]
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
        subs = [sub for sub in _sub_jaxprs(eqn, zeros) if self._reaches(sub)]
        if not subs:
            return _bind(eqn, invals)
        flags = tuple(_is_zero(v, zeros) for v in eqn.invars)
        jaxpr, consts = _open(_body(eqn)) if name in _CALLS else (None, ())
        if name in _REMAT:
            body = functools.partial(self.eval, jaxpr, consts, zero_in=flags)
            policy, prevent_cse = eqn.params.get("policy"), eqn.params.get("prevent_cse", True)
            remat = jax.checkpoint(lambda *a: body(a), prevent_cse=prevent_cse, policy=policy)
            return list(remat(*invals))
        if name in _CALLS:
            return self.eval(jaxpr, consts, invals, flags)
        return self._rebuild(eqn, invals, subs)

    def _reaches(self, sub: _Sub) -> bool:
        relus, pools = self.analysis.count(sub.jaxpr, sub.consts, sub.flags)
        return relus > 0 or (self.pool == "center" and pools > 0)

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

        key = (self.rule, self.pool, self.explicit_conv, closed, sub.flags)
        return self.analysis.memo("ruled", sub.jaxpr, sub.consts, key, compute)


# --- public API -----------------------------------------------------------------------


class _Traced(NamedTuple):
    jaxpr: Jaxpr
    consts: Sequence[Any]
    out_tree: Any
    analysis: _Analysis
    relus: int


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
    relus, _ = analysis.count(jaxpr, consts, (False,) * len(jaxpr.invars))
    out_tree = jax.tree_util.tree_structure(out_shape)
    return _Traced(jaxpr, consts, out_tree, analysis, relus)


def _check_rule(rule: str, pool: str) -> None:
    if rule not in RULES:
        raise InputError(
            f"unknown backward rule {rule!r}; valid rules: {', '.join(RULES)}. "
            "('gradient' is plain saliency, 'deconvnet' Zeiler & Fergus, 'guided' guided "
            "backpropagation, 'redirected' the redirected ReLU for activation maximization.)"
        )
    if pool not in POOLS:
        raise InputError(
            f"unknown pool mode {pool!r}; valid modes: {', '.join(POOLS)} ('switches' "
            "routes max-pool gradients to the argmax, 'center' to the window centre)."
        )


def with_rules(
    fn: Callable[..., Any],
    rule: str,
    *,
    pool: str = "switches",
    require_relu: bool = True,
    explicit_conv_transpose: bool = False,
) -> Callable[..., Any]:
    """``fn`` with the same forward values and ``rule``'s VJP at every ReLU.

    Args:
      fn: any JAX function of arrays (pytrees of arrays, positional or keyword).
        Static arguments (strings, layer tuples) must be bound first, e.g. with
        :func:`functools.partial`.
      rule: one of :data:`RULES` (see the module docstring for the formulas).
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

    Returns:
      A function with ``fn``'s signature and output structure. It traces ``fn`` with
      :func:`jax.make_jaxpr` on the first call for each argument structure, shapes
      and dtypes, and keeps the last few traced programs (unless ``fn`` closes over
      values of an enclosing trace, which are only valid for that trace).

    Raises:
      InputError: for an unknown ``rule`` or ``pool`` (immediately); when called,
        for a function without ReLU (unless ``require_relu=False``), for arguments
        that are not arrays, or for a ReLU inside an operation the interpreter cannot
        enter (for example ``shard_map``).
    """
    _check_rule(rule, pool)
    if not callable(fn):
        raise InputError(f"with_rules needs a function, got {type(fn).__name__}.")
    cache: dict[tuple, _Traced] = {}

    def traced(args, kwargs) -> tuple[_Traced, list]:
        leaves, in_tree = jax.tree_util.tree_flatten((args, kwargs))
        structs = tuple(_aval(leaf) for leaf in leaves)
        key = (in_tree, tuple((s.shape, s.dtype, s.weak_type) for s in structs))
        entry = cache.get(key)
        if entry is None:
            entry = _trace(fn, in_tree, structs)
            if entry.relus == 0 and require_relu:
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
        interpreter = _Interpreter(rule, pool, entry.analysis, explicit_conv_transpose)
        flags = (False,) * len(leaves)
        outs = interpreter.eval(entry.jaxpr, entry.consts, leaves, flags)
        return jax.tree_util.tree_unflatten(entry.out_tree, outs)

    ruled.rule, ruled.pool = rule, pool
    return ruled


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
    rule: str
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
            )
            self._ruled[layers] = ruled
        return ruled(params, x)


def _apply_layers(apply_fn: ApplyFn, layers: tuple[str, ...], params, x):
    return apply_fn(params, x, layers)


def model_with_rules(
    model: Model,
    rule: str,
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

    Example::

        guided = model_with_rules(model, "guided")
        grads = jax.grad(lambda im: guided.apply(guided.params, im, "conv5")["conv5"][..., 3].sum())(images)
    """
    _check_rule(rule, pool)
    if not isinstance(model, Model):
        raise InputError(f"model_with_rules needs a cnnvis_jax Model, got {type(model).__name__}.")
    base = model.apply_fn.apply_fn if isinstance(model.apply_fn, RuledApply) else model.apply_fn
    if require_relu:
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
