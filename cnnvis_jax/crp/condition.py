"""A model's forward from one layer up: the relevance arriving at the layer can be read.

Concept relevance propagation (Achtibat et al. 2023, "From attribution maps to
human-understandable explanations through Concept Relevance Propagation") needs the
relevance arriving at an intermediate layer ``l`` (``R_l``, the cotangent at the
layer's output in the ruled backward pass). zennit-crp reads it with PyTorch hooks on
the module. Here the model is not edited: the forward ``model.apply(params, x, (l,
logits))`` is traced to a jaxpr once and re-evaluated with the value of layer ``l``
*replaced*, where it is produced, by an argument ``a``. Called with the layer's own
value (``a = model.apply(params, x, l)[l]``) it computes exactly the model's logits,
and the cotangent at ``a`` is ``R_l``; the layers below ``l`` no longer reach the
output (under ``jit`` XLA drops them). A replacement rather than an added zero keeps
the handle invisible to LRP, whose rules would treat ``a_l + 0`` as a residual sum.
The result composes with :func:`cnnvis_jax.rules.with_rules` (which re-traces it),
``jax.vjp`` and ``jax.vmap``.

Calls (``jit``, ``closed_call``) whose outputs include the layer are entered, so the
handle sits where the layer's value is produced and every downstream use sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from cnnvis_jax._jaxpr_scan import _INLINED_CALLS, Literal, _bind, _body, _open
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model

__all__ = ["conditioned_forward", "perturbed_forward"]


def _evaluate(jaxpr, consts, args, hooks: dict, layer: str) -> list[Any]:
    """Evaluate ``jaxpr``; the value of every var in ``hooks`` goes through its hook
    where it is produced (entering calls that return it)."""
    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x
    for v in hooks:
        if v in env:
            raise InputError(
                f"layer {layer!r} is an input of the model's forward, not a layer it "
                "computes; condition on a layer after the input."
            )
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        hooked = [i for i, v in enumerate(eqn.outvars) if v in hooks]
        if hooked and eqn.primitive.name in _INLINED_CALLS:
            body, body_consts = _open(_body(eqn))
            inner = {}
            for i in hooked:
                out = body.outvars[i]
                if isinstance(out, Literal) or out in body.invars:
                    raise InputError(
                        f"layer {layer!r} is not computed inside the forward (it is a "
                        "constant or a passed-through input); condition on another layer."
                    )
                inner[out] = hooks[eqn.outvars[i]]
            outs = _evaluate(body, body_consts, invals, inner, layer)
        else:
            outs = _bind(eqn, invals)
            for i in hooked:
                outs[i] = hooks[eqn.outvars[i]](outs[i])
        for v, x in zip(eqn.outvars, outs):
            env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _consumed(jaxpr, var) -> bool:
    """Whether an equation of ``jaxpr`` reads ``var`` (directly or inside a call that
    produced it, where the producing body is checked instead)."""
    for eqn in jaxpr.eqns:
        if any(v is var for v in eqn.invars if not isinstance(v, Literal)):
            return True
        if var in eqn.outvars and eqn.primitive.name in _INLINED_CALLS:
            body, _ = _open(_body(eqn))
            if _consumed(body, body.outvars[eqn.outvars.index(var)]):
                return True
    return False


def _in_order(model: Model, names: tuple[str, ...]):
    """``(params, x) -> tuple of the activations of names``, in that order (a returned
    dict would be flattened in sorted-key order, so its outputs would not line up)."""

    def fn(params, x):
        acts = model.apply(params, x, names)
        return tuple(acts[n] for n in names)

    return fn


def _traced(model: Model, names: tuple[str, ...], out: str, example, *, below: str,
            fix: str):  # fmt: skip
    """Trace the forward to ``(names..., out)`` and find the variables holding the
    ``names``' values: ``(closed jaxpr, their vars)``. Every name must come before
    ``out`` (else "layer X is not below ``below``; ``fix``"), be read by the rest of the
    forward, and hold a value of its own."""
    order = model.layer_names
    for name in names:
        if order.index(name) >= order.index(out):
            raise InputError(f"layer {name!r} is not below {below}; {fix}")
    closed = jax.make_jaxpr(_in_order(model, (*names, out)))(model.params, example)
    targets = closed.jaxpr.outvars[: len(names)]
    for name, var in zip(names, targets):
        if isinstance(var, Literal) or not _consumed(closed.jaxpr, var):
            raise InputError(
                f"the rest of the forward does not read layer {name!r}'s value (the model "
                "records a copy); choose another layer."
            )
    if len(set(targets)) != len(targets):
        raise InputError(f"layers {names} name the same value twice; give distinct layers.")
    return closed, targets


def conditioned_forward(
    model: Model, layer: str, example: jax.Array
) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """The model's class scores with a handle at ``layer``.

    Args:
      model: a classifier (``model.logits_layer`` set).
      layer: the layer to condition on (name or alias); before the logits.
      example: float (B, H, W, 3) images in [0, 1]; fixes the traced shapes.

    Returns:
      ``f(params, images, a) -> logits`` float32 (B, classes): ``images`` shaped like
      ``example``; ``a`` shaped like the layer's activation (B, h, w, C) or (B, C),
      used in place of the layer's value. With ``a`` the layer's own value the logits
      equal ``model.apply``'s, and the cotangent at ``a`` is the one arriving at the
      layer.

    Raises:
      InputError: no classifier; unknown layer; the logits layer itself or one after
        it; a layer whose value the rest of the forward does not read.
    """
    if model.logits_layer is None:
        raise InputError(
            f"model {model.name!r} has no logits layer; concept relevance needs a classifier."
        )
    name = model.resolve(layer)
    logits = model.resolve(model.logits_layer)
    closed, (target,) = _traced(model, (name,), logits, example,
                                below=f"the logits layer {logits!r}",
                                fix="condition on a layer between the input and the class "
                                "scores.")  # fmt: skip
    jaxpr = closed.jaxpr
    flat_params = jax.tree_util.tree_leaves(model.params)

    def forward(params, images, a):
        leaves = jax.tree_util.tree_leaves(params)
        if len(leaves) != len(flat_params):
            raise InputError("params do not have the model's structure.")

        def hook(value):
            return a.astype(value.dtype)

        outs = _evaluate(jaxpr, closed.consts, [*leaves, images], {target: hook}, name)
        return outs[1]

    return forward


def perturbed_forward(
    model: Model, layers: tuple[str, ...], output: str, example: jax.Array
) -> Callable[[Any, jax.Array, tuple], jax.Array]:
    """The activation of ``output`` with an additive handle at each of ``layers``.

    Args:
      model: the network.
      layers: layers (names or aliases) before ``output``.
      output: the layer whose activation is returned.
      example: float (B, H, W, 3) images in [0, 1]; fixes the traced shapes.

    Returns:
      ``f(params, images, deltas) -> activation of output``: ``deltas`` a tuple of
      arrays shaped like the ``layers``' activations, added to each layer's value where
      it is produced. With zeros the values are the model's; the plain cotangent at
      ``deltas[i]`` is the derivative of the output with respect to ``layers[i]``'s
      activation (through every path after it). For ReLU rules and plain gradients
      only: LRP reads such an addition as a residual sum (use
      :func:`conditioned_forward` there).

    Raises:
      InputError: unknown layers; a layer at or after ``output``; a layer whose value
        the rest of the forward does not read.
    """
    out = model.resolve(output)
    names = tuple(dict.fromkeys(model.resolve(n) for n in layers))
    closed, targets = _traced(model, names, out, example, below=repr(out),
                              fix="perturb layers before the output.")  # fmt: skip
    jaxpr = closed.jaxpr

    def forward(params, images, deltas):
        hooks = {var: (lambda value, d=d: value + d.astype(value.dtype))
                 for var, d in zip(targets, deltas)}  # fmt: skip
        leaves = jax.tree_util.tree_leaves(params)
        return _evaluate(jaxpr, closed.consts, [*leaves, images], hooks, ",".join(names))[-1]

    return forward
