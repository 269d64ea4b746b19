"""Activation atlas of conv4 of the default model, end to end, with its time split.

The settings are the ``cnnvis atlas`` defaults: a 16 x 16 grid over 8000 activation
vectors sampled (seed 0) among the 1000 x 8 x 8 positions of the first 1000
validation images of the concept set, PCA to 50 dimensions, t-SNE (scikit-learn,
1000 iterations), cells with at least 5 points, every cell rendered in one vmapped
call with the ``lucid`` preset for 128 steps (Lucid's ``render_icons`` count; the
preset's 512 steps are for single units and would take four times as long), cosine
power 2. Phases: ``collect`` (data generation + forward passes), ``layout`` (PCA,
t-SNE, binning), ``render`` (compilation included) and ``figure`` (atlas.png,
layout.png, JSON). The target is 5 minutes on 2 CPU cores.

Run: ``python -m benchmarks.bench_atlas [--out DIR]`` (pictures go to ``DIR``, a
temporary folder by default); writes ``results/atlas.json``. Needs the trained
default model (trained first, a few minutes, when it is missing).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from benchmarks.common import save

LAYER = "conv4"
GRID = 16
IMAGES = 1000
POINTS = 8000
STEPS = 128
TARGET_S = 300.0


def main(out: str | None = None) -> dict:
    from cnnvis_jax import atlas
    from cnnvis_jax.data import open_dataset
    from cnnvis_jax.default import default_model

    load_before = os.getloadavg()
    model = default_model(progress=False)
    source = open_dataset("concepts", split="val", count=IMAGES)
    folder = out or tempfile.mkdtemp(prefix="atlas-bench-")
    start = time.perf_counter()
    result = atlas.activation_atlas(model, source, LAYER, grid=GRID, images=IMAGES,
                                    points=POINTS, steps=STEPS, recipe="lucid", seed=0)  # fmt: skip
    seconds = result.save(folder)
    total = time.perf_counter() - start
    summary = result.summary()
    record = {
        "benchmark": "activation atlas, conv4 of the default model, end to end",
        "settings": summary["settings"],
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "total_s": round(total, 2),
        "target_s": TARGET_S,
        "within_target": total <= TARGET_S,
        "cells_rendered": summary["cells_rendered"],
        "cells_empty": summary["cells_empty"],
        "points": summary["points"],
        "points_in_rendered_cells": summary["points_in_rendered_cells"],
        "pca_variance": round(summary["pca_variance"], 4),
        "tsne_kl_divergence": round(summary["tsne_kl_divergence"], 4),
        "cells_per_concept": summary["cells_per_concept"],
        "mean_concept_share": round(float(result.cells.share.mean()), 4),
        "pictures": folder,
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
    }
    save("atlas", record)
    return record


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for atlas.png, layout.png, cells.json")
    main(parser.parse_args().out)
