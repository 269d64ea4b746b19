"""The LRP rules at one layer for :mod:`cnnvis_jax.rules`: a layer found by
:mod:`~cnnvis_jax._lrp_plan` as a :func:`jax.custom_vjp` function whose VJP is its
:class:`~cnnvis_jax.rules.LayerRule` (zero, epsilon, gamma, z-plus, alpha-beta,
z-box, flat, w-square, norm, gradient), and an operation whose relevance passes
unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax._jaxpr_scan import Literal, _bind, _is_var, _shape
from cnnvis_jax._lrp_plan import _Site, _Step
from cnnvis_jax._lrp_types import LayerRule
from cnnvis_jax._rules_ops import _explicit_conv

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
