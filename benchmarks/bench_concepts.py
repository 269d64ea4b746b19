"""Concept-set generation speed, images/s on one core at 64x64 (target >= 2,000/s).

Run: ``python -m benchmarks.bench_concepts``. Pins the process to one core when
the platform allows, so the figure is per core.
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks.common import best_time, save


def main(batch: int = 512, image_size: int = 64) -> dict:
    from cnnvis_jax.data.concepts import ConceptSet

    source = ConceptSet(100_000, split="train", image_size=image_size)
    offsets = iter(range(0, 100_000, batch))

    def run():
        start = next(offsets)
        source.batch(np.arange(start, start + batch))

    pinned = hasattr(os, "sched_setaffinity")
    if pinned:
        cores = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(cores)})
    try:
        seconds = best_time(run, repeats=5)
    finally:
        if pinned:
            os.sched_setaffinity(0, cores)
    record = {
        "benchmark": "concept generation",
        "image_size": image_size,
        "batch": batch,
        "cores": 1,
        "images_per_second": batch / seconds,
        "target_images_per_second": 2000,
    }
    save("concepts", record)
    return record


if __name__ == "__main__":
    main()
