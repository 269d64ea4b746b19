"""Per-layer inversion study on the default model (survey Fig. "network inversion").

For every layer conv1..fc8 of the trained default ConceptNet, reconstruct the same
validation images with regularized inversion (``mahendran2015`` and
``mahendran2016``) and with UpconvNet decoders (one trained per layer), from the
unperturbed features and from binarized, dropout and drop-least features
(perturbations with the IJCV'16 preset and the decoders). Writes into ``--out``:

* ``figure_<perturbation>.png``: rows = methods (per image), columns = layers, the
  original image first — the survey's layout;
* ``metrics.csv`` / ``metrics.json``: mean normalized feature error
  ``‖Φ(x*) − Φ0‖²/‖Φ0‖²`` (Φ0 the features of the original image) and normalized
  image error ``‖x* − x0‖²/‖x0‖²`` per method, layer and perturbation;
* ``index.html``: the figures and the table;
* ``decoders/<model>-<weights hash>/<layer>/``: the trained decoders (reused by a
  rerun on the same weights, checked with ``check_decoder``).

Run: ``python -m experiments.inversion_study --out runs/inversion_study``
(``--quick`` for a short smoke run on few steps).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import jax
import numpy as np

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
PERTURBATIONS = ("none", "binarize", "dropout", "drop-least")


def load_model():
    from cnnvis_jax.default import default_run_dir
    from cnnvis_jax.train import load_trained

    weights = default_run_dir() / "weights.safetensors"
    if not weights.exists():
        raise SystemExit(f"{weights} is missing; train the default model first (cnnvis train).")
    return load_trained(weights)


def run(out: Path, *, images: int, decoder_steps: int | None, reg_steps: int | None, seed: int):
    from cnnvis_jax.data.concepts import ConceptSet
    from cnnvis_jax.features import to_model_input
    from cnnvis_jax.inversion import (
        DecoderConfig,
        check_decoder,
        decode,
        features_of,
        fingerprint,
        invert_layers,
        load_decoder,
        make_perturbation,
        normalized_error,
        normalized_image_error,
        train_decoder,
        unit_importance,
    )
    from cnnvis_jax.inversion.io import DECODER_FILE
    from cnnvis_jax.report import html
    from cnnvis_jax.report.grid import image_grid, save_png

    out.mkdir(parents=True, exist_ok=True)
    model = load_model()
    key = jax.random.key(seed)
    val = ConceptSet(images, split="val", image_size=model.input.size[0])
    x0 = np.asarray(to_model_input(model, val.batch(np.arange(images))["image"]))
    train = ConceptSet(256, split="train", image_size=model.input.size[0])
    x_train = np.asarray(to_model_input(model, train.batch(np.arange(256))["image"]))
    importance = {k: unit_importance(v) for k, v in features_of(model, x_train, LAYERS).items()}
    original = features_of(model, x0, LAYERS)
    timings: dict[str, float] = {}

    # --- decoders -------------------------------------------------------------------
    decoders = {}
    start = time.perf_counter()
    model_fp = fingerprint(model)  # decoders of other weights are never reused
    for layer in LAYERS:
        folder = out / "decoders" / f"{model.name}-{model_fp}" / layer
        if not (folder / DECODER_FILE).exists():
            config = DecoderConfig(layer=layer)
            if decoder_steps is not None:
                config = DecoderConfig(layer=layer, steps=decoder_steps)
            train_decoder(model, config, folder, progress=True)
        decoders[layer] = load_decoder(folder)
        check_decoder(decoders[layer], model, layer, model_fp)
    timings["decoders_s"] = time.perf_counter() - start

    recon: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for pert in PERTURBATIONS:
        transform = make_perturbation(
            None if pert == "none" else pert, key=jax.random.fold_in(key, 7), importance=importance
        )
        targets = {
            layer: original[layer]
            if transform is None
            else np.asarray(transform(layer, original[layer]))
            for layer in LAYERS
        }
        recon[("upconv", pert)] = {
            layer: decode(decoders[layer], targets[layer]) for layer in LAYERS
        }
        presets = ("mahendran2015", "mahendran2016") if pert == "none" else ("mahendran2016",)
        for preset in presets:
            start = time.perf_counter()
            results = invert_layers(
                model, targets, preset=preset, key=key, steps=reg_steps, progress=True
            )
            timings[f"{preset}_{pert}_s"] = time.perf_counter() - start
            recon[(preset, pert)] = {layer: results[layer].best()[0] for layer in LAYERS}
        print(f"done: {pert}", flush=True)

    # --- metrics ------------------------------------------------------------------------
    rows = []
    for (method, pert), per_layer in recon.items():
        for layer in LAYERS:
            shown = np.clip(per_layer[layer], 0.0, 1.0)
            feat = normalized_error(features_of(model, shown, (layer,))[layer], original[layer])
            img = normalized_image_error(shown, x0)
            rows.append(
                {
                    "method": method,
                    "perturbation": pert,
                    "layer": layer,
                    "normalized_feature_error": float(np.mean(feat[np.isfinite(feat)])),
                    "normalized_image_error": float(np.mean(img)),
                    "feature_error_per_image": [float(v) for v in feat],
                    "image_error_per_image": [float(v) for v in img],
                }
            )
    (out / "metrics.json").write_text(json.dumps({"rows": rows, "timings": timings}, indent=2))
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "perturbation", "layer", "feature_error", "image_error"])
        for r in rows:
            writer.writerow(
                [r["method"], r["perturbation"], r["layer"],
                 f"{r['normalized_feature_error']:.4f}", f"{r['normalized_image_error']:.4f}"]
            )  # fmt: skip

    # --- figures --------------------------------------------------------------------------
    shown_images = min(images, 3)
    body = []
    for pert in PERTURBATIONS:
        methods = [m for (m, p) in recon if p == pert]
        tiles, labels = [], []
        for i in range(shown_images):
            for m in methods:
                tiles.append(x0[i])
                labels.append(m.replace("mahendran", "M"))
                for layer in LAYERS:
                    tiles.append(np.clip(recon[(m, pert)][layer][i], 0, 1))
                    labels.append(layer)
        grid = image_grid(np.stack(tiles), ncols=len(LAYERS) + 1, labels=labels, scale=2)
        save_png(grid, out / f"figure_{pert}.png")
        body.append(
            html.figure(
                f"figure_{pert}.png",
                f"perturbation {pert}: rows = methods ({', '.join(methods)}) per image, "
                "columns = original, " + ", ".join(LAYERS),
            )
        )
    header = ["method", "perturbation", *LAYERS]
    table_rows = []
    for metric in ("normalized_feature_error", "normalized_image_error"):
        for method, pert in recon:
            vals = {
                r["layer"]: r[metric]
                for r in rows
                if r["method"] == method and r["perturbation"] == pert
            }
            table_rows.append(
                [
                    f"{method} [{metric.split('_')[1]}]",
                    pert,
                    *(f"{vals[name]:.3f}" for name in LAYERS),
                ]
            )
    body.append(html.table(header, table_rows))
    (out / "index.html").write_text(html.page("Network inversion study", "\n".join(body)))
    return rows, timings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/inversion_study")
    p.add_argument("--images", type=int, default=8, help="validation images")
    p.add_argument(
        "--decoder-steps", type=int, help="decoder training steps (default: library default)"
    )
    p.add_argument("--reg-steps", type=int, help="rescale regularized schedules (default: presets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick", action="store_true", help="3 images, 20 decoder steps, 20 inversion steps"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.decoder_steps, args.reg_steps = 3, 20, 20
    rows, timings = run(
        Path(args.out), images=args.images, decoder_steps=args.decoder_steps,
        reg_steps=args.reg_steps, seed=args.seed,
    )  # fmt: skip
    for r in rows:
        print(f"{r['method']:>14} {r['perturbation']:>10} {r['layer']:>6} "
              f"feat {r['normalized_feature_error']:.4f} img {r['normalized_image_error']:.4f}")  # fmt: skip
    print(json.dumps(timings, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
