"""DeconvNet visualization (Zeiler & Fergus 2014) as pure, jitted functions.

* :func:`project`: project units' activations back to input pixels with a backward
  rule (``deconvnet``, ``guided``, ``gradient``), all units from one forward pass;
  ``pool="center"`` discards the max-pool switches (the ablation).
* :func:`top_activations`: the exact top-k images per unit over a data set, in one
  streaming pass, with the position of each maximum (:class:`TopK`).
* :func:`project_top`, :func:`crop_patches`: projections and receptive-field
  patches of those top images.
* :func:`deconv_layer`, :func:`layer_figure`, :func:`save_outputs`: the per-layer
  figure (projections next to patches) and ``results.json``.
* :func:`parse_units`: ``3``, ``0:16``, ``1,5,9`` unit selections.

With more than one device, images are sharded over a 1-D ``images`` mesh; results
equal the single-device ones.
"""

from cnnvis_jax.deconv.figures import (
    DeconvResult,
    deconv_layer,
    layer_figure,
    results_record,
    save_outputs,
    write_results,
)
from cnnvis_jax.deconv.projection import Projection, project, project_top
from cnnvis_jax.deconv.topk import (
    Patches,
    TopK,
    crop_patches,
    cut_windows,
    field_boxes,
    top_activations,
)
from cnnvis_jax.deconv.units import parse_units

__all__ = [
    "DeconvResult",
    "Patches",
    "Projection",
    "TopK",
    "crop_patches",
    "cut_windows",
    "deconv_layer",
    "field_boxes",
    "layer_figure",
    "parse_units",
    "project",
    "project_top",
    "results_record",
    "save_outputs",
    "top_activations",
    "write_results",
]
