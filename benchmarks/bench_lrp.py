"""LRP relevance maps vs a plain input gradient on AlexNet (224 px), and zennit's own cost.

1. In one process, on AlexNet with the numpy-recipe weights of
   ``benchmarks/make_lrp_golden.py``: one EpsilonPlusFlat relevance map
   (:func:`cnnvis_jax.lrp.relevance`, as users call it) vs one plain input gradient
   of the same target logit (a jitted ``jax.vjp`` of the same network on the same
   normalized input), for a batch of 1 and of 8 images. Both with and without
   ``explicit_conv_transpose``. Timings are the best of interleaved rounds after
   one warm-up call each; the first call (trace + compile + run) is reported too.
2. zennit on the same network in a torch environment (a separate interpreter:
   ``CNNVIS_TORCH_PYTHON``, default the current one): one EpsilonPlusFlat map vs one
   plain ``torch.autograd.grad`` input gradient, in the same process, and the whole
   process's wall time (start, imports, network, one map).

Run: ``python -m benchmarks.bench_lrp`` (writes results/lrp.json). The zennit worker
is ``python -m benchmarks.bench_lrp --zennit-worker`` (prints JSON; needs torch and
zennit, not jax).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import make_lrp_golden as recipe

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (1, 8)
ROUNDS = 5


def interleaved_best(fns: dict, rounds: int = ROUNDS) -> dict:
    """Best seconds per callable over interleaved rounds (one warm-up call each), so
    that load from other jobs on a shared machine hits every variant alike."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def first_and_best(fns: dict) -> tuple[dict, dict]:
    """Seconds of each callable's first call (trace, compile, run), then the best of
    interleaved rounds (:func:`interleaved_best`)."""
    first = {}
    for label, fn in fns.items():
        start = time.perf_counter()
        fn()
        first[label] = time.perf_counter() - start
    return first, interleaved_best(fns)


# --- JAX -------------------------------------------------------------------------------


def recipe_alexnet():
    """The JAX AlexNet with the numpy-recipe weights of ``make_lrp_golden``."""
    from cnnvis_jax import weights
    from cnnvis_jax.zoo import registry

    return registry.as_model(
        weights.load_torch_state_dict("alexnet", recipe.alexnet_state_dict()), "alexnet"
    )


def input_gradient(model, images: np.ndarray):
    """``(targets, run)``: the predicted classes of ``images`` (N, H, W, 3) in [0, 1] and
    a callable timing one plain input gradient of their logits (a jitted ``jax.vjp`` at
    the normalized input), blocking until done."""
    import jax
    import jax.numpy as jnp

    name = model.logits_layer
    x = model.input.normalize(jnp.asarray(images))
    targets = np.asarray(jnp.argmax(model.apply(model.params, jnp.asarray(images), name)[name], -1))

    @jax.jit
    def gradient(params, x, targets):
        logits, pull = jax.vjp(lambda v: model.apply_fn(params, v, (name,))[name], x)
        return pull(jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype))[0]

    def run():
        return gradient(model.params, x, jnp.asarray(targets)).block_until_ready()

    return targets, run


def jax_figures() -> dict:
    """Per batch size: best and first-call seconds of LRP and the plain gradient."""
    model = recipe_alexnet()
    return {f"batch_{batch}": jax_batch(model, batch) for batch in BATCHES}


def jax_batch(model, batch: int) -> dict:
    from cnnvis_jax import lrp

    images = recipe.golden_images(batch)
    targets, gradient = input_gradient(model, images)

    def relevance(explicit: bool):
        def run():
            maps = lrp.relevance(
                model, images, targets, "epsilon_plus_flat", explicit_conv_transpose=explicit
            )
            return maps.relevance.block_until_ready()

        return run

    variants = {
        "gradient": gradient,
        "lrp": relevance(False),
        "lrp_explicit_transpose": relevance(True),
    }
    first, best = first_and_best(variants)
    return {
        "seconds": best,
        "first_call_seconds": first,
        "lrp_over_gradient": best["lrp"] / best["gradient"],
        "lrp_explicit_over_gradient": best["lrp_explicit_transpose"] / best["gradient"],
    }


# --- zennit (torch environment) -----------------------------------------------------------


def zennit_worker() -> dict:
    """Times zennit in this interpreter (torch + zennit, no jax); returns the figures."""
    started = time.perf_counter()
    import torch

    zennit = recipe._import_zennit()
    net = recipe.torch_alexnet(recipe.alexnet_state_dict())
    record = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    for batch in BATCHES:
        record[f"batch_{batch}"] = zennit_batch(net, zennit, batch)
        if batch == BATCHES[0]:
            record["process_seconds_to_first_timings"] = time.perf_counter() - started
    return record


def zennit_batch(net, zennit, batch: int) -> dict:
    import torch

    images = recipe.golden_images(batch)
    x = torch.from_numpy(np.ascontiguousarray(recipe.normalize(images).transpose(0, 3, 1, 2)))
    targets = torch.from_numpy(recipe.torch_logits(net, images).argmax(axis=1))
    onehot = torch.nn.functional.one_hot(targets, 1000).float()
    composite = zennit.composites.EpsilonPlusFlat()

    def gradient():
        inputs = x.clone().requires_grad_(True)
        return torch.autograd.grad(net(inputs), inputs, grad_outputs=onehot)[0]

    def relevance():
        with composite.context(net) as modified:
            inputs = x.clone().requires_grad_(True)
            out = modified(inputs)
            return torch.autograd.grad(out, inputs, grad_outputs=onehot * out.detach())[0]

    best = interleaved_best({"gradient": gradient, "lrp": relevance})
    return {"seconds": best, "lrp_over_gradient": best["lrp"] / best["gradient"]}


def torch_worker(module: str, flag: str) -> dict:
    """Run ``python -m <module> <flag>`` in ``CNNVIS_TORCH_PYTHON`` (default: this
    interpreter) and return the JSON its last line prints, with the interpreter and
    the whole process's seconds added (or ``{"error": ...}``)."""
    python = os.environ.get("CNNVIS_TORCH_PYTHON", sys.executable)
    start = time.perf_counter()
    done = subprocess.run(
        [python, "-m", module, flag], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        return {"error": f"{module} {flag} failed in {python}: {' '.join(tail)}"}
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["python"] = python
    record["process_seconds_total"] = time.perf_counter() - start
    return record


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zennit-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.zennit_worker:
        print(json.dumps(zennit_worker()))
        return
    from benchmarks.common import save

    ours = jax_figures()
    theirs = torch_worker("benchmarks.bench_lrp", "--zennit-worker")
    record = {"network": "alexnet 224 px, numpy-recipe weights", "jax": ours, "zennit": theirs}
    if "error" not in theirs:
        record["lrp_seconds_zennit_over_jax"] = {
            key: theirs[key]["seconds"]["lrp"] / ours[key]["seconds"]["lrp"]
            for key in ours
            if key in theirs
        }
    save("lrp", record)


if __name__ == "__main__":
    main()
