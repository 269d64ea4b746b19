"""The ZFNet comparison (Zeiler & Fergus 2014, Sec. 4.1 and Fig. 6) on the concept set.

Zeiler & Fergus found AlexNet's first layer (11x11 filters, stride 4) to produce a
mix of very high and very low frequency filters, dead filters, and aliasing in
layer 2, and replaced it by 7x7 filters with stride 2. Here ConceptNet is trained
twice with the default recipe, the two runs differing only in the first layer:

* ``conv1_11x11_stride4``: AlexNet's first layer (11x11, stride 4);
* ``conv1_7x7_stride2``: ZFNet's first layer (7x7, stride 2).

Each trained network is diagnosed on the concept set's validation images with
:func:`cnnvis_jax.deconv.diagnose`: dead units per layer, the conv1 filters'
spectral energy by band, and the aliasing fraction of conv1's output (the
input of the layer after it; see :mod:`cnnvis_jax.deconv.diagnosis` for the
definitions), and the same aliasing fraction of conv2, the layer after, whose
grid has twice conv1's stride behind pool1 (on the first ``--alias-count``
images: it runs conv2 on ``(2s)^2`` shifted copies of each). Training resumes or
is skipped when a run directory is complete.

Usage::

    python -m experiments.zfnet_comparison [--out DIR] [--count 2000] [--seeds 0 1 ...]

writes ``DIR/<run>/diagnosis.{json,png}`` next to each run directory ``DIR/<run>``
(``<arm>`` for seed 0, ``<arm>_seed<N>`` for ``--seeds N``) and
``DIR/comparison.json`` (default ``DIR``: ``<cache>/experiments/zfnet_comparison``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cnnvis_jax.data import open_dataset
from cnnvis_jax.deconv import aliasing, diagnose, diagnosis_record
from cnnvis_jax.default import cache_dir
from cnnvis_jax.survey.config import VARIANTS
from cnnvis_jax.train import TrainConfig, load_trained, train

ARMS = {name: dict(VARIANTS[name]) for name in ("conv1_11x11_stride4", "conv1_7x7_stride2")}
"""Arm name -> the TrainConfig fields that differ from the default recipe (the survey's
training conditions of the same names)."""


def default_out() -> Path:
    return cache_dir() / "experiments" / "zfnet_comparison"


def run_name(arm: str, seed: int) -> str:
    return arm if seed == 0 else f"{arm}_seed{seed}"


def trained_run(out: Path, arm: str, seed: int, *, progress: bool) -> tuple[Path, dict]:
    """The run directory of ``arm`` with ``seed`` (trained now unless complete) and
    its metrics."""
    run = out / run_name(arm, seed)
    if not (run / "weights.safetensors").exists() or not (run / "metrics.json").exists():
        train(TrainConfig(seed=seed, **ARMS[arm]), run, progress=progress, report=False)
    return run, json.loads((run / "metrics.json").read_text())


def summarize(arm: str, seed: int, metrics: dict, record: dict, layer_after) -> dict:
    """The comparison's numbers for one arm and seed."""
    filters = record["first_layer_filters"]
    return {
        "arm": arm,
        "seed": seed,
        **ARMS[arm],
        "val_accuracy": metrics["val_accuracy"],
        "train_seconds": round(metrics["seconds"], 1),
        "dead_units": {
            name: f"{d['dead_count']}/{d['units']}" for name, d in record["dead_units"].items()
        },
        "dead_total": sum(d["dead_count"] for d in record["dead_units"].values()),
        "conv1_mean_band_fraction": filters["mean_band_fraction"],
        "conv1_dominant_band_count": filters["dominant_band_count"],
        "conv1_filter_energy_above_stride_nyquist": filters["mean_above_stride_nyquist"],
        "aliasing_layer": record["aliasing"]["layer"],
        "aliasing_fraction": record["aliasing"]["fraction"],
        "aliasing_mean_unit_fraction": record["aliasing"]["mean_unit_fraction"],
        "layer_after": layer_after.layer,
        "layer_after_stride": layer_after.stride,
        "layer_after_aliasing_fraction": round(layer_after.fraction, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out())
    parser.add_argument("--count", type=int, default=2000, help="validation images diagnosed")
    parser.add_argument("--alias-count", type=int, default=500, help="images for conv2 aliasing")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds")
    parser.add_argument("--train-only", action="store_true", help="train the runs and stop")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    source = open_dataset("concepts", split="val", count=args.count)
    runs = [(arm, seed) for seed in args.seeds for arm in ARMS]
    trained = {key: trained_run(args.out, *key, progress=not args.quiet) for key in runs}
    if args.train_only:
        return 0
    rows = []
    for arm, seed in runs:
        run, metrics = trained[arm, seed]
        model = load_trained(run / "weights.safetensors")
        result = diagnose(model, source, batch_size=64, progress=not args.quiet)
        result.save(run)
        after = aliasing(
            model,
            source,
            "conv2",
            batch_size=4,
            indices=np.arange(min(args.alias_count, args.count)),
            progress=not args.quiet,
        )
        rows.append(summarize(arm, seed, metrics, diagnosis_record(result), after))
    (args.out / "comparison.json").write_text(json.dumps({"images": args.count, "arms": rows},
                                                         indent=1))  # fmt: skip
    for row in rows:
        print(json.dumps(row))
    print(f"wrote {args.out / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
