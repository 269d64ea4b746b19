"""Can a visualization be trusted? Scores against the data, sanity checks, path similarity.

* :mod:`~cnnvis_jax.evaluate.scores`: activation ratio, plausibility,
  transferability and diversity of unit visualizations, against the unit's top and
  random natural images (:func:`natural_references`).
"""

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
    "References",
    "activation_ratio",
    "diversity",
    "feature_layer",
    "natural_references",
    "plausibility",
    "transferability",
    "unit_maxima",
]
