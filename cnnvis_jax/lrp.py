"""Layer-wise relevance propagation (LRP) for cnnvis_jax models, as zennit computes it.

LRP explains one output (a class logit) by redistributing it, layer by layer, down
to the input pixels. Here it is a backward rule of :func:`cnnvis_jax.rules.with_rules`:
the forward pass is the model's own, and the cotangent that flows back through the
transformed function *is* the relevance. Rules act at

* convolutions and dense layers, each with its bias and (by default) a batch norm
  in evaluation mode that follows it, merged into the layer as zennit's
  batch-norm canonizers do: ``zero`` (LRP-0), ``epsilon``, ``gamma``, ``zplus``,
  ``alpha_beta``, ``zbox``, ``flat``, ``wsquare``, ``norm``, ``gradient``;
* sum and average pools, and sums of two activations (residual connections):
  ``norm`` (zennit's Norm), ``epsilon``, ``zero``, ``gradient``;
* ReLUs: relevance passes unchanged (zennit's Pass); max-pools: the gradient
  (relevance goes to each window's maximum), as in zennit.

The formulas and how each rule treats biases are those of zennit's rules (see
:mod:`cnnvis_jax.rules`). A :class:`Composite` says which rule each layer gets: by
kind (``conv``, ``dense``, ``pool``, ``sum``), a special first layer, and by layer
name of the model's catalog (``"conv1"``, ``"fc6"``, aliases such as
``"features.0"``). The named composites mirror zennit's, with zennit's defaults:

======================  ===========================================================
``epsilon_plus_flat``   first conv/dense layer: flat; convs: z-plus; dense: epsilon
``epsilon_gamma_box``   first conv: z-box (the model's input range); convs:
                        gamma (0.25); dense: epsilon
``epsilon_plus``        convs: z-plus; dense: epsilon
``epsilon_alpha2_beta1``         convs: alpha-beta (2, 1); dense: epsilon
``epsilon_alpha2_beta1_flat``    as above, first conv/dense layer: flat
======================  ===========================================================

(epsilon = stabilizer = 1e-6; pools and residual sums: norm.) A layer name points
at the conv/dense layer (or pool) whose output it is, seen through a ReLU: in
AlexNet ``"conv1"`` and ``"conv1_pre"`` both name ``features.0``, ``"fc6"`` names
``classifier.1``. Naming a max-pool or any layer type a rule does not define
raises :class:`~cnnvis_jax.errors.InputError`.

Input space: our models take [0, 1] RGB images and normalize them inside; zennit's
input is the normalized tensor. :func:`relevance` computes the relevance at the
normalized input, exactly what zennit returns for the same network and images. The
normalization is an elementwise affine map per channel, through which relevance
passes unchanged, so the same numbers are the relevance of the image pixels; they
are returned in RGB channel order (a BGR network's channels are reversed back).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.errors import InputError, did_you_mean
from cnnvis_jax.model import Model, check_images
from cnnvis_jax.rules import (
    ACTIVATION_RULES,
    BATCH_NORM_MODES,
    LAYER_KINDS,
    RULES_BY_KIND,
    LayerRule,
    LayerRules,
    SiteInfo,
    lrp_sites,
    with_rules,
)

DEFAULT_STABILIZER = 1e-6
"""zennit's default epsilon and stabilizer."""

OUTPUT_RELEVANCE = ("logit", "one")
"""What the target output starts with: its logit (LRP's f(x)), or 1 (zennit's one-hot)."""


# --- rules ------------------------------------------------------------------------


def zero() -> LayerRule:
    """LRP-0: ``R_i = x_i * sum_j w_ij R_j / z_j`` (no stabilizer; 0 where z == 0)."""
    return LayerRule("zero")


def epsilon(epsilon: float = DEFAULT_STABILIZER) -> LayerRule:
    """LRP-epsilon: LRP-0 with ``z + epsilon * sign(z)`` (sign +1 at 0) as denominator."""
    return LayerRule("epsilon", epsilon=epsilon)


def gamma(gamma: float = 0.25, stabilizer: float = DEFAULT_STABILIZER) -> LayerRule:
    """LRP-gamma (generalized): positive contributions weighted ``1 + gamma`` where the
    output is positive, negative ones where it is negative."""
    return LayerRule("gamma", epsilon=stabilizer, gamma=gamma)


def zplus(stabilizer: float = DEFAULT_STABILIZER) -> LayerRule:
    """z-plus: relevance shared among the positive contributions only (alpha=1, beta=0)."""
    return LayerRule("zplus", epsilon=stabilizer)


def alpha_beta(
    alpha: float = 2.0, beta: float = 1.0, stabilizer: float = DEFAULT_STABILIZER
) -> LayerRule:
    """alpha-beta: ``alpha`` times the positive share minus ``beta`` times the negative."""
    return LayerRule("alpha_beta", epsilon=stabilizer, alpha=alpha, beta=beta)


@dataclasses.dataclass(frozen=True)
class ModelBox:
    """z-box with the model's input range as bounds: ``low`` / ``high`` are the
    normalized images of 0 and 1 per channel. Resolved by :meth:`Composite.resolve`."""

    stabilizer: float = DEFAULT_STABILIZER

    def bounded(self, model: Model) -> LayerRule:
        """The z-box rule with ``model``'s input bounds (network channel order)."""
        corners = (np.zeros((1, 1, 1, 3), np.float32), np.ones((1, 1, 1, 3), np.float32))
        with jax.ensure_compile_time_eval():  # constants, also inside a caller's jit
            low, high = (np.asarray(model.input.normalize(c)).reshape(3) for c in corners)
        return LayerRule("zbox", epsilon=self.stabilizer, low=low, high=high)


def zbox(low=None, high=None, stabilizer: float = DEFAULT_STABILIZER) -> LayerRule | ModelBox:
    """z-box for a bounded input layer, ``low <= x <= high`` (numbers or per-channel
    arrays that broadcast against the layer input); without bounds, the model's
    input range (:class:`ModelBox`)."""
    if low is None and high is None:
        return ModelBox(stabilizer)
    if low is None or high is None:
        raise InputError("zbox needs both bounds low and high, or neither (the model's range).")
    return LayerRule("zbox", epsilon=stabilizer, low=low, high=high)


def flat(stabilizer: float = DEFAULT_STABILIZER) -> LayerRule:
    """flat: each output's relevance spread evenly over its receptive field."""
    return LayerRule("flat", epsilon=stabilizer)


def wsquare(stabilizer: float = DEFAULT_STABILIZER) -> LayerRule:
    """w-square: relevance spread in proportion to the squared weights."""
    return LayerRule("wsquare", epsilon=stabilizer)


def norm(stabilizer: float = DEFAULT_STABILIZER) -> LayerRule:
    """norm: ``x * J^T (R / stab(z))`` with the layer's own derivative (zennit's Norm;
    for pools and sums)."""
    return LayerRule("norm", epsilon=stabilizer)


def gradient() -> LayerRule:
    """The plain gradient (no relevance rule at this layer)."""
    return LayerRule("gradient")


_epsilon_rule, _gamma_rule = epsilon, gamma  # for composites whose arguments shadow them

Rule = LayerRule | ModelBox
"""A rule as composites hold it: a :class:`LayerRule`, or a z-box awaiting the model."""


def _rule_name(rule: Rule) -> str:
    return "zbox" if isinstance(rule, ModelBox) else rule.name


# --- composites -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Composite:
    """Which LRP rule each layer of a model gets (zennit's composites).

    Attributes:
      name: a label (the registered name for the named composites).
      conv, dense, pool, sum: the rule per layer kind (see the module docstring).
      first: the rule of the first layer (in forward order) whose kind is in
        ``first_kinds``; None: no special first layer.
      first_kinds: kinds that count for ``first``.
      layers: ``((name, rule), ...)``: rules for layers named in the model's catalog
        (names or aliases), or by LRP layer index (int, see :func:`layer_sites`);
        they win over every other assignment.
      activation: ``"pass"`` (zennit) or ``"gradient"`` at ReLUs.
      batch_norm: ``"merge"`` (a batch norm after a conv/dense layer is part of it,
        like zennit's canonizers) or ``"pass"`` (relevance crosses it unchanged,
        like zennit's composites without canonizers).
    """

    name: str
    conv: Rule
    dense: Rule
    pool: Rule = dataclasses.field(default_factory=norm)
    sum: Rule = dataclasses.field(default_factory=norm)
    first: Rule | None = None
    first_kinds: tuple[str, ...] = ("conv", "dense")
    layers: tuple[tuple[str | int, Rule], ...] = ()
    activation: str = "pass"
    batch_norm: str = "merge"

    def __post_init__(self):
        for kind in LAYER_KINDS:
            _check_rule(getattr(self, kind), kind, f"{kind} layers of composite {self.name!r}")
        for kind in self.first_kinds:
            if self.first is not None and kind in LAYER_KINDS:
                _check_rule(self.first, kind, f"the first layer of composite {self.name!r}")
        for value, valid, what in (
            (self.activation, ACTIVATION_RULES, "activation rule"),
            (self.batch_norm, BATCH_NORM_MODES, "batch_norm mode"),
            *((kind, LAYER_KINDS, "first layer kind") for kind in self.first_kinds),
        ):
            if value not in valid:
                raise InputError(f"unknown {what} {value!r}; valid: {', '.join(valid)}.")
        object.__setattr__(self, "first_kinds", tuple(self.first_kinds))
        object.__setattr__(self, "layers", tuple((key, rule) for key, rule in self.layers))

    def with_layers(self, rules: Mapping[str | int, Rule] | None = None, **by_name: Rule):
        """A copy with rules for named layers added (later names win), e.g.
        ``composite.with_layers({"conv1": lrp.flat(), "fc8": lrp.epsilon(0.25)})``."""
        added = {**dict(rules or {}), **by_name}
        return dataclasses.replace(self, layers=(*self.layers, *added.items()))

    def resolve(self, model: Model) -> LayerRules:
        """The :class:`LayerRules` for ``model``: z-box bounds from its input contract,
        named layers mapped to LRP layer indices (one trace of the model).

        Raises:
          InputError: for an unknown layer name, a name whose output comes from no
            conv/dense layer or pool (a max-pool), or a rule that the named layer's
            kind does not define (the message names the layer and the valid rules).
        """

        def bound(rule):
            return rule.bounded(model) if isinstance(rule, ModelBox) else rule

        sites = ()
        if self.layers:
            sites = _layer_indices(model, self.layers, self.batch_norm)
            sites = tuple((index, bound(rule)) for index, rule in sites)
        return LayerRules(
            conv=bound(self.conv),
            dense=bound(self.dense),
            pool=bound(self.pool),
            sum=bound(self.sum),
            first=None if self.first is None else bound(self.first),
            first_kinds=self.first_kinds,
            sites=sites,
            activation=self.activation,
            batch_norm=self.batch_norm,
        )


def _check_rule(rule: Rule, kind: str, where: str) -> None:
    if not isinstance(rule, LayerRule | ModelBox):
        raise InputError(f"{where}: expected an LRP rule (e.g. lrp.epsilon()), got {rule!r}.")
    if _rule_name(rule) not in RULES_BY_KIND[kind]:
        raise InputError(
            f"LRP rule {_rule_name(rule)!r} is not defined for {where} (a {kind} layer); the "
            f"rules that apply there: {', '.join(RULES_BY_KIND[kind])}."
        )


def epsilon_plus_flat(
    epsilon: float = DEFAULT_STABILIZER, stabilizer: float = DEFAULT_STABILIZER
) -> Composite:
    """zennit's EpsilonPlusFlat: flat at the first conv or dense layer, z-plus at the
    other convolutions, epsilon at dense layers, norm at pools and residual sums."""
    return Composite(
        "epsilon_plus_flat",
        conv=zplus(stabilizer),
        dense=_epsilon_rule(epsilon),
        pool=norm(stabilizer),
        sum=norm(stabilizer),
        first=flat(stabilizer),
        first_kinds=("conv", "dense"),
    )


def epsilon_gamma_box(
    low=None,
    high=None,
    epsilon: float = DEFAULT_STABILIZER,
    gamma: float = 0.25,
    stabilizer: float = DEFAULT_STABILIZER,
) -> Composite:
    """zennit's EpsilonGammaBox: z-box at the first convolution (bounds: the model's
    input range unless given), gamma at the other convolutions, epsilon at dense
    layers, norm at pools and residual sums."""
    return Composite(
        "epsilon_gamma_box",
        conv=_gamma_rule(gamma, stabilizer),
        dense=_epsilon_rule(epsilon),
        pool=norm(stabilizer),
        sum=norm(stabilizer),
        first=zbox(low, high, stabilizer),
        first_kinds=("conv",),
    )


def epsilon_plus(
    epsilon: float = DEFAULT_STABILIZER, stabilizer: float = DEFAULT_STABILIZER
) -> Composite:
    """zennit's EpsilonPlus: z-plus at convolutions, epsilon at dense layers."""
    return Composite(
        "epsilon_plus",
        conv=zplus(stabilizer),
        dense=_epsilon_rule(epsilon),
        pool=norm(stabilizer),
        sum=norm(stabilizer),
    )


def epsilon_alpha2_beta1(
    epsilon: float = DEFAULT_STABILIZER, stabilizer: float = DEFAULT_STABILIZER
) -> Composite:
    """zennit's EpsilonAlpha2Beta1: alpha-beta (2, 1) at convolutions, epsilon at dense."""
    return Composite(
        "epsilon_alpha2_beta1",
        conv=alpha_beta(2.0, 1.0, stabilizer),
        dense=_epsilon_rule(epsilon),
        pool=norm(stabilizer),
        sum=norm(stabilizer),
    )


def epsilon_alpha2_beta1_flat(
    epsilon: float = DEFAULT_STABILIZER, stabilizer: float = DEFAULT_STABILIZER
) -> Composite:
    """zennit's EpsilonAlpha2Beta1Flat: as :func:`epsilon_alpha2_beta1`, flat at the
    first conv or dense layer."""
    return dataclasses.replace(
        epsilon_alpha2_beta1(epsilon, stabilizer),
        name="epsilon_alpha2_beta1_flat",
        first=flat(stabilizer),
        first_kinds=("conv", "dense"),
    )


def uniform(rule: Rule, *, name: str | None = None) -> Composite:
    """One rule at every conv and dense layer (norm at pools and residual sums), e.g.
    ``uniform(lrp.zero())`` for LRP-0 everywhere."""
    return Composite(name or f"uniform_{_rule_name(rule)}", conv=rule, dense=rule)


COMPOSITES = {
    "epsilon_plus_flat": epsilon_plus_flat,
    "epsilon_gamma_box": epsilon_gamma_box,
    "epsilon_plus": epsilon_plus,
    "epsilon_alpha2_beta1": epsilon_alpha2_beta1,
    "epsilon_alpha2_beta1_flat": epsilon_alpha2_beta1_flat,
}
"""Named composites (zennit's names), each a factory with zennit's defaults."""


def composite(name: str | Composite) -> Composite:
    """The composite ``name`` with its default parameters (a :class:`Composite` passes)."""
    if isinstance(name, Composite):
        return name
    if name not in COMPOSITES:
        raise InputError(
            f"unknown LRP composite {name!r}; " + did_you_mean(name, tuple(COMPOSITES))
        )
    return COMPOSITES[name]()


_composite_named = composite  # for relevance(), whose argument shadows it


# --- layers of a model ---------------------------------------------------------------


def _all_taps(apply_fn, layers: tuple[str, ...], params, x):
    return apply_fn(params, x, layers)


_CATALOGS: dict[tuple, dict[str, SiteInfo | str]] = {}
_CATALOGS_KEPT = 16


def layer_sites(model: Model, *, batch_norm: str = "merge") -> dict[str, SiteInfo | str]:
    """Which LRP layer each catalog layer of ``model`` is: layer name -> the
    :class:`~cnnvis_jax.rules.SiteInfo` of the conv/dense layer or pool whose output
    it is (seen through ReLUs and reshapes), or the name of the operation it comes
    from otherwise (``"max_pool"``, ...). One abstract trace per network, parameter
    shapes and mode (kept for later calls); nothing is computed."""
    leaves, treedef = jax.tree_util.tree_flatten(model.params)
    shapes = tuple((tuple(np.shape(leaf)), str(jnp.result_type(leaf))) for leaf in leaves)
    key = (model.apply_fn, model.layer_names, model.input.size, treedef, shapes, batch_norm)
    if key not in _CATALOGS:
        h, w = model.input.size
        example = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
        fn = functools.partial(_all_taps, model.apply_fn, model.layer_names)
        layout = lrp_sites(fn, model.params, example, data_argnums=1, batch_norm=batch_norm)
        by_index = {site.index: site for site in layout.sites}
        if len(_CATALOGS) >= _CATALOGS_KEPT:
            _CATALOGS.pop(next(iter(_CATALOGS)))
        _CATALOGS[key] = {
            name: by_index[origin] if isinstance(origin, int) else origin
            for name, origin in layout.outputs.items()
        }
    return dict(_CATALOGS[key])


def _layer_indices(model: Model, layers, batch_norm: str) -> tuple[tuple[int, Rule], ...]:
    """``((LRP layer index, rule), ...)`` for named (or indexed) layers of ``model``."""
    catalog = layer_sites(model, batch_norm=batch_norm)
    sites = {site.index: site for site in catalog.values() if isinstance(site, SiteInfo)}
    resolved = []
    for key, rule in layers:
        if isinstance(key, int):
            site, label = sites.get(key), f"LRP layer {key}"
            if site is None:
                raise InputError(
                    f"model {model.name!r} has no LRP layer {key}; its layers are "
                    f"{sorted(sites)} (see cnnvis_jax.lrp.layer_sites)."
                )
        else:
            name = model.resolve(key)
            site, label = catalog[name], f"layer {key!r}"
            if not isinstance(site, SiteInfo):
                raise InputError(
                    f"{label} of model {model.name!r} is the output of a {site} operation, "
                    "which has no LRP rule (max-pools pass relevance to each window's "
                    "maximum, as in zennit); rules can be assigned to conv and dense "
                    f"layers ({', '.join(RULES_BY_KIND['conv'])}) and to sum/average pools "
                    f"({', '.join(RULES_BY_KIND['pool'])})."
                )
        _check_rule(rule, site.kind, f"{label} of model {model.name!r}")
        resolved.append((site.index, rule))
    return tuple(resolved)


# --- relevance maps --------------------------------------------------------------------


class Relevance(NamedTuple):
    """Relevance maps of a batch (see :func:`relevance`).

    Attributes:
      relevance: (N, H, W, 3) relevance of every input value, RGB channel order.
      pixels: (N, H, W) its per-pixel sum over channels (the usual heatmap).
      logits: (N,) the target logits; with ``output_relevance="logit"`` and a
        conservative composite, ``relevance.sum((1, 2, 3))`` is close to them.
    """

    relevance: jax.Array
    pixels: jax.Array
    logits: jax.Array


@functools.partial(jax.jit, static_argnames=("rules", "output_relevance", "explicit"))
def _relevance_program(model: Model, x, targets, rules: LayerRules, output_relevance, explicit):
    """(relevance at the normalized input, target logits) for normalized ``x``."""
    taps = functools.partial(_all_taps, model.apply_fn, model.layer_names)
    ruled = with_rules(
        taps, rules, require_relu=False, data_argnums=1, explicit_conv_transpose=explicit
    )
    logits, pull = jax.vjp(lambda v: ruled(model.params, v)[model.logits_layer], x)
    onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    seed = onehot * logits if output_relevance == "logit" else onehot
    (relevance_x,) = pull(seed)
    return relevance_x, jnp.sum(onehot * logits, axis=-1)


def _targets(model: Model, targets, count: int) -> jax.Array:
    """(count,) int32 class indices; concrete ones are range-checked."""
    if isinstance(targets, jax.core.Tracer):
        return jnp.broadcast_to(jnp.asarray(targets, jnp.int32), (count,))
    array = np.asarray(targets)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"targets must be integer class indices, got dtype {array.dtype}.")
    array = np.broadcast_to(array, (count,)) if array.ndim == 0 else array
    if array.shape != (count,):
        raise InputError(
            f"targets must have shape ({count},) (one class per image), got {array.shape}."
        )
    for target in np.unique(array):
        model.check_class(int(target))
    return jnp.asarray(array, jnp.int32)


def relevance(
    model: Model,
    images: jax.Array,
    targets,
    composite: str | Composite = "epsilon_plus_flat",
    *,
    output_relevance: str = "logit",
    explicit_conv_transpose: bool = False,
) -> Relevance:
    """LRP relevance maps of ``model``'s class scores for a batch of images.

    Args:
      model: a classifier (``model.logits_layer`` set).
      images: (N, H, W, 3) float in [0, 1], RGB, at the model's input size.
      targets: class index per image, shape (N,), or one index for all.
      composite: a :class:`Composite` or a name in :data:`COMPOSITES`.
      output_relevance: ``"logit"``: the target output starts with its logit (LRP's
        convention; a conservative composite's relevance sums to about the logit);
        ``"one"``: with 1 (zennit's one-hot ``attr_output``). The maps differ only
        by that factor per image.
      explicit_conv_transpose: compute the convolutions' transposes with explicitly
        transposed kernels (see :func:`cnnvis_jax.rules.with_rules`).

    Returns:
      :class:`Relevance`: the relevance at the normalized input, which is what
      zennit computes (its input is the normalized tensor) and, relevance passing
      the per-channel normalization unchanged, the relevance of the image pixels;
      channels in RGB order; plus per-pixel sums and the target logits.

    Raises:
      InputError: for bad images, targets or composites (see :meth:`Composite.resolve`).
    """
    check_images(images, model.input)
    if output_relevance not in OUTPUT_RELEVANCE:
        raise InputError(
            f"unknown output_relevance {output_relevance!r}; valid: {', '.join(OUTPUT_RELEVANCE)}."
        )
    if model.logits_layer is None:
        model.check_class(0)  # raises: the model has no classifier
    rules = _composite_named(composite).resolve(model)
    x = model.input.normalize(jnp.asarray(images))
    index = _targets(model, targets, x.shape[0])
    relevance_x, logits = _relevance_program(
        model, x, index, rules, output_relevance, bool(explicit_conv_transpose)
    )
    if model.input.channel_order == "BGR":
        relevance_x = relevance_x[..., ::-1]
    return Relevance(relevance_x, relevance_x.sum(axis=-1), logits)


__all__ = [
    "COMPOSITES",
    "OUTPUT_RELEVANCE",
    "Composite",
    "ModelBox",
    "Relevance",
    "alpha_beta",
    "composite",
    "epsilon",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "epsilon_gamma_box",
    "epsilon_plus",
    "epsilon_plus_flat",
    "flat",
    "gamma",
    "gradient",
    "layer_sites",
    "norm",
    "relevance",
    "uniform",
    "wsquare",
    "zbox",
    "zero",
    "zplus",
]
