"""MACO's step cost against Lucid's, and what the score panel adds to rendering.

1. Per render step, conv5 of the default model, ``UNITS`` units: ``maco`` with
   ``CROPS`` crops of its 128-px canvas per step (one image per unit) against
   ``lucid`` rendering ``CROPS`` images per unit (the same number of forward and
   backward passes through the network). A step's time is the difference between
   renders of ``2 N`` and ``N`` steps divided by ``N`` (compilation, start and final
   evaluation cancel out); best of interleaved rounds.
2. The panel: :func:`cnnvis_jax.evaluate.compare_presets` on ``--layer`` (default
   conv5) with the presets at their published step counts; the panel's own timings
   split rendering from the natural references (streaming top-k over ``--images``
   data images) and the scores; the overhead is (references + scores) / rendering.
   The table of scores is written next to the timings.

Run: ``python -m benchmarks.bench_evaluate [--layer conv5] [--units 0:8] [--seeds 2]
[--images 2000] [--skip panel|steps]`` (needs the trained default model).
"""

from __future__ import annotations

import argparse
import os

from benchmarks.bench_deconv import interleaved_best
from benchmarks.common import save

UNITS, CROPS, STEPS = 4, 32, 4


def step_costs(model) -> dict:
    from cnnvis_jax import am
    from cnnvis_jax.am._tree import replace
    from cnnvis_jax.cli.am import maco_spectrum

    objectives = am.objectives_for_units(model, "conv5", list(range(UNITS)), "channel")
    maco = am.preset("maco", spectrum=maco_spectrum("concepts", model))
    maco = replace(maco, transforms=am.maco_transforms(CROPS))

    def run(recipe, steps, batch):
        return lambda: am.render(model, objectives, recipe, key=0, steps=steps, batch=batch).images

    fns = {}
    for name, recipe, batch in (("maco", maco, 1), ("lucid", "lucid", CROPS)):
        fns[f"{name}_n"] = run(recipe, STEPS, batch)
        fns[f"{name}_2n"] = run(recipe, 2 * STEPS, batch)
    best = interleaved_best(fns, rounds=3)
    step = {n: (best[f"{n}_2n"] - best[f"{n}_n"]) / STEPS for n in ("maco", "lucid")}
    return {
        "units": UNITS,
        "forwards_per_unit_and_step": CROPS,
        "maco_step_s": step["maco"],
        "lucid_step_s": step["lucid"],
        "maco_over_lucid": step["maco"] / step["lucid"],
    }


def panel_overhead(model, layer: str, units: str, seeds: int, images: int) -> dict:
    from cnnvis_jax.cli.am import maco_spectrum
    from cnnvis_jax.data import open_dataset
    from cnnvis_jax.deconv import parse_units
    from cnnvis_jax.evaluate import compare_presets

    info = model.layer(layer)
    chosen = parse_units(units, info.channels)
    source = open_dataset("concepts", split="train", count=images, size=model.input.size)
    presets = ("yosinski3", "lucid", "maco")
    panel = compare_presets(model, info.name, chosen, presets, source, seeds=seeds,
                            spectrum=maco_spectrum("concepts", model))  # fmt: skip
    render = sum(panel.seconds["render"].values())
    extra = panel.seconds["references"] + panel.seconds["scores"]
    return {
        "layer": info.name,
        "units": list(chosen),
        "seeds": seeds,
        "data_images": images,
        "seconds": panel.seconds,
        "panel_over_render": extra / render,
        "table": panel.table(),
    }


def main(argv=None) -> dict:
    from cnnvis_jax import default_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", default="conv5")
    p.add_argument("--units", default="0:8")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--skip", choices=("panel", "steps"))
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    model = default_model(progress=False)
    record = {"benchmark": "MACO step cost and the evaluation panel, default model"}
    if args.skip != "steps":
        record["steps"] = step_costs(model)
    if args.skip != "panel":
        record["panel"] = panel_overhead(model, args.layer, args.units, args.seeds, args.images)
    record["load_average_before_after"] = [list(load_before), list(os.getloadavg())]
    save(f"evaluate_{args.layer}" if args.skip != "panel" else "evaluate_steps", record)
    return record


if __name__ == "__main__":
    main()
