"""Objectives: values by hand, immutable algebra, the diversity sign, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_am_helpers import tiny_model

from cnnvis_jax import am
from cnnvis_jax.errors import InputError

RNG = np.random.default_rng(0)
ACTS = {
    "conv2": jnp.asarray(RNG.normal(size=(3, 4, 6, 5)), jnp.float32),
    "fc": jnp.asarray(RNG.normal(size=(3, 6)), jnp.float32),
}


def test_terms_by_hand():
    a, f = np.asarray(ACTS["conv2"]), np.asarray(ACTS["fc"])
    np.testing.assert_allclose(am.neuron("conv2", 3)(ACTS), a[:, 2, 3, 3], rtol=1e-6)
    np.testing.assert_allclose(am.neuron("conv2", 1, (0, 5))(ACTS), a[:, 0, 5, 1], rtol=1e-6)
    np.testing.assert_allclose(am.neuron("fc", 4)(ACTS), f[:, 4], rtol=1e-6)
    np.testing.assert_allclose(am.channel("conv2", 2)(ACTS), a[..., 2].mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(am.class_logit(5, "fc")(ACTS), f[:, 5], rtol=1e-6)
    np.testing.assert_allclose(
        am.layer_norm("conv2")(ACTS), (a**2).reshape(3, -1).mean(1), rtol=1e-5
    )
    v = np.array([1.0, 0, 2, 0, -1], np.float32)
    flat = a.reshape(3, -1, 5)
    dot = flat @ (v / np.linalg.norm(v))
    np.testing.assert_allclose(am.direction("conv2", v)(ACTS), dot.mean(1), rtol=1e-5, atol=1e-6)
    cos = dot / np.linalg.norm(flat, axis=-1)
    want = (dot * np.maximum(cos, 0.1) ** 2).mean(1)
    np.testing.assert_allclose(am.direction("conv2", v, 2.0)(ACTS), want, rtol=1e-5, atol=1e-6)


def test_algebra_never_mutates():
    a, b = am.channel("conv2", 0), am.neuron("fc", 1)
    before = jax.tree_util.tree_leaves((a, b))
    combo = 2.0 * a - b / 4 + (-a)
    assert jax.tree_util.tree_leaves((a, b)) == before
    assert a.unit == 0 and b.unit == 1 and b.position is None
    want = 2 * a(ACTS) - b(ACTS) / 4 - a(ACTS)
    np.testing.assert_allclose(combo(ACTS), want, rtol=1e-5)
    assert combo.layers == ("conv2", "fc")
    assert sum([a, b])(ACTS).shape == (3,)
    with pytest.raises(InputError, match="scalar"):
        a * b
    with pytest.raises(InputError, match="scalar"):
        a * np.ones(3)


def test_diversity_rewards_difference():
    """Distill's sign: identical images score -(B-1) each; different ones score more."""
    same = {"conv2": jnp.broadcast_to(ACTS["conv2"][:1], (3, 4, 6, 5))}
    d = jax.jit(am.diversity("conv2"))
    np.testing.assert_allclose(d(same), [-2.0, -2.0, -2.0], rtol=1e-5)
    positive = {"conv2": jnp.abs(ACTS["conv2"])}
    assert np.all(np.asarray(d(ACTS)) > -2.0)
    assert float(d(positive).sum()) > float(d(same).sum())
    # maximizing the term pushes Gram matrices apart
    x = jnp.abs(ACTS["conv2"]) + 1.0
    grad = jax.jit(jax.grad(lambda x: d({"conv2": x}).sum()))(x)
    step = x + 0.1 * grad
    assert float(d({"conv2": step}).sum()) > float(d({"conv2": x}).sum())


def test_stack_and_units_as_data():
    stacked = am.stack([am.channel("conv2", u) for u in range(4)])
    np.testing.assert_array_equal(stacked.unit, [0, 1, 2, 3])
    values = jax.vmap(lambda o: o(ACTS))(stacked)
    assert values.shape == (4, 3)
    with pytest.raises(InputError, match="same structure"):
        am.stack([am.channel("conv2", 0), am.neuron("conv2", 0)])
    with pytest.raises(InputError, match="no objectives"):
        am.stack([])


def test_bind_checks_against_the_model():
    model = tiny_model()
    bound = am.bind(am.class_logit(2), model)
    assert bound.layers == ("fc",)
    with pytest.raises(InputError, match="no layer 'conv9'"):
        am.bind(am.channel("conv9", 0), model)
    with pytest.raises(InputError, match=r"valid units are 0\.\.4"):
        am.bind(am.channel("conv2", 5), model)
    with pytest.raises(InputError, match=r"valid classes are 0\.\.5"):
        am.bind(am.class_logit(6), model)
    with pytest.raises(InputError, match=r"outside layer 'conv2'.s 8x8 map"):
        am.bind(am.neuron("conv2", 0, (8, 1)), model)
    with pytest.raises(InputError, match="fully connected"):
        am.bind(am.neuron("fc", 0, (0, 0)), model)
    with pytest.raises(InputError, match="channels"):
        am.bind(am.direction("conv2", np.ones(3)), model)
