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

Layout: this module holds the public API and the interpreter that re-evaluates a
jaxpr; the pieces it puts together live in private modules of one job each:
:mod:`cnnvis_jax._jaxpr_scan` reads jaxprs (re-binding one equation, sub-jaxprs,
zeros, recognizing ReLUs, counting sites), :mod:`cnnvis_jax._rules_ops` builds the
replacements of single operations (the rules at one ReLU, centre and switch
unpooling, convolutions with an explicitly transposed kernel),
:mod:`cnnvis_jax._lrp_types` defines the LRP rule types (re-exported here),
:mod:`cnnvis_jax._lrp_plan` finds the LRP layers in a jaxpr and
:mod:`cnnvis_jax._lrp_layers` builds the rules at one layer.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from cnnvis_jax._jaxpr_scan import (
    _CALLS,
    _INLINED_CALLS,
    _REMAT,
    Jaxpr,
    Literal,
    _Analysis,
    _bind,
    _body,
    _inexact,
    _is_var,
    _is_zero,
    _open,
    _shape,
    _Sub,
    _sub_jaxprs,
    _Zeros,
)
from cnnvis_jax._lrp_layers import _passing, _site_function
from cnnvis_jax._lrp_plan import _SAME_VALUES, _lrp_plan, _Plan, _Site
from cnnvis_jax._lrp_types import (
    ACTIVATION_RULES,
    BATCH_NORM_MODES,
    LAYER_KINDS,
    LRP_RULES,
    RULES_BY_KIND,
    LayerRule,
    LayerRules,
    LRPLayout,
    SiteInfo,
    _check_applies,
)
from cnnvis_jax._rules_ops import _center_max_pool, _explicit_conv, _ruled_relu, _switch_max_pool
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import ApplyFn, Model

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


# --- the interpreter ----------------------------------------------------------------


def _struct(aval) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=getattr(aval, "weak_type", False))


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
