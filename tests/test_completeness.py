"""Path completeness: Euler's identity on homogeneous networks, bypasses found, the rule."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnvis_jax.errors import InputError
from cnnvis_jax.evaluate.completeness import path_completeness, unit_completeness
from cnnvis_jax.model import InputContract, from_function

SIZE = 12
DN = ("NHWC", "HWIO", "NHWC")
CONTRACT = InputContract(size=(SIZE, SIZE), mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0))


def _params(seed=0, bias=0.0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "k1": jax.random.normal(k1, (3, 3, 3, 6)) * 0.5,
        "k2": jax.random.normal(k2, (3, 3, 6, 4)) * 0.5,
        "b2": jnp.full((4,), bias),
    }


def _net(bypass: float = 0.0):
    """conv (6, no bias) -> ReLU -> conv (4, bias b2) -> ReLU (+ ``bypass`` * a pixel
    statistic added to channel 0 where the mean of x**2 exceeds 0.45: a gated path that
    skips c1 and opens only for saturated images, not for uniform noise)."""

    def fn(p, x):
        c1 = jax.nn.relu(jax.lax.conv_general_dilated(x, p["k1"], (1, 1), "SAME",
                                                      dimension_numbers=DN))  # fmt: skip
        pre = jax.lax.conv_general_dilated(c1, p["k2"], (1, 1), "SAME", dimension_numbers=DN)
        c2 = jax.nn.relu(pre + p["b2"])
        power = jnp.mean((x + 0.5) ** 2, axis=(1, 2, 3))  # x is normalized: x01 - 0.5
        extra = (bypass * power * (power > 0.45))[:, None, None, None]
        return {"c1": c1, "c2": c2 + extra * (jnp.arange(4) == 0)}

    return fn


def _images(n=6, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def test_homogeneous_network_is_complete():
    model = from_function(_net(), _params(), input=CONTRACT, layer_names=("c1", "c2"))
    layers, c, u = unit_completeness(model, "c2", 1, _images())
    assert layers == ("c1",)
    driven = u > 0
    assert driven.sum() >= 3
    np.testing.assert_allclose(c[driven, 0], 1.0, rtol=1e-4)
    assert np.all(np.isnan(c[~driven, 0]))


def test_bias_share_is_what_is_missing():
    model = from_function(_net(), _params(bias=0.3), input=CONTRACT, layer_names=("c1", "c2"))
    images = _images()
    _, c, u = unit_completeness(model, "c2", 1, images)
    acts = model.apply(model.params, jnp.asarray(images), "c2")["c2"][..., 1]
    active = np.asarray(acts > 0).reshape(len(images), -1).mean(-1)  # share of positions on
    np.testing.assert_allclose(c[:, 0], 1.0 - 0.3 * active / u, rtol=1e-4)


def test_a_bypass_is_flagged_and_the_original_passes():
    images = _images(8)  # uniform noise: mean x**2 = 1/3, the gate stays shut
    vis = np.round(_images(2, seed=5))  # saturated: mean x**2 = 1/2, the gate opens
    plain = from_function(_net(), _params(), input=CONTRACT, layer_names=("c1", "c2"))
    fooled = from_function(_net(bypass=50.0), _params(), input=CONTRACT,
                           layer_names=("c1", "c2"))  # fmt: skip
    # the fooled unit's response is mostly the pixel statistic: c drops by its share
    _, c, u = unit_completeness(fooled, "c2", 0, vis)
    _, c0, u0 = unit_completeness(plain, "c2", 0, vis)
    np.testing.assert_allclose(c[:, 0], u0 * c0[:, 0] / u, rtol=1e-4)
    ok = path_completeness(plain, "c2", 0, vis, images)
    bad = path_completeness(fooled, "c2", 0, vis, images)
    assert ok.passed and not bad.passed and bad.failing_layers == ("c1",)
    on_input = path_completeness(fooled, "c2", 0, vis, images, layers="input")
    assert on_input.layers == ("c1",) and not on_input.passed
    with pytest.raises(InputError, match="or 'input'"):
        path_completeness(fooled, "c2", 0, vis, images, layers="below")
    record = json.loads(json.dumps(bad.summary(), allow_nan=False))
    assert record["layers"][0]["layer"] == "c1" and record["passed"] is False


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda m: unit_completeness(m, "c1", 0, _images()), "no layer below"),
        (lambda m: unit_completeness(m, "c2", 9, _images()), "unit 9 is out of range"),
        (lambda m: unit_completeness(m, "c9", 0, _images()), "no layer 'c9'"),
        (
            lambda m: path_completeness(m, "c2", 1, _images(), np.zeros((2, SIZE, SIZE, 3))),
            "none of the top images drives",
        ),  # fmt: skip
    ],
)
def test_bad_input_raises_one_line(call, words):
    model = from_function(_net(), _params(bias=-5.0), input=CONTRACT, layer_names=("c1", "c2"))
    if words != "none of the top images drives":
        model = from_function(_net(), _params(), input=CONTRACT, layer_names=("c1", "c2"))
    with pytest.raises(InputError) as info:
        call(model)
    assert words in str(info.value) and "\n" not in str(info.value)
