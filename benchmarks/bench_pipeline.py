"""Input pipeline against the forward: which one bounds a dissection of ResNet-18 at 224?

On the generated Broden-format fixture of the peer benchmark (160 images at 224 px,
112 px masks of all six categories; made on first use), this times

* decoding: the images alone (pass 1 of a dissection) and images with their labels
  encoded for the tally (``load_labelled``), per image, through
  :func:`cnnvis_jax.features.prefetched` with 1, 2, 4, 8 and 16 threads (those up to
  the larger of 4 and the number of CPUs; the 160 images are cycled so that every
  thread has at least four batches to decode);
* the forward: a torchvision-layout ResNet-18 (synthetic weights) to layer4 at batch 32,
  jitted, steady state;

and says which bounds the run on this machine: the slower of decoding at the default
thread count and the forward. Run: ``python -m benchmarks.bench_pipeline``.
"""

from __future__ import annotations

import argparse
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


def decode_rate(fn, n: int, threads: int, repeats: int = 3) -> float:
    """Images per second of ``fn(batch_indices)`` over ``n`` images in batches of
    :data:`BATCH` through :func:`prefetched` with ``threads`` (best of ``repeats``),
    the batches cycled until each thread has at least four."""
    from cnnvis_jax.features import prefetched

    starts = list(range(0, n, BATCH))
    starts = starts * -(-4 * threads // len(starts))
    n = sum(min(BATCH, n - s) for s in starts)
    best = float("inf")
    for _ in range(repeats):
        clock = time.perf_counter()
        for _ in prefetched(lambda s: fn(np.arange(s, min(s + BATCH, n))), starts,
                            threads=threads):  # fmt: skip
            pass
        best = min(best, time.perf_counter() - clock)
    return n / best


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(),
                                                   "cnnvis_bench_dissection_peer"))  # fmt: skip
    ap.add_argument("--threads", default="1,2,4,8,16",
                    help="thread counts to time (those above max(4, CPUs) are skipped)")  # fmt: skip
    args = ap.parse_args(argv)
    from cnnvis_jax.data.broden import BrodenSource
    from cnnvis_jax.dissection.labels import label_layout, load_labelled
    from cnnvis_jax.features import decode_threads, load_batch
    from cnnvis_jax.weights import load_model

    broden, weights = _fixture(Path(args.work))
    source = BrodenSource(broden)
    layout = label_layout(source, None, zero_scalar=True)
    n = len(source)
    decode = {}
    counts = [int(t) for t in args.threads.split(",") if t]
    for threads in [t for t in counts if t <= max(4, os.cpu_count() or 1)]:
        decode[threads] = {
            "images": decode_rate(lambda i: load_batch(source, i)["image"], n, threads),
            "labels": decode_rate(
                lambda i: load_labelled(source, i, layout, images=False), n, threads
            ),  # fmt: skip
            "images_and_labels": decode_rate(
                lambda i: load_labelled(source, i, layout), n, threads
            ),  # fmt: skip
        }
    forward = forward_rate(load_model("resnet18", weights))
    default = decode_threads()
    nearest = min(decode, key=lambda t: abs(t - default))
    pass1, pass2 = decode[nearest]["images"], decode[nearest]["labels"]
    record = {
        "images": n,
        "batch": BATCH,
        "default_threads": decode_threads(),
        "decode_images_per_second": decode,
        "forward_images_per_second": forward,
        "pass1_bound": "decode" if pass1 < forward else "forward",
        "pass1_decode_over_forward": pass1 / forward,
        "tally_labels_per_second": pass2,
    }
    save("pipeline", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
