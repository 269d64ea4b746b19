"""Network Dissection (Bau et al. 2017, NetDissect-Lite conventions) and Net2Vec
(Fong & Vedaldi 2018) as streaming, jit-compiled passes over a concept data set.

* :func:`dissect`: pass 1 (exact top-quantile thresholds per unit), pass 2 (the fused
  tally of every unit x label), scoring in ``lite`` or ``original`` mode; several
  layers share one forward per batch; resumable with ``checkpoint=DIR``. Two engines
  compute the same integers: ``sparse`` (CPU default; the device marks where units
  can exceed their thresholds, the host keeps and counts only those) and ``dense``
  (everything on device, counts summed over the mesh; accelerators).
* :func:`write_outputs`: per-layer ``tally.csv`` (NetDissect-Lite's columns),
  ``summary.json``, HTML reports and the detectors-per-category plot.
* :func:`net2vec`: concept embeddings (segmentation and classification) compared
  with the best single unit.
* :func:`compose`: compositional explanations (Mu & Andreas 2020), each unit's best
  formula of concepts (AND, OR, AND NOT) by beam search over the dissection's masks.
"""

from cnnvis_jax.dissection.compose import (
    ComposeResult,
    Formula,
    compose,
    compose_layers,
)
from cnnvis_jax.dissection.dissect import (
    Dissection,
    LayerResult,
    compute_tally,
    compute_thresholds,
    dissect,
    spatial_layers,
    with_lite_preprocessing,
)
from cnnvis_jax.dissection.labels import (
    ArrayConceptSource,
    LabelLayout,
    label_layout,
    load_labelled,
)
from cnnvis_jax.dissection.scoring import (
    Counts,
    Scores,
    iou_matrix,
    score,
    tally_fields,
    tally_rows,
)
from cnnvis_jax.dissection.thresholds import Thresholds, lite_quantile, readout
from cnnvis_jax.dissection.upsample import layer_matrices, pil_taps, upsample

__all__ = [
    "ArrayConceptSource",
    "ComposeResult",
    "Counts",
    "Dissection",
    "Formula",
    "LabelLayout",
    "LayerResult",
    "Scores",
    "Thresholds",
    "compose",
    "compose_layers",
    "compute_tally",
    "compute_thresholds",
    "dissect",
    "iou_matrix",
    "label_layout",
    "layer_matrices",
    "lite_quantile",
    "load_labelled",
    "pil_taps",
    "readout",
    "score",
    "spatial_layers",
    "tally_fields",
    "tally_rows",
    "upsample",
    "with_lite_preprocessing",
]
