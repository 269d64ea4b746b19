"""Interval bounds: sound (never below what any image reaches), exact for one linear
layer, planted dead units proven dead, live units never, and an operation outside the
evaluator refused instead of guessed; an integer cast is not trusted."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from test_am_helpers import tiny_model

from cnnvis_jax.bounds import Unbounded, dead_units, upper_bounds
from cnnvis_jax.model import InputContract, from_function


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def test_bounds_are_never_below_what_images_reach(tiny):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (64, 16, 16, 3)).astype(np.float32)
    images[:8] = rng.integers(0, 2, (8, 16, 16, 3))  # corners of the box too
    for layer in ("conv1", "conv2", "fc"):
        acts = np.asarray(tiny.apply(tiny.params, images, (layer,))[layer])
        reached = acts.reshape(-1, acts.shape[-1]).max(axis=0)
        assert np.all(upper_bounds(tiny, layer) >= reached - 1e-4), layer


def test_one_linear_layer_is_bounded_exactly():
    w = np.random.default_rng(1).normal(size=(3, 3, 3, 4)).astype(np.float32)
    b = np.asarray([0.1, -0.2, 0.3, -50.0], np.float32)
    contract = InputContract(size=(5, 5), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))

    def apply(params, x):
        from jax import lax

        out = lax.conv_general_dilated(x, params["w"], (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        return {"conv": out + params["b"]}

    model = from_function(apply, {"w": w, "b": b}, input=contract, name="linear")
    mean, std = np.asarray(contract.mean), np.asarray(contract.std)
    lo, hi = (0 - mean) / std, (1 - mean) / std  # the normalized input range per channel
    exact = np.maximum(w * lo[:, None], w * hi[:, None]).sum(axis=(0, 1, 2)) + b
    bound = upper_bounds(model, "conv")
    assert np.all(bound >= exact - 1e-6)  # sound
    np.testing.assert_allclose(bound, exact, rtol=1e-3, atol=1e-2)  # exact up to the widening
    np.testing.assert_array_equal(dead_units(model, "conv"), [False, False, False, True])


def test_planted_dead_units_are_proven_and_live_ones_are_not(tiny):
    params = {**tiny.params, "b2": jnp.asarray(tiny.params["b2"]).at[jnp.asarray([1, 3])].set(-1e4)}
    planted = tiny.replace(params=params)
    dead = dead_units(planted, "conv2")
    np.testing.assert_array_equal(np.flatnonzero(dead), [1, 3])
    assert not np.any(dead_units(tiny, "conv2"))


def test_an_operation_outside_the_evaluator_is_refused():
    def apply(params, x):
        return {"sorted": jnp.sort(x.reshape(x.shape[0], -1), axis=1)[:, None, None, :3]}

    model = from_function(apply, {}, input=InputContract(size=(2, 2)), name="sorting")
    with pytest.raises(Unbounded, match="sort"):
        upper_bounds(model, "sorted")
    assert dead_units(model, "sorted") is None


def test_figures_ask_only_about_silent_units(tiny):
    from cnnvis_jax.deconv.figures import proven_dead

    params = {**tiny.params, "b2": jnp.asarray(tiny.params["b2"]).at[3].set(-1e4)}
    planted = tiny.replace(params=params)
    assert proven_dead(planted, "conv2", [0, 3]) == (3,)  # 0: silent on some data, not dead
    assert proven_dead(planted, "conv2", []) == ()


def test_a_cast_to_an_integer_type_is_not_trusted():
    def apply(params, x):
        return {"ints": (x * 3).astype(jnp.int32).astype(jnp.float32)[:, :1, :1, :]}

    model = from_function(apply, {}, input=InputContract(size=(2, 2)), name="casting")
    with pytest.raises(Unbounded, match="cast"):
        upper_bounds(model, "ints")
