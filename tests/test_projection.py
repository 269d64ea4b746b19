"""Zeiler projections: vmap over units == per-unit gradients, receptive-field support,
switches vs centre unpooling, fully connected layers, validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnvis_jax import zoo
from cnnvis_jax.deconv import project
from cnnvis_jax.deconv.projection import _compiled
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import InputContract, from_function
from cnnvis_jax.rules import with_rules

DN = ("NHWC", "HWIO", "NHWC")


def tiny_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    normal = lambda scale, *shape: jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)  # noqa: E731
    return {
        "w1": normal(0.5, 3, 3, 3, 4),
        "b1": jnp.full((4,), 0.05),
        "w2": normal(0.5, 3, 3, 4, 5),
        "b2": jnp.full((5,), 0.05),
        "w3": normal(0.1, 8 * 8 * 5, 6),
        "b3": jnp.full((6,), 0.1),
    }


def tiny_apply(params, x):
    """conv 3x3 (4) -> ReLU -> max-pool 2x2/2 -> conv 3x3 (5) -> ReLU -> fc (6) -> ReLU."""
    c1 = lax.conv_general_dilated(x, params["w1"], (1, 1), "SAME", dimension_numbers=DN)
    a1 = jax.nn.relu(c1 + params["b1"])
    p1 = lax.reduce_window(a1, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    c2 = lax.conv_general_dilated(p1, params["w2"], (1, 1), "SAME", dimension_numbers=DN)
    a2 = jax.nn.relu(c2 + params["b2"])
    fc = jax.nn.relu(a2.reshape(a2.shape[0], -1) @ params["w3"] + params["b3"])
    return {"conv1": a1, "pool1": p1, "conv2": a2, "fc": fc}


@pytest.fixture(scope="module")
def tiny():
    return from_function(tiny_apply, tiny_params(), input=InputContract(size=(16, 16)), name="tiny")


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(1).uniform(size=(3, 16, 16, 3)), jnp.float32)


def reference(model, layer, rule):
    """``(images, index, value) -> value * d activation[index] / d images``, where
    ``index`` is (n, row, col, unit) or (n, unit): one scalar at a time, no vmap."""
    ruled = with_rules(lambda im: model.apply(model.params, im, (layer,))[layer], rule)

    @jax.jit
    def grad(images, index, value):
        return value * jax.grad(lambda im: ruled(im)[tuple(index)])(images)

    return lambda images, index, value: np.asarray(grad(images, jnp.asarray(index), value))


# --- vmap over units == per-unit loop ---------------------------------------------------


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_vmapped_units_equal_per_unit_gradients(tiny, images, rule):
    units = [4, 0, 2]
    out = project(tiny, tiny.params, images, "conv2", units, rule=rule)
    assert out.projections.shape == (3, 3, 16, 16, 3)
    assert out.positions.shape == (3, 3, 2) and out.values.shape == (3, 3)
    act = np.asarray(tiny.apply(tiny.params, images, "conv2")["conv2"])
    grad = reference(tiny, "conv2", rule)
    for u, unit in enumerate(units):
        for n in range(images.shape[0]):
            flat = act[n, :, :, unit].reshape(-1)
            r, c = divmod(int(np.argmax(flat)), act.shape[2])  # first maximum
            assert tuple(out.positions[u, n]) == (r, c)
            assert out.values[u, n] == pytest.approx(flat.max(), rel=1e-6)
            expected = grad(images, (n, r, c, unit), out.values[u, n])
            others = np.delete(expected, n, axis=0)
            assert not others.any()  # images do not mix
            np.testing.assert_allclose(out.projections[u, n], expected[n], rtol=1e-5, atol=1e-6)
    single = project(tiny, tiny.params, images, "conv2", [units[1]], rule=rule)
    np.testing.assert_allclose(single.projections[0], out.projections[1], rtol=1e-5, atol=1e-6)


def test_units_are_data_one_program_per_unit_count(tiny, images):
    fn = _compiled("conv1", False, jax.device_count())
    project(tiny, tiny.params, images, "conv1", [0, 1])
    size = fn._cache_size()
    project(tiny, tiny.params, images, "conv1", [2, 3])
    project(tiny, tiny.params, images, "conv1", [3, 1])
    assert fn._cache_size() == size


def test_given_positions(tiny, images):
    where = np.array([[1, 2], [7, 0], [3, 3]])
    out = project(tiny, tiny.params, images, "conv2", [1, 3], positions=where)
    act = np.asarray(tiny.apply(tiny.params, images, "conv2")["conv2"])
    assert (out.positions == where[None]).all()
    grad = reference(tiny, "conv2", "deconvnet")
    for u, unit in enumerate([1, 3]):
        for n, (r, c) in enumerate(where):
            assert out.values[u, n] == pytest.approx(act[n, r, c, unit], rel=1e-6)
            expected = grad(images, (n, r, c, unit), act[n, r, c, unit])
            np.testing.assert_allclose(out.projections[u, n], expected[n], rtol=1e-5, atol=1e-6)


# --- support, pooling ablation ------------------------------------------------------------


def assert_support_inside_field(model, out, layer):
    rf = model.layer(layer).receptive_field
    size = model.input.size
    nonzero = 0
    for u in range(out.projections.shape[0]):
        for n in range(out.projections.shape[1]):
            top, left, bottom, right = rf.box(*out.positions[u, n], size)
            energy = np.abs(out.projections[u, n]).sum(-1)
            outside = energy.copy()
            outside[top:bottom, left:right] = 0.0
            assert not outside.any(), (u, n)
            nonzero += energy.any()
    assert nonzero > 0  # the check above is not vacuous


def test_support_lies_in_receptive_field_tiny(tiny, images):
    out = project(tiny, tiny.params, images, "conv2", [0, 1, 2, 3, 4])
    assert_support_inside_field(tiny, out, "conv2")


@pytest.fixture(scope="module")
def conceptnet():
    return zoo.random_model("conceptnet", warn=False)


def test_center_unpooling_differs_from_switches_on_conceptnet(conceptnet):
    from cnnvis_jax.data import ConceptSet

    images = ConceptSet(2, split="val").batch(np.arange(2))["image"].astype(np.float32) / 255.0
    switches = project(conceptnet, conceptnet.params, images, "conv2", [0, 5], pool="switches")
    center = project(conceptnet, conceptnet.params, images, "conv2", [0, 5], pool="center")
    np.testing.assert_array_equal(switches.positions, center.positions)  # same forward
    np.testing.assert_allclose(switches.values, center.values, rtol=1e-6)
    for u in range(2):
        for n in range(2):
            a, b = switches.projections[u, n], center.projections[u, n]
            assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()
    assert_support_inside_field(conceptnet, switches, "conv2")
    assert_support_inside_field(conceptnet, center, "conv2")


# --- fully connected layers ----------------------------------------------------------------


def test_fully_connected_layer_projects_the_units_value(tiny, images):
    out = project(tiny, tiny.params, images, "fc", [0, 5])
    act = np.asarray(tiny.apply(tiny.params, images, "fc")["fc"])
    assert (out.positions == -1).all()
    np.testing.assert_allclose(out.values, act[:, [0, 5]].T, rtol=1e-6)
    grad = reference(tiny, "fc", "deconvnet")
    for u, unit in enumerate([0, 5]):
        for n in range(images.shape[0]):
            expected = grad(images, (n, unit), act[n, unit])[n]
            np.testing.assert_allclose(out.projections[u, n], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="fully connected.*positions=None"):
        project(tiny, tiny.params, images, "fc", [0], positions=(0, 0))


# --- validation ------------------------------------------------------------------------------


def test_validation_errors(tiny, images):
    with pytest.raises(InputError, match="no layer 'conv9'"):
        project(tiny, tiny.params, images, "conv9", [0])
    with pytest.raises(InputError, match="unit 5 is out of range.*0..4"):
        project(tiny, tiny.params, images, "conv2", [0, 5])
    with pytest.raises(InputError, match="unknown backward rule 'zeiler'"):
        project(tiny, tiny.params, images, "conv2", [0], rule="zeiler")
    with pytest.raises(InputError, match="unknown pool mode"):
        project(tiny, tiny.params, images, "conv2", [0], pool="mean")
    with pytest.raises(InputError, match="outside layer 'conv2'.s 8x8 grid"):
        project(tiny, tiny.params, images, "conv2", [0], positions=(8, 0))
    with pytest.raises(InputError, match="do not fit"):
        project(tiny, tiny.params, images, "conv2", [0], positions=np.zeros((2, 2), int))
    with pytest.raises(InputError, match="floating point"):
        project(tiny, tiny.params, (np.asarray(images) * 255).astype(np.uint8), "conv2", [0])
    with pytest.raises(InputError, match="integers"):
        project(tiny, tiny.params, images, "conv2", [0.5])


def test_model_without_relu_needs_the_gradient_rule(images):
    linear = from_function(
        lambda p, x: {"conv": lax.conv_general_dilated(x, p, (1, 1), "SAME", dimension_numbers=DN)},
        jnp.ones((3, 3, 3, 2)),
        input=InputContract(size=(16, 16)),
        name="linear",
    )
    with pytest.raises(InputError, match="no ReLU.*rule='gradient'"):
        project(linear, linear.params, images, "conv", [0])
    out = project(linear, linear.params, images, "conv", [1], rule="gradient")
    assert np.abs(out.projections).sum() > 0
