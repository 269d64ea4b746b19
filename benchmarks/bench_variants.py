"""Optimization variants of AM and inversion on the default model: which reaches the best
final value soonest.

1. Activation maximization, 8 channel objectives of conv5, ``lucid`` (Fourier
   parameterization, transforms, 16 redirected-ReLU steps) at 128 steps, 2 seeds:
   ``optimizer=adam,sgd,lbfgs lr=0.01,0.05,0.2,1``.
2. Regularized inversion of 4 validation images at conv3, ``mahendran2016``, 2
   restarts: ``lr_scale=0.25,0.5,1,2 momentum=0.8,0.9``.

Per variant: the final value (mean and spread over seeds and units / images), the
measured seconds per step (compilation excluded; variants of one structure share one
vmapped program and its time), and the step and seconds at which the mean curve comes
within 5% of the best variant's final value (:mod:`cnnvis_jax.sweep`). Writes
``benchmarks/results/variants.json`` and the sweeps' folders under ``--out``.

Run: ``python -m benchmarks.bench_variants [--out runs/variants]`` (needs the trained
default model).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import jax
import numpy as np

from benchmarks.common import save

AM_GRID = "optimizer=adam,sgd,lbfgs lr=0.01,0.05,0.2,1"
INVERSION_GRID = "lr_scale=0.25,0.5,1,2 momentum=0.8,0.9"


def main(argv=None) -> dict:
    from cnnvis_jax import am, sweep
    from cnnvis_jax.data.concepts import ConceptSet
    from cnnvis_jax.default import default_run_dir
    from cnnvis_jax.features import to_model_input
    from cnnvis_jax.train import load_trained

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/variants"))
    args = p.parse_args(argv)
    weights = default_run_dir() / "weights.safetensors"
    if not weights.exists():
        raise SystemExit(f"{weights} is missing; train the default model first (cnnvis train).")
    model = load_trained(weights)
    load_before = os.getloadavg()

    objectives = am.objectives_for_units(model, "conv5", list(range(8)), "channel")
    am_result = sweep.sweep_am(model, objectives, "lucid", AM_GRID, key=0, seeds=2, steps=128)
    am_result.save(args.out / "am_conv5")

    val = ConceptSet(4, split="val", image_size=model.input.size[0])
    images = np.asarray(to_model_input(model, val.batch(np.arange(4))["image"]))
    inv_result = sweep.sweep_inversion(model, "conv3", images, "mahendran2016", INVERSION_GRID,
                                       key=jax.random.key(0), seeds=2)  # fmt: skip
    inv_result.save(args.out / "invert_conv3")

    record = {
        "am_conv5": {"preset": "lucid", "steps": 128, "units": 8, "seeds": 2, "grid": AM_GRID,
                     **am_result.summary()},
        "invert_conv3": {"preset": "mahendran2016", "images": 4, "restarts": 2,
                         "grid": INVERSION_GRID, **inv_result.summary()},
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
    }  # fmt: skip
    save("variants", record)
    for name, result in (("AM conv5", am_result), ("inversion conv3", inv_result)):
        print(f"{name}: fastest to the best final value: {result.fastest()}")
    return record


if __name__ == "__main__":
    main()
