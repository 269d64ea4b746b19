"""The two rates behind the scale table of ``RESULTS.md``, on JAX's default device.

1. **Dissection of every ResNet-18 layer**: ``cnnvis dissect --model resnet18 --layers
   layer1,layer2,layer3,layer4 --preprocess lite --zero-scalar`` on the 160-image
   Broden-format fixture of the pipeline benchmark (224 px, 112-px masks), run twice
   (the second with XLA's compilation cache warm, as any rerun is); the rate is images
   per second of the command's ``dissect`` phase (both passes, the report excluded).
   With ``--dissect-images 160,640`` a larger generated fixture runs too, and the
   marginal rate (fixed costs left out) is the difference of the two.
2. **AM of VGG16 units with** ``lucid`` (Fourier + decorrelated colour, Adam,
   transforms) at 224 px, ``U`` units per vmapped call, at ``conv3_3`` and ``conv5_3``:
   seconds per step (renders of ``2N`` and ``N`` steps differ by ``N`` steps, so
   compilation and start cancel) and unit-steps per second. The step's cost does not
   depend on the weights' values, so VGG16 has random weights here.

Writes ``scale.json``. Run: ``python -m benchmarks.bench_scale [--units 8,64]
[--steps N] [--work DIR]`` (defaults: 8 units and 2 steps on a CPU, 8 and 64 units
and 10 steps on an accelerator).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_pipeline import _fixture
from benchmarks.common import save

LAYERS = "layer1,layer2,layer3,layer4"
AM_LAYERS = ("conv3_3", "conv5_3")


def dissection_rate(work: Path, sizes: list[int]) -> dict:
    """Whole-command and dissect-phase seconds of the all-layer ResNet-18 dissection of
    the first fixture size twice (cold, then warm XLA cache), then of each larger size;
    the marginal rate (the fixed costs of start, tracing and the report left out) comes
    from the largest and the warm smallest."""
    runs = []
    for attempt, images in enumerate([sizes[0], *sizes]):
        broden, weights = _fixture(work, images)
        out = work / f"scale_dissect_{attempt}"
        command = [sys.executable, "-m", "cnnvis_jax.cli", "dissect", "--model", "resnet18",
                   "--weights", str(weights), "--dataset", f"broden:{broden}", "--layers",
                   LAYERS, "--preprocess", "lite", "--zero-scalar", "--quiet", "--out",
                   str(out)]  # fmt: skip
        shutil.rmtree(out, ignore_errors=True)  # a rerun into the same folder would resume
        clock = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - clock
        phases = json.loads((out / "timings.json").read_text())["seconds"]
        runs.append({"images": images, "command_s": seconds, "phases": phases})
    warm, largest = runs[1], runs[-1]
    record = {
        "layers": LAYERS,
        "runs": runs,
        "dissect_images_per_second": warm["images"] / warm["phases"]["dissect"],
    }
    if largest["images"] > warm["images"]:
        extra = largest["phases"]["dissect"] - warm["phases"]["dissect"]
        record["marginal_images_per_second"] = (largest["images"] - warm["images"]) / extra
    return record


def am_rate(units: int, steps: int) -> dict:
    """Seconds per ``lucid`` step of ``units`` VGG16 units per call, per layer."""
    import jax

    from cnnvis_jax import am, zoo

    model = zoo.random_model("vgg16", warn=False)
    record = {}
    for layer in AM_LAYERS:
        objectives = am.objectives_for_units(model, layer, list(range(units)), "channel")

        def run(n, objectives=objectives):
            clock = time.perf_counter()
            jax.block_until_ready(am.render(model, objectives, "lucid", key=0, steps=n).images)
            return time.perf_counter() - clock

        run(steps)  # compiles
        short, long = min(run(steps) for _ in range(2)), min(run(2 * steps) for _ in range(2))
        step = max(long - short, 1e-9) / steps
        record[layer] = {"step_s": step, "unit_steps_per_second": units / step}
    return record


def main(argv: list[str] | None = None) -> dict:
    import jax

    accelerator = jax.default_backend() != "cpu"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", default="8,64" if accelerator else "8",
                    help="units per AM call, comma-separated")  # fmt: skip
    ap.add_argument("--steps", type=int, default=10 if accelerator else 2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir(),
                                                      "cnnvis_bench_dissection_peer"))  # fmt: skip
    ap.add_argument(
        "--dissect-images",
        default="160",
        help="fixture sizes, smallest first (e.g. 160,640 for a marginal rate)",
    )
    ap.add_argument("--skip", default="", help="'dissection' or 'am' to leave one out")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    record: dict = {"benchmark": "scale rates", "load_average_before": list(os.getloadavg())}
    if "dissection" not in args.skip:
        record["dissection_resnet18_all_layers"] = dissection_rate(
            args.work, [int(n) for n in args.dissect_images.split(",") if n]
        )
    if "am" not in args.skip:
        record["am_vgg16_lucid"] = {
            f"{u}_units": am_rate(int(u), args.steps) for u in args.units.split(",") if u
        }
        record["am_vgg16_lucid"]["steps"] = args.steps
    record["load_average_after"] = list(os.getloadavg())
    save("scale", record)
    return record


if __name__ == "__main__":
    main()
