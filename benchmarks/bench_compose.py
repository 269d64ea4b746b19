"""Compositional explanations (Mu & Andreas 2020) of the default model: the search's
time against the dissection's, and what formulas add over single concepts.

1. Speed: on ``--images`` images of the concept set as ``cnnvis dissect --dataset
   concepts --count N`` opens it, the dissection of conv5 (``dissect``, both passes,
   no pictures) against the compositional search of all its units on that dissection
   (``compose(..., dissection=d)``: one pass over the labels with the kept
   activations, then the beam search), and the same search when the dissection kept
   no activations (``feature_memory=0``: the search runs the forward again). Best of
   interleaved rounds in one process; the target is compose / dissect <= 2.
2. Gains: conv4 and conv5 (length ``--length``, beam ``--beam``): units whose best
   formula beats their best single concept by >= 0.02 set IoU, and the 3 largest gains
   of each layer (formula, IoU, single concept, its IoU).

Run: ``python -m benchmarks.bench_compose [--images 2000] [--length 3] [--beam 5]
[--rounds 3]`` (needs the trained default model). Results go to
``benchmarks/results/compose.json``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.bench_deconv import interleaved_best
from benchmarks.common import save

LAYER = "conv5"
GAIN_LAYERS = ("conv4", "conv5")
EXAMPLES = 3


def concept_source(images: int):
    """The concept set and image indices as ``cnnvis dissect --count`` uses them."""
    from cnnvis_jax.cli.dissection import open_labelled

    source = open_labelled("concepts", None, images)
    indices = np.arange(images) if images < len(source) else None
    return source, indices


def speed(model, source, indices, length: int, beam: int, rounds: int) -> dict:
    from cnnvis_jax.dissection import compose, dissect
    from cnnvis_jax.dissection.compose import concept_tables, search

    box = {}

    def dissection():
        box["d"] = dissect(model, source, LAYER, indices=indices, progress=False)

    def composition():
        box["c"] = compose(model, source, LAYER, length=length, beam=beam,
                           dissection=box["d"], progress=False)  # fmt: skip

    def composition_with_forward():
        if "bare" not in box:  # a dissection that kept no activations (not timed)
            box["bare"] = dissect(model, source, LAYER, indices=indices, feature_memory=0,
                                  progress=False)  # fmt: skip
        compose(model, source, LAYER, length=length, beam=beam, dissection=box["bare"],
                progress=False)  # fmt: skip

    fns = {
        "dissect": dissection,
        "compose": composition,
        "compose_with_forward": composition_with_forward,
    }
    best = interleaved_best(fns, rounds=rounds)
    start = time.perf_counter()  # the two phases of compose, once
    tables = concept_tables(model, source, box["d"], (LAYER,), progress=False)
    phases = {"pass_over_data": time.perf_counter() - start}
    start = time.perf_counter()
    search(tables, LAYER, box["d"].layout.names, length=length, beam=beam)
    phases["beam_search"] = time.perf_counter() - start
    return {
        "layer": LAYER,
        "units": int(model.layer(LAYER).channels),
        "images": box["d"].images,
        "length": length,
        "beam": beam,
        "signatures": int(len(tables.pixels)),
        "seconds": best,
        "compose_phases_s": phases,
        "ratio_compose_vs_dissect": best["compose"] / best["dissect"],
        "ratio_compose_with_forward_vs_dissect": best["compose_with_forward"] / best["dissect"],
        "target_ratio": 2.0,
    }


def gains(model, source, indices, length: int, beam: int) -> dict:
    from cnnvis_jax.dissection import compose_layers, dissect
    from cnnvis_jax.dissection.compose import GAIN

    d = dissect(model, source, GAIN_LAYERS, indices=indices, progress=False)
    results = compose_layers(model, source, GAIN_LAYERS, length=length, beam=beam,
                             dissection=d, progress=False)  # fmt: skip
    out = {}
    for name, r in results.items():
        top = np.argsort(-r.gain, kind="stable")[:EXAMPLES]
        out[name] = {
            **r.summary(),
            "examples": [
                {
                    "unit": int(u),
                    "formula": r.text(u),
                    "iou": float(r.iou[u]),
                    "atomic_label": r.names[r.atomic_label[u]],
                    "atomic_iou": float(r.atomic_iou[u]),
                    "gain": float(r.gain[u]),
                    "dissection_label": d.layout.names[d.layers[name].scores.label[u]],
                    "dissection_iou": float(d.layers[name].scores.score[u]),
                }
                for u in top
            ],
        }
    out["min_gain"] = GAIN
    return out


def main(argv=None) -> dict:
    from cnnvis_jax import default_model
    from cnnvis_jax.dissection.compose import DEFAULT_BEAM, DEFAULT_LENGTH

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--length", type=int, default=DEFAULT_LENGTH)
    p.add_argument("--beam", type=int, default=DEFAULT_BEAM)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    model = default_model(progress=False)
    source, indices = concept_source(args.images)
    record = {
        "benchmark": "compositional explanations vs dissection, default model, concept set",
        "speed": speed(model, source, indices, args.length, args.beam, args.rounds),
        "gains": gains(model, source, indices, args.length, args.beam),
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
    }
    save("compose", record)
    return record


if __name__ == "__main__":
    main()
