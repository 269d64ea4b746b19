"""One CRP explanation vs one input gradient: AlexNet at 224 px, concepts of conv5.

In one process, on AlexNet with the numpy-recipe weights of
``benchmarks/make_lrp_golden.py`` and one of its images (batch 1):

* ``gradient``: a jitted ``jax.vjp`` of the target logit w.r.t. the normalized input;
* ``crp_1``: :func:`cnnvis_jax.crp.concept_relevance` with the EpsilonPlusFlat
  composite conditioned on conv5, one concept (a unit): the relevance of every
  channel of conv5 and the concept's conditional heatmap, as users call it;
* ``crp_6``: the same with six concepts (the per-prediction view of ``cnnvis
  explain``: six conditional heatmaps, one vmapped backward of the lower layers);
* ``lrp``: the unconditional EpsilonPlusFlat map (:func:`cnnvis_jax.lrp.relevance`).

Best of interleaved rounds after one warm-up call each; the first call (trace,
compile, run) is reported too.

The peer, zennit-crp (``CondAttribution`` with zennit's ``EpsilonPlusFlat``, the same
network, weights and image, conv5 = ``features.10``), runs in a torch interpreter
(``CNNVIS_TORCH_PYTHON``, default the current one): its plain input gradient, one
concept and six concepts (one call with six conditions, zennit-crp's batching), and
the whole process's time to its first timings.

Run: ``python -m benchmarks.bench_crp`` (writes results/crp.json); the peer worker is
``python -m benchmarks.bench_crp --zennit-crp-worker`` (prints JSON; needs torch,
zennit and zennit-crp, not jax).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks import make_lrp_golden as recipe
from benchmarks.bench_lrp import (
    first_and_best,
    input_gradient,
    interleaved_best,
    recipe_alexnet,
    torch_worker,
)
from benchmarks.common import save

LAYER = "conv5"
TORCH_LAYER = "features.10"


def jax_figures() -> dict:
    from cnnvis_jax import lrp
    from cnnvis_jax.crp import concept_relevance

    model = recipe_alexnet()
    images = recipe.golden_images(1)
    targets, gradient = input_gradient(model, images)

    def crp(count: int):
        return lambda: concept_relevance(model, images, targets, LAYER,
                                         rule="epsilon_plus_flat",
                                         concepts=list(range(count)))  # fmt: skip

    def plain_lrp():
        return lrp.relevance(model, images, targets).relevance.block_until_ready()

    variants = {"gradient": gradient, "crp_1": crp(1), "crp_6": crp(6), "lrp": plain_lrp}
    first, best = first_and_best(variants)
    return {
        "seconds": best,
        "first_call_seconds": first,
        "crp_1_over_gradient": best["crp_1"] / best["gradient"],
        "crp_6_over_gradient": best["crp_6"] / best["gradient"],
        "lrp_over_gradient": best["lrp"] / best["gradient"],
    }


def zennit_crp_worker() -> dict:
    """Times zennit-crp in this interpreter (torch, zennit, zennit-crp; no jax)."""
    started = time.perf_counter()
    import torch

    from benchmarks.make_crp_golden import import_crp

    zennit, CondAttribution = import_crp()
    net = recipe.torch_alexnet(recipe.alexnet_state_dict()).float()
    images = recipe.golden_images(1)
    x = torch.from_numpy(np.ascontiguousarray(recipe.normalize(images).transpose(0, 3, 1, 2)))
    target = int(recipe.torch_logits(net, images).argmax(axis=1)[0])
    onehot = torch.nn.functional.one_hot(torch.tensor([target]), 1000).float()
    attribution = CondAttribution(net)
    composite = zennit.composites.EpsilonPlusFlat()

    def gradient():
        inputs = x.clone().requires_grad_(True)
        return torch.autograd.grad(net(inputs), inputs, grad_outputs=onehot)[0]

    def crp(count: int):
        conditions = [{TORCH_LAYER: [c], "y": [target]} for c in range(count)]

        def run():
            inputs = x.clone().requires_grad_(True)
            return attribution(inputs, conditions, composite, record_layer=[TORCH_LAYER])

        return run

    variants = {"gradient": gradient, "crp_1": crp(1), "crp_6": crp(6)}
    for fn in variants.values():
        fn()
    to_first = time.perf_counter() - started
    best = interleaved_best(variants)
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "seconds": best,
        "crp_1_over_gradient": best["crp_1"] / best["gradient"],
        "crp_6_over_gradient": best["crp_6"] / best["gradient"],
        "process_seconds_to_first_timings": to_first,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zennit-crp-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.zennit_crp_worker:
        record = zennit_crp_worker()
        print(json.dumps(record))
        return record
    ours = jax_figures()
    theirs = torch_worker("benchmarks.bench_crp", "--zennit-crp-worker")
    record = {"network": "alexnet (numpy-recipe weights), 224 px, batch 1", "layer": LAYER,
              "jax": ours, "zennit_crp": theirs}  # fmt: skip
    if "error" not in theirs:
        record["zennit_crp_over_jax"] = {
            k: theirs["seconds"][k] / ours["seconds"][k] for k in ("gradient", "crp_1", "crp_6")
        }
    save("crp", record)
    return record


if __name__ == "__main__":
    main()
