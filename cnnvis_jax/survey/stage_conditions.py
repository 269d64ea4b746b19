"""The survey's training-conditions study and the ZFNet comparison (one stage).

The default architecture (ConceptNet) is trained under each condition of
:data:`VARIANTS`, every other setting equal to the surveyed network's recipe (its run's
``config.json``, else the default recipe): the baseline, without dropout, with batch
normalization, two more random initializations, the scene labels instead of the object
classes (the analogue of Places versus ImageNet), and the two first layers of Zeiler &
Fergus's comparison (AlexNet's 11x11 stride 4, ZFNet's 7x7 stride 2). Each trained
network is dissected on the concept set (unique detectors per category per layer, as in
Bau et al.'s Table/Figure on training conditions); the baseline and the first-layer
variants are also diagnosed (dead units, aliasing).

Training runs in ``<checkpoints>/conditions/<variant>-<hash>`` and resumes after an
interruption. With ``stop_epoch`` (the quick survey) each variant keeps the schedule of
the full recipe but stops after that epoch, so the study's networks are less trained
than the surveyed one; the report says which.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from cnnvis_jax.survey.config import VARIANTS
from cnnvis_jax.survey.stages import Context, _record, _table, survey_layers

FIRST_LAYER = ("conv1_11x11_stride4", "conv1_7x7_stride2")


def base_recipe(run_dir: Path | None):
    """The surveyed network's training recipe (its run's config), else the default."""
    from cnnvis_jax.train import TrainConfig

    path = None if run_dir is None else run_dir / "config.json"
    if path is not None and path.exists():
        return TrainConfig.from_json(json.loads(path.read_text()))
    return TrainConfig()


def variant_config(base, name: str, stop_epoch: int | None):
    """The recipe of condition ``name``: ``base`` with the condition's changes."""
    changes = dict(VARIANTS[name])
    if "seed" in changes:
        changes["seed"] = base.seed + changes["seed"]
    return dataclasses.replace(base, stop_epoch=stop_epoch, **changes)


def _reused_baseline(ctx: Context, config) -> tuple[Path, float] | None:
    """(weights, validation accuracy) of the surveyed run when it is the baseline
    (same recipe; with ``stop_epoch``, its snapshot of that epoch)."""
    from cnnvis_jax.train import TrainConfig

    run = ctx.run_dir
    if run is None or not (run / "metrics.json").exists():
        return None
    trained = TrainConfig.from_json(json.loads((run / "config.json").read_text()))
    full = dataclasses.replace(config, stop_epoch=None)
    if trained.fingerprint() != full.fingerprint():
        return None
    metrics = json.loads((run / "metrics.json").read_text())
    if config.stop_epoch is None:
        return run / "weights.safetensors", float(metrics["val_accuracy"])
    snapshot = run / "snapshots" / f"epoch_{config.stop_epoch:03d}.safetensors"
    history = {h["epoch"]: h for h in metrics["history"]}
    if not snapshot.exists() or config.stop_epoch not in history:
        return None
    return snapshot, float(history[config.stop_epoch]["val_accuracy"])


def _trained(ctx: Context, name: str, config) -> tuple[Any, float]:
    """The trained network of one condition and its validation accuracy."""
    from cnnvis_jax.train import load_trained, train

    if name == "baseline" and (reused := _reused_baseline(ctx, config)) is not None:
        return load_trained(reused[0]), reused[1]
    digest = hashlib.sha256(config.fingerprint().encode()).hexdigest()[:10]
    run = ctx.checkpoints / "conditions" / f"{name}-{digest}"
    if not (run / "metrics.json").exists():
        train(config, run, progress=ctx.progress, report=False)
    metrics = json.loads((run / "metrics.json").read_text())
    return load_trained(run / "weights.safetensors"), float(metrics["val_accuracy"])


def _dissected(ctx: Context, model, concepts) -> dict[str, dict]:
    """{layer: {"detectors": n, "unique": {category: n}}} on the concept images."""
    from cnnvis_jax.dissection import dissect

    layers = survey_layers(model, ctx.config.layers)
    d = dissect(model, concepts, layers, progress=False)
    return {
        layer: {"detectors": s["detectors"], "unique": s["unique"]}
        for layer, s in d.summary().items()
    }


def _first_layer(ctx: Context, model, concepts) -> dict[str, Any]:
    from cnnvis_jax.deconv.diagnosis import diagnose, diagnosis_record

    record = diagnosis_record(diagnose(model, concepts, progress=False))
    first = model.layers[0].name
    return {
        "aliasing_fraction": record["aliasing"]["fraction"],
        "above_stride_nyquist": record["first_layer_filters"]["mean_above_stride_nyquist"],
        "dead_units": sum(d["dead_count"] for d in record["dead_units"].values()),
        "dead_first_layer": record["dead_units"].get(first, {}).get("dead_count"),
    }


def conditions(ctx: Context, out: Path) -> dict:
    from cnnvis_jax.data.concepts import ConceptSet

    title = "Training conditions"
    caption = ("The same architecture trained under other conditions, dissected alike: "
               "compare unique detectors per category (Bau et al.) and the first layers "
               "of AlexNet and ZFNet (aliasing).")  # fmt: skip
    cfg = ctx.config
    if ctx.model.name != "conceptnet":
        return _record(title, caption, notes=[
            f"the study trains the default architecture (ConceptNet) under each condition; "
            f"{ctx.model.name!r} is not trained here, so the stage is skipped."])  # fmt: skip
    base = base_recipe(ctx.run_dir)
    stop = cfg.conditions_stop_epoch
    if stop is not None:
        stop = min(stop, base.epochs)
    concepts = ConceptSet(cfg.conditions_images, split="val", seed=base.data_seed,
                          image_size=base.image_size)  # fmt: skip
    variants, first_layer = {}, {}
    for name in cfg.conditions_variants:
        config = variant_config(base, name, stop)
        model, accuracy = _trained(ctx, name, config)
        layers = _dissected(ctx, model, concepts)
        last = list(layers)[-1]
        variants[name] = {
            "changes": VARIANTS[name],
            "val_accuracy": round(accuracy, 4),
            "layers": layers,
            "last_layer": last,
            "unique_last": layers[last]["unique"],
            "unique_total_last": int(sum(layers[last]["unique"].values())),
        }
        if name == "baseline" or name in FIRST_LAYER:
            first_layer[name] = {
                "conv1": f"{config.conv1_kernel}x{config.conv1_kernel} stride "
                f"{config.conv1_stride}",
                **_first_layer(ctx, model, concepts),
            }
    categories = [c for c in concepts.vocabulary.categories
                  if any(c in v["unique_last"] for v in variants.values())]  # fmt: skip
    _conditions_chart(out / "conditions.png", variants, categories)
    rows = [[name, _describe(v["changes"]), v["val_accuracy"], v["last_layer"],
             v["unique_total_last"]] + [v["unique_last"].get(c, 0) for c in categories]
            for name, v in variants.items()]  # fmt: skip
    tables = [_table("accuracy and unique detectors per category at the last surveyed layer",
                     ["condition", "changes", "val accuracy", "layer", "unique detectors"]
                     + categories, rows)]  # fmt: skip
    if first_layer:
        tables.append(_table(
            "first layer (ZFNet comparison): aliasing fraction of the first layer's output, "
            "filter energy above the stride's Nyquist frequency, dead units",
            ["condition", "first layer", "aliasing", "energy above Nyquist", "dead units"],
            [[n, r["conv1"], r["aliasing_fraction"], r["above_stride_nyquist"],
              r["dead_units"]] for n, r in first_layer.items()]))  # fmt: skip
    trained = (f"each condition trained with the recipe's {base.epochs}-epoch schedule "
               + ("to the end" if stop is None else f"but stopped after epoch {stop} (quick "
                  "mode: less trained than the surveyed network; --full trains to the end)"))  # fmt: skip
    notes = [trained + f"; dissected on {len(concepts)} concept images."]
    data = {"recipe": base.to_json(), "stop_epoch": stop, "variants": variants,
            "first_layer": first_layer, "categories": categories}  # fmt: skip
    figures = [("conditions.png", "unique detectors per category at the last surveyed layer, "
                "and in every layer, for each training condition")]  # fmt: skip
    return _record(title, caption, figures, tables, notes, data)


def _describe(changes: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items()) or "(recipe)"


def _conditions_chart(path: Path, variants: dict, categories: list[str]) -> None:
    """Stacked bars of unique detectors per category (last layer) per condition, and
    unique detectors per layer, one line per condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnvis_jax.dissection.outputs import CATEGORY_COLORS
    from cnnvis_jax.report.files import save_figure

    names = list(variants)
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(11, 3.8))
    bottom = np.zeros(len(names))
    for c in categories:
        counts = np.array([variants[n]["unique_last"].get(c, 0) for n in names], float)
        bars.bar(names, counts, bottom=bottom, label=c, color=CATEGORY_COLORS.get(c, "#7f7f7f"))
        bottom += counts
    bars.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    bars.set(ylabel="unique detectors", title="last surveyed layer")
    bars.legend(fontsize=7)
    for n in names:
        layers = variants[n]["layers"]
        lines.plot(range(len(layers)), [sum(v["unique"].values()) for v in layers.values()],
                   marker="o", label=n)  # fmt: skip
        lines.set_xticks(range(len(layers)), list(layers), fontsize=8)
    lines.set(ylabel="unique detectors", title="per layer")
    lines.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
