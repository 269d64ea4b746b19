"""Sanity checks (Adebayo et al. 2018) of the backward rules and of activation
maximization on the default ConceptNet.

1. Cascading model-parameter randomization: fc8, fc7, ... conv1 re-drawn (He normal,
   biases 0) from the top down; after each step the maps of ``gradient``,
   ``deconvnet`` and ``guided`` on validation images of the concept set, and
   activation-maximization images of the predicted classes, are compared with the
   trained model's (Spearman rank correlation with and without absolute values, SSIM).
2. Data randomization: a ConceptNet trained on shuffled labels with a short recipe
   (``TrainConfig(shuffle_labels=True)``) against the default model, and against a
   control trained on the true labels with the same short recipe (so that the recipe
   alone does not explain a difference).

The finding to compare with (Adebayo et al. 2018, Fig. 2 and 5): plain gradients
change as soon as the top layers are randomized, guided backpropagation (and
DeconvNet-like rules) barely change until the low layers are reached, and maps of a
model trained on random labels differ from the trained model's for gradients but
less for guided backpropagation.

Run: ``python -m experiments.sanity_default [--images 16] [--am-steps 128] [--out DIR]``;
writes ``cascading/``, ``data_*/`` (``results.json``, ``sanity.png``, ``maps.png``
each) and ``findings.json`` into ``--out``; the two training runs go to ``--runs``
(default ``<cache>/sanity_runs``; a rerun reuses or resumes them).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from cnnvis_jax.evaluate import sanity
from cnnvis_jax.report.files import write_json


def _table(result: sanity.SanityResult) -> str:
    """One row per method and metric, one column per step."""
    curves = result.curves()
    width = max(9, *(len(s) + 1 for s in result.steps))
    head = f"{'method':<10}{'metric':<13}" + "".join(f"{s:>{width}}" for s in result.steps)
    lines = [head]
    for m in result.methods:
        for metric in sanity.METRICS:
            cells = "".join(f"{v:>{width}.3f}" for v in curves[m][metric])
            lines.append(f"{m:<10}{metric:<13}{cells}")
    return "\n".join(lines)


def _short_run(shuffle: bool, args) -> tuple:
    from cnnvis_jax.train import TrainConfig, load_trained, train

    config = TrainConfig(
        epochs=args.short_epochs,
        train_size=args.short_train_size,
        val_size=512,
        batch_size=32,
        fresh_data=False,  # one fixed set: labels can only be memorized
        dropout=False,
        weight_decay=0.0,
        conv1_weight_decay=0.0,
        snapshot_epochs=(),
        shuffle_labels=shuffle,
    )
    run = Path(args.runs) / ("shuffled_labels" if shuffle else "true_labels")
    start = time.perf_counter()
    metrics = train(config, run, progress=True, report=False)
    seconds = time.perf_counter() - start
    last = metrics["history"][-1]
    record = {
        "config": config.to_json(),
        "seconds_this_call": seconds,
        "seconds_training": metrics["seconds"],
        "train_accuracy": last["train_accuracy"],
        "val_accuracy": last["val_accuracy"],
    }
    return load_trained(run / "weights.safetensors"), record


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16, help="validation images")
    p.add_argument("--am-steps", type=int, default=128, help="steps of the lucid recipe")
    p.add_argument("--key", type=int, default=0, help="seed of the re-drawn weights")
    p.add_argument("--short-epochs", type=int, default=40)
    p.add_argument("--short-train-size", type=int, default=512)
    p.add_argument("--no-data", action="store_true", help="skip the data randomization")
    p.add_argument("--out", default="experiments/results/sanity_default")
    p.add_argument("--runs", default=None, help="training runs (default: <cache>/sanity_runs)")
    args = p.parse_args(argv)
    if args.runs is None:
        from cnnvis_jax.default import cache_dir

        args.runs = str(cache_dir() / "sanity_runs")

    import cnnvis_jax
    from cnnvis_jax.data import ConceptSet

    out = Path(args.out)
    model = cnnvis_jax.default_model()
    images = ConceptSet(args.images, split="val").batch(np.arange(args.images))["image"]
    images = images.astype(np.float32) / 255.0
    methods = (*sanity.RULE_METHODS, "am")
    findings: dict = {"images": args.images, "am_steps": args.am_steps}

    start = time.perf_counter()
    cascade = sanity.cascading_randomization(
        model, images, methods=methods, key=args.key, am_steps=args.am_steps, progress=True
    )
    findings["cascading_seconds"] = time.perf_counter() - start
    cascade.save(out / "cascading")
    findings["cascading"] = cascade.summary()
    print(f"cascading randomization ({findings['cascading_seconds']:.0f} s), "
          f"{args.images} images, AM of classes {cascade.am_classes.tolist()}:")  # fmt: skip
    print(_table(cascade))

    if not args.no_data:
        shuffled, findings["shuffled_run"] = _short_run(True, args)
        control, findings["control_run"] = _short_run(False, args)
        for name, key in (("shuffled", "shuffled_run"), ("control", "control_run")):
            r = findings[key]
            print(f"{name} run: {r['seconds_training']:.0f} s training, train accuracy "
                  f"{r['train_accuracy']:.3f}, validation accuracy {r['val_accuracy']:.3f}")  # fmt: skip
        pairs = {
            "data_default_vs_shuffled": (model, shuffled, "shuffled labels"),
            "data_control_vs_shuffled": (control, shuffled, "shuffled labels"),
            "data_default_vs_control": (model, control, "short recipe"),
        }
        for name, (trained, other, label) in pairs.items():
            result = sanity.data_randomization(
                trained, other, images, methods=methods, am_steps=args.am_steps, label=label
            )
            result.save(out / name)
            findings[name] = result.summary()
            print(f"{name}:")
            print(_table(result))

    write_json(out / "findings.json", findings)
    return findings


if __name__ == "__main__":
    main()
