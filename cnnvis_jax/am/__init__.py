"""Activation maximization: images that drive units of a network as high as possible.

* objectives (:mod:`~cnnvis_jax.am.objectives`): :func:`neuron`, :func:`channel`,
  :func:`class_logit`, :func:`direction`, :func:`layer_norm`, :func:`diversity`;
  immutable pytrees with ``+``, ``-`` and scalar ``*``;
* parameterizations: :class:`Pixel`, :class:`Fourier` (Lucid), :class:`Maco`
  (phase only, under :func:`natural_spectrum`), :class:`Generator`
  (DGN-AM, any decoder ``G(params, h) -> images``; :func:`load_generator` from a
  trained UpconvNet decoder);
* transforms: :class:`Pad`, :class:`Jitter`, :class:`Scale`, :class:`Rotate`,
  :class:`Crop`, :class:`Crops` (several views per image), :class:`Noise`,
  :func:`lucid_transforms`, :func:`distill_transforms`, :func:`maco_transforms`;
* regularizers: penalties (:class:`L2`, :class:`AlphaNorm`, :class:`TotalVariation`)
  and post-update steps (:class:`Decay`, :class:`Blur`, :class:`SmallNorm`,
  :class:`SmallContribution`, :class:`ClipParams`), MFV center bias
  (:class:`CenterBias`);
* update rules: :class:`Adam`, :class:`Nadam`, :class:`Ascent` (constant / "progress"),
  :class:`NormalizedAscent`, :class:`LBFGS` (optax transformations run by the
  pre-image engine, :mod:`cnnvis_jax.preimage`);
* :class:`Recipe` (with an :class:`Anchor` for Feature Accentuation), :func:`preset`
  (``yosinski1``..``4``, ``simonyan``, ``lucid``, ``distill``, ``dgn``,
  ``mfv-center``, ``mfv-mean``, ``maco``, ``accentuate``) and :func:`render`, vmapped
  over units, seeds and sweeps, sharded over a ``units`` device mesh;
* Multifaceted Feature Visualization: :func:`facets`, :func:`render_facets`,
  :func:`facet_diversity`;
* units left at 0: :func:`natural_starts`, :func:`restart_silent`.
"""

from cnnvis_jax.am.generator import load_generator
from cnnvis_jax.am.mfv import Facets, MFVResult, facet_diversity, facets, render_facets
from cnnvis_jax.am.objectives import (
    Objective,
    bind,
    channel,
    class_logit,
    direction,
    diversity,
    layer_norm,
    neuron,
    stack,
)
from cnnvis_jax.am.optimizers import LBFGS, Adam, Ascent, Nadam, NormalizedAscent
from cnnvis_jax.am.params import Fourier, Generator, Maco, Pixel, code_bounds, natural_spectrum
from cnnvis_jax.am.presets import PRESETS, preset
from cnnvis_jax.am.recipe import Anchor, CenterBias, Octave, Recipe
from cnnvis_jax.am.regularizers import (
    L2,
    AlphaNorm,
    Blur,
    ClipParams,
    Decay,
    SmallContribution,
    SmallNorm,
    TotalVariation,
)
from cnnvis_jax.am.render import RenderResult, objectives_for_units, render
from cnnvis_jax.am.silent import NaturalStarts, natural_starts, restart_silent
from cnnvis_jax.am.transforms import (
    Crop,
    Crops,
    Jitter,
    Noise,
    Pad,
    Rotate,
    Scale,
    chain,
    distill_transforms,
    lucid_transforms,
    maco_transforms,
)

__all__ = [
    "L2",
    "PRESETS",
    "NaturalStarts",
    "LBFGS",
    "MFVResult",
    "Adam",
    "AlphaNorm",
    "Anchor",
    "Ascent",
    "Blur",
    "CenterBias",
    "ClipParams",
    "Crop",
    "Crops",
    "Decay",
    "Facets",
    "Fourier",
    "Generator",
    "Jitter",
    "Maco",
    "Nadam",
    "Noise",
    "NormalizedAscent",
    "Objective",
    "Octave",
    "Pad",
    "Pixel",
    "Recipe",
    "RenderResult",
    "Rotate",
    "Scale",
    "SmallContribution",
    "SmallNorm",
    "TotalVariation",
    "bind",
    "chain",
    "channel",
    "class_logit",
    "code_bounds",
    "direction",
    "distill_transforms",
    "diversity",
    "facet_diversity",
    "facets",
    "layer_norm",
    "load_generator",
    "lucid_transforms",
    "maco_transforms",
    "natural_spectrum",
    "natural_starts",
    "neuron",
    "objectives_for_units",
    "preset",
    "render",
    "render_facets",
    "restart_silent",
    "stack",
]
