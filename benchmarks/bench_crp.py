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
compile, run) is reported too. Run: ``python -m benchmarks.bench_crp`` (writes
results/crp.json).
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks import make_lrp_golden as recipe
from benchmarks.bench_lrp import interleaved_best
from benchmarks.common import save

LAYER = "conv5"


def main() -> dict:
    import jax
    import jax.numpy as jnp

    from cnnvis_jax import lrp, weights
    from cnnvis_jax.crp import concept_relevance
    from cnnvis_jax.zoo import registry

    model = registry.as_model(
        weights.load_torch_state_dict("alexnet", recipe.alexnet_state_dict()), "alexnet"
    )
    images = recipe.golden_images(1)
    name = model.logits_layer
    logits = model.apply(model.params, jnp.asarray(images), name)[name]
    targets = np.asarray(jnp.argmax(logits, -1))
    x = model.input.normalize(jnp.asarray(images))

    @jax.jit
    def input_gradient(params, x, targets):
        out, pull = jax.vjp(lambda v: model.apply_fn(params, v, (name,))[name], x)
        return pull(jax.nn.one_hot(targets, out.shape[-1], dtype=out.dtype))[0]

    def gradient():
        return input_gradient(model.params, x, jnp.asarray(targets)).block_until_ready()

    def crp(count: int):
        return lambda: concept_relevance(model, images, targets, LAYER,
                                         rule="epsilon_plus_flat",
                                         concepts=list(range(count)))  # fmt: skip

    def plain_lrp():
        return lrp.relevance(model, images, targets).relevance.block_until_ready()

    variants = {"gradient": gradient, "crp_1": crp(1), "crp_6": crp(6), "lrp": plain_lrp}
    first = {}
    for label, fn in variants.items():
        start = time.perf_counter()
        fn()
        first[label] = time.perf_counter() - start
    best = interleaved_best(variants)
    record = {
        "network": "alexnet (numpy-recipe weights), 224 px, batch 1",
        "layer": LAYER,
        "seconds": best,
        "first_call_seconds": first,
        "crp_1_over_gradient": best["crp_1"] / best["gradient"],
        "crp_6_over_gradient": best["crp_6"] / best["gradient"],
        "lrp_over_gradient": best["lrp"] / best["gradient"],
    }
    save("crp", record)
    return record


if __name__ == "__main__":
    main()
