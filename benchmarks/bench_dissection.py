"""Network Dissection of conv1..conv5 of the default ConceptNet: speed and memory.

1. Speed: end-to-end images/s of ``dissect`` (pass 1 thresholds + pass 2 fused tally,
   all five layers in one forward per batch; the sparse engine, the CPU default, and
   for comparison the dense engine) vs bare feature extraction
   (``extract_features`` of the same five layers) on the same in-memory concept images
   (generation stays out of the timings), batch 64. Best of interleaved rounds.
2. Memory: peak resident memory of a whole ``dissect`` run (concept set generated on
   the fly) at 2,000 and 20,000 images, each in its own subprocess (``ru_maxrss``).

Run: ``python -m benchmarks.bench_dissection [--images 1024] [--sizes 2000 20000]
[--speed-only | --memory-only]``. Results go to ``benchmarks/results/dissection.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import jax
import numpy as np

from benchmarks.common import save

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
BATCH = 64


def default_model():
    from cnnvis_jax.default import cache_dir
    from cnnvis_jax.train import load_trained

    return load_trained(cache_dir() / "conceptnet-default" / "weights.safetensors")


def speed(images: int, rounds: int, dense: bool = True) -> dict:
    from cnnvis_jax.data import ConceptSet
    from cnnvis_jax.dissection import (
        ArrayConceptSource,
        compute_tally,
        compute_thresholds,
        label_layout,
    )
    from cnnvis_jax.features import extract_features

    model = default_model()
    concepts = ConceptSet(images, split="val")
    b = concepts.batch(np.arange(images))
    source = ArrayConceptSource(b["image"], b["pixel"], b["scalar"], concepts.vocabulary)
    layout = label_layout(source)
    times = {"features": [], "forward": [], "thresholds": [], "tally": []}
    box = {}

    def features():
        extract_features(model, source, LAYERS, batch_size=BATCH, progress=False)

    def thresholds(engine="sparse"):
        box["thr"] = compute_thresholds(model, source, LAYERS, batch_size=BATCH, readout="lite",
                                        engine=engine, progress=False)  # fmt: skip

    def tally(engine="sparse"):
        compute_tally(model, source, layout, box["thr"], batch_size=BATCH, engine=engine,
                      progress=False)  # fmt: skip

    from cnnvis_jax.features import to_model_input

    forward = jax.jit(lambda model, x: model.apply(model.params, to_model_input(model, x), LAYERS))

    def forward_only():  # the floor of one pass: the forward alone, nothing to the host
        for start in range(0, images, BATCH):
            jax.block_until_ready(forward(model, b["image"][start : start + BATCH]))

    fns = {"features": features, "forward": forward_only, "thresholds": thresholds, "tally": tally}
    if dense:
        fns["thresholds_dense"] = lambda: thresholds("dense")
        fns["tally_dense"] = lambda: tally("dense")
        times.update(thresholds_dense=[], tally_dense=[])
    for fn in fns.values():  # compile
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    dissect_s = best["thresholds"] + best["tally"]
    return {
        "images": images,
        "batch": BATCH,
        "layers": list(LAYERS),
        "seconds": best,
        "images_per_s": {
            "features": images / best["features"],
            "forward_only": images / best["forward"],
            "thresholds_pass": images / best["thresholds"],
            "tally_pass": images / best["tally"],
            "dissect_end_to_end": images / dissect_s,
        },
        "ratio_dissect_vs_features": best["features"] / dissect_s,
        **(
            {
                "dense_engine_ratio_vs_features": best["features"]
                / (best["thresholds_dense"] + best["tally_dense"])
            }  # fmt: skip
            if dense
            else {}
        ),
        # two streaming passes each need the forward: the ratio cannot exceed this
        "ceiling_two_forwards_vs_features": best["features"] / (2 * best["forward"]),
        "target_ratio": 0.5,
    }


def child(count: int) -> None:
    from cnnvis_jax.data import ConceptSet
    from cnnvis_jax.dissection import dissect

    model = default_model()
    start = time.perf_counter()
    d = dissect(model, ConceptSet(count, split="val"), LAYERS, batch_size=BATCH, progress=False)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images": count, "peak_rss_mb": peak_mb, "seconds": seconds,
                      "detectors": {n: s["detectors"] for n, s in d.summary().items()}}))  # fmt: skip


def memory(sizes: list[int]) -> dict:
    runs = []
    for count in sizes:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_dissection", "--child", str(count)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    peaks = [r["peak_rss_mb"] for r in runs]
    return {"runs": runs, "peak_ratio_largest_vs_smallest": max(peaks) / min(peaks), "target": 1.10}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="*", default=[2000, 20000])
    p.add_argument("--speed-only", action="store_true")
    p.add_argument("--memory-only", action="store_true")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child)
        return
    record = {}
    if not args.memory_only:
        record["speed"] = speed(args.images, args.rounds)
        print(json.dumps(record["speed"], indent=2), flush=True)
    if not args.speed_only:
        record["memory"] = memory(args.sizes)
    name = "dissection" if not (args.speed_only or args.memory_only) else (
        "dissection_speed" if args.speed_only else "dissection_memory")  # fmt: skip
    save(name, record)


if __name__ == "__main__":
    main()
