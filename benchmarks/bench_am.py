"""Activation maximization: 64 units of conv5 of the default model.

1. Time per render step for the whole batch of 64 units (one image each), for a
   pixel recipe (``yosinski3``: ascent, decay, blur every 4, clip) and for
   ``lucid`` (Fourier + decorrelated colour, Adam, transforms), divided by the time
   of a bare forward + input-gradient of the same 64 images to conv5 (the ceiling),
   and by the same bare step with the explicit kernel transposes the render loop
   uses (:func:`cnnvis_jax.rules.model_for_input_gradients`).
   A step's time is the difference between renders of ``2 N`` and ``N`` steps
   divided by ``N``, so compilation, start and final evaluation cancel out.
2. Per-unit cost: the 64 units in one vmapped render vs a Python loop of one-unit
   renders (the same compiled program for every unit), ``yosinski3``.

Timings are the best of interleaved rounds (see ``bench_deconv.interleaved_best``).
Run: ``python -m benchmarks.bench_am`` (needs the trained default model; falls back
to random weights with a note when it is missing).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.bench_deconv import interleaved_best
from benchmarks.common import save

UNITS = 64
LAYER = "conv5"
STEPS = 20
LOOP_UNITS = 8


def _model():
    from cnnvis_jax import zoo
    from cnnvis_jax.default import default_run_dir
    from cnnvis_jax.train import load_trained

    path = default_run_dir() / "weights.safetensors"
    if path.exists():
        return load_trained(path), str(path)
    return zoo.random_model("conceptnet", warn=False), "conceptnet random weights"


def main() -> dict:
    from cnnvis_jax import am
    from cnnvis_jax.rules import model_for_input_gradients

    load_before = os.getloadavg()
    model, source = _model()
    units = list(range(UNITS))
    objectives = am.objectives_for_units(model, LAYER, units, "channel")
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(UNITS, 64, 64, 3)), jnp.float32)

    @jax.jit
    def bare(params, x):
        def score(x):
            act = model.apply(params, x, LAYER)[LAYER]
            return jnp.sum(act.mean(axis=(1, 2)) * jax.nn.one_hot(jnp.arange(UNITS), act.shape[-1]))

        return jax.grad(score)(x)

    def run(recipe, steps, objs=objectives):
        return lambda: am.render(model, objs, recipe, key=0, steps=steps).images

    fast = model_for_input_gradients(model)

    @jax.jit
    def bare_explicit(params, x):
        def score(x):
            act = fast.apply(params, x, LAYER)[LAYER]
            return jnp.sum(act.mean(axis=(1, 2)) * jax.nn.one_hot(jnp.arange(UNITS), act.shape[-1]))

        return jax.grad(score)(x)

    fns = {
        "bare": lambda: bare(model.params, images).block_until_ready(),
        "bare_explicit": lambda: bare_explicit(model.params, images).block_until_ready(),
    }
    for name in ("yosinski3", "lucid"):
        fns[f"{name}_n"] = run(name, STEPS)
        fns[f"{name}_2n"] = run(name, 2 * STEPS)
    loop_objs = [am.objectives_for_units(model, LAYER, [u], "channel") for u in range(LOOP_UNITS)]
    fns["loop"] = lambda: [run("yosinski3", STEPS, o)() for o in loop_objs]
    best = interleaved_best(fns, rounds=3)
    record = {
        "benchmark": "activation maximization, conv5 of the default model",
        "model": source,
        "units": UNITS,
        "images_per_unit": 1,
        "bare_forward_backward_s": best["bare"],
        "bare_with_explicit_conv_transpose_s": best["bare_explicit"],
    }
    for name in ("yosinski3", "lucid"):
        step = (best[f"{name}_2n"] - best[f"{name}_n"]) / STEPS
        record[f"{name}_step_s"] = step
        record[f"{name}_step_over_bare"] = step / best["bare"]
        record[f"{name}_step_over_bare_explicit"] = step / best["bare_explicit"]
        record[f"{name}_unit_steps_per_second"] = UNITS / step
    per_unit_vmap = best["yosinski3_n"] / UNITS
    per_unit_loop = best["loop"] / LOOP_UNITS
    record.update(
        {
            "render_steps_for_per_unit_cost": STEPS,
            "per_unit_s_vmap_64": per_unit_vmap,
            "per_unit_s_python_loop": per_unit_loop,
            "loop_over_vmap_per_unit": per_unit_loop / per_unit_vmap,
            "load_average_before_after": [list(load_before), list(os.getloadavg())],
        }
    )
    save("am", record)
    return record


if __name__ == "__main__":
    main()
