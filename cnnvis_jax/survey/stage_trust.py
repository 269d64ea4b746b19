"""The survey's "how far to trust these pictures" stage.

Two measurements from :mod:`cnnvis_jax.evaluate`, on the last surveyed layer:

* the score panel (:func:`~cnnvis_jax.evaluate.compare_presets`) of the survey's AM
  presets for the layer's most strongly responding units: activation relative to
  the unit's top natural images, plausibility in the layer below, diversity among
  seeds, the path-similarity check (Geirhos et al. 2023) and whether the unit's
  response comes through its input layer (:mod:`cnnvis_jax.evaluate.completeness`);
* Adebayo et al.'s cascading randomization of the weights (top layer down) for the
  gradient, DeconvNet and guided-backprop maps of the model's predicted class: how
  much each backward rule's picture depends on what the network learned. A rule
  whose maps stay alike while the weights are re-drawn shows the image more than
  the network (the survey's DeconvNet figures should be read with this curve).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnvis_jax.errors import InputError
from cnnvis_jax.survey.stages import Context, _images01, _indices, _record, _table


def _panel(ctx: Context, out: Path, notes: list):
    from cnnvis_jax.evaluate import compare_presets
    from cnnvis_jax.hub.gallery import choose_units

    model, cfg, layer = ctx.model, ctx.config, ctx.layers[-1]
    sample = _indices(ctx.source, cfg.sample_images)
    units, _ = choose_units(model, ctx.source, layer, cfg.trust_units, batch_size=32,
                            indices=sample)  # fmt: skip
    presets = [p for p in cfg.am_presets if p not in ("dgn", "maco", "accentuate")]
    k = min(cfg.trust_k, len(sample) // 2)
    try:
        panel = compare_presets(model, layer, units.tolist(), presets, ctx.source,
                                seeds=cfg.trust_seeds, steps=cfg.am_steps, key=cfg.seed, k=k,
                                n_random=min(2 * k, len(sample)), count=len(sample),
                                progress=ctx.progress)  # fmt: skip
    except InputError as e:
        notes.append(f"score panel skipped: {e}")
        return None
    panel.save(out / "panel")
    return panel


def _sanity(ctx: Context, out: Path, notes: list):
    from cnnvis_jax.evaluate import cascading_randomization

    model, cfg = ctx.model, ctx.config
    if model.logits_layer is None:
        notes.append("the model has no classifier: the randomization test of the backward "
                     "rules (maps of the predicted class) is skipped.")  # fmt: skip
        return None
    images = _images01(ctx.source, _indices(ctx.source, cfg.trust_images), model.input.size)
    try:
        result = cascading_randomization(model, images, key=cfg.seed, progress=ctx.progress)
    except InputError as e:  # e.g. a model without ReLUs has no DeconvNet
        notes.append(f"randomization test skipped: {e}")
        return None
    result.save(out / "sanity")
    return result


def trust(ctx: Context, out: Path) -> dict:
    notes: list[str] = []
    figures, tables, data = [], [], {}
    panel = _panel(ctx, out, notes)
    if panel is not None:
        figures.append(("panel/panel.png", f"layer {panel.layer}: rows are presets; under each "
                        "picture the activation ratio / plausibility and the path check"))  # fmt: skip
        rows = [[r["preset"], _fmt(r["activation_ratio"]), _fmt(r["plausibility"]),
                 _fmt(r["diversity"]), f"{r['path_pass_rate']:.2f}",
                 _fmt(r["completeness_pass_rate"])] for r in panel.table()]  # fmt: skip
        tables.append(_table(
            f"scores of the visualizations of {panel.layer} (means over units and seeds)",
            ["preset", "activation ratio", "plausibility", "diversity", "path check passed",
             "response through the input layer"],
            rows,
        ))  # fmt: skip
        data["panel"] = panel.table()
        data["layer"] = panel.layer
    sanity = _sanity(ctx, out, notes)
    if sanity is not None:
        figures.append(("sanity/sanity.png", "rank correlation and SSIM of each rule's maps "
                        "with the trained network's, as the weights are re-drawn from the top "
                        "layer down (Adebayo et al. 2018)"))  # fmt: skip
        curves = sanity.curves()
        header = ["method", *[str(s) for s in sanity.steps]]
        rows = [[m, *[_fmt(v) for v in curves[m]["spearman_abs"]]] for m in sanity.methods]
        tables.append(_table("Spearman rank correlation (absolute maps) with the trained "
                             "network, randomized down to", header, rows))  # fmt: skip
        data["sanity"] = {"steps": list(sanity.steps), **{
            m: {metric: [float(v) for v in values] for metric, values in curves[m].items()}
            for m in sanity.methods
        }}  # fmt: skip
    return _record(
        "How far to trust these pictures",
        "Visualizations scored against the data (how strongly they drive the unit compared "
        "with its best natural images, how close the network finds them to those images, "
        "whether they take the same path through the layers below) and the backward rules "
        "checked against weight randomization: a picture that barely changes when the "
        "weights are re-drawn shows the image, not what the network learned.",
        figures,
        tables,
        notes,
        data,
    )


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{float(value):.2f}"
