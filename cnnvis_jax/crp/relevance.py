"""Concept relevance: how much each channel of a layer contributed to a class score, and where.

Concept relevance propagation (CRP; Achtibat et al. 2023, Nature Machine Intelligence
5:1006, "From attribution maps to human-understandable explanations through Concept
Relevance Propagation"; zennit-crp). For an image ``x``, a class ``t`` and a layer
``l`` with activation ``a_l`` (h, w, C):

* The backward pass starts from ``R_out = onehot(t) * logits`` (the class score
  itself, so that with a conserving rule the relevance sums to it; zennit-crp's
  default initial relevance) and runs through the model with a backward rule
  (:func:`cnnvis_jax.rules.with_rules`: ``gradient``, ``guided``, ... or an LRP
  composite). ``R_l`` (h, w, C) is the cotangent arriving at layer ``l``
  (:func:`~cnnvis_jax.crp.condition.conditioned_forward`).
* A *concept* is a set of channels, given as a mask ``m`` (C,) (a unit: a one-hot).
  Its relevance is ``sum_{h,w,c} m_c R_l[h, w, c]``; its conditional heatmap is the
  ruled backward of the layers below ``l`` applied to ``R_l * m``, i.e. the
  relevance of the concept for this decision, located in the image. The heatmaps of
  K concepts are one forward of the lower part and K backward passes of it (one
  ``jax.vjp``, vmapped over the K cotangents). For rules linear in the
  cotangent (``gradient`` and the LRP rules) the heatmaps of a partition of the
  channels sum to the unconditional one; ``guided`` and ``deconvnet`` clip
  cotangents, so they do not.

Heatmaps are with respect to the network's *normalized* input (what zennit sees),
summed over the colour channels: for LRP composites the relevance that reaches the
input (it crosses the per-channel normalization unchanged, so it equals
:func:`cnnvis_jax.lrp.relevance`'s), for ReLU rules the cotangent at the [0, 1] image
times the input contract's ``std``. Everything runs in one jitted function per (layer,
rule, shapes).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.crp.condition import conditioned_forward
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model, check_images
from cnnvis_jax.rules import RULES, with_rules

__all__ = [
    "ConceptRelevance",
    "LayerRelevance",
    "check_rule",
    "concept_masks",
    "concept_relevance",
    "ruled",
]


class ConceptRelevance(NamedTuple):
    """Result of :func:`concept_relevance` (numpy arrays; N images, K concepts).

    Attributes:
      layer: the conditioning layer (canonical name).
      rule: the backward rule (name or composite description).
      targets: int64 (N,), the explained classes.
      logits: float32 (N, classes), the model's class scores.
      layer_relevance: float32 (N, h, w, C) (or (N, C) for a dense layer), ``R_l``.
      channel_relevance: float32 (N, C), ``R_l`` summed over positions.
      heatmap: float32 (N, H, W), the unconditional input relevance, colour-summed.
      concepts: float32 (K, C) masks of the conditional heatmaps (K may be 0).
      concept_heatmaps: float32 (N, K, H, W), the conditional heatmaps.
    """

    layer: str
    rule: str
    targets: np.ndarray
    logits: np.ndarray
    layer_relevance: np.ndarray
    channel_relevance: np.ndarray
    heatmap: np.ndarray
    concepts: np.ndarray
    concept_heatmaps: np.ndarray

    @property
    def concept_relevance(self) -> np.ndarray:
        """float32 (N, K): each concept's relevance, ``channel_relevance @ concepts.T``."""
        return self.channel_relevance @ self.concepts.T


def ruled(fn, rule: Any, model: Model, data_argnums: int | tuple[int, ...] = 1):
    """``fn`` with the backward ``rule``: a ReLU rule of :data:`cnnvis_jax.rules.RULES`,
    or an LRP composite (a name of :data:`cnnvis_jax.lrp.COMPOSITES` or a
    :class:`~cnnvis_jax.lrp.Composite`, resolved for ``model``; ``data_argnums`` are
    ``fn``'s arguments that carry activations, the others its parameters).

    Raises:
      InputError: an unknown rule.
    """
    from cnnvis_jax import lrp

    check_rule(rule)
    if isinstance(rule, str) and rule in RULES:
        return with_rules(fn, rule)
    rules = lrp.composite(rule).resolve(model)
    return with_rules(fn, rules, require_relu=False, data_argnums=data_argnums)


def check_rule(rule: Any) -> None:
    """Raise :class:`InputError` for a rule that is neither a ReLU rule name nor an LRP
    composite (name or :class:`~cnnvis_jax.lrp.Composite`), before any compilation."""
    from cnnvis_jax import lrp

    if isinstance(rule, lrp.Composite):
        return
    if not isinstance(rule, str):
        raise InputError(
            f"rule must be a rule name or an LRP composite, got {type(rule).__name__}."
        )
    if rule not in RULES and rule not in lrp.COMPOSITES:
        names = (*RULES, *lrp.COMPOSITES)
        raise InputError(f"unknown rule {rule!r}; choose one of {', '.join(names)}.")


def _rule_name(rule: Any) -> str:
    return rule if isinstance(rule, str) else getattr(rule, "name", type(rule).__name__)


def concept_masks(
    model: Model, layer: str, concepts: Sequence[int | Sequence[int]] | np.ndarray | None
) -> np.ndarray:
    """Concepts as channel masks float32 (K, C).

    ``concepts``: ``None`` (no concept: K = 0), a sequence whose items are a channel
    index (a one-unit concept) or a sequence of channel indices (a concept of several
    units), or an array (K, C) of masks as they are.

    Raises:
      InputError: a channel out of range, an empty concept, masks of the wrong width.
    """
    name = model.resolve(layer)
    channels = model.layer(name).channels
    if concepts is None:
        return np.zeros((0, channels), np.float32)
    if isinstance(concepts, np.ndarray) and concepts.ndim == 2:
        if concepts.shape[1] != channels:
            raise InputError(
                f"concept masks have {concepts.shape[1]} columns but layer {name!r} has "
                f"{channels} channels; pass masks of shape (K, {channels})."
            )
        return concepts.astype(np.float32)
    masks = np.zeros((len(concepts), channels), np.float32)
    for i, concept in enumerate(concepts):
        units = [concept] if np.ndim(concept) == 0 else list(concept)
        if not units:
            raise InputError(f"concept {i} has no channel; give at least one channel index.")
        for u in units:
            model.check_unit(name, int(u))
            masks[i, int(u)] = 1.0
    return masks


def _backward(model: Model, images, targets, layer: str, rule: Any):
    """One ruled backward pass from ``onehot(targets) * logits`` (``targets=None``:
    the predicted classes), split at ``layer``. Returns ``(logits (B, classes),
    R_layer, pull)``: ``pull(r)`` is the ruled backward of the layers below ``layer``
    for a cotangent ``r`` at it, giving the cotangent at the [0, 1] images (B, H, W,
    3). Traceable (call it inside ``jit``)."""
    top = ruled(conditioned_forward(model, layer, images), rule, model, data_argnums=(1, 2))
    bottom = ruled(lambda p, x: model.apply(p, x, (layer,))[layer], rule, model)
    act, vjp_bottom = jax.vjp(lambda x: bottom(model.params, x), images)
    logits, vjp_top = jax.vjp(lambda a: top(model.params, images, a), act)
    if targets is None:
        targets = jnp.argmax(logits, axis=-1)
    start = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype) * logits
    (r_layer,) = vjp_top(start)
    return logits, r_layer, lambda r: vjp_bottom(r)[0]


@dataclasses.dataclass(frozen=True)
class LayerRelevance:
    """A score for :func:`cnnvis_jax.deconv.top_activations`: the relevance arriving
    at the layer for each image's predicted class, ``R_l`` (B, h, w, C), under
    ``rule`` (relevance maximization, CRP's reference images)."""

    rule: Any = "gradient"

    @property
    def name(self) -> str:
        return f"relevance-{_rule_name(self.rule)}"

    def __call__(self, model: Model, images: jax.Array, layer: str) -> jax.Array:
        return _backward(model, images, None, layer, self.rule)[1]


@functools.partial(jax.jit, static_argnames=("layer", "rule"))
def _attribute(model: Model, images, targets, masks, *, layer: str, rule: Any):
    logits, r_layer, pull = _backward(model, images, targets, layer, rule)
    # LRP's relevance crosses the input normalization unchanged; a ReLU rule's gradient
    # at the [0, 1] image is the normalized input's divided by std
    relu_rule = isinstance(rule, str) and rule in RULES
    std = jnp.asarray(model.input.std if relu_rule else (1.0, 1.0, 1.0), jnp.float32)
    heatmap = (pull(r_layer) * std).sum(-1)
    spatial = r_layer.ndim == 4

    def one(mask):
        m = mask[None, None, None, :] if spatial else mask[None, :]
        return (pull(r_layer * m) * std).sum(-1)

    concept_maps = jax.vmap(one)(masks) if masks.shape[0] else jnp.zeros((0, *heatmap.shape))
    channel = r_layer.sum(axis=(1, 2)) if spatial else r_layer
    return logits, r_layer, channel, heatmap, jnp.moveaxis(concept_maps, 0, 1)


def concept_relevance(
    model: Model,
    images: Any,
    targets: Sequence[int] | np.ndarray | None,
    layer: str,
    *,
    rule: Any = "gradient",
    concepts: Sequence[int | Sequence[int]] | np.ndarray | None = None,
) -> ConceptRelevance:
    """Relevance of every channel of ``layer`` for each image's class, and the
    conditional heatmaps of ``concepts`` (see the module docstring).

    Args:
      model: a classifier.
      images: float (N, H, W, 3) in [0, 1] at the model's input size.
      targets: int (N,) classes to explain; ``None`` explains each image's predicted
        class.
      layer: the layer whose channels are the concepts (below the logits).
      rule: the backward rule (:func:`ruled`): a ReLU rule or an LRP composite.
      concepts: see :func:`concept_masks`; ``None``: no conditional heatmap.

    Returns:
      A :class:`ConceptRelevance`.

    Raises:
      InputError: images of the wrong shape; a target out of range; a bad layer,
        rule or concept.
    """
    arr = np.asarray(images, np.float32)
    check_images(arr, model.input)
    name = model.resolve(layer)
    masks = concept_masks(model, name, concepts)
    check_rule(rule)
    x = jnp.asarray(arr)
    if targets is None:
        logits_layer = model.resolve(model.logits_layer) if model.logits_layer else None
        if logits_layer is None:
            raise InputError(
                f"model {model.name!r} has no logits layer; concept relevance needs a classifier."
            )
        scores = model.apply(model.params, x, (logits_layer,))[logits_layer]
        target_array = np.asarray(jnp.argmax(scores, axis=-1), np.int64)
    else:
        target_array = np.asarray(targets, np.int64).reshape(-1)
        if target_array.shape[0] != arr.shape[0]:
            raise InputError(
                f"{target_array.shape[0]} targets for {arr.shape[0]} images; pass one class "
                "per image or None for the predicted classes."
            )
        for t in np.unique(target_array):
            model.check_class(int(t))
    out = _attribute(model, x, jnp.asarray(target_array), jnp.asarray(masks), layer=name,
                     rule=rule)  # fmt: skip
    logits, r_layer, channel, heatmap, concept_maps = (np.asarray(o) for o in out)
    return ConceptRelevance(
        layer=name,
        rule=_rule_name(rule),
        targets=target_array,
        logits=logits,
        layer_relevance=r_layer,
        channel_relevance=channel,
        heatmap=heatmap,
        concepts=masks,
        concept_heatmaps=concept_maps,
    )
