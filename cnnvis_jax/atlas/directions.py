"""Render directions in a layer's channel space, all in one vmapped render.

Every direction ``v`` becomes :func:`cnnvis_jax.am.direction` ``(layer, v,
cosine_power)``, whose score is ``<a, v/|v|> * max(cos(a, v), 0.1) ** cosine_power``
averaged over the layer's positions. The objectives share one structure, so
:func:`cnnvis_jax.am.render` stacks them on its job axis and optimizes all of them
in one compiled program.

:data:`COSINE_POWER` is 2, the default of Lucid's activation-atlas renderer
(``direction_neuron_cossim_S(..., cossim_pow=2)``): the cosine factor rewards images
whose activations point *along* the direction rather than images that are merely
loud, which is what tells neighbouring atlas cells apart. Lucid scores the centre
position only; here the score is the mean over positions, so the whole image shows
the direction. :data:`ATLAS_STEPS` is 128, the step count of Lucid's
``render_icons``; the ``lucid`` preset's own 512 steps are for single units.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnvis_jax.errors import InputError, did_you_mean
from cnnvis_jax.model import Model

__all__ = [
    "ATLAS_PRESETS",
    "ATLAS_STEPS",
    "COSINE_POWER",
    "check_recipe",
    "render_directions",
]

COSINE_POWER = 2.0
"""Exponent of the cosine factor of every direction objective (Lucid's atlas)."""
ATLAS_STEPS = 128
"""Render steps per cell and group (Lucid's ``render_icons``)."""
ATLAS_PRESETS = ("lucid", "distill", "yosinski1", "yosinski2", "yosinski3", "yosinski4",
                 "simonyan")  # fmt: skip
"""Presets that render from scratch with no other input (no generator, spectrum,
anchor image or facet start)."""


def check_recipe(recipe: Any):
    """``recipe`` as a :class:`~cnnvis_jax.am.Recipe` (a name of
    :data:`ATLAS_PRESETS`, or a recipe as it is).

    Raises:
      InputError: a preset name that is unknown or needs other input.
    """
    from cnnvis_jax import am

    if not isinstance(recipe, str):
        return recipe
    if recipe not in ATLAS_PRESETS:
        raise InputError(
            f"preset {recipe!r} cannot render a direction from scratch here; "
            + did_you_mean(recipe, ATLAS_PRESETS)
        )
    return am.preset(recipe)


def render_directions(
    model: Model,
    layer: str,
    vectors: np.ndarray,
    recipe: Any = "lucid",
    *,
    key: Any = 0,
    steps: int | None = ATLAS_STEPS,
    cosine_power: float = COSINE_POWER,
    progress: bool = False,
    desc: str = "render",
):
    """One image per direction, from one vmapped :func:`~cnnvis_jax.am.render` call.

    Args:
      model: the network.
      layer: the layer whose channel space ``vectors`` live in.
      vectors: float (M, C) directions (any length; zero vectors score 0).
      recipe: a preset name of :data:`ATLAS_PRESETS` or a Recipe.
      key: PRNG key or int seed (every direction starts from the same image).
      steps: steps per image; None keeps the recipe's own count.
      cosine_power: exponent of the cosine factor (see the module docstring).
      progress: show a progress bar.

    Returns:
      The :class:`~cnnvis_jax.am.RenderResult` with leading axis (M,), one image each:
      ``images`` float32 (M, 1, H, W, 3) in [0, 1], ``final_activation`` (M, 1).

    Raises:
      InputError: no vectors; vectors of the wrong length for ``layer``; a bad recipe.
    """
    from cnnvis_jax import am

    vectors = np.asarray(vectors, np.float32)
    info = model.layer(layer)
    if vectors.ndim != 2 or len(vectors) == 0 or vectors.shape[1] != info.channels:
        raise InputError(
            f"directions must be (M >= 1, {info.channels}) for layer {info.name!r}, got shape "
            f"{vectors.shape}."
        )
    objectives = [am.direction(info.name, v, cosine_power) for v in vectors]
    return am.render(model, objectives, check_recipe(recipe), key=key, steps=steps,
                     progress=progress, desc=desc)  # fmt: skip
