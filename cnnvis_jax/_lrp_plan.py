"""Finding the LRP layers in a jaxpr for :mod:`cnnvis_jax.rules`: which equations
carry activations, where each conv/dense layer, pool and residual sum starts, the
affine epilogue that belongs to it, and which operations pass relevance unchanged
(one :class:`_Plan` per jaxpr, memoized in the analysis).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, NamedTuple

from cnnvis_jax._jaxpr_scan import (
    _CALLS,
    Jaxpr,
    _Analysis,
    _body,
    _inexact,
    _is_var,
    _open,
    _shape,
    _Zeros,
)

# --- layer-wise relevance propagation: finding the layers in a jaxpr ----------------

_EPILOGUE_OPS = frozenset({"add", "sub", "mul", "div", "neg"})
_SAME_VALUES = frozenset(
    {"reshape", "squeeze", "expand_dims", "convert_element_type", "copy", "transpose"}
)
"""Primitives that only move or retype values: a layer seen through them is the same layer."""
_KEEPS_NONNEGATIVE = _SAME_VALUES | {
    "slice", "dynamic_slice", "broadcast_in_dim", "reduce_window_max", "concatenate", "rev",
}  # fmt: skip
"""Primitives whose output is non-negative when all their float operands are."""


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
