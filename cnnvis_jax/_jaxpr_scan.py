"""Reading traced programs for :mod:`cnnvis_jax.rules`: re-binding one equation,
finding sub-jaxprs, and the static facts the interpreter and LRP rely on (which
variables hold only zeros, which equations are ReLUs, how many ReLUs, max-pools
and candidate LRP layers a jaxpr holds).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.receptive_field import _CALL_PARAMS

try:  # public home of the jaxpr types since jax 0.4.2x
    from jax.extend.core import ClosedJaxpr, Jaxpr, Literal
except ImportError:  # pragma: no cover - older jax
    from jax.core import ClosedJaxpr, Jaxpr, Literal  # type: ignore[no-redef]

# --- evaluating one equation ----------------------------------------------------------


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
_LAYER_CORES = frozenset({"conv_general_dilated", "dot_general", "reduce_window_sum", "reduce_sum"})
"""Primitives an LRP layer starts with (sums of activations are ``add``)."""

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


def _is_var(v) -> bool:
    return not isinstance(v, Literal)


def _shape(v) -> tuple[int, ...]:
    return tuple(np.shape(v.val)) if isinstance(v, Literal) else tuple(v.aval.shape)


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
