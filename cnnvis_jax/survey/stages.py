"""The survey's stages: each draws one section of the report into its own folder.

A stage is ``stage(ctx, out) -> record``: it writes its pictures and tables into
``out`` and returns a strict-JSON record

    {"title": str, "caption": str (what to look at, two lines),
     "figures": [[file, caption], ...], "tables": [{"title", "header", "rows"}, ...],
     "notes": [str, ...], "data": {...}}

that the report (:mod:`~cnnvis_jax.survey.report`) and the findings
(:mod:`~cnnvis_jax.survey.findings`) read. ``data`` holds every number a finding
uses. A stage that does not apply (no labels, no classifier) returns its notes and no
figures; it never fails the survey for that.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cnnvis_jax.am.render import objective_layer
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model
from cnnvis_jax.report.grid import image_grid, rescale_each, save_png
from cnnvis_jax.survey.config import SurveyConfig


@dataclasses.dataclass(frozen=True)
class Context:
    """What every stage sees.

    Attributes:
      model: the network.
      source: its images (a random-access source).
      labelled: a concept source with masks (the concept set, Broden) or None.
      config: the stage sizes.
      layers: the spatial layers surveyed (at most ``config.layers``).
      run_dir: the model's training run (``train``'s folder: ``metrics.json`` with the
        history, ``snapshots/``) when known.
      checkpoints: folder for resumable state of long stages.
      progress: show the stages' own progress bars.
      survey_dir: the survey folder (where finished stages' records are).
    """

    model: Model
    source: Any
    labelled: Any
    config: SurveyConfig
    layers: tuple[str, ...]
    run_dir: Path | None = None
    checkpoints: Path | None = None
    progress: bool = False
    survey_dir: Path | None = None

    def finished(self, stage: str) -> dict | None:
        """The record of a finished stage of this survey, or None."""
        if self.survey_dir is None:
            return None
        try:
            return json.loads((self.survey_dir / stage / "record.json").read_text())
        except (OSError, ValueError):
            return None


def survey_layers(model: Model, count: int) -> tuple[str, ...]:
    """At most ``count`` spatial layers of ``model``, evenly spaced, the last included.

    The candidates are the blocks' outputs: pre-activation taps (``*_pre``), pooling
    layers and sub-blocks (``layer1.0``) are left out when other layers remain, and of
    numbered convolutions in one block (``conv3_1 .. conv3_3``) the last is kept."""
    spatial = [info.name for info in model.layers if info.spatial]
    blocks = [n for n in spatial if not n.endswith("_pre") and not n.startswith("pool")]
    blocks = [n for n in blocks if "." not in n] or spatial
    last: dict[str, str] = {}
    for name in blocks:
        last[re.sub(r"_\d+$", "", name)] = name
    names = list(last.values())
    if len(names) <= count:
        return tuple(names)
    picks = np.round(np.linspace(0, len(names) - 1, count)).astype(int)
    return tuple(names[i] for i in sorted(set(picks.tolist())))


def _record(title, caption, figures=(), tables=(), notes=(), data=None) -> dict:
    return {
        "title": title,
        "caption": caption,
        "figures": [list(f) for f in figures],
        "tables": list(tables),
        "notes": list(notes),
        "data": data or {},
    }


def _table(title: str, header, rows) -> dict:
    return {"title": title, "header": list(header), "rows": [list(r) for r in rows]}


def _indices(source: Any, count: int) -> np.ndarray:
    return np.arange(min(int(count), len(source)))


def _images01(source: Any, indices, size) -> np.ndarray:
    """float32 (N, H, W, 3) in [0, 1] at ``size`` (resized/cropped when needed)."""
    from cnnvis_jax.data.imageio import resize_crop

    out = []
    for i in indices:
        image = np.asarray(source[int(i)]["image"])
        if image.shape[:2] != tuple(size):
            image = resize_crop(image, tuple(size))
        out.append(image.astype(np.float32) / 255.0)
    return np.stack(out)


# --- 1. the network and its data ---------------------------------------------------------


def network(ctx: Context, out: Path) -> dict:
    from cnnvis_jax.deconv.diagnosis import first_layer_filters
    from cnnvis_jax.report.training import MASK_CATEGORIES, plot_curves, sample_sheet

    model = ctx.model
    rows, fields = [], {}
    for info in model.layers:
        rf = info.receptive_field
        size = list(rf.size) if rf is not None else None
        stride = list(rf.stride) if rf is not None else None
        rows.append([info.name, "x".join(map(str, info.shape)), _pair(size), _pair(stride)])
        fields[info.name] = {"shape": list(info.shape), "rf_size": size, "rf_stride": stride}
    figures, notes = [], []
    try:
        layer, kernel, stride = first_layer_filters(model)
        filters = rescale_each(np.asarray(kernel).transpose(3, 0, 1, 2))
        scale = max(1, 48 // filters.shape[1])
        save_png(image_grid(filters, ncols=16, scale=scale, pad=2), out / "filters.png")
        figures.append(("filters.png", f"{layer} filters (stride {stride}), each rescaled"))
    except InputError as e:
        notes.append(f"first-layer filters not shown: {e}")
    history = _history(ctx.run_dir)
    if history:
        plot_curves(history, out / "curves.png")
        figures.append(("curves.png", "training accuracy and loss per epoch"))
    else:
        notes.append("no training history is known for these weights (curves not shown).")
    if ctx.labelled is not None and getattr(ctx.labelled, "vocabulary", None) is not None:
        tiles, captions = sample_sheet(ctx.labelled, 6)
        cols = 1 + len(MASK_CATEGORIES)
        save_png(image_grid(tiles, ncols=cols, labels=captions, scale=2), out / "samples.png")
        figures.append(("samples.png", "concept images with their object, part, colour and "
                        "texture masks"))  # fmt: skip
    table = _table("layers", ["layer", "output", "receptive field", "stride"], rows)
    return _record(
        "The network and its data",
        "Receptive fields grow layer by layer; conv1's filters should look like oriented "
        "edges and colour blobs. The curves show how well and how fast the network learned.",
        figures,
        [table],
        notes,
        {
            "model": model.name,
            "input": list(model.input.size),
            "layers": fields,
            "surveyed": list(ctx.layers),
        },  # fmt: skip
    )


def _history(run_dir: Path | None) -> list[dict]:
    """The per-epoch history of a training run (``metrics.json``), else []."""
    if run_dir is None:
        return []
    try:
        return list(json.loads((Path(run_dir) / "metrics.json").read_text())["history"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _pair(value) -> str:
    if value is None:
        return "whole image"
    return str(value[0]) if value[0] == value[1] else f"{value[0]}x{value[1]}"


# --- 2. activation maximization ------------------------------------------------------------


def _chosen_units(ctx: Context) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from cnnvis_jax.hub.gallery import choose_units

    sample = _indices(ctx.source, ctx.config.sample_images)
    return {
        layer: choose_units(
            ctx.model, ctx.source, layer, ctx.config.am_units, batch_size=32, indices=sample
        )  # fmt: skip
        for layer in ctx.layers
    }


def unit_maxima(model: Model, images01: np.ndarray, layer: str) -> np.ndarray:
    """float (N, U): each unit's maximum over positions on each image."""
    from cnnvis_jax.evaluate.scores import unit_maxima as maxima

    return maxima(model, layer, np.arange(model.layer(layer).channels), images01)


def _peaks(model: Model, images01: np.ndarray, layer: str, units) -> np.ndarray:
    """float (N,): unit ``units[n]``'s maximum over positions on image ``n``."""
    return unit_maxima(model, images01, layer)[np.arange(len(units)), np.asarray(units)]


def am(ctx: Context, out: Path) -> dict:
    from cnnvis_jax.am import objectives_for_units, preset, render

    model, cfg = ctx.model, ctx.config
    chosen = _chosen_units(ctx)
    figures, rows, data = [], [], {"units": {}, "ratio": {}, "presets": list(cfg.am_presets)}
    for name in cfg.am_presets:
        recipe = preset(name)
        tiles, labels = [], []
        data["ratio"][name] = {}
        for layer, (units, natural) in chosen.items():
            target = objective_layer(model, layer)
            objectives = objectives_for_units(model, target, units.tolist(), kind=recipe.objective)
            result = render(model, objectives, recipe, key=cfg.seed, steps=cfg.am_steps,
                            progress=ctx.progress, desc=f"AM {name} {layer}")  # fmt: skip
            images = np.clip(result.images[:, 0], 0.0, 1.0)
            peaks = _peaks(model, images, layer, units)
            ratio = peaks / np.maximum(natural, 1e-12)
            data["units"][layer] = units.tolist()
            data["ratio"][name][layer] = [round(float(r), 4) for r in ratio]
            tiles.extend(images)
            labels.extend(f"{layer} u{u} {r:.1f}x" for u, r in zip(units.tolist(), ratio))
            rows.append([name, layer, f"{np.median(ratio):.2f}", f"{np.max(ratio):.2f}"])
        every = [r for layer in chosen for r in data["ratio"][name][layer]]
        data.setdefault("median_ratio", {})[name] = round(float(np.median(every)), 4)
        data.setdefault("above_natural", {})[name] = int(sum(r > 1.0 for r in every))
        data["units_drawn"] = len(every)
        grid = image_grid(np.stack(tiles), ncols=cfg.am_units, labels=labels, scale=2)
        save_png(grid, out / f"am_{name}.png")
        figures.append((f"am_{name}.png", f"preset {name}: rows are layers; under each image "
                        "its peak activation relative to the unit's best natural image "
                        "(conv units are maximized before their ReLU)"))  # fmt: skip
    notes = []
    classes = _class_visualizations(ctx, out, data)
    if classes is None:
        notes.append("the model has no classifier: class visualizations and MFV are skipped.")
    else:
        figures.append(classes)
        figures.extend(_multifaceted(ctx, out, data, notes))
    table = _table(
        "activation reached relative to the best natural image (peak over positions)",
        ["preset", "layer", "median ratio", "max ratio"],
        rows,
    )
    return _record(
        "Activation maximization",
        "Each picture is an input that excites one unit. Low layers give colours and "
        "edges, deeper layers textures and object parts; a ratio above 1 beats every natural image.",
        figures,
        [table],
        notes,
        data,
    )


def _class_visualizations(ctx: Context, out: Path, data: dict):
    from cnnvis_jax.am import objectives_for_units, preset, render

    model, cfg = ctx.model, ctx.config
    if not model.logits_layer or not model.class_names:
        return None
    classes = list(range(min(cfg.classes, len(model.class_names))))
    recipe = preset(cfg.am_presets[0])
    objectives = objectives_for_units(model, model.logits_layer, classes, kind="neuron")
    result = render(model, objectives, recipe, key=cfg.seed, steps=cfg.am_steps,
                    progress=ctx.progress, desc=f"AM {model.logits_layer}")  # fmt: skip
    images = np.clip(result.images[:, 0], 0.0, 1.0)
    labels = [model.class_names[c] for c in classes]
    save_png(image_grid(images, ncols=len(classes), labels=labels, scale=2), out / "classes.png")
    data["classes"] = {
        "layer": model.logits_layer,
        "classes": labels,
        "final_activation": [round(float(v), 4) for v in result.final_activation[:, 0]],
    }
    caption = f"class visualizations at {model.logits_layer} ({cfg.am_presets[0]})"
    return ("classes.png", caption)


def _multifaceted(ctx: Context, out: Path, data: dict, notes: list) -> list:
    """MFV (Nguyen et al. 2016) of the first classes that have images in the source:
    the facets' mean images (top row) and their visualizations (bottom row)."""
    from cnnvis_jax.am.mfv import facets, render_facets
    from cnnvis_jax.features import iterate_batches

    model, cfg = ctx.model, ctx.config
    embed = [i.name for i in model.layers if not i.spatial and i.name != model.logits_layer]
    layer = embed[-1] if embed else ctx.layers[-1]
    limit = min(cfg.mfv_images, len(ctx.source))
    targets = np.full(limit, -1)
    for idx, valid, batch in iterate_batches(ctx.source, 256, np.arange(limit)):
        targets[idx[valid]] = np.asarray(batch.get("target", np.full(len(idx), -1)))[valid]
    k = cfg.mfv_facets
    figures, done = [], {}
    for c, name in enumerate(model.class_names):
        count = int(np.sum(targets == c))
        if len(done) == cfg.mfv_classes or count < 2 * k:
            continue  # enough classes, or too few images of this one to find k facets
        found = facets(model, ctx.source, c, k=k, layer=layer, limit=limit,
                       per_facet=min(15, count // k), seed=cfg.seed)  # fmt: skip
        result = render_facets(model, found, key=cfg.seed, steps=cfg.am_steps,
                               progress=ctx.progress)  # fmt: skip
        tiles = np.concatenate([found.mean_images, np.clip(result.images[:, 0], 0.0, 1.0)])
        labels = [f"facet {f} ({int(n)} images)" for f, n in enumerate(found.sizes)]
        labels += [f"facet {f} MFV" for f in range(k)]
        save_png(image_grid(tiles, ncols=k, labels=labels, scale=2), out / f"mfv_{c}.png")
        figures.append((f"mfv_{c}.png", f"MFV of class {name}: facet means (top), their "
                        "visualizations (bottom)"))  # fmt: skip
        done[name] = {"sizes": [int(n) for n in found.sizes],
                      "final_activation": [round(float(v), 4) for v in result.final_activation[:, 0]]}  # fmt: skip
    data["mfv"] = {"layer": layer, "classes": done}
    if len(done) < cfg.mfv_classes:
        notes.append(f"MFV drawn for {len(done)} classes: the others have fewer than "
                     f"{2 * cfg.mfv_facets} images among the first {limit}.")  # fmt: skip
    return figures


# --- 3. DeconvNet ----------------------------------------------------------------------------


def deconv(ctx: Context, out: Path) -> dict:
    from cnnvis_jax.deconv import deconv_layer

    model, cfg = ctx.model, ctx.config
    chosen = _chosen_units(ctx)
    indices = _indices(ctx.source, cfg.deconv_images)
    k = min(cfg.deconv_top, len(indices))
    caption = ("What in each top image drives the unit: projections back to pixels beside the "
               "receptive-field patches. Guided backpropagation sharpens what DeconvNet shows.")  # fmt: skip
    figures, data = [], {"units": {}, "top_values": {}}
    notes = [f"top images searched among {len(indices)} images."]
    for layer, (units, _) in chosen.items():
        for rule in ("deconvnet", "guided"):
            try:
                result = deconv_layer(model, ctx.source, layer, units.tolist(), k=k, rule=rule,
                                      batch_size=32, indices=indices, progress=ctx.progress)  # fmt: skip
            except InputError as e:  # e.g. a network without ReLUs has no DeconvNet
                return _record("DeconvNet", caption, notes=[f"DeconvNet is skipped: {e}"])
            save_png(result.figure, out / f"{rule}_{layer}.png")
            name = "DeconvNet" if rule == "deconvnet" else "guided backpropagation"
            figures.append((f"{rule}_{layer}.png", f"{layer}: {name} projections of each "
                            f"unit's top-{k} images, and the image patches"))  # fmt: skip
        data["units"][layer] = units.tolist()
        data["top_values"][layer] = np.round(np.asarray(result.topk.values), 4).tolist()
    return _record("DeconvNet", caption, figures, notes=notes, data=data)


# --- 4. network inversion --------------------------------------------------------------------


def inversion(ctx: Context, out: Path) -> dict:
    model, cfg = ctx.model, ctx.config
    layers = tuple(info.name for info in model.layers if info.name in ctx.layers) + tuple(
        info.name for info in model.layers if not info.spatial
    )
    image = _images01(ctx.source, [0], model.input.size)
    figures, rows, notes = [], [], []
    data: dict[str, Any] = {"layers": list(layers), "feature_error": {}, "pixel_error": {}}
    for preset in cfg.inversion_presets:
        tiles, labels = [image[0]], ["original"]
        data["feature_error"][preset], data["pixel_error"][preset] = {}, {}
        results = _invert_each(ctx, image, layers, preset, notes)
        for layer in layers:
            if layer not in results:
                continue
            best, error = results[layer].best()
            shown = np.clip(best[0], 0.0, 1.0)
            pixel = _pixel_error(best[0], image[0])
            data["feature_error"][preset][layer] = round(float(error[0]), 4)
            data["pixel_error"][preset][layer] = round(pixel, 4)
            tiles.append(shown)
            labels.append(f"from {layer}")
            rows.append([preset, layer, f"{error[0]:.3f}", f"{pixel:.3f}"])
        grid = image_grid(np.stack(tiles), ncols=len(tiles), labels=labels, scale=2)
        save_png(grid, out / f"inversion_{preset}.png")
        figures.append((f"inversion_{preset}.png", f"{preset}: one image reconstructed from "
                        "each layer"))  # fmt: skip
    table = _table(
        "reconstruction errors (feature: relative, in the layer's space; pixel: MSE over "
        "the image's variance)",
        ["preset", "layer", "feature error", "pixel error"],
        rows,
    )
    perturbed = _perturbation_study(ctx, image, out, data)
    figures.append(perturbed[0])
    return _record(
        "Network inversion",
        "What a layer keeps of an image: deeper layers keep the layout of parts but lose "
        "colour and exact position, so reconstructions blur with depth.",
        figures,
        [table, perturbed[1]],
        notes,
        data,
    )


def _invert_each(ctx: Context, image: np.ndarray, layers, preset: str, notes: list) -> dict:
    """{layer: InversionResult} of ``image`` from each of ``layers`` with ``preset``: one
    call (layers sharing a schedule run as one program); a layer that cannot be
    inverted (e.g. all-zero features) gets a note instead."""
    from cnnvis_jax.inversion import invert_images

    cfg, model = ctx.config, ctx.model

    def run(names):
        found = invert_images(model, image, list(names), preset=preset,
                              key=jax.random.key(cfg.seed), steps=cfg.inversion_steps,
                              progress=ctx.progress)  # fmt: skip
        return {layer: found[model.resolve(layer)] for layer in names}

    try:
        return run(layers)
    except InputError:  # find which layer, and keep the others
        results = {}
        for layer in layers:
            try:
                results.update(run([layer]))
            except InputError as e:
                notes.append(f"{preset}, {layer}: not inverted ({e})")
        return results


def _pixel_error(reconstruction: np.ndarray, image: np.ndarray) -> float:
    """MSE of the clipped reconstruction over the image's variance."""
    variance = np.mean((image - image.mean()) ** 2)
    shown = np.clip(reconstruction, 0.0, 1.0)
    return float(np.mean((shown - image) ** 2) / max(variance, 1e-12))


def _perturbation_study(ctx: Context, image: np.ndarray, out: Path, data: dict):
    """Mahendran & Vedaldi's perturbation study on the last surveyed layer: invert
    binarized features, features with half the units dropped at random, and with the
    least active half dropped (activity measured on the sample images)."""
    from cnnvis_jax.inversion.perturb import PERTURBATIONS, make_perturbation, unit_importance
    from cnnvis_jax.inversion.regularized import features_of, invert_layers, resolve_plan

    model, cfg = ctx.model, ctx.config
    layer = model.resolve(ctx.layers[-1])
    preset = cfg.inversion_presets[0]
    key = jax.random.key(cfg.seed)
    sample = _images01(ctx.source, _indices(ctx.source, min(cfg.sample_images, 64)),
                       model.input.size)  # fmt: skip
    importance = {layer: unit_importance(features_of(model, sample, (layer,))[layer])}
    original = features_of(model, image, (layer,))[layer]
    plan = resolve_plan(model, layer, preset, cfg.inversion_steps)
    tiles, labels, rows, errors = [image[0]], ["original"], [], {}
    for name in ("none", *PERTURBATIONS):
        transform = make_perturbation(name, key=jax.random.fold_in(key, 1), importance=importance)
        target = original if transform is None else np.asarray(transform(layer, original))
        result = invert_layers(model, {layer: target}, preset=plan, key=key,
                               progress=ctx.progress)[layer]  # fmt: skip
        best, _ = result.best()
        errors[name] = round(_pixel_error(best[0], image[0]), 4)
        tiles.append(np.clip(best[0], 0.0, 1.0))
        labels.append(name)
        rows.append([name, f"{errors[name]:.3f}"])
    save_png(image_grid(np.stack(tiles), ncols=len(tiles), labels=labels, scale=2),
             out / "perturbation.png")  # fmt: skip
    data["perturbation"] = {"layer": layer, "preset": preset, "pixel_error": errors}
    figure = ("perturbation.png", f"{layer} features perturbed, then inverted ({preset})")
    table = _table(f"perturbation study at {layer} (pixel error of the reconstruction)",
                   ["perturbation", "pixel error"], rows)  # fmt: skip
    return figure, table


# --- 4b. learned decoders: UpconvNet and DGN-AM ------------------------------------------


def decoder_layers(ctx: Context) -> tuple[str, ...]:
    """The last surveyed layer, and the first fully connected layer when there is one."""
    dense = [info.name for info in ctx.model.layers if not info.spatial]
    layers = (ctx.model.resolve(ctx.layers[-1]),)
    return layers + (dense[0],) if dense and dense[0] != ctx.model.logits_layer else layers


def decoders(ctx: Context, out: Path) -> dict:
    from cnnvis_jax.am import objectives_for_units, preset, render
    from cnnvis_jax.am.params import generator_from_decoder
    from cnnvis_jax.data.concepts import ConceptSet
    from cnnvis_jax.inversion import DecoderConfig, reconstruct, train_decoder
    from cnnvis_jax.inversion.regularized import features_of

    model, cfg = ctx.model, ctx.config
    title = "Learned decoders: UpconvNet inversion and DGN-AM"
    caption = ("A decoder trained to invert a layer (Dosovitskiy & Brox) reconstructs in one "
               "pass; DGN-AM searches its code space, so class pictures look like images.")  # fmt: skip
    if isinstance(ctx.source, ConceptSet):
        train_source = None  # the concept set's own training split
    elif hasattr(ctx.source, "batch"):
        train_source = ctx.source
    else:
        return _record(title, caption, notes=["training a decoder needs a source with "
                       "batch(indices) (the concept set, arrays): skipped."])  # fmt: skip
    image = _images01(ctx.source, [0], model.input.size)
    sample = _images01(ctx.source, _indices(ctx.source, min(cfg.sample_images, 256)),
                       model.input.size)  # fmt: skip
    tiles, labels, rows, data = [image[0]], ["original"], [], {"pixel_error": {}}
    trained = {}
    layers = decoder_layers(ctx)
    for layer in layers:
        run = (ctx.checkpoints or out) / "decoders" / layer
        config = DecoderConfig(layer=layer, steps=cfg.decoder_steps, seed=cfg.seed)
        if train_source is not None:
            config = dataclasses.replace(config, batch_size=min(32, len(train_source)))
        trained[layer] = train_decoder(model, config, run, source=train_source,
                                       progress=ctx.progress)  # fmt: skip
        recon = reconstruct(model, trained[layer], image)
        error = round(_pixel_error(recon[0], image[0]), 4)
        data["pixel_error"][layer] = error
        tiles.append(np.clip(recon[0], 0.0, 1.0))
        labels.append(f"UpconvNet {layer}")
        rows.append([layer, f"{error:.3f}"])
    save_png(image_grid(np.stack(tiles), ncols=len(tiles), labels=labels, scale=2),
             out / "upconv.png")  # fmt: skip
    figures = [("upconv.png", "the image reconstructed by each layer's decoder")]
    notes = [f"decoders trained {cfg.decoder_steps} steps each."]
    code_layer = layers[-1]
    if model.logits_layer and model.class_names and not model.layer(code_layer).spatial:
        feats = features_of(model, sample, (code_layer,))[code_layer]
        generator = generator_from_decoder(trained[code_layer], feats)
        classes = list(range(min(cfg.classes, len(model.class_names))))
        objectives = objectives_for_units(model, model.logits_layer, classes, kind="neuron")
        result = render(model, objectives, preset("dgn", generator=generator), key=cfg.seed,
                        steps=cfg.am_steps, progress=ctx.progress, desc="DGN-AM")  # fmt: skip
        names = [model.class_names[c] for c in classes]
        pictures = np.clip(result.images[:, 0], 0.0, 1.0)
        save_png(image_grid(pictures, ncols=len(classes), labels=names, scale=2), out / "dgn.png")
        figures.append(("dgn.png", f"DGN-AM class visualizations through the {code_layer} "
                        "decoder"))  # fmt: skip
        data["dgn"] = {"code_layer": code_layer, "classes": names,
                       "final_activation": [round(float(v), 4) for v in result.final_activation[:, 0]]}  # fmt: skip
    else:
        notes.append("DGN-AM needs a classifier and a fully connected code layer: skipped.")
    table = _table("UpconvNet reconstruction error (pixel MSE over the image's variance)",
                   ["layer", "pixel error"], rows)  # fmt: skip
    return _record(title, caption, figures, [table], notes, data)


# --- 5. network dissection ------------------------------------------------------------------


def dissection(ctx: Context, out: Path) -> dict:
    from cnnvis_jax.dissection import dissect
    from cnnvis_jax.dissection.net2vec import net2vec, write_net2vec
    from cnnvis_jax.dissection.outputs import write_outputs

    model, cfg = ctx.model, ctx.config
    if ctx.labelled is None:
        return _record(
            "Network dissection",
            "Units matched to concepts by the IoU of their activation with concept masks.",
            notes=[
                "the data set has no concept masks: dissection is skipped (use "
                "--dataset concepts or broden:DIR)."
            ],  # fmt: skip
        )
    indices = _indices(ctx.labelled, cfg.dissection_images)
    checkpoint = None if ctx.checkpoints is None else ctx.checkpoints / "dissection"
    d = dissect(model, ctx.labelled, ctx.layers, indices=indices, checkpoint=checkpoint,
                progress=ctx.progress)  # fmt: skip
    write_outputs(out / "dissection", d, model=model, source=ctx.labelled)
    summary = d.summary()
    cats = list(d.layout.categories)
    rows = [[layer, summary[layer]["detectors"]] + [summary[layer]["unique"][c] for c in cats]
            for layer in d.layers]  # fmt: skip
    figures = []
    if len(d.layers) > 1:
        figures.append(("dissection/detectors.png", "unique detectors and detector units per "
                        "category, layer by layer"))  # fmt: skip
    for layer in d.layers:
        figures.append((f"dissection/{layer}/bargraph.svg", f"{layer}: detectors per label"))
    data: dict[str, Any] = {"images": len(indices), "categories": cats, "layers": summary}
    last = d.layers[list(d.layers)[-1]]
    data["detectors"] = {  # the last layer's detector units (the robustness stage reads them)
        "layer": last.layer,
        "units": [[int(u), d.layout.names[int(last.scores.label[u])],
                   cats[int(last.scores.category[u])], round(float(last.scores.score[u]), 4)]
                  for u in np.nonzero(last.scores.detector)[0]],
    }  # fmt: skip
    notes = [f"{len(indices)} images; per-unit tables and top images: "
             "dissection/<layer>/index.html."]  # fmt: skip
    layer = ctx.layers[-1]
    pair = _net2vec_sources(ctx)
    result = None
    if pair is None:
        notes.append("Net2Vec needs train and validation splits; skipped.")
    else:
        try:
            result = net2vec(model, pair[0], pair[1], layer, epochs=cfg.net2vec_epochs,
                             key=cfg.seed, progress=ctx.progress)  # fmt: skip
        except InputError as e:  # e.g. too few images for one batch
            notes.append(f"Net2Vec skipped: {e}")
    if result is not None:
        write_net2vec(out / "net2vec", result)
        data["net2vec"] = {
            k: round(v, 4) if isinstance(v, float) else v for k, v in result.summary().items()
        }
        figures.append(("net2vec/net2vec.png", f"Net2Vec on {layer}: a combination of units "
                        "against the best single unit, per concept"))  # fmt: skip
    table = _table(
        "detectors and unique detectors per category",
        ["layer", "detectors"] + [f"unique {c}" for c in cats],
        rows,
    )
    return _record(
        "Network dissection",
        "Which units detect which concepts (IoU >= 0.04): colours dominate low layers, "
        "objects and parts grow toward the last. Net2Vec asks whether several units do better.",
        figures,
        [table],
        notes,
        data,
    )


def _net2vec_sources(ctx: Context):
    from cnnvis_jax.data.concepts import ConceptSet

    cfg, labelled = ctx.config, ctx.labelled
    if isinstance(labelled, ConceptSet):
        kw = dict(seed=labelled.seed, image_size=labelled.image_size)
        return (
            ConceptSet(cfg.net2vec_train, split="train", **kw),
            ConceptSet(cfg.net2vec_val, split="val", **kw),
        )
    splits = getattr(labelled, "splits", {})
    if "train" in splits and "val" in splits:
        from cnnvis_jax.data.broden import BrodenSource

        return (
            BrodenSource(labelled.root, split="train"),
            BrodenSource(labelled.root, split="val"),
        )
    return None


# --- 6. training monitoring -----------------------------------------------------------------


def monitoring(ctx: Context, out: Path) -> dict:
    from cnnvis_jax.am import objectives_for_units, preset, render
    from cnnvis_jax.deconv.monitor import load_snapshots, monitor_run, snapshot_paths

    title = "Training monitoring"
    caption = ("The same units at every saved epoch: when their top-image projections and "
               "AM pictures stop changing, the layer has converged (low layers first).")  # fmt: skip
    try:
        paths = snapshot_paths(ctx.run_dir) if ctx.run_dir is not None else []
    except InputError:  # not a run folder, or fewer than two snapshots
        paths = []
    if len(paths) < 2:
        return _record(title, caption, notes=["no training run with two or more saved "
                       "epochs is known for these weights: monitoring is skipped."])  # fmt: skip
    model, cfg = ctx.model, ctx.config
    indices = _indices(ctx.source, cfg.deconv_images)
    final, mon = monitor_run(ctx.run_dir, ctx.source, ctx.layers, n_units=cfg.monitor_units,
                             seed=cfg.seed, batch_size=32, indices=indices,
                             progress=ctx.progress)  # fmt: skip
    mon.save(out, model=final)
    record = mon.summary()
    epochs = [int(e) for e in record["epochs"]]
    snapshot_model, params = load_snapshots(paths)
    recipe = preset(cfg.am_presets[0])
    tiles, labels = [], []
    for layer in (ctx.layers[0], ctx.layers[-1]):
        units = list(mon.layers[model.resolve(layer)].units)[:2]
        target = objective_layer(snapshot_model, layer)
        objectives = objectives_for_units(snapshot_model, target, units, kind=recipe.objective)
        for epoch, p in zip(epochs, params):
            at_epoch = dataclasses.replace(snapshot_model, params=p)
            result = render(at_epoch, objectives, recipe, key=cfg.seed, steps=cfg.am_steps)
            tiles.extend(np.clip(result.images[:, 0], 0.0, 1.0))
            labels.extend(f"{layer} u{u} epoch {epoch}" for u in units)
    order = np.arange(len(tiles)).reshape(2, len(epochs), -1).transpose(0, 2, 1).reshape(-1)
    grid = image_grid(np.stack(tiles)[order], ncols=len(epochs),
                      labels=[labels[i] for i in order], scale=2)  # fmt: skip
    save_png(grid, out / "am_epochs.png")
    before_end = str(epochs[-2])
    rows = [[r["layer"], r["projection_stable_from"], r["projection_similarity"][before_end]]
            for r in record["summary"]]  # fmt: skip
    return _record(
        title,
        caption,
        [
            ("monitor.png", "DeconvNet projections of the same units' top images, epoch by epoch"),
            (
                "am_epochs.png",
                f"AM ({cfg.am_presets[0]}) of two units of the first "
                "and last layer at each saved epoch",
            ),
        ],  # fmt: skip
        [
            _table(
                f"stability (projection similarity to the final epoch >= {mon.threshold})",
                ["layer", "stable from epoch", "similarity one epoch before the end"],
                rows,
            )
        ],  # fmt: skip
        [f"epochs {', '.join(map(str, epochs))}; full record: monitor.json."],
        {"epochs": epochs, "summary": record["summary"]},
    )


# --- 7. design diagnosis --------------------------------------------------------------------


def diagnosis(ctx: Context, out: Path) -> dict:
    from cnnvis_jax.deconv.diagnosis import diagnose

    indices = _indices(ctx.source, ctx.config.diagnosis_images)
    d = diagnose(ctx.model, ctx.source, indices=indices, progress=ctx.progress)
    d.save(out)
    record = d.summary()
    rows = [[layer, r["dead_count"], r["units"], r["dead_fraction"]]
            for layer, r in record["dead_units"].items()]  # fmt: skip
    data = json.loads(json.dumps(record))
    for r in data["dead_units"].values():  # keep the record small: per-unit lists are in the file
        r.pop("max_activation", None)
        r.pop("active_fraction", None)
    data.get("first_layer_filters", {}).pop("band_fraction", None)
    data.get("aliasing", {}).pop("per_unit", None)
    return _record(
        "Design diagnosis",
        "Dead units never fire on natural images; the first layer's filter spectra and the "
        "aliasing measure show whether its stride is too large for what its filters pass.",
        [("diagnosis.png", "dead units, first-layer filters and their spectra, aliasing")],
        [_table("dead units per layer", ["layer", "dead", "units", "fraction"], rows)],
        [f"measured on {len(indices)} images; full record: diagnosis.json."],
        data,
    )


def conditions(ctx: Context, out: Path) -> dict:
    """The training-conditions study (see :mod:`~cnnvis_jax.survey.stage_conditions`)."""
    from cnnvis_jax.survey.stage_conditions import conditions as run

    return run(ctx, out)


def robustness(ctx: Context, out: Path) -> dict:
    """Adversarial examples (see :mod:`~cnnvis_jax.survey.stage_robustness`)."""
    from cnnvis_jax.survey.stage_robustness import robustness as run

    return run(ctx, out)


def trust(ctx: Context, out: Path) -> dict:
    """Scores of the pictures and the rules' randomization test (see
    :mod:`~cnnvis_jax.survey.stage_trust`)."""
    from cnnvis_jax.survey.stage_trust import trust as run

    return run(ctx, out)


def beyond(ctx: Context, out: Path) -> dict:
    """Compositional labels, concept relevance and an activation atlas (see
    :mod:`~cnnvis_jax.survey.stage_beyond`)."""
    from cnnvis_jax.survey.stage_beyond import beyond as run

    return run(ctx, out)


STAGE_FUNCTIONS = {
    "network": network,
    "am": am,
    "deconv": deconv,
    "inversion": inversion,
    "decoders": decoders,
    "dissection": dissection,
    "monitoring": monitoring,
    "diagnosis": diagnosis,
    "conditions": conditions,
    "robustness": robustness,
    "trust": trust,
    "beyond": beyond,
}
