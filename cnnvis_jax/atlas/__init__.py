"""Neuron groups and activation atlases: what a layer represents *together*.

* :func:`collect`: spatial activation vectors of a layer sampled over a data set
  (streamed, seeded), each with its image, position and concept label
  (:class:`Samples`).
* Neuron groups (Lucid's building blocks): :func:`neuron_groups` factors the
  activations by NMF into k directions (:class:`NeuronGroups`, with each group's top
  image regions and concept); :func:`render_groups` renders them in one vmapped call;
  :func:`factorize` is the bare factorization; :func:`save_groups` writes
  ``groups.png`` and ``groups.json``.
* Activation atlas (Carter et al. 2019): :func:`activation_atlas` lays the vectors out
  by PCA + t-SNE, bins them into a G x G grid, renders every cell's mean direction in
  one vmapped call and labels it by its majority concept and its distinctive one
  (largest lift: the concept its points over-represent most) (:class:`Atlas`, with
  ``save`` writing ``atlas.png``, ``layout.png``, ``cells.json``, ``results.json``).
* Pieces: :func:`embed`, :func:`bin_cells`, :func:`assign_cells`,
  :func:`block_majority`, :func:`majority`, :func:`distinctive`,
  :func:`render_directions`; pictures: :func:`atlas_picture`, :func:`layout_figure`,
  :func:`groups_picture` (captions: :class:`Caption`).
"""

from cnnvis_jax.atlas.atlas import Atlas, activation_atlas, check_atlas, label_names
from cnnvis_jax.atlas.collect import Samples, collect, planned_points, sample_positions
from cnnvis_jax.atlas.directions import (
    ATLAS_PRESETS,
    ATLAS_STEPS,
    COSINE_POWER,
    render_directions,
)
from cnnvis_jax.atlas.figures import Caption, atlas_picture, groups_picture, layout_figure
from cnnvis_jax.atlas.groups import (
    NeuronGroups,
    check_groups,
    factorize,
    neuron_groups,
    render_groups,
    save_groups,
)
from cnnvis_jax.atlas.labels import block_majority, distinctive, majority
from cnnvis_jax.atlas.layout import Cells, Layout, assign_cells, bin_cells, embed

__all__ = [
    "ATLAS_PRESETS",
    "ATLAS_STEPS",
    "COSINE_POWER",
    "Atlas",
    "Caption",
    "Cells",
    "Layout",
    "NeuronGroups",
    "Samples",
    "activation_atlas",
    "assign_cells",
    "atlas_picture",
    "bin_cells",
    "block_majority",
    "check_atlas",
    "check_groups",
    "collect",
    "distinctive",
    "embed",
    "factorize",
    "groups_picture",
    "label_names",
    "layout_figure",
    "majority",
    "neuron_groups",
    "planned_points",
    "render_directions",
    "render_groups",
    "sample_positions",
    "save_groups",
]
