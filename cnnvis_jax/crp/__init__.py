"""Concept relevance propagation: which concepts of a layer a decision rests on, and where.

:func:`concept_relevance` gives every channel's relevance for a class decision and
the conditional heatmaps of chosen concepts (built on
:func:`~cnnvis_jax.crp.condition.conditioned_forward`, a handle on a layer's
cotangent); :func:`top_relevance` picks reference images by relevance;
:func:`explain` and :func:`write_explanation` give the per-prediction view.
"""

from cnnvis_jax.crp.condition import conditioned_forward
from cnnvis_jax.crp.explain import Explanation, explain, top_relevance, write_explanation
from cnnvis_jax.crp.relevance import (
    ConceptRelevance,
    LayerRelevance,
    check_rule,
    concept_masks,
    concept_relevance,
    ruled,
)

__all__ = [
    "ConceptRelevance",
    "Explanation",
    "LayerRelevance",
    "check_rule",
    "concept_masks",
    "concept_relevance",
    "conditioned_forward",
    "explain",
    "ruled",
    "top_relevance",
    "write_explanation",
]
