"""A tiny network for the activation-maximization tests (no tests here)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnvis_jax.model import InputContract, from_function

DN = ("NHWC", "HWIO", "NHWC")


def tiny_apply(params, x):
    """conv 3x3 (4) -> ReLU -> max-pool 2x2 -> conv 3x3 (5) -> ReLU -> fc (6 logits)."""
    c1 = lax.conv_general_dilated(x, params["w1"], (1, 1), "SAME", dimension_numbers=DN)
    a1 = jax.nn.relu(c1 + params["b1"])
    p1 = lax.reduce_window(a1, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    c2 = lax.conv_general_dilated(p1, params["w2"], (1, 1), "SAME", dimension_numbers=DN)
    a2 = jax.nn.relu(c2 + params["b2"])
    fc = a2.reshape(a2.shape[0], -1) @ params["w3"] + params["b3"]
    # "odd": unit 0 is finite, unit 1 is the log of a negative number (NaN)
    m = a2.mean(axis=(1, 2, 3))
    odd = jnp.stack([m, jnp.log(-1.0 - m)], axis=-1)
    return {"conv1": a1, "conv2": a2, "fc": fc, "odd": odd}


def tiny_model(size: int = 16, seed: int = 0):
    """The tiny network at ``size`` x ``size`` with random weights (6 classes)."""
    rng = np.random.default_rng(seed)

    def normal(*shape, scale):
        return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)

    params = {
        "w1": normal(3, 3, 3, 4, scale=0.5),
        "b1": jnp.full((4,), 0.01),
        "w2": normal(3, 3, 4, 5, scale=0.3),
        "b2": jnp.full((5,), 0.01),
        "w3": normal((size // 2) ** 2 * 5, 6, scale=0.1),
        "b3": jnp.zeros((6,)),
    }
    contract = InputContract(size=(size, size), mean=(0.5,) * 3, std=(0.25,) * 3)
    return from_function(
        tiny_apply,
        params,
        input=contract,
        name="tiny",
        class_names=tuple("abcdef"),
        logits_layer="fc",
    )
