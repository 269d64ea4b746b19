"""Objectives: what activation maximization maximizes, as immutable pytrees.

An objective maps the activations of a batch of images, ``{layer: (B, ...)}``, to
one score per image, float32 ``(B,)``; the render loop *maximizes* the sum over the
batch (ascent: a larger score is better, for every term, regularizing terms included).
Spatial activations are NHWC ``(B, H, W, C)``, fully connected ones ``(B, C)``.

Terms:

* :func:`neuron` -- one unit at one spatial position (default: the centre
  ``(H // 2, W // 2)``, Yosinski's recommendation); for a fully connected layer,
  the unit's value.
* :func:`channel` -- the mean of a unit over all positions (Lucid's ``channel``).
* :func:`class_logit` -- the pre-softmax score of a class (Simonyan et al.);
  the layer is the model's logits layer, filled in by :func:`bind`.
* :func:`direction` -- ``<a, v/|v|>`` averaged over positions, optionally times
  ``max(cos(a, v), 0.1) ** cosine_power`` (Lucid's ``direction_cossim`` trick).
* :func:`layer_norm` -- the mean square of a layer's activations (DeepDream).
* :func:`diversity` -- Distill's diversity term: for image ``a`` of the batch,
  ``-sum_{b != a} cos(vec G_a, vec G_b)`` over the Gram matrices ``G`` of the
  layer's activations. Its sum over the batch is ``-sum_a sum_{b != a} cos``, so it
  *rewards* images that differ (Lucid's helper returns the positive similarity,
  which must be subtracted).

Terms combine with ``+``, ``-``, unary ``-`` and scalar ``*``/``/``; every operation
returns a new object and never mutates its operands. Units, positions, class
indices, vectors and weights are data (pytree leaves), so one compiled program
serves every unit of a layer, and a list of objectives of the same structure can
be stacked along a leading *job* axis (:func:`stack`) and vmapped.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.am._tree import pytree_dataclass, replace
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model

__all__ = [
    "Channel",
    "ClassLogit",
    "Direction",
    "Diversity",
    "LayerNorm",
    "Neuron",
    "Objective",
    "Scaled",
    "Sum",
    "bind",
    "channel",
    "class_logit",
    "direction",
    "diversity",
    "layer_norm",
    "neuron",
    "stack",
]


class Objective:
    """Base class: ``objective(acts) -> (B,)`` scores to maximize, and ``layers``."""

    @property
    def layers(self) -> tuple[str, ...]:
        raise NotImplementedError

    def __call__(self, acts: dict[str, jax.Array]) -> jax.Array:
        raise NotImplementedError

    # --- algebra (never mutates) -------------------------------------------------------
    def __add__(self, other):
        if isinstance(other, numbers.Number) and other == 0:
            return self  # sum([...]) starts from 0
        if not isinstance(other, Objective):
            return NotImplemented
        left = self.terms if isinstance(self, Sum) else (self,)
        right = other.terms if isinstance(other, Sum) else (other,)
        return Sum(left + right)

    def __radd__(self, other):
        if isinstance(other, numbers.Number) and other == 0:
            return self
        return NotImplemented

    def __neg__(self):
        return Scaled(-1.0, self)

    def __sub__(self, other):
        if not isinstance(other, Objective):
            return NotImplemented
        return self + (-other)

    def __mul__(self, weight):
        if isinstance(weight, Objective) or not _is_scalar(weight):
            raise InputError(
                "objectives can only be multiplied by a scalar weight (a number), "
                f"got {type(weight).__name__}; products of objectives are not defined."
            )
        return Scaled(weight, self)

    __rmul__ = __mul__

    def __truediv__(self, weight):
        if isinstance(weight, Objective) or not _is_scalar(weight):
            raise InputError("objectives can only be divided by a scalar (a number).")
        return Scaled(1.0 / weight, self)


def _is_scalar(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Number):
        return True
    return np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.number)


def _spatial_unit(a: jax.Array, unit) -> jax.Array:
    """``a[..., unit]`` for a traced scalar ``unit`` (B, H, W) or (B,)."""
    return jnp.take(a, jnp.asarray(unit, jnp.int32), axis=-1)


# --- terms -------------------------------------------------------------------------------


@pytree_dataclass(static=("layer",))
class Neuron(Objective):
    """Unit ``unit`` of ``layer`` at ``position`` ``(row, col)`` (default: centre)."""

    layer: str
    unit: Any
    position: Any = None

    @property
    def layers(self):
        return (self.layer,)

    def __call__(self, acts):
        a = acts[self.layer]
        if a.ndim == 2:
            return _spatial_unit(a, self.unit)
        maps = _spatial_unit(a, self.unit)  # (B, H, W)
        h, w = maps.shape[1:]
        if self.position is None:
            return maps[:, h // 2, w // 2]
        pos = jnp.asarray(self.position, jnp.int32)
        return maps[:, pos[0], pos[1]]


@pytree_dataclass(static=("layer",))
class Channel(Objective):
    """Mean of unit ``unit`` of ``layer`` over all positions (its value for fc layers)."""

    layer: str
    unit: Any

    @property
    def layers(self):
        return (self.layer,)

    def __call__(self, acts):
        maps = _spatial_unit(acts[self.layer], self.unit)
        return maps.reshape(maps.shape[0], -1).mean(axis=1)


@pytree_dataclass(static=("layer",))
class ClassLogit(Objective):
    """Pre-softmax score of class ``index`` (``layer=None``: the model's logits layer)."""

    index: Any
    layer: str | None = None

    @property
    def layers(self):
        if self.layer is None:
            raise InputError("class_logit has no layer yet; bind it to a model first (am.bind).")
        return (self.layer,)

    def __call__(self, acts):
        a = acts[self.layers[0]]
        return _spatial_unit(a.reshape(a.shape[0], -1), self.index)


@pytree_dataclass(static=("layer",))
class Direction(Objective):
    """``<a, v/|v|>`` averaged over positions, times ``max(cos, 0.1)**cosine_power``."""

    layer: str
    vector: Any
    cosine_power: Any = 0.0

    @property
    def layers(self):
        return (self.layer,)

    def __call__(self, acts):
        a = acts[self.layer]
        a = a.reshape(a.shape[0], -1, a.shape[-1])  # (B, P, C)
        v = jnp.asarray(self.vector, a.dtype)
        v = v / jnp.maximum(jnp.linalg.norm(v), 1e-12)
        dot = a @ v  # (B, P)
        cos = dot / jnp.maximum(jnp.linalg.norm(a, axis=-1), 1e-12)
        gain = jnp.maximum(cos, 0.1) ** jnp.asarray(self.cosine_power, a.dtype)
        return (dot * gain).mean(axis=1)


@pytree_dataclass(static=("layer",))
class LayerNorm(Objective):
    """Mean square of all activations of ``layer`` (DeepDream)."""

    layer: str

    @property
    def layers(self):
        return (self.layer,)

    def __call__(self, acts):
        a = acts[self.layer]
        return jnp.square(a).reshape(a.shape[0], -1).mean(axis=1)


@pytree_dataclass(static=("layer",))
class Diversity(Objective):
    """Distill's diversity: image ``a`` scores ``-sum_{b != a} cos(vec G_a, vec G_b)``.

    ``G`` is the (C, C) Gram matrix of the layer's activations (positions x
    channels). Identical images score ``-(B - 1)`` each; the score grows as the
    images differ. A batch of one scores 0.
    """

    layer: str

    @property
    def layers(self):
        return (self.layer,)

    def __call__(self, acts):
        a = acts[self.layer]
        flat = a.reshape(a.shape[0], -1, a.shape[-1])
        grams = jnp.einsum("bpc,bpd->bcd", flat, flat).reshape(a.shape[0], -1)
        grams = grams / jnp.maximum(jnp.linalg.norm(grams, axis=1, keepdims=True), 1e-10)
        cos = grams @ grams.T  # (B, B)
        off = cos * (1.0 - jnp.eye(a.shape[0], dtype=cos.dtype))
        return -off.sum(axis=1)


@pytree_dataclass
class Scaled(Objective):
    """``weight * term`` (the weight is data, so sweeps can vary it)."""

    weight: Any
    term: Objective

    @property
    def layers(self):
        return self.term.layers

    def __call__(self, acts):
        return jnp.asarray(self.weight, jnp.float32) * self.term(acts)


@pytree_dataclass
class Sum(Objective):
    """The sum of ``terms``."""

    terms: tuple

    @property
    def layers(self):
        return tuple(dict.fromkeys(n for t in self.terms for n in t.layers))

    def __call__(self, acts):
        total = self.terms[0](acts)
        for term in self.terms[1:]:
            total = total + term(acts)
        return total


# --- constructors ------------------------------------------------------------------------


def neuron(layer: str, unit: int, position: Sequence[int] | None = None) -> Neuron:
    """Unit ``unit`` of ``layer`` at ``position`` (row, col); default the centre."""
    return Neuron(layer, int(unit), None if position is None else np.asarray(position, np.int32))


def channel(layer: str, unit: int) -> Channel:
    """Mean of unit ``unit`` of ``layer`` over positions."""
    return Channel(layer, int(unit))


def class_logit(index: int, layer: str | None = None) -> ClassLogit:
    """Pre-softmax score of class ``index`` (layer: the model's logits by default)."""
    return ClassLogit(int(index), layer)


def direction(layer: str, vector: Any, cosine_power: float = 0.0) -> Direction:
    """A direction ``vector`` (C,) in ``layer``'s channel space."""
    return Direction(layer, np.asarray(vector, np.float32), float(cosine_power))


def layer_norm(layer: str) -> LayerNorm:
    """DeepDream: the mean square of ``layer``'s activations."""
    return LayerNorm(layer)


def diversity(layer: str) -> Diversity:
    """Distill's diversity term over the batch (rewards difference)."""
    return Diversity(layer)


def stack(objectives: Sequence[Objective]) -> Objective:
    """Objectives of one structure stacked along a new leading (job) axis.

    Raises:
      InputError: for an empty list or objectives of different structure (other
        terms, layers or combinations).
    """
    objectives = list(objectives)
    if not objectives:
        raise InputError("no objectives given; pass at least one (e.g. am.channel('conv5', 0)).")
    treedefs = {jax.tree_util.tree_structure(o) for o in objectives}
    if len(treedefs) != 1:
        raise InputError(
            "objectives rendered together must have the same structure (same terms and "
            "layers, only units/weights differ); render different structures separately."
        )
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *objectives)


# --- validation against a model ---------------------------------------------------------


def bind(objective: Objective, model: Model) -> Objective:
    """``objective`` checked against ``model``, with class terms given their layer.

    Leaves may carry a leading job axis (every value is checked). Returns a new
    objective (the argument is unchanged).

    Raises:
      InputError: unknown layer; a unit, class index or position out of range (the
        message names the valid range); a direction of the wrong length.
    """
    if isinstance(objective, Sum):
        return Sum(tuple(bind(t, model) for t in objective.terms))
    if isinstance(objective, Scaled):
        return Scaled(objective.weight, bind(objective.term, model))
    if isinstance(objective, ClassLogit):
        for index in np.ravel(objective.index):
            model.check_class(int(index))
        layer = model.resolve(objective.layer or model.logits_layer)
        return replace(objective, layer=layer)
    if isinstance(objective, Neuron | Channel):
        info = model.layer(objective.layer)
        for unit in np.ravel(objective.unit):
            model.check_unit(info.name, int(unit))
        if isinstance(objective, Neuron) and objective.position is not None:
            pos = np.asarray(objective.position)
            if not info.spatial:
                raise InputError(
                    f"layer {info.name!r} is fully connected and has no positions; "
                    "leave the position out for a fully connected unit."
                )
            if pos.shape[-1:] != (2,):
                raise InputError(f"a position is a (row, col) pair, got shape {pos.shape}.")
            h, w = info.shape[:2]
            rows, cols = pos[..., 0], pos[..., 1]
            if (rows < 0).any() or (rows >= h).any() or (cols < 0).any() or (cols >= w).any():
                bad = pos.reshape(-1, 2)[
                    np.argmax(((rows < 0) | (rows >= h) | (cols < 0) | (cols >= w)).reshape(-1))
                ]
                raise InputError(
                    f"position {tuple(int(v) for v in bad)} is outside layer {info.name!r}'s "
                    f"{h}x{w} map; rows are 0..{h - 1} and columns 0..{w - 1}."
                )
        return replace(objective, layer=info.name)
    if isinstance(objective, Direction):
        info = model.layer(objective.layer)
        if np.shape(objective.vector)[-1] != info.channels:
            raise InputError(
                f"direction has {np.shape(objective.vector)[-1]} entries but layer "
                f"{info.name!r} has {info.channels} channels."
            )
        return replace(objective, layer=info.name)
    if isinstance(objective, LayerNorm | Diversity):
        return replace(objective, layer=model.layer(objective.layer).name)
    raise InputError(f"not an objective: {type(objective).__name__}.")
