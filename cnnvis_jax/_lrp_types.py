"""The LRP rule types of :mod:`cnnvis_jax.rules` (re-exported there): the rule names
per kind of layer, :class:`LayerRule`, :class:`LayerRules` (which rule every layer
gets), and what :func:`~cnnvis_jax.rules.lrp_sites` reports (:class:`SiteInfo`,
:class:`LRPLayout`). The formulas are in the docstring of :mod:`cnnvis_jax.rules`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from cnnvis_jax.errors import InputError

# --- layer-wise relevance propagation: rules ----------------------------------------

LRP_RULES = (
    "zero", "epsilon", "gamma", "zplus", "alpha_beta", "zbox", "flat", "wsquare", "norm",
    "gradient",
)  # fmt: skip
"""Names of the :class:`LayerRule` rules (formulas in :mod:`cnnvis_jax.rules`)."""

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


def _nested_tuple(value) -> float | tuple:
    """A hashable copy of a number or an array: a float or nested tuples of floats."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return float(array)
    return tuple(_nested_tuple(row) for row in array)


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """One LRP rule with its parameters, as zennit defines it (see :mod:`cnnvis_jax.rules`).

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
    """LRP as the ``rule`` of :func:`~cnnvis_jax.rules.with_rules`: which rule every layer gets.

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
    """One layer LRP rules apply to, as :func:`~cnnvis_jax.rules.lrp_sites` finds it.

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
