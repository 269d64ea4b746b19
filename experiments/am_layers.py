"""Activation maximization of 16 units of every conv layer and fc8 of the default model.

For each layer the first 16 units (fc8: its 12 classes) are rendered in one vmapped
call. Conv units maximize their channel mean *before* the ReLU (``convN_pre``), so
units that are silent at the start still get a gradient (``--objective prepost``
adds the channel mean after the ReLU); the reported activation is
the unit's channel mean *after* the ReLU (``convN``), the same quantity averaged over
the validation images. fc8 units maximize their logit.

Per layer it records, for every unit, the final activation, the mean and standard
deviation over the validation images, the ratio ``final / mean`` (where the mean is
positive) and the margin in standard deviations ``(final - mean) / std``; and it
writes a labelled grid per layer plus one figure with a row per layer.

Run: ``python -m experiments.am_layers [--preset lucid] [--steps 256] [--out DIR]``
(default weights: ``~/.cache/cnnvis_jax/conceptnet-default/weights.safetensors``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc8")


def _reduce(_, a):
    return a.mean(axis=(1, 2)) if a.ndim == 4 else a


def _centre(_, a):
    """The unit at the centre of the map (Yosinski et al.'s neuron), or the fc value."""
    return a[:, a.shape[1] // 2, a.shape[2] // 2] if a.ndim == 4 else a


def layer_record(model, layer: str, result, units, val_feats, reduce=_reduce) -> dict:
    """Ratios and margins of one layer's rendered units against validation statistics
    (``reduce``: channel mean or centre neuron, the same for both)."""
    images = jnp.asarray(result.images[:, 0])
    acts = np.asarray(reduce(None, model(images, [layer])[layer]))
    final = acts[np.arange(len(units)), np.asarray(units)]
    mean = val_feats[:, units].mean(0)
    std = val_feats[:, units].std(0)
    ratio = np.where(mean > 1e-6, final / np.maximum(mean, 1e-6), np.nan)
    margin = (final - mean) / np.maximum(std, 1e-6)
    return {
        "layer": layer,
        "units": [int(u) for u in units],
        "final": final.tolist(),
        "val_mean": mean.tolist(),
        "val_std": std.tolist(),
        "ratio": [None if np.isnan(r) else float(r) for r in ratio],
        "margin_std": margin.tolist(),
        "dead_on_validation": int((mean <= 1e-6).sum()),
        "ratio_min": float(np.nanmin(ratio)) if np.isfinite(ratio).any() else None,
        "ratio_median": float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else None,
        "margin_min": float(margin.min()),
        "margin_median": float(np.median(margin)),
    }


def main(argv=None) -> dict:
    from cnnvis_jax import am
    from cnnvis_jax.data import ConceptSet
    from cnnvis_jax.default import default_run_dir
    from cnnvis_jax.features import extract_features
    from cnnvis_jax.report.grid import image_grid, save_png
    from cnnvis_jax.train import load_trained

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(default_run_dir() / "weights.safetensors"))
    p.add_argument("--preset", default="lucid")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--units", type=int, default=16)
    p.add_argument("--val", type=int, default=1024, help="validation images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--objective",
        choices=("pre", "prepost", "neuron"),
        default="pre",
        help="conv units: channel mean before the ReLU, or before plus after it; or the "
        "neuron at the centre of the map before plus after the ReLU (statistics at the centre)",
    )
    p.add_argument("--out", default="experiments/results/am_layers")
    args = p.parse_args(argv)

    model = load_trained(args.weights)
    out = Path(args.out)
    val = ConceptSet(args.val, split="val")
    reduce = _centre if args.objective == "neuron" else _reduce
    feats = extract_features(model, val, LAYERS, batch_size=128, progress=False, reduce=reduce)
    records, rows = [], []
    for layer in LAYERS:
        start = time.perf_counter()
        info = model.layer(layer)
        units = list(range(min(args.units, info.channels)))
        target = f"{layer}_pre" if info.spatial else layer
        kind = "neuron" if args.objective == "neuron" else "channel"
        objectives = am.objectives_for_units(model, target, units, kind)
        if args.objective in ("prepost", "neuron") and info.spatial:
            post = am.objectives_for_units(model, layer, units, kind)
            objectives = [a + b for a, b in zip(objectives, post)]
        result = am.render(model, objectives, args.preset, key=args.seed, steps=args.steps,
                           progress=True, desc=layer)  # fmt: skip
        record = layer_record(model, layer, result, units, feats[layer], reduce)
        record["seconds"] = time.perf_counter() - start
        records.append(record)
        names = model.class_names if layer == model.logits_layer else None
        labels = [
            f"{u}{' ' + names[u] if names else ''} x{r:.1f}" if r is not None else f"{u} z{m:.0f}"
            for u, r, m in zip(units, record["ratio"], record["margin_std"])
        ]
        save_png(image_grid(result.images[:, 0], labels=labels, scale=2, ncols=8),
                 out / f"{layer}.png")  # fmt: skip
        rows.append(result.images[:, 0])
        print(
            f"{layer}: ratio min {record['ratio_min']} median {record['ratio_median']}; "
            f"margin min {record['margin_min']:.1f} std; {record['seconds']:.0f} s",
            flush=True,
        )
    width = max(len(r) for r in rows)
    padded = [np.concatenate([r, np.ones((width - len(r), *r.shape[1:]), r.dtype)]) for r in rows]
    save_png(image_grid(np.concatenate(padded), ncols=width, scale=2), out / "all_layers.png")
    summary = {
        "model": args.weights,
        "preset": args.preset,
        "steps": args.steps,
        "objective": f"{args.objective}: channel mean before the ReLU (prepost: plus after it; "
        "neuron: the centre neuron before plus after it) for conv layers, logit for fc8; the "
        "reported activation is after the ReLU, compared with the same quantity on validation",
        "validation_images": args.val,
        "backend": jax.default_backend(),
        "layers": records,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
