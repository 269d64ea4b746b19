"""Can a visualization be trusted? Scores against the data, sanity checks, path similarity.

* :mod:`~cnnvis_jax.evaluate.scores`: activation ratio, plausibility,
  transferability and diversity of unit visualizations, against the unit's top and
  random natural images (:func:`natural_references`);
* :mod:`~cnnvis_jax.evaluate.path`: the path-similarity check of Geirhos et al. 2023
  (:func:`path_similarity`, :func:`path_check`);
* :mod:`~cnnvis_jax.evaluate.completeness`: does a unit's response come through the
  layers below it (:func:`path_completeness`, :func:`unit_completeness`);
* :mod:`~cnnvis_jax.evaluate.panel`: every score for several presets' renderings of
  a layer's units (:func:`compare_presets`, :class:`Panel`; ``cnnvis evaluate``);
* :mod:`~cnnvis_jax.evaluate.sanity`: Adebayo et al. 2018's cascading and data
  randomization tests for gradient, DeconvNet, guided backprop and AM
  (:func:`cascading_randomization`, :func:`data_randomization`);
* :mod:`~cnnvis_jax.evaluate.fooling`: a fooling circuit after Geirhos et al. 2023
  (:func:`fooled_model`): chosen units' visualizations become a picture chosen in
  advance while the network's outputs on natural images stay bitwise the same.
"""

from cnnvis_jax.evaluate.completeness import (
    PathCompleteness,
    path_completeness,
    unit_completeness,
)
from cnnvis_jax.evaluate.fooling import fooled_model, gate_values, target_similarity
from cnnvis_jax.evaluate.panel import Panel, compare_presets, render_preset, score
from cnnvis_jax.evaluate.path import (
    PathSimilarity,
    path_check,
    path_similarity,
    plot_path_similarity,
)
from cnnvis_jax.evaluate.sanity import (
    SanityResult,
    cascading_randomization,
    data_randomization,
    randomize_layers,
    saliency,
    ssim,
)
from cnnvis_jax.evaluate.scores import (
    References,
    activation_ratio,
    diversity,
    feature_layer,
    natural_references,
    plausibility,
    transferability,
    unit_maxima,
)

__all__ = [
    "PathCompleteness",
    "path_completeness",
    "unit_completeness",
    "Panel",
    "PathSimilarity",
    "References",
    "SanityResult",
    "activation_ratio",
    "cascading_randomization",
    "compare_presets",
    "data_randomization",
    "diversity",
    "feature_layer",
    "fooled_model",
    "gate_values",
    "natural_references",
    "path_check",
    "path_similarity",
    "plausibility",
    "plot_path_similarity",
    "randomize_layers",
    "render_preset",
    "saliency",
    "score",
    "ssim",
    "target_similarity",
    "transferability",
    "unit_maxima",
]
