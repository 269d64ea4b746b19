"""The survey's "concepts beyond single units" stage.

Dissection gives each unit one label; the survey itself notes that concepts are
distributed. Three views that go further, from the package's own functions:

* compositional labels (:func:`cnnvis_jax.dissection.compose`, Mu & Andreas 2020):
  per unit of the last surveyed layer the best AND / OR / AND NOT formula of
  concepts, and how much IoU it gains over the unit's best single concept;
* concept relevance (:mod:`cnnvis_jax.crp`, Achtibat et al. 2023): three predictions
  explained by the layer's most relevant channels, each with its conditional heatmap
  and its reference images chosen by relevance maximization (LRP composite
  ``epsilon_plus_flat``);
* an activation atlas of the layer before it (:func:`cnnvis_jax.atlas.activation_atlas`,
  Carter et al. 2019): activations of many images and positions laid out in 2-D, a
  grid of cells each rendered as a direction and labelled by its dominant concept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnvis_jax.errors import InputError
from cnnvis_jax.survey.stages import Context, _images01, _indices, _record, _table

CRP_RULE = "epsilon_plus_flat"
"""The LRP composite of the relevance views (zennit-crp's usual choice for CNNs)."""


def _compose(ctx: Context, out: Path, notes: list, figures: list, tables: list, data: dict):
    from cnnvis_jax.dissection import compose

    cfg, layer = ctx.config, ctx.layers[-1]
    if ctx.labelled is None:
        notes.append("no concept masks (the data set has no segmentation): compositional "
                     "labels and the atlas's concept labels are skipped.")  # fmt: skip
        return
    count = min(cfg.beyond_images, len(ctx.labelled))
    result = compose(ctx.model, ctx.labelled, layer, length=cfg.beyond_length,
                     indices=np.arange(count), progress=ctx.progress)  # fmt: skip
    result.save(out / "compose.json")
    gain = result.gain
    gaining = np.flatnonzero(gain >= 0.02)
    order = gaining[np.argsort(-gain[gaining], kind="stable")][:8]
    rows = [[f"{layer}:{u}", result.text(int(u)), f"{result.iou[u]:.3f}",
             result.names[int(result.atomic_label[u])], f"{result.atomic_iou[u]:.3f}",
             f"+{gain[u]:.3f}"] for u in order]  # fmt: skip
    tables.append(_table(
        f"units of {layer} whose best formula (length <= {cfg.beyond_length}) beats their best "
        f"single concept by >= 0.02 IoU: {gaining.size} of {gain.size}",
        ["unit", "formula", "IoU", "single concept", "IoU", "gain"], rows,
    ))  # fmt: skip
    data["compose"] = {"layer": layer, "units": int(gain.size), "gaining": int(gaining.size),
                       "images": count, "length": cfg.beyond_length,
                       "mean_gain": float(np.mean(gain))}  # fmt: skip


def _explanations(ctx: Context, out: Path, notes: list, figures: list, data: dict):
    from cnnvis_jax.crp import explain, top_relevance, write_explanation
    from cnnvis_jax.deconv import crop_patches

    model, cfg, layer = ctx.model, ctx.config, ctx.layers[-1]
    if model.logits_layer is None:
        notes.append("the model has no classifier: the relevance explanations are skipped.")
        return
    sample = _indices(ctx.source, cfg.sample_images)
    refs = top_relevance(model, ctx.source, layer, k=cfg.beyond_refs, rule=CRP_RULE,
                         indices=sample, progress=ctx.progress)  # fmt: skip
    patches = crop_patches(ctx.source, refs, model).images
    images = _images01(ctx.source, sample[: cfg.beyond_explained], model.input.size)
    data["explanations"] = []
    for i, image in enumerate(images):
        e = explain(model, image, None, layer, top=min(cfg.beyond_concepts,
                    model.layer(layer).channels), rule=CRP_RULE,
                    reference_patches=patches)  # fmt: skip
        write_explanation(e, out / f"explain_{i}")
        figures.append((f"explain_{i}/explanation.png",
                        f"prediction {e.class_name} (p = {e.probability:.2f}): the "
                        f"{len(e.units)} channels of {layer} most relevant to it, their "
                        "conditional heatmaps (red: for, blue: against) and reference images "
                        "chosen by relevance"))  # fmt: skip
        data["explanations"].append(e.summary())


def _atlas(ctx: Context, out: Path, notes: list, figures: list, data: dict):
    from cnnvis_jax.atlas import activation_atlas

    cfg = ctx.config
    layer = ctx.layers[-2] if len(ctx.layers) > 1 else ctx.layers[-1]
    source = ctx.labelled if ctx.labelled is not None else ctx.source
    try:
        atlas = activation_atlas(ctx.model, source, layer, grid=cfg.beyond_grid,
                                 images=min(cfg.beyond_images, len(source)),
                                 points=cfg.beyond_points, steps=cfg.beyond_steps,
                                 seed=cfg.seed, progress=ctx.progress)  # fmt: skip
    except InputError as e:
        notes.append(f"activation atlas skipped: {e}")
        return
    atlas.save(out / "atlas")
    figures.append(("atlas/atlas.png", f"activation atlas of {layer}: each cell is the mean "
                    "activation of the image positions laid out there, rendered as a "
                    "direction; labels are the cells' dominant concepts"))  # fmt: skip
    figures.append(("atlas/layout.png", f"the layout of {layer}'s activations (PCA, then "
                    "t-SNE), coloured by concept"))  # fmt: skip
    data["atlas"] = atlas.summary()


def beyond(ctx: Context, out: Path) -> dict:
    notes: list[str] = []
    figures: list = []
    tables: list = []
    data: dict = {}
    _compose(ctx, out, notes, figures, tables, data)
    _explanations(ctx, out, notes, figures, data)
    _atlas(ctx, out, notes, figures, data)
    return _record(
        "Concepts beyond single units",
        "One label per unit is where dissection stops. Formulas of concepts label units "
        "that respond to combinations; concept relevance shows which channels a decision "
        "rests on and where; the activation atlas lays out a whole layer's activation "
        "space as a map of rendered directions.",
        figures,
        tables,
        notes,
        data,
    )
