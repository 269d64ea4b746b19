"""Path completeness: does a unit's response come through the layers below it?

The path-similarity check (:mod:`cnnvis_jax.evaluate.path`) asks whether a
visualization's activations *look like* those of natural images on the way to the
unit. This check asks whether the unit's response is *produced* by the layers below
it the way it is for natural images. For a unit ``u`` (its channel mean ``ū`` at
layer ``L``), an image ``x`` and a layer ``l`` below ``L`` with activation ``a_l``:

    c_l(x) = sum_{h,w,c} a_l(x) * dū/da_l(x)  /  ū(x)

the share of the response that the first-order (gradient x input) decomposition over
``a_l`` accounts for. Between ``l`` and ``L`` a network of ReLUs, max-pools and
bias-free linear layers is positively homogeneous, so ``c_l = 1`` exactly (Euler's
theorem); biases move it away from 1 by their share, the same way for every image
that drives the unit. A response that reaches ``L`` along a path that bypasses
``a_l`` (a circuit that reads the pixels, as the fooling circuits of Geirhos et al.
2023 and :mod:`cnnvis_jax.evaluate.fooling` do) is not accounted for: ``c_l`` falls
towards 0.

Rule, fixed before the check was first run on any model: a visualization *passes*
when at every layer compared ``c_l(visualization) >= 0.5 * median over the unit's top
natural images of c_l``; a visualization that leaves the unit at 0 (``c`` undefined)
fails. Layers compared (default): those of :func:`~cnnvis_jax.evaluate.path.default_layers`
below the unit's own.

A second rule, written down after the first had been run on one set of units
(``experiments/results/fooling_default``: every fooled visualization had ``c = 0`` at
every layer, every original one ``c >= 0.82`` at conv4 but some fell below the
threshold at conv1, where the first-order share is dominated by biases) and before it
was run on the held-out set: compare only at the unit's *input layer*,
:func:`~cnnvis_jax.evaluate.scores.feature_layer` (``layers="input"``, conv4 for a
unit of conv5), with the same factor 0.5.

Measured on the default model's fooling circuit (``experiments/fooling_default.py``):
every-layer rule 2 of 6 originals / 0 of 6 fooled pass on the first run, 2 of 4 / 0
of 4 on the held-out run; input-layer rule 6 / 0 and **4 / 0** (held out). The
panel (:mod:`cnnvis_jax.evaluate.panel`) reports the input-layer rule.

The derivatives come from one forward and one backward pass for all layers at once:
the forward is re-evaluated with a zero added to every compared layer's value
(:func:`cnnvis_jax.crp.condition.perturbed_forward`), whose cotangents are the
derivatives of ``ū`` with respect to those activations. Plain gradients (no backward
rule).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.errors import InputError
from cnnvis_jax.evaluate.path import _as_images, default_layers
from cnnvis_jax.model import Model

__all__ = ["PathCompleteness", "path_completeness", "unit_completeness"]

SHARE_OF_NATURAL = 0.5
"""The rule's factor: a visualization needs at least this share of the top natural
images' median completeness at every layer."""


class PathCompleteness(NamedTuple):
    """Result of :func:`path_completeness` for one unit (numpy arrays, L layers).

    Attributes:
      layer, unit: the unit.
      layers: the layers compared, in forward order.
      visualizations: float64 (V, L), ``c_l`` of each visualization (NaN where it
        leaves the unit at 0).
      top: float64 (K, L), ``c_l`` of each top natural image.
      threshold: float64 (L,), ``0.5 * median(top)`` per layer.
      passed: every visualization at or above the threshold at every layer.
      failing_layers: layers where some visualization falls below it.
      unit_activation: ``{"visualizations": mean ū, "top": mean ū}``.
    """

    layer: str
    unit: int
    layers: tuple[str, ...]
    visualizations: np.ndarray
    top: np.ndarray
    threshold: np.ndarray
    passed: bool
    failing_layers: tuple[str, ...]
    unit_activation: dict[str, float]

    def summary(self) -> dict[str, Any]:
        """Strict-JSON-able record (NaN written as None)."""

        def clean(values):
            return [None if not np.isfinite(v) else float(v) for v in values]

        return {
            "layer": self.layer,
            "unit": int(self.unit),
            "passed": bool(self.passed),
            "rule": f"c_l(visualization) >= {SHARE_OF_NATURAL} * median c_l(top) at every layer",
            "failing_layers": list(self.failing_layers),
            "layers": [
                {
                    "layer": name,
                    "visualizations": clean(self.visualizations[:, i]),
                    "top_median": float(np.nanmedian(self.top[:, i])),
                    "threshold": float(self.threshold[i]),
                }
                for i, name in enumerate(self.layers)
            ],
            "unit_activation": {k: float(v) for k, v in self.unit_activation.items()},
        }


@functools.partial(jax.jit, static_argnames=("layer", "unit", "layers"))
def _completeness(model: Model, images, *, layer: str, unit: int, layers: tuple[str, ...]):
    from cnnvis_jax.crp.condition import perturbed_forward

    forward = perturbed_forward(model, layers, layer, images)
    acts = model.apply(model.params, images, layers)
    deltas = tuple(jnp.zeros_like(acts[n]) for n in layers)

    def unit_mean(d):
        value = forward(model.params, images, d)[..., unit]
        return value.reshape(value.shape[0], -1).mean(axis=-1)

    response, pull = jax.vjp(unit_mean, deltas)
    (grads,) = pull(jnp.ones_like(response))
    parts = [(acts[n] * g).reshape(images.shape[0], -1).sum(axis=-1) for n, g in zip(layers, grads)]
    return response, jnp.stack(parts, axis=-1)


def unit_completeness(
    model: Model, layer: str, unit: int, images: Any, layers: Sequence[str] | None = None
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """``c_l`` of ``images`` (N, H, W, 3) in [0, 1] for a unit (see the module docstring).

    Returns ``(layers, completeness float64 (N, L) (NaN where ū = 0), ū float64 (N,))``.

    Raises:
      InputError: unknown layer, unit out of range, no layer below the unit, bad images.
    """
    name = model.resolve(layer)
    model.check_unit(name, unit)
    if layers is None:
        compared = tuple(n for n in default_layers(model, name) if n != name)
    else:
        compared = tuple(dict.fromkeys(model.resolve(n) for n in layers))
    if not compared:
        raise InputError(f"layer {name!r} has no layer below it to compare; check a deeper unit.")
    x = _as_images(images, model, "images")
    response, parts = (np.asarray(v, np.float64) for v in _completeness(
        model, x, layer=name, unit=int(unit), layers=compared))  # fmt: skip
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(response[:, None] != 0, parts / response[:, None], np.nan)
    return compared, ratio, response


def path_completeness(
    model: Model,
    layer: str,
    unit: int,
    visualizations: Any,
    top: Any,
    *,
    layers: Sequence[str] | str | None = None,
) -> PathCompleteness:
    """The completeness check of a unit's visualizations against its top natural images.

    Args:
      model: the network; layer, unit: the unit.
      visualizations: float (V, H, W, 3) in [0, 1].
      top: float (K, H, W, 3) in [0, 1], the unit's top natural images (K >= 1).
      layers: layers below the unit to compare (default: see the module docstring);
        ``"input"``: only the unit's input layer (the second rule).

    Raises:
      InputError: as :func:`unit_completeness`; top images that all leave the unit at 0.
    """
    if isinstance(layers, str):
        if layers != "input":
            raise InputError(
                f"layers must be a sequence of layer names or 'input', got {layers!r}."
            )
        from cnnvis_jax.evaluate.scores import feature_layer

        layers = (feature_layer(model, model.resolve(layer)),)
    compared, vis, vis_u = unit_completeness(model, layer, unit, visualizations, layers)
    _, nat, nat_u = unit_completeness(model, layer, unit, top, compared)
    if not np.any(np.isfinite(nat[:, 0])):
        raise InputError(
            f"none of the top images drives unit {unit} of {layer!r}; the check needs "
            "natural images the unit responds to."
        )
    threshold = SHARE_OF_NATURAL * np.nanmedian(nat, axis=0)
    ok = np.isfinite(vis) & (vis >= threshold[None])
    failing = tuple(n for i, n in enumerate(compared) if not np.all(ok[:, i]))
    return PathCompleteness(
        layer=model.resolve(layer),
        unit=int(unit),
        layers=compared,
        visualizations=vis,
        top=nat,
        threshold=threshold,
        passed=not failing,
        failing_layers=failing,
        unit_activation={"visualizations": float(np.mean(vis_u)), "top": float(np.mean(nat_u))},
    )
