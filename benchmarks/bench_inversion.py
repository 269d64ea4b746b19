"""Network inversion speed.

1. Regularized inversion of 16 images (the trained default ConceptNet when cached,
   else random weights), layers conv3 and fc8, both presets: seconds per step
   (difference of two run lengths, so compilation and setup cancel) divided by one
   bare jitted forward+backward (input gradient of ‖Φ(x) − Φ0‖²) of the same 16
   images up to the same layer. Target: <= 1.3x. Also divided by the same bare
   step with the explicit kernel transposes the inversion loop uses (a fairer
   reference: in a straight-line program they are faster than JAX's rule too).
2. Decoder training (batch 32, conv3 and fc6): images per second of the jitted
   training step on a fixed batch, and end to end (``train_decoder``, data
   generation and checkpoints included).

Timings are the best of 3 interleaved rounds. Run: ``python -m benchmarks.bench_inversion``.
"""

from __future__ import annotations

import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.bench_deconv import interleaved_best
from benchmarks.common import save

IMAGES = 16
SHORT, LONG = 10, 40


def load():
    from cnnvis_jax.default import default_run_dir
    from cnnvis_jax.models import load as load_zoo
    from cnnvis_jax.train import load_trained

    weights = default_run_dir() / "weights.safetensors"
    if weights.exists():
        return load_trained(weights), "trained default"
    return load_zoo("conceptnet"), "random weights"


def regularized(model, images) -> dict:
    from cnnvis_jax.inversion import features_of, invert, resolve_plan
    from cnnvis_jax.rules import model_for_input_gradients

    out = {}
    for layer in ("conv3", "fc8"):
        target = features_of(model, images, [layer])[layer]

        @jax.jit
        def bare(model, x, t, layer=layer):
            def loss(x):
                return jnp.sum((model.apply(model.params, x, (layer,))[layer] - t) ** 2)

            return jax.value_and_grad(loss)(x)

        fast = model_for_input_gradients(model)
        fns = {
            "bare": lambda t=target: jax.block_until_ready(bare(model, images, t)),
            "bare_explicit": lambda t=target, m=fast: jax.block_until_ready(bare(m, images, t)),
        }
        for preset in ("mahendran2015", "mahendran2016"):
            for steps in (SHORT, LONG):
                plan = resolve_plan(model, layer, preset, steps)
                fns[f"{preset}_{steps}"] = lambda plan=plan, layer=layer, t=target: invert(
                    model, layer, t, preset=plan, key=jax.random.key(0)
                )
        best = interleaved_best(fns)
        row = {
            "bare_forward_backward_s": best["bare"],
            "bare_with_explicit_conv_transpose_s": best["bare_explicit"],
        }
        for preset in ("mahendran2015", "mahendran2016"):
            short = resolve_plan(model, layer, preset, SHORT).steps
            long = resolve_plan(model, layer, preset, LONG).steps
            per_step = (best[f"{preset}_{LONG}"] - best[f"{preset}_{SHORT}"]) / (long - short)
            row[preset] = {
                "step_s": per_step,
                "ratio_to_bare": per_step / best["bare"],
                "ratio_to_bare_explicit": per_step / best["bare_explicit"],
            }
        out[layer] = row
    return out


def decoder_training(model) -> dict:
    from cnnvis_jax.data.concepts import ConceptSet
    from cnnvis_jax.inversion import DecoderConfig, train_decoder
    from cnnvis_jax.inversion.decoder import design, init_params
    from cnnvis_jax.inversion.train import _optimizer, _step_fn

    batch = ConceptSet(32, split="train", image_size=64).batch(np.arange(32))["image"]
    out = {}
    for layer in ("conv3", "fc6"):
        config = DecoderConfig(layer=layer)
        d = design(model.layer(layer).shape, model.input.size)
        state = {"p": init_params(d, jax.random.key(0))}
        state["o"] = _optimizer(config).init(state["p"])
        fn = _step_fn(layer, d, 1.0, config, jax.device_count())

        def step(state=state, fn=fn):
            state["p"], state["o"], loss = fn(state["p"], state["o"], model, batch)
            jax.block_until_ready(loss)

        seconds = interleaved_best({"step": step})["step"]
        with tempfile.TemporaryDirectory() as tmp:
            steps = 30
            cfg = DecoderConfig(layer=layer, steps=steps, checkpoint_every=0)
            start = time.perf_counter()
            train_decoder(model, cfg, tmp, progress=False)
            end_to_end = time.perf_counter() - start
        out[layer] = {
            "step_images_per_s": config.batch_size / seconds,
            "end_to_end_images_per_s_incl_compile": steps * config.batch_size / end_to_end,
        }
    return out


def main() -> None:
    model, weights = load()
    images = np.random.default_rng(0).uniform(0, 1, (IMAGES, 64, 64, 3)).astype(np.float32)
    record = {
        "model": f"conceptnet ({weights})",
        "images": IMAGES,
        "regularized": regularized(model, images),
        "decoder_training_batch32": decoder_training(model),
    }
    save("inversion", record)


if __name__ == "__main__":
    main()
