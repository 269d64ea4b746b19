"""Input pipeline against the forward: which one bounds a dissection of ResNet-18 at 224?

On the generated Broden-format fixture of the peer benchmark (160 images at 224 px,
112 px masks of all six categories; made on first use), this times

* decoding: the images alone (pass 1 of a dissection) and images with their labels
  encoded for the tally (``load_labelled``), per image, through
  :func:`cnnvis_jax.features.prefetched` with 1, 2, 4, 8 and 16 threads and as many
  worker processes (``CNNVIS_DECODE_PROCESSES``; counts up to the larger of 4 and the
  number of CPUs; the 160 images are cycled so that every worker has at least four
  batches to decode, each worker process sixteen, and a process pool's start is part
  of its time);
* the forward: a torchvision-layout ResNet-18 (synthetic weights) to layer4 at batch 32,
  jitted, steady state;

and says which bounds the run on this machine: the slower of decoding at the default
thread count and the forward. Run: ``python -m benchmarks.bench_pipeline``.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import save

BATCH = 32


def _fixture(work: Path, images: int = 160) -> tuple[Path, Path]:
    from safetensors.numpy import save_file

    from cnnvis_jax.data.synthetic_broden import (
        synthetic_torchvision_weights,
        write_synthetic_broden,
    )

    name = "broden_resnet18" if images == 160 else f"broden_resnet18_{images}"
    broden, weights = work / name, work / "resnet18.safetensors"
    if not (broden / "index.csv").exists():
        write_synthetic_broden(broden, images=images, image_size=224, seed=0)
    if not weights.exists():
        save_file(synthetic_torchvision_weights("resnet18", 0), str(weights))
    return broden, weights


def _images(source, indices):
    from cnnvis_jax.features import load_batch

    return load_batch(source, indices)["image"]


def _labels(source, layout, images: bool, indices):
    from cnnvis_jax.dissection.labels import load_labelled

    return load_labelled(source, indices, layout, images=images)


def decode_rate(fn, n: int, workers: int, processes: bool, repeats: int = 3):
    """``(images/s, steady images/s)`` of ``fn(batch_indices)`` over ``n`` images in
    batches of :data:`BATCH` through :func:`prefetched` with ``workers`` threads or
    worker processes (best of ``repeats``), the batches cycled until each thread has
    at least four (each process sixteen). The first figure counts everything from the
    call on (a process pool's start included, as in a pass of a dissection); the
    steady one counts from the first batch back to the last."""
    from cnnvis_jax.features import prefetched

    batches = [np.arange(s, min(s + BATCH, n)) for s in range(0, n, BATCH)]
    per_worker = 16 if processes else 4  # processes: their start amortized
    batches = batches * -(-per_worker * workers // len(batches))
    total = sum(len(b) for b in batches)
    pool = {"processes": workers} if processes else {"threads": workers, "processes": 0}
    best, steady = float("inf"), float("inf")
    for _ in range(repeats):
        clock = time.perf_counter()
        first = None
        for _ in prefetched(fn, batches, **pool):
            first = first or time.perf_counter()
        end = time.perf_counter()
        best, steady = min(best, end - clock), min(steady, end - first)
    return total / best, (total - len(batches[0])) / steady


def _rates(source, layout, n: int, workers: int, processes: bool) -> dict:
    fns = {
        "images": functools.partial(_images, source),
        "labels": functools.partial(_labels, source, layout, False),
        "images_and_labels": functools.partial(_labels, source, layout, True),
    }
    out = {}
    for name, fn in fns.items():
        rate, steady = decode_rate(fn, n, workers, processes)
        out[name] = rate
        if processes:
            out[f"{name}_steady"] = steady
    return out


def forward_rate(model, repeats: int = 5) -> float:
    import jax

    from cnnvis_jax.features import make_forward

    forward = make_forward(model, ["layer4"])
    images = np.random.default_rng(0).integers(0, 256, (BATCH, 224, 224, 3), dtype=np.uint8)
    jax.block_until_ready(forward(model.params, images))
    best = float("inf")
    for _ in range(repeats):
        clock = time.perf_counter()
        jax.block_until_ready(forward(model.params, images))
        best = min(best, time.perf_counter() - clock)
    return BATCH / best


def _counts(text: str, cap: int) -> list[int]:
    return [c for c in (int(t) for t in text.split(",") if t) if c <= cap]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(),
                                                   "cnnvis_bench_dissection_peer"))  # fmt: skip
    ap.add_argument(
        "--threads",
        default="1,2,4,8,16",
        help="thread counts to time (those above max(4, CPUs) are skipped)",
    )
    ap.add_argument("--processes", default="1,2,4,8,16",
                    help="worker-process counts to time (likewise; '' for none)")  # fmt: skip
    args = ap.parse_args(argv)
    from cnnvis_jax.data.broden import BrodenSource
    from cnnvis_jax.dissection.labels import label_layout
    from cnnvis_jax.features import decode_threads
    from cnnvis_jax.weights import load_model

    broden, weights = _fixture(Path(args.work))
    source = BrodenSource(broden)
    layout = label_layout(source, None, zero_scalar=True)
    n = len(source)
    cap = max(4, os.cpu_count() or 1)
    decode = {t: _rates(source, layout, n, t, False) for t in _counts(args.threads, cap)}
    in_processes = {p: _rates(source, layout, n, p, True) for p in _counts(args.processes, cap)}
    forward = forward_rate(load_model("resnet18", weights))
    default = decode_threads()
    nearest = min(decode, key=lambda t: abs(t - default))
    pass1, pass2 = decode[nearest]["images"], decode[nearest]["labels"]
    record = {
        "images": n,
        "batch": BATCH,
        "default_threads": decode_threads(),
        "decode_images_per_second": decode,
        "decode_images_per_second_in_processes": in_processes,
        "forward_images_per_second": forward,
        "pass1_bound": "decode" if pass1 < forward else "forward",
        "pass1_decode_over_forward": pass1 / forward,
        "tally_labels_per_second": pass2,
    }
    save("pipeline", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
