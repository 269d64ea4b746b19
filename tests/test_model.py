"""The Model abstraction: wrapping functions and NNX modules, checks, pytree-ness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cnnvis_jax as cv
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import InputContract, check_images, from_function, from_nnx

SMALL = InputContract(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def tiny_fn(params, x):
    """A hand-written two-conv model returning named taps (NHWC)."""
    dn = ("NHWC", "HWIO", "NHWC")
    a = jax.lax.conv_general_dilated(
        x, params["w1"], (2, 2), ((1, 1), (1, 1)), dimension_numbers=dn
    )
    r = jnp.maximum(a, 0)
    b = jax.lax.conv_general_dilated(
        r, params["w2"], (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn
    )
    return {"conv1": r, "conv2": jax.nn.relu(b), "logits": b.mean(axis=(1, 2))}


@pytest.fixture
def tiny_params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "w1": jax.random.normal(k1, (3, 3, 3, 4)) * 0.3,
        "w2": jax.random.normal(k2, (3, 3, 4, 5)) * 0.3,
    }


def test_from_function_catalog_and_apply(tiny_params):
    model = from_function(tiny_fn, tiny_params, input=SMALL, name="tiny", logits_layer="logits")
    assert model.layer_names == ("conv1", "conv2", "logits")
    assert model.layer("conv1").shape == (8, 8, 4)
    assert model.layer("conv2").shape == (8, 8, 5)
    rf1 = model.layer("conv1").receptive_field
    assert (rf1.size, rf1.stride, rf1.offset) == ((3, 3), (2, 2), (-1, -1))
    rf2 = model.layer("conv2").receptive_field
    assert (rf2.size, rf2.stride) == ((7, 7), (2, 2))
    assert model.layer("logits").receptive_field is None
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    out = model.apply(model.params, images, ["conv2"])
    expected = tiny_fn(tiny_params, SMALL.normalize(images))["conv2"]
    np.testing.assert_allclose(out["conv2"], expected, rtol=1e-6)


def test_model_is_a_pytree_of_params_only(tiny_params):
    model = from_function(tiny_fn, tiny_params, input=SMALL)
    leaves = jax.tree_util.tree_leaves(model)
    assert len(leaves) == 2
    images = jax.random.uniform(jax.random.key(2), (1, 16, 16, 3))

    @jax.jit
    def act(m, x):
        return m.apply(m.params, x, "conv2")["conv2"].sum()

    doubled = jax.tree_util.tree_map(lambda p: p * 2, model)
    assert doubled.layers == model.layers
    assert float(act(model, images)) != float(act(doubled, images))
    grads = jax.grad(lambda m: act(m, images))(model)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(model)


def test_unknown_layer_lists_valid_names(tiny_params):
    model = from_function(tiny_fn, tiny_params, input=SMALL)
    with pytest.raises(InputError, match=r"no layer 'conv3'.*conv1, conv2, logits.*Did you mean"):
        model.resolve("conv3")


def test_unit_and_class_checks(tiny_params):
    model = from_function(
        tiny_fn, tiny_params, input=SMALL, class_names=list("abcde"), logits_layer="logits"
    )
    model.check_unit("conv2", 4)
    with pytest.raises(InputError, match=r"valid units are 0\.\.4"):
        model.check_unit("conv2", 5)
    with pytest.raises(InputError, match=r"valid classes are 0\.\.4"):
        model.check_class(7)
    headless = from_function(tiny_fn, tiny_params, input=SMALL)
    with pytest.raises(InputError, match="no classifier"):
        headless.check_class(0)


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((16, 16, 3), np.float32), "rank 4"),
        (np.zeros((1, 3, 16, 16), np.float32), "channels-first"),
        (np.zeros((1, 16, 16, 4), np.float32), "3 RGB channels"),
        (np.zeros((1, 16, 16, 3), np.uint8), "floating point"),
        (np.zeros((1, 20, 16, 3), np.float32), "expects 16x16"),
        (np.full((1, 16, 16, 3), np.nan, np.float32), "non-finite"),
        ([1, 2, 3], "must be an array"),
    ],
)
def test_bad_images_are_named(images, message):
    with pytest.raises(InputError, match=message):
        check_images(images, SMALL)


def test_shape_checks_work_under_jit(tiny_params):
    model = from_function(tiny_fn, tiny_params, input=SMALL)
    with pytest.raises(InputError, match="3 RGB channels"):
        jax.jit(lambda x: model(x, "conv1"))(jnp.zeros((1, 16, 16, 1)))


def test_input_contract_round_trip_and_bgr():
    contract = InputContract(
        size=(4, 4), mean=(123.0, 117.0, 104.0), value_scale=255.0, channel_order="BGR"
    )
    x = jax.random.uniform(jax.random.key(0), (1, 4, 4, 3))
    y = contract.normalize(x)
    np.testing.assert_allclose(y[..., 0], x[..., 2] * 255 - 104, rtol=1e-6)
    np.testing.assert_allclose(contract.denormalize(y), x, atol=1e-5)
    with pytest.raises(InputError, match="channel_order"):
        InputContract(size=(4, 4), channel_order="GBR")


class UserNet(nnx.Module):
    """A user's NNX module, written without any knowledge of cnnvis_jax."""

    def __init__(self, rngs):
        self.features = nnx.List(
            [
                nnx.Conv(3, 4, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs),
                nnx.Conv(4, 6, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=rngs),
            ]
        )
        self.head = nnx.Linear(6, 3, rngs=rngs)
        self.calls = 0

    def __call__(self, x):
        for conv in self.features:
            x = jax.nn.relu(conv(x))
        return self.head(x.mean(axis=(1, 2)))


def test_from_nnx_captures_submodules_without_editing():
    net = UserNet(nnx.Rngs(0))
    before = jax.tree_util.tree_map(np.asarray, nnx.state(net))
    model = from_nnx(net, input=SMALL, layers=["features.0", "features.1", "head"])
    assert model.layer("features.1").shape == (8, 8, 6)
    assert model.layer("head").shape == (3,)
    rf = model.layer("features.1").receptive_field
    assert (rf.size, rf.stride) == ((5, 5), (2, 2))
    x = jax.random.uniform(jax.random.key(3), (2, 16, 16, 3))
    out = model(x, ["features.0", "head"])
    np.testing.assert_allclose(out["head"], net(SMALL.normalize(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        out["features.0"], net.features[0](SMALL.normalize(x)), rtol=1e-5, atol=1e-6
    )
    # the user's module is untouched (no recorder left behind, same weights)
    assert isinstance(net.features[0], nnx.Conv)
    after = jax.tree_util.tree_map(np.asarray, nnx.state(net))
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)


def count_primitive(jaxpr, name):
    """Occurrences of primitive ``name`` in a jaxpr, sub-jaxprs included."""
    total = 0
    for eqn in jaxpr.eqns:
        total += eqn.primitive.name == name
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                total += count_primitive(inner, name)
    return total


def test_from_nnx_stops_at_the_deepest_requested_layer():
    net = UserNet(nnx.Rngs(0))
    model = from_nnx(net, input=SMALL, layers=["features.0", "head"])
    jaxpr = jax.make_jaxpr(lambda p, x: model.apply(p, x, ["features.0"]))(
        model.params, jnp.zeros((1, 16, 16, 3))
    )
    assert count_primitive(jaxpr.jaxpr, "conv_general_dilated") == 1


def test_from_nnx_unknown_path():
    with pytest.raises(InputError, match="no sub-module 'features.5'"):
        from_nnx(UserNet(nnx.Rngs(0)), input=SMALL, layers=["features.5"])


def test_public_api_exports_model():
    assert cv.Model is cv.model.Model
