"""Receptive fields computed by following a traced JAX computation.

:func:`compute_receptive_fields` traces ``fn`` with :func:`jax.make_jaxpr` and walks
the resulting jaxpr once. For every intermediate value it keeps, for each of the
input's two spatial dimensions (height, width), either

* the axis of the value that indexes that dimension together with the per-axis
  field ``(size, stride, offset)``: position ``i`` along that axis sees input pixels
  ``[i * stride + offset, i * stride + offset + size)``; or
* a *lost* marker with a reason, when the value depends on the dimension in a way
  that is not a sliding window (a reduction over it, a flatten, a gather, ...).

Values that do not depend on the input at all (parameters, constants) carry no
state and are ignored. A layer gets a :class:`ReceptiveField` when both
dimensions are tracked, and ``None`` (every unit sees the whole image, or the
field cannot be expressed) otherwise; :func:`explain_receptive_fields` returns the
reason instead of ``None``.

Per-axis arithmetic, starting from the input (size 1, stride 1, offset 0), for a
window of ``k`` taps with dilation ``d`` (``k_eff = d * (k - 1) + 1``), stride ``s``
and low padding ``p``::

    size   += (k_eff - 1) * stride
    offset -= p * stride
    stride *= s

A union of two fields along the same axis (an elementwise op with two spatial
operands, a concatenation of branches) with equal strides is
``offset = min(o1, o2)``, ``end = max(o1 + size1, o2 + size2)``. With different
strides no single field is exact, so the union is the smallest field, using
either of the two strides, that covers both for every position of the value's
axis (the positions are known from the traced shape); it is conservative.

Rules are a dispatch table (:data:`_RULES`) from primitive name to a small
function. Primitives that are not in the table are treated as elementwise when
every input-dependent operand broadcasts to the output shape and at least one of
them has exactly that shape; otherwise the dependence is marked as lost. Calls
that carry a sub-jaxpr (``jit``/``pjit``, ``closed_call``, ``core_call``,
``remat``/``checkpoint``, ``custom_jvp_call``, ``custom_vjp_call``/
``custom_vjp_call_jaxpr``, and any other primitive whose single sub-jaxpr takes
the operands as they are) are followed recursively; ``cond`` takes the union of
its branches; ``while`` and ``scan`` iterate their body to a fixed point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

try:  # public home of the jaxpr types since jax 0.4.2x
    from jax.extend.core import ClosedJaxpr, Jaxpr, Literal
except ImportError:  # pragma: no cover - older jax
    from jax.core import ClosedJaxpr, Jaxpr, Literal  # type: ignore[no-redef]

__all__ = ["ReceptiveField", "compute_receptive_fields", "explain_receptive_fields"]


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a spatial layer, per axis (height, width), in input pixels.

    Output position ``i`` along an axis sees input pixels
    ``[i * stride + offset, i * stride + offset + size - 1]`` (offset can be negative
    where padding was added). ``box(i, j)`` gives the (top, left, bottom, right)
    window, bottom/right exclusive, clipped to the image when its size is given.

    Attributes:
      size: (height, width) of the field in input pixels.
      stride: (height, width) distance in input pixels between neighbouring units.
      offset: (height, width) input coordinate of the first pixel seen by unit 0.
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def __post_init__(self):
        for name in ("size", "stride", "offset"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 2:
                raise ValueError(f"ReceptiveField.{name} must be (height, width), got {value}.")
            object.__setattr__(self, name, value)
        if min(self.size) < 1 or min(self.stride) < 1:
            raise ValueError(
                f"ReceptiveField size and stride must be positive, got size={self.size}, "
                f"stride={self.stride}."
            )

    def box(
        self, i: int, j: int, image_size: tuple[int, int] | None = None
    ) -> tuple[int, int, int, int]:
        """Input window ``(top, left, bottom, right)`` seen by the unit at row ``i``, column ``j``.

        ``bottom`` and ``right`` are exclusive, so the crop is
        ``image[top:bottom, left:right]``. Without ``image_size`` the window may
        reach outside the image (negative ``top``/``left`` where there is padding);
        with ``image_size = (H, W)`` it is clipped to ``[0, H] x [0, W]``.
        """
        top = int(i) * self.stride[0] + self.offset[0]
        left = int(j) * self.stride[1] + self.offset[1]
        bottom, right = top + self.size[0], left + self.size[1]
        if image_size is not None:
            height, width = (int(v) for v in image_size)
            top, bottom = min(max(top, 0), height), min(max(bottom, 0), height)
            left, right = min(max(left, 0), width), min(max(right, 0), width)
        return top, left, bottom, right

    def center(self, i: int, j: int) -> tuple[float, float]:
        """Centre ``(y, x)`` of the unclipped window of unit ``(i, j)``, in pixel coordinates.

        Pixel ``p`` has coordinate ``p``, so a window over pixels 0..2 has centre 1.0.
        """
        return (
            int(i) * self.stride[0] + self.offset[0] + (self.size[0] - 1) / 2,
            int(j) * self.stride[1] + self.offset[1] + (self.size[1] - 1) / 2,
        )


# --- per-axis state ---------------------------------------------------------------

_DIM_NAMES = ("height", "width")


@dataclasses.dataclass(frozen=True)
class _Field:
    """Field along one axis: position ``i`` sees ``[i*stride + offset, ... + size)``."""

    size: int
    stride: int
    offset: int

    def window(self, kernel: int, stride: int, pad_low: int, dilation: int = 1) -> _Field:
        """Field after a sliding window of ``kernel`` taps over this axis."""
        k_eff = dilation * (kernel - 1) + 1
        return _Field(
            size=self.size + (k_eff - 1) * self.stride,
            stride=self.stride * stride,
            offset=self.offset - pad_low * self.stride,
        )

    def take(self, start: int, step: int = 1) -> _Field:
        """Field after selecting positions ``start + i * step`` (a slice or a pad)."""
        return _Field(self.size, self.stride * step, self.offset + start * self.stride)

    def union(self, other: _Field, length: int) -> _Field:
        """Smallest field covering both for positions ``0 .. length - 1``."""
        if self.stride == other.stride:
            low = min(self.offset, other.offset)
            high = max(self.offset + self.size, other.offset + other.size)
            return _Field(high - low, self.stride, low)
        last = max(int(length) - 1, 0)
        candidates = []
        for stride in (self.stride, other.stride):
            # Offsets relative to i * stride are linear in i: extremes at 0 and last.
            lows = [f.offset + i * (f.stride - stride) for f in (self, other) for i in (0, last)]
            highs = [
                f.offset + f.size + i * (f.stride - stride)
                for f in (self, other)
                for i in (0, last)
            ]
            candidates.append(_Field(max(highs) - min(lows), stride, min(lows)))
        return min(candidates, key=lambda f: (f.size, -f.stride))


@dataclasses.dataclass(frozen=True)
class _Axis:
    """The value's axis ``axis`` indexes the input dimension with field ``field``."""

    axis: int
    field: _Field


@dataclasses.dataclass(frozen=True)
class _Lost:
    """The value depends on the input dimension, but not through one sliding axis."""

    reason: str


_Dim = _Axis | _Lost
# A value's state: one entry per input dimension (height, width), or None when the
# value does not depend on the input.
_State = tuple[_Dim, _Dim] | None


def _shape(var) -> tuple[int, ...]:
    return tuple(getattr(var.aval, "shape", ()))


def _lose(state: _State, reason: str) -> _State:
    """Every tracked dimension of ``state`` becomes lost with ``reason``."""
    if state is None:
        return None
    return tuple(d if isinstance(d, _Lost) else _Lost(reason) for d in state)


def _map_dims(state: _State, fn: Callable[[int, _Axis], _Dim]) -> _State:
    """Apply ``fn(dim_index, axis_state)`` to every tracked dimension."""
    if state is None:
        return None
    return tuple(fn(k, d) if isinstance(d, _Axis) else d for k, d in enumerate(state))


def _union(states: Sequence[_State], shape: Sequence[int]) -> _State:
    """Union of the states of several values that all feed one value of ``shape``."""
    present = [s for s in states if s is not None]
    if not present:
        return None
    dims = []
    for k in range(2):
        dim: _Dim = present[0][k]
        for other in present[1:]:
            d = other[k]
            if isinstance(dim, _Lost):
                break
            if isinstance(d, _Lost):
                dim = d
            elif d.axis != dim.axis:
                dim = _Lost(
                    f"the input's {_DIM_NAMES[k]} reaches one value along two different "
                    f"axes ({dim.axis} and {d.axis})"
                )
            else:
                dim = _Axis(dim.axis, dim.field.union(d.field, shape[dim.axis]))
        dims.append(dim)
    return tuple(dims)


def _dependency(states: Sequence[_State], reason: str) -> _State:
    """State of a value that depends on ``states`` through an unknown position."""
    return _union([_lose(s, reason) for s in states], ())


# --- rules ----------------------------------------------------------------------
#
# A rule is ``rule(eqn, ins) -> outs``: ``ins`` are the states of ``eqn.invars``
# (at least one is not None), ``outs`` one state per ``eqn.outvars``.


def _broadcast_to(state: _State, in_shape, out_shape, what: str) -> _State:
    """Numpy-style broadcasting of a value of ``in_shape`` to ``out_shape``."""
    if state is None:
        return None
    shift = len(out_shape) - len(in_shape)
    if shift < 0:
        return _lose(state, f"{what} has a higher rank than its output")

    def move(k, d):
        n_in, n_out = in_shape[d.axis], out_shape[d.axis + shift]
        if n_in != n_out:
            return _Lost(f"{what} broadcasts the input's {_DIM_NAMES[k]} axis from {n_in}")
        return _Axis(d.axis + shift, d.field)

    return _map_dims(state, move)


def _broadcastable(in_shape, out_shape) -> bool:
    shift = len(out_shape) - len(in_shape)
    return shift >= 0 and all(n in (1, m) for n, m in zip(in_shape, out_shape[shift:], strict=True))


def _elementwise(eqn, ins):
    name = eqn.primitive.name
    outs = []
    for out in eqn.outvars:
        out_shape = _shape(out)
        outs.append(
            _union(
                [_broadcast_to(s, _shape(v), out_shape, name) for v, s in zip(eqn.invars, ins)],
                out_shape,
            )
        )
    return outs


def _default(eqn, ins):
    """Unknown primitive: elementwise when shapes say so, otherwise lost."""
    name = eqn.primitive.name
    if any(isinstance(p, (Jaxpr, ClosedJaxpr)) for p in eqn.params.values()):
        return _call(eqn, ins)
    elementwise = _elementwise(eqn, ins)
    dependent = [_shape(v) for v, s in zip(eqn.invars, ins) if s is not None]
    outs = []
    for out, state in zip(eqn.outvars, elementwise):
        out_shape = _shape(out)
        if out_shape in dependent and all(_broadcastable(s, out_shape) for s in dependent):
            outs.append(state)
        else:
            outs.append(
                _dependency(ins, f"primitive {name!r} changes the shape of a spatial value")
            )
    return outs


def _window_dim(k, d, *, kernel, stride, pad_low, dilation, base_dilation, what):
    """Apply a window along a tracked axis (shared by conv and reduce_window)."""
    if base_dilation != 1:
        return _Lost(
            f"{what} dilates its input (transposed convolution or upsampling, "
            f"dilation {base_dilation}) along the input's {_DIM_NAMES[k]}; not supported"
        )
    return _Axis(d.axis, d.field.window(kernel, stride, pad_low, dilation))


def _conv(eqn, ins):
    lhs, rhs = ins[0], ins[1]
    if rhs is not None:
        return [_dependency(ins, "the convolution kernel depends on the input")]
    p = eqn.params
    rank = len(_shape(eqn.invars[0]))
    dn = p.get("dimension_numbers")
    if dn is None:
        lhs_spec = rhs_spec = out_spec = tuple(range(rank))
    else:
        lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    rhs_shape = _shape(eqn.invars[1])
    n_spatial = rank - 2
    strides = p.get("window_strides") or (1,) * n_spatial
    padding = p["padding"]
    lhs_dilation = p.get("lhs_dilation") or (1,) * n_spatial
    rhs_dilation = p.get("rhs_dilation") or (1,) * n_spatial

    def move(k, d):
        a = d.axis
        if a == lhs_spec[0]:
            if p.get("batch_group_count", 1) != 1:
                return _Lost("a convolution with batch groups mixes the batch axis")
            return _Axis(out_spec[0], d.field)
        if a == lhs_spec[1]:
            return _Lost(f"a convolution contracts the axis carrying the input's {_DIM_NAMES[k]}")
        s = lhs_spec.index(a) - 2
        moved = _window_dim(
            k,
            d,
            kernel=rhs_shape[rhs_spec[2 + s]],
            stride=strides[s],
            pad_low=padding[s][0],
            dilation=rhs_dilation[s],
            base_dilation=lhs_dilation[s],
            what="a convolution",
        )
        return moved if isinstance(moved, _Lost) else _Axis(out_spec[2 + s], moved.field)

    return [_map_dims(lhs, move)]


def _reduce_window(eqn, ins):
    """reduce_window_{max,min,sum} (one operand) and reduce_window (n operands, n inits)."""
    p = eqn.params
    n_out = len(eqn.outvars)
    operands, inits = ins[:n_out], ins[n_out:]
    base = p.get("base_dilation") or (1,) * len(p["window_dimensions"])
    window_dilation = p.get("window_dilation") or (1,) * len(p["window_dimensions"])

    def move(k, d):
        a = d.axis
        return _window_dim(
            k,
            d,
            kernel=p["window_dimensions"][a],
            stride=p["window_strides"][a],
            pad_low=p["padding"][a][0],
            dilation=window_dilation[a],
            base_dilation=base[a],
            what=eqn.primitive.name,
        )

    moved = [_map_dims(s, move) for s in operands]
    init = _dependency(inits, "the pooling initial value depends on the input")
    state = _union([*moved, init], _shape(eqn.outvars[0]))
    return [state] * n_out


def _pad(eqn, ins):
    operand, value = ins
    config = eqn.params["padding_config"]

    def move(k, d):
        low, _, interior = config[d.axis]
        if interior != 0:
            return _Lost(f"interior padding of the input's {_DIM_NAMES[k]} is not supported")
        return _Axis(d.axis, d.field.take(-low))

    padded = _map_dims(operand, move)
    value = _dependency([value], "the padding value depends on the input")
    return [_union([padded, value], _shape(eqn.outvars[0]))]


def _slice(eqn, ins):
    p = eqn.params
    strides = p.get("strides") or (1,) * len(p["start_indices"])
    return [
        _map_dims(
            ins[0],
            lambda k, d: _Axis(d.axis, d.field.take(p["start_indices"][d.axis], strides[d.axis])),
        )
    ]


def _rev(eqn, ins):
    dims = eqn.params["dimensions"]
    return [
        _map_dims(
            ins[0],
            lambda k, d: (
                _Lost(f"rev reverses the input's {_DIM_NAMES[k]}") if d.axis in dims else d
            ),
        )
    ]


def _transpose(eqn, ins):
    perm = tuple(eqn.params["permutation"])
    return [_map_dims(ins[0], lambda k, d: _Axis(perm.index(d.axis), d.field))]


def _prefixes(shape) -> list[int]:
    out, acc = [], 1
    for n in shape:
        out.append(acc)
        acc *= n
    return out


def _reshape_axis(a: int, in_shape, out_shape) -> int | None:
    """Output axis that keeps input axis ``a`` intact under a row-major reshape."""
    in_pre, out_pre = _prefixes(in_shape), _prefixes(out_shape)
    p, n = in_pre[a], in_shape[a]
    if n != 1:
        for b, m in enumerate(out_shape):
            if out_pre[b] == p and m == n:
                return b
        return None
    # Unit axes: match the j-th unit axis of the group of equal prefix in order.
    group_in = [b for b, m in enumerate(in_shape) if in_pre[b] == p and m == 1]
    group_out = [b for b, m in enumerate(out_shape) if out_pre[b] == p and m == 1]
    if len(group_in) != len(group_out):
        return None
    return group_out[group_in.index(a)]


def _reshape(eqn, ins):
    """reshape and squeeze: an axis survives when it keeps its size and position."""
    in_shape, out_shape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    state = ins[0]
    order = eqn.params.get("dimensions") if eqn.primitive.name == "reshape" else None
    if order is not None:  # reshape of a transposed operand (older jax)
        order = tuple(order)
        state = _map_dims(state, lambda k, d: _Axis(order.index(d.axis), d.field))
        in_shape = tuple(in_shape[o] for o in order)
    name = eqn.primitive.name

    def move(k, d):
        b = _reshape_axis(d.axis, in_shape, out_shape)
        if b is None:
            return _Lost(f"{name} merges or splits the input's {_DIM_NAMES[k]} axis")
        return _Axis(b, d.field)

    others = [_lose(s, name) for s in ins[1:]]
    return [_union([_map_dims(state, move), *others], _shape(eqn.outvars[0]))]


def _broadcast_in_dim(eqn, ins):
    bdims = tuple(eqn.params["broadcast_dimensions"])
    in_shape, out_shape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])

    def move(k, d):
        b = bdims[d.axis]
        if in_shape[d.axis] != out_shape[b]:
            return _Lost(f"broadcast_in_dim broadcasts the input's {_DIM_NAMES[k]} axis")
        return _Axis(b, d.field)

    return [_map_dims(ins[0], move)]


def _concatenate(eqn, ins):
    axis = eqn.params["dimension"]

    def move(k, d):
        if d.axis == axis:
            return _Lost(f"concatenate joins values along the input's {_DIM_NAMES[k]}")
        return d

    return [_union([_map_dims(s, move) for s in ins], _shape(eqn.outvars[0]))]


def _split(eqn, ins):
    axis = eqn.params["axis"]
    outs, start = [], 0
    for size in eqn.params["sizes"]:
        first = start
        outs.append(
            _map_dims(
                ins[0],
                lambda k, d, first=first: (
                    _Axis(d.axis, d.field.take(first)) if d.axis == axis else d
                ),
            )
        )
        start += int(size)
    return outs


def _reduction(eqn, ins):
    """reduce_sum/max/min/prod/and/or/xor, argmax/argmin and generic reduce."""
    p = eqn.params
    axes = tuple(p["axes"] if "axes" in p else p["dimensions"])
    name = eqn.primitive.name
    n_out = len(eqn.outvars)
    operands = ins if name in ("argmax", "argmin") else ins[:n_out]
    inits = [] if name in ("argmax", "argmin") else ins[n_out:]

    def move(k, d):
        if d.axis in axes:
            return _Lost(f"{name} reduces over the input's {_DIM_NAMES[k]}")
        return _Axis(d.axis - sum(1 for a in axes if a < d.axis), d.field)

    moved = [_map_dims(s, move) for s in operands]
    init = _dependency(inits, f"the {name} initial value depends on the input")
    state = _union([*moved, init], _shape(eqn.outvars[0]))
    return [state] * n_out


def _along_axis(param: str, default: int | None = None):
    """Ops mixing values along one axis (cumsum, sort, top_k): lost along that axis."""

    def rule(eqn, ins):
        axis = eqn.params[param] if default is None else eqn.params.get(param, default)
        rank = len(_shape(eqn.invars[0]))
        axis = axis % rank if rank else axis
        name = eqn.primitive.name
        state = _union(
            [
                _map_dims(
                    s,
                    lambda k, d: (
                        _Lost(f"{name} mixes values along the input's {_DIM_NAMES[k]}")
                        if d.axis == axis
                        else d
                    ),
                )
                for s in ins
            ],
            _shape(eqn.outvars[0]),
        )
        return [state] * len(eqn.outvars)

    return rule


def _last_axes(count: Callable[[dict], int]):
    """Ops mixing values along the trailing axes (fft)."""

    def rule(eqn, ins):
        rank = len(_shape(eqn.invars[0]))
        first = rank - count(eqn.params)
        name = eqn.primitive.name
        state = _map_dims(
            ins[0],
            lambda k, d: (
                _Lost(f"{name} mixes values along the input's {_DIM_NAMES[k]}")
                if d.axis >= first
                else d
            ),
        )
        state = _union([state, *(_lose(s, name) for s in ins[1:])], _shape(eqn.outvars[0]))
        return [state] * len(eqn.outvars)

    return rule


def _dot_general(eqn, ins):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    ranks = [len(_shape(v)) for v in eqn.invars[:2]]
    lhs_free = [a for a in range(ranks[0]) if a not in lc and a not in lb]
    rhs_free = [a for a in range(ranks[1]) if a not in rc and a not in rb]

    def mover(contract, batch, free, first_free):
        def move(k, d):
            if d.axis in contract:
                return _Lost(f"dot_general contracts the input's {_DIM_NAMES[k]}")
            if d.axis in batch:
                return _Axis(list(batch).index(d.axis), d.field)
            return _Axis(first_free + free.index(d.axis), d.field)

        return move

    lhs = _map_dims(ins[0], mover(lc, lb, lhs_free, len(lb)))
    rhs = _map_dims(ins[1], mover(rc, rb, rhs_free, len(lb) + len(lhs_free)))
    return [_union([lhs, rhs], _shape(eqn.outvars[0]))]


def _dynamic_slice(eqn, ins):
    sizes = eqn.params["slice_sizes"]
    in_shape = _shape(eqn.invars[0])

    def move(k, d):
        if sizes[d.axis] == in_shape[d.axis]:
            return d  # the whole axis: the start is clamped to 0
        return _Lost(f"dynamic_slice takes a traced window of the input's {_DIM_NAMES[k]}")

    index = _dependency(ins[1:], "dynamic_slice indices depend on the input")
    return [_union([_map_dims(ins[0], move), index], _shape(eqn.outvars[0]))]


def _update(eqn, ins):
    """dynamic_update_slice and scatter*: the operand keeps its positions."""
    reason = f"{eqn.primitive.name} writes input-dependent values at traced positions"
    return [_union([ins[0], _dependency(ins[1:], reason)], _shape(eqn.outvars[0]))]


def _gather(eqn, ins):
    dn = eqn.params["dimension_numbers"]
    sizes = eqn.params["slice_sizes"]
    in_shape = _shape(eqn.invars[0])
    indexed = (
        set(dn.collapsed_slice_dims)
        | set(dn.start_index_map)
        | set(getattr(dn, "operand_batching_dims", ()))
    )
    kept = [a for a in range(len(in_shape)) if a not in dn.collapsed_slice_dims]
    kept = [a for a in kept if a not in getattr(dn, "operand_batching_dims", ())]

    def move(k, d):
        if d.axis in indexed or sizes[d.axis] != in_shape[d.axis]:
            return _Lost(f"gather indexes the input's {_DIM_NAMES[k]}")
        return _Axis(dn.offset_dims[kept.index(d.axis)], d.field)

    index = _dependency(ins[1:], "gather indices depend on the input")
    return [_union([_map_dims(ins[0], move), index], _shape(eqn.outvars[0]))]


def _identity(eqn, ins):
    """optimization_barrier, device_put: output k is operand k."""
    return list(ins[: len(eqn.outvars)])


def _lost(eqn, ins):
    return [_dependency(ins, f"{eqn.primitive.name} is not a sliding window")] * len(eqn.outvars)


# --- sub-jaxprs -----------------------------------------------------------------


def _open(jaxpr) -> tuple[Any, int]:
    """(open jaxpr, number of bound consts) of a Jaxpr or ClosedJaxpr."""
    if isinstance(jaxpr, ClosedJaxpr):
        return jaxpr.jaxpr, len(jaxpr.consts)
    return jaxpr, 0


def _run(jaxpr, ins: Sequence[_State]) -> list[_State]:
    """States of ``jaxpr``'s outputs given the states of its inputs."""
    inner, _ = _open(jaxpr)
    return _eval_jaxpr(inner, ins)


_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _call(eqn, ins):
    """jit/pjit, closed_call, core_call, remat/checkpoint, custom_jvp/vjp calls."""
    candidates = [eqn.params[k] for k in _CALL_PARAMS if k in eqn.params]
    candidates += [
        v
        for k, v in eqn.params.items()
        if k not in _CALL_PARAMS and isinstance(v, (Jaxpr, ClosedJaxpr))
    ]
    for sub in candidates:
        if not isinstance(sub, (Jaxpr, ClosedJaxpr)):
            continue
        inner, _ = _open(sub)
        same_in = [_shape(v) for v in inner.invars] == [_shape(v) for v in eqn.invars]
        same_out = [_shape(v) for v in inner.outvars] == [_shape(v) for v in eqn.outvars]
        if same_in and same_out:
            return _eval_jaxpr(inner, ins)
    return _lost(eqn, ins)


def _cond(eqn, ins):
    index, operands = ins[0], ins[1:]
    branches = [_run(b, operands) for b in eqn.params["branches"]]
    predicate = _dependency([index], "the branch taken depends on the input")
    return [
        _union([*(b[k] for b in branches), predicate], _shape(out))
        for k, out in enumerate(eqn.outvars)
    ]


_MAX_LOOP_PASSES = 8


def _fixed_point(step: Callable[[list[_State]], list[_State]], carry, shapes, what: str):
    """Carry states of a loop: iterate ``step`` until nothing grows."""
    for _ in range(_MAX_LOOP_PASSES):
        new = [_union([c, o], shape) for c, o, shape in zip(carry, step(carry), shapes)]
        if new == carry:
            return carry
        carry = new
    return [_lose(c, f"{what} grows the field on every iteration") for c in carry]


def _while(eqn, ins):
    p = eqn.params
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    cond_consts, body_consts, init = ins[:nc], ins[nc : nc + nb], list(ins[nc + nb :])
    shapes = [_shape(v) for v in eqn.outvars]
    carry = _fixed_point(
        lambda c: _run(p["body_jaxpr"], [*body_consts, *c]), init, shapes, "a while loop"
    )
    predicate = _run(p["cond_jaxpr"], [*cond_consts, *carry])
    stop = _dependency(predicate, "the loop's trip count depends on the input")
    return [_union([c, stop], shape) for c, shape in zip(carry, shapes)]


def _scan(eqn, ins):
    p = eqn.params
    n_consts, n_carry = p["num_consts"], p["num_carry"]
    consts, init, xs = (
        ins[:n_consts],
        list(ins[n_consts : n_consts + n_carry]),
        ins[n_consts + n_carry :],
    )

    def unstack(k, d):
        if d.axis == 0:
            return _Lost(f"scan iterates over the input's {_DIM_NAMES[k]}")
        return _Axis(d.axis - 1, d.field)

    x_slices = [_map_dims(s, unstack) for s in xs]
    shapes = [_shape(v) for v in eqn.outvars[:n_carry]]

    def step(carry):
        return _run(p["jaxpr"], [*consts, *carry, *x_slices])[:n_carry]

    carry = _fixed_point(step, init, shapes, "a scan")
    ys = _run(p["jaxpr"], [*consts, *carry, *x_slices])[n_carry:]
    restack = [_map_dims(s, lambda k, d: _Axis(d.axis + 1, d.field)) for s in ys]
    return [*carry, *restack]


_RULES: dict[str, Callable] = {
    "conv_general_dilated": _conv,
    "reduce_window": _reduce_window,
    "reduce_window_max": _reduce_window,
    "reduce_window_min": _reduce_window,
    "reduce_window_sum": _reduce_window,
    "pad": _pad,
    "slice": _slice,
    "rev": _rev,
    "transpose": _transpose,
    "reshape": _reshape,
    "squeeze": _reshape,
    "expand_dims": _reshape,
    "broadcast_in_dim": _broadcast_in_dim,
    "concatenate": _concatenate,
    "split": _split,
    "reduce_sum": _reduction,
    "reduce_max": _reduction,
    "reduce_min": _reduction,
    "reduce_prod": _reduction,
    "reduce_and": _reduction,
    "reduce_or": _reduction,
    "reduce_xor": _reduction,
    "reduce": _reduction,
    "argmax": _reduction,
    "argmin": _reduction,
    "cumsum": _along_axis("axis"),
    "cumprod": _along_axis("axis"),
    "cummax": _along_axis("axis"),
    "cummin": _along_axis("axis"),
    "cumlogsumexp": _along_axis("axis"),
    "sort": _along_axis("dimension"),
    "top_k": _along_axis("axis", default=-1),
    "fft": _last_axes(lambda p: len(p["fft_lengths"])),
    "dot_general": _dot_general,
    "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": _update,
    "scatter": _update,
    "scatter-add": _update,
    "scatter_add": _update,
    "scatter-mul": _update,
    "scatter_mul": _update,
    "scatter-min": _update,
    "scatter_min": _update,
    "scatter-max": _update,
    "scatter_max": _update,
    "scatter_sub": _update,
    "scatter-sub": _update,
    "scatter_apply": _update,
    "gather": _gather,
    "select_and_scatter_add": _lost,
    "select_and_gather_add": _lost,
    "select_and_scatter": _lost,
    "optimization_barrier": _identity,
    "device_put": _identity,
    "cond": _cond,
    "while": _while,
    "scan": _scan,
    # Calls whose sub-jaxpr takes the operands as they are (names across versions).
    "pjit": _call,
    "jit": _call,
    "closed_call": _call,
    "core_call": _call,
    "remat": _call,
    "remat2": _call,
    "checkpoint": _call,
    "custom_jvp_call": _call,
    "custom_vjp_call": _call,
    "custom_vjp_call_jaxpr": _call,
}
"""Primitive name -> rule. Anything else goes to :func:`_default` (elementwise by shape)."""


def _apply_rule(eqn, ins: list[_State]) -> list[_State]:
    rule = _RULES.get(eqn.primitive.name, _default)
    try:
        outs = list(rule(eqn, ins))
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as err:
        # Parameters in an unexpected form (another jax version): stay correct by
        # giving up on the spatial structure instead of failing.
        reason = f"could not interpret {eqn.primitive.name!r} ({type(err).__name__}: {err})"
        return [_dependency(ins, reason)] * len(eqn.outvars)
    if len(outs) != len(eqn.outvars):
        return [_dependency(ins, f"{eqn.primitive.name} has an unexpected output count")] * len(
            eqn.outvars
        )
    return outs


def _eval_jaxpr(jaxpr, ins: Sequence[_State]) -> list[_State]:
    """Propagate states through an open jaxpr; constvars are independent of the input."""
    env: dict[Any, _State] = {}

    def read(v) -> _State:
        if isinstance(v, Literal):
            return None
        return env.get(v)

    if len(ins) != len(jaxpr.invars):
        raise ValueError(f"jaxpr takes {len(jaxpr.invars)} inputs, got {len(ins)} states")
    for v, s in zip(jaxpr.invars, ins):
        env[v] = s
    for eqn in jaxpr.eqns:
        states = [read(v) for v in eqn.invars]
        if all(s is None for s in states):
            outs = [None] * len(eqn.outvars)
        else:
            outs = _apply_rule(eqn, states)
        for v, s in zip(eqn.outvars, outs):
            env[v] = s
    return [read(v) for v in jaxpr.outvars]


# --- public API -----------------------------------------------------------------


def _to_field(state: _State) -> ReceptiveField | str:
    if state is None:
        return "does not depend on the input"
    lost = [d for d in state if isinstance(d, _Lost)]
    if lost:
        return lost[0].reason
    h, w = state
    if h.axis == w.axis:
        return "the input's height and width share one axis"
    return ReceptiveField(
        size=(h.field.size, w.field.size),
        stride=(h.field.stride, w.field.stride),
        offset=(h.field.offset, w.field.offset),
    )


def explain_receptive_fields(
    fn: Callable[[jax.Array], Any], input_shape: Sequence[int], dtype=jnp.float32
) -> dict[str, ReceptiveField | str]:
    """Like :func:`compute_receptive_fields`, with a reason string in place of ``None``.

    The reason says why a layer has no receptive field (for example
    ``"reduce_sum reduces over the input's height"`` for global pooling, or
    ``"reshape merges or splits the input's height axis"`` for a flatten).
    """
    input_shape = tuple(int(n) for n in input_shape)
    if len(input_shape) != 4:
        raise ValueError(
            f"input_shape must be (N, H, W, C), got {input_shape}; receptive fields are "
            "computed for NHWC images."
        )
    example = jax.ShapeDtypeStruct(input_shape, dtype)
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(example)
    jaxpr = closed.jaxpr
    (x,) = jaxpr.invars
    start = _Field(1, 1, 0)
    states = _eval_jaxpr(jaxpr, [(_Axis(1, start), _Axis(2, start))])

    leaves, treedef = jax.tree_util.tree_flatten(out_shape)
    if len(leaves) != len(states):  # pragma: no cover - make_jaxpr flattens the same way
        raise RuntimeError("traced outputs do not match the function's output structure")
    indices = jax.tree_util.tree_unflatten(treedef, list(range(len(leaves))))
    if isinstance(out_shape, Mapping):
        named = {str(k): jax.tree_util.tree_leaves(v) for k, v in indices.items()}
    elif isinstance(out_shape, jax.ShapeDtypeStruct):
        named = {"output": [0]}
    else:
        named = {
            jax.tree_util.keystr(path): [i]
            for path, i in jax.tree_util.tree_flatten_with_path(indices)[0]
        }
    result: dict[str, ReceptiveField | str] = {}
    for name, idx in named.items():
        if len(idx) != 1:
            result[name] = f"the layer is a pytree of {len(idx)} arrays, not one activation"
        else:
            result[name] = _to_field(states[idx[0]])
    return result


def compute_receptive_fields(
    fn: Callable[[jax.Array], Any], input_shape: Sequence[int], dtype=jnp.float32
) -> dict[str, ReceptiveField | None]:
    """Receptive field of every layer ``fn`` returns, found by tracing ``fn``.

    Args:
      fn: ``fn(x) -> {layer_name: activation}`` (or one array, named ``"output"``)
        for ``x`` of shape ``input_shape``, NHWC. Parameters are closed over; they
        and any constant are independent of ``x``. ``fn`` is only traced
        (:func:`jax.make_jaxpr`), never run.
      input_shape: ``(N, H, W, C)``.
      dtype: dtype of the traced input.

    Returns:
      ``{layer_name: ReceptiveField | None}``. The field is per input axis
      (height, width), whatever the activation's layout. ``None`` means every unit
      of the layer depends on the whole image (fully connected layers, global
      pooling), on no pixel at all, or in a way no single field describes
      (transposed convolutions, upsampling by gather, interior padding).
      :func:`explain_receptive_fields` gives the reason.

    Raises:
      ValueError: when ``input_shape`` is not rank 4.
    """
    return {
        name: field if isinstance(field, ReceptiveField) else None
        for name, field in explain_receptive_fields(fn, input_shape, dtype).items()
    }
