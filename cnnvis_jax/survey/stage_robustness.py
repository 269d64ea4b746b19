"""The survey's robustness stage: adversarial examples and what the network sees in them.

FGSM and PGD (:mod:`cnnvis_jax.robustness`) attack the network's own prediction on the
first ``robustness_images`` images at each L-inf radius of the config; the success
rates form the table. For the strongest attack, a few fooled images are shown with
their perturbation, the DeconvNet projection of the last surveyed layer's strongest
unit (clean and adversarial) and the image regularized inversion recovers from that
layer. When the dissection stage has run, the detector units of that layer are
compared clean versus adversarial: per category, and for the object detectors of the
clean class and of the class the attack produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from cnnvis_jax.errors import InputError
from cnnvis_jax.report.grid import rescale_each, save_png
from cnnvis_jax.survey.stages import (
    Context,
    _images01,
    _indices,
    _record,
    _table,
    unit_maxima,
)

SHOWN = 4
"""Fooled images drawn in the figure."""


def _labels(ctx: Context, indices) -> np.ndarray | None:
    """The images' classes in the model's numbering, when the data set has them."""
    names = getattr(ctx.source, "class_names", None)
    if names is None or tuple(names) != tuple(ctx.model.class_names):
        return None
    return np.array([int(ctx.source[int(i)]["target"]) for i in indices])


def _rows_what_it_sees(ctx: Context, result, chosen: np.ndarray, notes: list):
    """Tiles and labels of the DeconvNet and inversion rows for ``chosen`` images."""
    from cnnvis_jax.deconv import project
    from cnnvis_jax.inversion import invert_images

    model, cfg, layer = ctx.model, ctx.config, ctx.layers[-1]
    clean, adv = result.clean[chosen], result.images[chosen]
    tiles, labels = [], []
    units = unit_maxima(model, clean, layer).argmax(axis=1)
    try:
        pairs = [project(model, model.params, np.stack([c, a]), layer, [int(u)]).projections[0]
                 for c, a, u in zip(clean, adv, units)]  # fmt: skip
        tiles += [rescale_each(np.stack([p[0] for p in pairs])),
                  rescale_each(np.stack([p[1] for p in pairs]))]  # fmt: skip
        labels += [f"deconv u{u} clean" for u in units] + [f"deconv u{u} adv" for u in units]
    except InputError as e:  # no ReLU: no DeconvNet
        notes.append(f"DeconvNet projections skipped: {e}")
    preset = cfg.inversion_presets[0]
    try:
        inverted = invert_images(model, np.concatenate([clean, adv]), [layer], preset=preset,
                                 key=jax.random.key(cfg.seed), steps=cfg.inversion_steps,
                                 progress=False)[model.resolve(layer)]  # fmt: skip
        best = np.clip(inverted.best()[0], 0.0, 1.0)
        n = len(chosen)
        tiles += [best[:n], best[n:]]
        labels += [f"inv. {layer} clean"] * n + [f"inv. {layer} adv"] * n
    except InputError as e:
        notes.append(f"inversions skipped: {e}")
    return tiles, labels


def _detectors(ctx: Context, result, layer_detectors: dict, names) -> dict[str, Any] | None:
    """Mean maximum activation of the dissected detectors, clean versus adversarial."""
    model = ctx.model
    layer = layer_detectors["layer"]
    units = layer_detectors["units"]
    if not units:
        return None
    clean = unit_maxima(model, result.clean, layer)
    adv = unit_maxima(model, result.images, layer)
    by_category: dict[str, dict] = {}
    for unit, _label, category, _iou in units:
        entry = by_category.setdefault(category, {"units": 0, "clean": 0.0, "adversarial": 0.0})
        entry["units"] += 1
        entry["clean"] += float(clean[:, unit].mean())
        entry["adversarial"] += float(adv[:, unit].mean())
    for entry in by_category.values():
        entry["clean"] = round(entry["clean"] / entry["units"], 4)
        entry["adversarial"] = round(entry["adversarial"] / entry["units"], 4)
    out: dict[str, Any] = {"layer": layer, "by_category": by_category}
    detector_of = {}
    for unit, label, category, _ in units:
        if category == "object":
            detector_of.setdefault(label, []).append(unit)
    fooled = np.nonzero(result.success)[0]
    pairs = []
    for i in fooled:
        own = detector_of.get(names[result.attacked[i]], [])
        new = detector_of.get(names[result.predicted[i]], [])
        if own and new:
            pairs.append((clean[i, own].mean(), adv[i, own].mean(),
                          clean[i, new].mean(), adv[i, new].mean()))  # fmt: skip
    if pairs:
        m = np.mean(np.array(pairs, float), axis=0)
        out["class_detectors"] = {
            "images": len(pairs),
            "clean_class_clean": round(float(m[0]), 4),
            "clean_class_adversarial": round(float(m[1]), 4),
            "adversarial_class_clean": round(float(m[2]), 4),
            "adversarial_class_adversarial": round(float(m[3]), 4),
        }
    return out


def robustness(ctx: Context, out: Path) -> dict:
    from cnnvis_jax.robustness import attack, example_grid, fgsm, pgd

    title = "Robustness: adversarial examples"
    caption = ("Perturbations too small to see change the network's decision; the rows below "
               "show what its units respond to and what its features keep, clean and attacked.")  # fmt: skip
    model, cfg = ctx.model, ctx.config
    if model.logits_layer is None or model.class_names is None:
        return _record(title, caption, notes=["the model has no classifier: adversarial "
                       "examples attack a class decision, so the stage is skipped."])  # fmt: skip
    indices = _indices(ctx.source, cfg.robustness_images)
    images = _images01(ctx.source, indices, model.input.size)
    truth = _labels(ctx, indices)
    key = jax.random.key(cfg.seed)
    names = list(model.class_names)
    attacks, rows, results = {}, [], {}
    for eps in cfg.robustness_epsilons:
        for settings in (fgsm(eps / 255), pgd(eps / 255, steps=cfg.robustness_steps)):
            name = f"{settings.name}_eps{eps}"
            result = attack(model, images, settings, key=key)
            result.save(out / name, class_names=names)
            summary = {**result.summary(), "grey_levels": eps}
            if truth is not None:
                summary["clean_accuracy"] = round(float(np.mean(result.attacked == truth)), 4)
                summary["adversarial_accuracy"] = round(
                    float(np.mean(result.predicted == truth)), 4
                )
            attacks[name], results[name] = summary, result
            rows.append([settings.name.upper(), f"{eps}/255", settings.steps,
                         summary["success_rate"], summary["median_clean_margin"],
                         summary["median_margin"]]
                        + ([summary["clean_accuracy"], summary["adversarial_accuracy"]]
                           if truth is not None else []))  # fmt: skip
    strongest = f"pgd_eps{max(cfg.robustness_epsilons)}"
    result = results[strongest]
    fooled = np.nonzero(result.success)[0]
    chosen = (fooled if len(fooled) else np.arange(len(indices)))[:SHOWN]
    notes = [f"{len(indices)} images; the attacked class is the network's prediction on the "
             "clean image; per-image classes and margins: <attack>/results.json."]  # fmt: skip
    extra, extra_labels = _rows_what_it_sees(ctx, result, chosen, notes)
    grid = example_grid(result, chosen, names, extra_rows=extra, extra_labels=extra_labels)
    save_png(grid, out / "robustness.png")
    figures = [("robustness.png", f"PGD at {max(cfg.robustness_epsilons)}/255: clean and "
                "adversarial images, the perturbation (magnified), DeconvNet projections of "
                f"{ctx.layers[-1]}'s strongest unit and inversions of {ctx.layers[-1]}")]  # fmt: skip
    header = ["attack", "epsilon", "steps", "success rate", "median clean margin",
              "median margin"] + (["clean accuracy", "adversarial accuracy"]
                                  if truth is not None else [])  # fmt: skip
    tables = [_table("attacks (success: the prediction changed)", header, rows)]
    data: dict[str, Any] = {"attacks": attacks, "strongest": strongest,
                            "shown": [int(i) for i in chosen]}  # fmt: skip
    dissected = ctx.finished("dissection")
    layer_detectors = (dissected or {}).get("data", {}).get("detectors")
    if layer_detectors is None:
        notes.append("run the dissection stage to compare its detectors on clean and "
                     "adversarial images.")  # fmt: skip
    elif (detectors := _detectors(ctx, result, layer_detectors, names)) is not None:
        data["detectors"] = detectors
        tables.append(_table(
            f"dissected detectors of {detectors['layer']}: mean maximum activation, clean "
            f"versus {strongest}",
            ["category", "detector units", "clean", "adversarial"],
            [[c, e["units"], e["clean"], e["adversarial"]]
             for c, e in detectors["by_category"].items()]))  # fmt: skip
        if "class_detectors" in detectors:
            cd = detectors["class_detectors"]
            tables.append(_table(
                f"object detectors of the clean class and of the adversarial class "
                f"({cd['images']} fooled images with both)",
                ["detectors of", "clean image", "adversarial image"],
                [["the clean class", cd["clean_class_clean"], cd["clean_class_adversarial"]],
                 ["the adversarial class", cd["adversarial_class_clean"],
                  cd["adversarial_class_adversarial"]]]))  # fmt: skip
    return _record(title, caption, figures, tables, notes, data)
