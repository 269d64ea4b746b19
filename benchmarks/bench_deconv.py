"""DeconvNet projections and dataset top-k, with Captum side by side.

1. Projections of 16 conv5 units for 8 images of AlexNet (random weights, 224 px):
   one shared forward with the pullbacks over units (one ``project`` call) vs 16
   separate forward+backward calls (one ``project`` call per unit, the same
   compiled program), and Captum's ``NeuronDeconvolution`` on the same weights and
   images, one call per unit as its users do. A parity figure checks that Captum
   and this package compute the same projections (up to the input normalization
   and the cotangent's scale).
2. Top-k streaming throughput (ConceptNet random weights, conv5, all 96 units,
   k = 9) vs bare feature extraction of the same layer, both over the same
   in-memory concept images, batch 64.

Timings are the best of 3 interleaved rounds (each variant once per round), so
that load from other jobs on a shared machine hits every variant alike.

Run: ``python -m benchmarks.bench_deconv``. Captum is an optional benchmark extra
(``pip install captum==0.9.0``, needs torch + torchvision); without it only the
JAX figures are taken.
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks.common import best_time, save

UNITS = 16
IMAGES = 8
LAYER = "conv5"
TOPK_IMAGES = 1024
BATCH = 64


class _Arrays:
    """In-memory source: data generation stays out of the timings."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return {"image": self.images[index], "target": -1}

    def batch(self, indices):
        indices = np.asarray(indices)
        return {"image": self.images[indices], "target": np.full(len(indices), -1, np.int32)}


def interleaved_best(fns: dict, rounds: int = 3) -> dict:
    """Best seconds of each callable, timed in interleaved rounds after one warm-up
    call each, so that load from other jobs on a shared machine hits all alike."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], best_time(fn, repeats=1, warmup=0))
    return best


def jax_projections(alexnet, images01: np.ndarray) -> dict:
    """``{"shared": one call for all units, "separate": one call per unit}``."""
    from cnnvis_jax.deconv import project

    units = np.arange(UNITS)

    def shared():
        return project(alexnet, alexnet.params, images01, LAYER, units)

    def separate():
        return [project(alexnet, alexnet.params, images01, LAYER, [u]) for u in units]

    return {"shared": shared, "separate": separate}


def captum_projections(module, alexnet, images01: np.ndarray):
    """Captum NeuronDeconvolution, one call per unit, on the same weights and images:
    ``(run, info)``, or ``(None, {"captum_error": why})`` when it is not installed."""
    try:
        import captum
        import torch
        import torchvision
        from captum.attr import NeuronDeconvolution
    except ImportError as e:
        return None, {"captum_error": f"not installed ({e.name}); pip install captum==0.9.0"}
    from cnnvis_jax.weights import export_state_dict

    net = torchvision.models.alexnet(weights=None).eval()
    state = {
        k: torch.from_numpy(np.array(v, np.float32))
        for k, v in export_state_dict(module, "alexnet").items()
    }
    net.load_state_dict(state)
    for m in net.modules():  # Captum's ReLU hooks need out-of-place ReLUs
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    mean = np.asarray(alexnet.input.mean, np.float32)
    std = np.asarray(alexnet.input.std, np.float32)
    x = torch.from_numpy(((images01 - mean) / std).transpose(0, 3, 1, 2).copy())
    deconv = NeuronDeconvolution(net, net.features[11])  # conv5 after its ReLU

    def unit_max(unit):
        return lambda out: out[:, unit].amax(dim=(1, 2))

    def run():
        # d(max)/d(normalized x), cotangent 1, as (U, N, H, W, 3) per [0, 1] pixel.
        maps = [deconv.attribute(x, unit_max(u)).detach().numpy() for u in range(UNITS)]
        return np.stack(maps).transpose(0, 1, 3, 4, 2) / std

    return run, {"captum_version": captum.__version__, "torch_threads": torch.get_num_threads()}


def parity(ours, theirs: np.ndarray) -> dict:
    """Relative max difference per (unit, image) between Captum and ``ours / value``.

    A unit that is zero everywhere in an image (dead after its ReLU) is left out:
    there torch's amax spreads the gradient over all tied positions, while the
    Zeiler cotangent holds the activation's value, 0. Differences above rounding
    come from max-pool switches that float rounding flips (XLA vs oneDNN
    convolutions) where two values of a window nearly tie.
    """
    alive = ours.values > 0
    scaled = ours.projections[alive] / ours.values[alive][:, None, None, None]
    err = np.abs(scaled - theirs[alive]).max(axis=(1, 2, 3))
    err /= np.maximum(np.abs(theirs[alive]).max(axis=(1, 2, 3)), 1e-12)
    return {
        "captum_max_relative_difference": float(err.max()) if err.size else None,
        "captum_pairs_compared": int(alive.sum()),
        "captum_pairs_within_1e-4": int((err <= 1e-4).sum()),
        "captum_pairs_dead_unit_left_out": int((~alive).sum()),
    }


def projection_figures(module, alexnet, images01: np.ndarray) -> dict:
    fns = jax_projections(alexnet, images01)
    record: dict = {}
    try:
        run, info = captum_projections(module, alexnet, images01)
    except Exception as e:  # the Captum side is optional; say why it is missing
        run, info = None, {"captum_error": repr(e)}
    record.update(info)
    if run is not None:
        fns["captum"] = run
    best = interleaved_best(fns)
    record.update(
        {
            "shared_forward_pullbacks_s": best["shared"],
            "separate_calls_s": best["separate"],
            "separate_over_shared": best["separate"] / best["shared"],
            "unit_images_per_second_shared": UNITS * IMAGES / best["shared"],
        }
    )
    if run is not None:
        record["captum_one_call_per_unit_s"] = best["captum"]
        record["captum_over_shared"] = best["captum"] / best["shared"]
        record.update(parity(fns["shared"](), run()))
    return record


def topk_figures() -> dict:
    from cnnvis_jax import zoo
    from cnnvis_jax.data import ConceptSet
    from cnnvis_jax.deconv import top_activations
    from cnnvis_jax.features import extract_features

    model = zoo.random_model("conceptnet", warn=False)
    images = ConceptSet(TOPK_IMAGES, split="val").batch(np.arange(TOPK_IMAGES))["image"]
    source = _Arrays(images)

    def topk():
        return top_activations(model, source, LAYER, k=9, batch_size=BATCH, progress=False)

    def bare():
        return extract_features(model, source, [LAYER], batch_size=BATCH, progress=False)

    best = interleaved_best({"topk": topk, "bare": bare})
    topk_s, bare_s = best["topk"], best["bare"]
    return {
        "topk_images": TOPK_IMAGES,
        "topk_units": model.layer(LAYER).channels,
        "topk_images_per_second": TOPK_IMAGES / topk_s,
        "bare_extraction_images_per_second": TOPK_IMAGES / bare_s,
        "topk_over_bare_throughput": bare_s / topk_s,
    }


def main() -> dict:
    from cnnvis_jax import zoo

    load_before = os.getloadavg()
    module = zoo.init_module("alexnet")
    alexnet = zoo.as_model(module, "alexnet")
    images01 = np.random.default_rng(0).uniform(size=(IMAGES, 224, 224, 3)).astype(np.float32)
    record = {
        "benchmark": "deconv projections and top-k",
        "model": "alexnet random weights, 224 px",
        "layer": LAYER,
        "units": UNITS,
        "images": IMAGES,
        "rule": "deconvnet, max-pool switches",
    }
    record.update(projection_figures(module, alexnet, images01))
    record.update(topk_figures())
    record["load_average_before_after"] = [list(load_before), list(os.getloadavg())]
    save("deconv", record)
    return record


if __name__ == "__main__":
    main()
