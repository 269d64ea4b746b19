"""Provably dead units: an upper bound of every unit over *all* images, by interval
arithmetic on the network's own computation.

A unit that no image in the model's input range can activate is *dead*, not merely
silent on some data set. :func:`upper_bounds` proves it: it traces
``model.apply(params, x, [layer])`` to a jaxpr and evaluates that program on
intervals instead of numbers (interval bound propagation: every value ``v`` of the
program gets ``lo <= v <= hi`` for every input in ``[0, 1]``). Convolutions and
matrix products use the centre/radius form (``W c`` and ``|W| r``), monotonic
functions map the ends, ``max`` / ``min`` / max-pooling take them elementwise;
anything computed from the weights alone is evaluated exactly. The bound is sound
(never below the true maximum) but loose in deep layers, so it proves some units dead
and never calls a live unit dead. A program with an operation the evaluator does not
know raises :class:`Unbounded`; callers then report "not proven".
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from cnnvis_jax.model import Model

__all__ = ["Unbounded", "dead_units", "upper_bounds"]


ROUNDING = 1e-4
"""Relative widening of every convolution and matrix product's interval (module
docstring): larger than float32's accumulated rounding for the fan-ins of these
networks, so a unit is never called dead by a rounding error."""


class Unbounded(Exception):
    """The network uses an operation interval arithmetic here does not cover."""


class _Interval:
    __slots__ = ("lo", "hi")

    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi


def _is_interval(v) -> bool:
    return isinstance(v, _Interval)


def _both(v):
    return (v.lo, v.hi) if _is_interval(v) else (v, v)


_SAME = {  # structural: apply to both ends
    "reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice",
    "dynamic_slice", "rev", "copy", "copy_p", "reduce_precision",
    "concatenate", "stack", "pad", "gather", "select_n",
}  # fmt: skip
_INCREASING = {"exp", "log", "log1p", "tanh", "logistic", "sqrt", "erf", "reduce_max",
               "reduce_min", "reduce_sum", "cumsum", "reduce_window_max", "reduce_window_sum",
               "add_any", "floor", "ceil", "round", "exp2", "cbrt"}  # fmt: skip


def _eval(jaxpr, consts, args):
    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for var, val in zip(jaxpr.constvars, consts):
        env[var] = val
    for var, val in zip(jaxpr.invars, args):
        env[var] = val
    needed = {v for v in jaxpr.outvars if not isinstance(v, jcore.Literal)}
    used = []
    for eqn in reversed(jaxpr.eqns):  # only what the outputs depend on
        if any(v in needed for v in eqn.outvars):
            used.append(eqn)
            needed |= {v for v in eqn.invars if not isinstance(v, jcore.Literal)}
    for eqn in reversed(used):
        ins = [read(v) for v in eqn.invars]
        outs = _apply(eqn, ins)
        if not eqn.primitive.multiple_results:
            outs = [outs]
        for var, val in zip(eqn.outvars, outs):
            env[var] = val
    return [read(v) for v in jaxpr.outvars]


def _sub_jaxpr(eqn):
    for name in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if name in eqn.params:
            inner = eqn.params[name]
            return (inner.jaxpr, inner.consts) if hasattr(inner, "consts") else (inner, [])
    return None


def _apply(eqn, ins):
    prim, params = eqn.primitive, eqn.params
    if not any(_is_interval(v) for v in ins):  # weights only: exact
        return prim.bind(*ins, **params)
    name = prim.name
    sub = _sub_jaxpr(eqn)
    if sub is not None and name in ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call",
                                    "custom_vjp_call", "custom_vjp_call_jaxpr", "remat",
                                    "checkpoint"):  # fmt: skip
        jaxpr, consts = sub
        n = len(jaxpr.invars)
        outs = _eval(jaxpr, consts, ins[-n:] if len(ins) > n else ins)
        return outs if prim.multiple_results else outs[0]
    if name == "convert_element_type":  # order-preserving between float types only
        source = ins[0].lo.dtype
        if not (jnp.issubdtype(source, jnp.floating)
                and jnp.issubdtype(params["new_dtype"], jnp.floating)):  # fmt: skip
            raise Unbounded(f"a cast from {source} to {params['new_dtype']}")
        return _Interval(prim.bind(ins[0].lo, **params), prim.bind(ins[0].hi, **params))
    if name in _SAME or name in _INCREASING:
        if name == "select_n" and _is_interval(ins[0]):
            raise Unbounded("a data-dependent select")
        if name in ("dynamic_slice", "gather", "pad") and any(_is_interval(v) for v in ins[1:]):
            raise Unbounded(f"{name} with data-dependent indices or padding")
        # (select_n with a constant predicate picks per element from each end)
        lows = [v.lo if _is_interval(v) else v for v in ins]
        highs = [v.hi if _is_interval(v) else v for v in ins]
        return _Interval(prim.bind(*lows, **params), prim.bind(*highs, **params))
    if name in ("neg",):
        return _Interval(-ins[0].hi, -ins[0].lo)
    if name == "abs":
        lo, hi = ins[0].lo, ins[0].hi
        return _Interval(jnp.where((lo <= 0) & (hi >= 0), 0.0, jnp.minimum(abs(lo), abs(hi))),
                         jnp.maximum(abs(lo), abs(hi)))  # fmt: skip
    if name in ("add", "sub"):
        (alo, ahi), (blo, bhi) = _both(ins[0]), _both(ins[1])
        if name == "add":
            return _Interval(alo + blo, ahi + bhi)
        return _Interval(alo - bhi, ahi - blo)
    if name in ("max", "min"):
        (alo, ahi), (blo, bhi) = _both(ins[0]), _both(ins[1])
        f = jnp.maximum if name == "max" else jnp.minimum
        return _Interval(f(alo, blo), f(ahi, bhi))
    if name == "mul":
        (alo, ahi), (blo, bhi) = _both(ins[0]), _both(ins[1])
        corners = [alo * blo, alo * bhi, ahi * blo, ahi * bhi]
        return _Interval(jnp.minimum(jnp.minimum(corners[0], corners[1]),
                                     jnp.minimum(corners[2], corners[3])),
                         jnp.maximum(jnp.maximum(corners[0], corners[1]),
                                     jnp.maximum(corners[2], corners[3])))  # fmt: skip
    if name == "div" and not _is_interval(ins[1]):
        d = ins[1]
        a, b = ins[0].lo / d, ins[0].hi / d
        return _Interval(jnp.minimum(a, b), jnp.maximum(a, b))
    if name == "integer_pow" and params["y"] == 2:
        lo, hi = ins[0].lo, ins[0].hi
        low = jnp.where((lo <= 0) & (hi >= 0), 0.0, jnp.minimum(lo * lo, hi * hi))
        return _Interval(low, jnp.maximum(lo * lo, hi * hi))
    if name in ("conv_general_dilated", "dot_general"):
        if _is_interval(ins[1]) and _is_interval(ins[0]):
            raise Unbounded(f"{name} of two data-dependent operands")
        if _is_interval(ins[1]):  # make the data the first operand for the centre form
            raise Unbounded(f"{name} with the data as the second operand")
        x, w = ins[0], ins[1]
        centre, radius = (x.hi + x.lo) / 2, (x.hi - x.lo) / 2
        c = prim.bind(centre, w, **params)
        r = prim.bind(radius, jnp.abs(w), **params)
        # outward rounding: float32 sums of many products are off by a small multiple
        # of |W|·|x|; widen by ROUNDING of that so rounding never shrinks the interval
        r = r + ROUNDING * prim.bind(jnp.abs(centre) + radius, jnp.abs(w), **params)
        return _Interval(c - r, c + r)
    raise Unbounded(f"operation {name!r}")


def upper_bounds(model: Model, layer: str) -> np.ndarray:
    """float32 (C,): per channel of ``layer``, an upper bound of its activation at any
    position for any image in [0, 1] (module docstring).

    Raises:
      Unbounded: the network uses an operation the evaluator does not cover.
    """
    name = model.resolve(layer)
    h, w = model.input.size
    spec = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    closed = jax.make_jaxpr(lambda x: model.apply(model.params, x, (name,))[name])(spec)
    x = _Interval(jnp.zeros((1, h, w, 3), jnp.float32), jnp.ones((1, h, w, 3), jnp.float32))
    (out,) = _eval(closed.jaxpr, closed.consts, [x])
    hi = out.hi if _is_interval(out) else out
    hi = np.asarray(hi, np.float32)
    return hi.reshape(-1, hi.shape[-1]).max(axis=0)


def dead_units(model: Model, layer: str) -> np.ndarray | None:
    """bool (C,): the units of ``layer`` proven dead (upper bound <= 0), or None when
    the network cannot be bounded (:class:`Unbounded`, or any failure of the
    evaluator: the answer is then "not proven", never a crash)."""
    try:
        return upper_bounds(model, layer) <= 0
    except Exception:  # noqa: BLE001 - an unproven unit is reported, not a crash
        return None
