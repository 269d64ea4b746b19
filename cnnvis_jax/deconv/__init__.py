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
* :func:`monitor_run` -> :class:`Monitoring` (``.save``, ``.summary``): training
  monitoring, the same units' projections at every saved epoch and when each layer
  stops changing.
* :func:`diagnose` (:func:`dead_units`, :func:`filter_spectrum`, :func:`aliasing`) ->
  :class:`Diagnosis` (``.save``, ``.summary``): design diagnosis as in Zeiler &
  Fergus's ZFNet study.

With more than one device, images are sharded over a 1-D ``images`` mesh; results
equal the single-device ones.
"""

from cnnvis_jax.deconv.diagnosis import (
    Aliasing,
    DeadUnits,
    Diagnosis,
    FilterSpectrum,
    aliasing,
    dead_units,
    diagnose,
    diagnosis_record,
    filter_spectrum,
    first_layer_filters,
)
from cnnvis_jax.deconv.figures import (
    DeconvResult,
    deconv_layer,
    layer_figure,
    results_record,
    save_outputs,
    write_results,
)
from cnnvis_jax.deconv.monitor import (
    LayerMonitor,
    Monitoring,
    monitor_figure,
    monitor_record,
    monitor_run,
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
    "Aliasing",
    "DeadUnits",
    "DeconvResult",
    "Diagnosis",
    "FilterSpectrum",
    "LayerMonitor",
    "Monitoring",
    "Patches",
    "Projection",
    "TopK",
    "aliasing",
    "crop_patches",
    "cut_windows",
    "dead_units",
    "deconv_layer",
    "diagnose",
    "diagnosis_record",
    "field_boxes",
    "filter_spectrum",
    "first_layer_filters",
    "layer_figure",
    "monitor_figure",
    "monitor_record",
    "monitor_run",
    "parse_units",
    "project",
    "project_top",
    "results_record",
    "save_outputs",
    "top_activations",
    "write_results",
]
