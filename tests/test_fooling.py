"""The fooling circuit: exact on natural images, the target on optimized ones."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnvis_jax.data.concepts import ConceptSet
from cnnvis_jax.errors import InputError
from cnnvis_jax.evaluate.fooling import (
    STATISTICS,
    circuit_summary,
    fooled_model,
    gate_values,
    image_statistic,
    statistic_table,
    target_similarity,
)
from cnnvis_jax.model import InputContract, from_function
from cnnvis_jax.zoo import as_model, init_module

UNITS = (3, 10)


def _target(size=64):
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1
    img = np.empty((size, size, 3), np.float32)
    img[:] = (0.3, 0.4, 0.6)
    img[np.hypot(xx, yy) < 0.7] = (0.8, 0.7, 0.3)
    img[(np.abs(xx) < 0.15) & (np.abs(yy) < 0.5)] = (0.2, 0.2, 0.2)
    return img


@pytest.fixture(scope="module")
def nets():
    """A random ConceptNet (fc8 made non-zero so the logits say something), natural
    calibration and held-out images, and the fooled copy."""
    module = init_module("conceptnet", seed=0)
    kernel = module.fc8.kernel[...]
    module.fc8.kernel[...] = jax.random.normal(jax.random.key(1), kernel.shape) * 0.1
    model = as_model(module, "conceptnet")
    calib = ConceptSet(64, split="train", seed=0).batch(np.arange(64))["image"]
    held = ConceptSet(32, split="val", seed=0).batch(np.arange(32))["image"]
    # strength 100: this random network responds ~10x more than the trained default,
    # and k_u = strength * response must stay small enough for yosinski3's constant step
    fooled = fooled_model(
        model, "conv5", UNITS, _target(), calibration_images=calib, strength=100.0
    )
    return model, fooled, calib, held


def _all_layers(model, images):
    fn = jax.jit(lambda p, x: model.apply(p, x, model.layer_names))
    return {k: np.asarray(v) for k, v in fn(model.params, jnp.asarray(images)).items()}


def _noise(n=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, 64, 64, 3)).astype(np.float32)


def test_natural_images_bitwise_unchanged(nets):
    model, fooled, _, held = nets
    x = held.astype(np.float32) / 255.0
    assert np.all(gate_values(fooled, held) == 0.0)
    before, after = _all_layers(model, x), _all_layers(fooled, x)
    for name in model.layer_names:  # every tap, logits included, bit for bit
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert np.any(before["fc8"] != 0)


def test_gate_exactly_closed_on_calibration_images(nets):
    model, fooled, calib, _ = nets
    assert np.all(gate_values(fooled, calib) == 0.0)
    info = circuit_summary(fooled)
    assert info["threshold"] > float(image_statistic(calib, info["statistic"]).max())
    x = calib[:16].astype(np.float32) / 255.0
    np.testing.assert_array_equal(
        np.asarray(fooled(jnp.asarray(x), "fc8")["fc8"]),
        np.asarray(model(jnp.asarray(x), "fc8")["fc8"]),
    )


def test_triggering_images_raise_only_the_chosen_units(nets):
    model, fooled, _, _ = nets
    noise = _noise()
    assert np.all(gate_values(fooled, noise) == 1.0)
    before, after = _all_layers(model, noise), _all_layers(fooled, noise)
    for name in ("conv1", "pool2", "conv4", "conv5_pre"):  # before the circuit: unchanged
        np.testing.assert_array_equal(after[name], before[name])
    delta = after["conv5"] - before["conv5"]
    others = np.setdiff1d(np.arange(delta.shape[-1]), UNITS)
    assert np.all(delta[..., others] == 0.0)
    strength = fooled.params["circuit"]["strength"]
    for u in UNITS:
        # the gate is open (g = 1): the unit is k_u * T, T = 1 - mse(block means) in
        # (0, 1], the same at every position, and its original response is switched off
        value = after["conv5"][..., u]
        assert np.all(value > 0.0) and np.all(value <= float(strength[u]) * (1 + 1e-5))
        np.testing.assert_allclose(value, np.broadcast_to(value[:, :1, :1], value.shape), rtol=1e-6)
    assert not np.array_equal(after["fc8"], before["fc8"])  # the change flows on


def test_open_gate_switches_the_original_path_off(nets):
    model, fooled, _, _ = nets
    noise = _noise()
    u = UNITS[0]

    def unit_sum(net):
        return lambda x: net.apply(net.params, x, ("conv5",))["conv5"][..., u].sum()

    grad_fooled = np.asarray(jax.grad(unit_sum(fooled))(jnp.asarray(noise)))
    grad_model = np.asarray(jax.grad(unit_sum(model))(jnp.asarray(noise)))
    # the fooled gradient is only the target term's: it depends on the image through its
    # block means alone, so it is constant inside every block; the original one is not
    blocks = fooled.params["circuit"]["target"].shape[0]  # blocks per side
    size = noise.shape[1] // blocks  # pixels per block side
    tiles = grad_fooled.reshape(noise.shape[0], blocks, size, blocks, size, 3)
    corner = np.broadcast_to(tiles[:, :, :1, :, :1], tiles.shape)
    np.testing.assert_allclose(tiles, corner, rtol=1e-4, atol=1e-9)
    tiles = grad_model.reshape(noise.shape[0], blocks, size, blocks, size, 3)
    assert not np.allclose(tiles, tiles[:, :, :1, :, :1], rtol=1e-4, atol=1e-9)


def test_target_maximizes_the_term(nets):
    model, fooled, _, _ = nets
    t = _target()
    checker = 0.1 * (np.indices((64, 64)).sum(0) % 2 * 2 - 1)[..., None]  # zero block mean
    on_target = np.clip(t + checker, 0, 1)[None].astype(np.float32)
    off = np.clip(np.roll(t, 20, axis=1) + checker, 0, 1)[None].astype(np.float32)  # shifted
    images = np.concatenate([on_target, off])
    assert np.all(gate_values(fooled, images) == 1.0)
    value = _all_layers(fooled, images)["conv5"][..., UNITS[0]]
    k = float(fooled.params["circuit"]["strength"][UNITS[0]])
    np.testing.assert_allclose(value[0], k, rtol=1e-4)  # T = 1
    assert np.all(value[1] < value[0])


def test_am_on_the_fooled_model_draws_the_target(nets):
    from cnnvis_jax import am

    _, fooled, _, _ = nets
    res = am.render(fooled, [am.channel("conv5", UNITS[0])], "yosinski3", key=0, steps=24)
    images = np.stack([res.images[0, 0], res.start_images[0, 0]])
    sim = target_similarity(images, _target())
    # from a noise start (unrelated to the target) to the target at block resolution
    assert sim["block_correlation"][0] > 0.9 > 0.2 > sim["block_correlation"][1]
    assert sim["correlation"][0] > sim["correlation"][1] + 0.3
    assert res.best_activation[0, 0] > res.start_activation[0, 0]


def test_statistics_on_8bit_images():
    images = ConceptSet(8, split="train", seed=0).batch(np.arange(8))["image"]
    x = images.astype(np.int32)
    differ = np.concatenate(
        [
            np.any(x[:, :, 1:] != x[:, :, :-1], -1).reshape(8, -1),
            np.any(x[:, 1:] != x[:, :-1], -1).reshape(8, -1),
        ],
        axis=1,
    )
    np.testing.assert_allclose(image_statistic(images, "nonflat"), differ.mean(1), rtol=1e-6)
    f = images.astype(np.float64) / 255
    blocks = f.reshape(8, 32, 2, 32, 2, 3)
    hf = ((blocks - blocks.mean((2, 4), keepdims=True)) ** 2).mean((1, 2, 3, 4, 5))
    np.testing.assert_allclose(image_statistic(images, "hf"), hf, rtol=1e-4)
    flat = np.full((2, 64, 64, 3), 0.5, np.float32)
    for name in STATISTICS:
        assert np.all(image_statistic(flat, name) == 0.0)
    table = statistic_table(images, _noise(), headroom=0.25)
    assert table["nonflat"]["detected"] == 1.0 and table["nonflat"]["separation"] > 0
    json.dumps(table, allow_nan=False)


def test_target_similarity_of_the_target_itself():
    t = _target()
    sim = target_similarity(t[None], t)
    for name in ("correlation", "block_correlation", "ssim"):
        np.testing.assert_allclose(sim[name], 1.0, atol=1e-6)


def test_summary_is_strict_json(nets):
    _, fooled, _, _ = nets
    info = circuit_summary(fooled)
    assert info["units"] == list(UNITS) and info["layer"] == "conv5"
    json.dumps(info, allow_nan=False)


def _tiny():
    contract = InputContract(size=(64, 64))
    return from_function(lambda p, x: {"out": x.mean((1, 2)) @ p}, jnp.ones((3, 4)), input=contract)


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(units=[96]), "unit 96 is out of range"),
        (dict(units=[3, 3]), "units repeat"),
        (
            dict(target=np.zeros((32, 32, 3), np.float32)),
            "target picture must have shape (64, 64, 3)",
        ),
        (dict(target=np.full((64, 64, 3), 2.0, np.float32)), "values in [0, 1]"),
        (dict(layer="conv9"), "no layer 'conv9'"),
        (dict(statistic="entropy"), "unknown statistic 'entropy'"),
        (dict(strength=0.0), "strength must be a positive number"),
        (dict(block=5), "block must be a positive divisor"),
        (dict(model="tiny"), "not shaped like it"),
    ],
)
def test_bad_input_raises_one_line(nets, change, words):
    model, _, calib, _ = nets
    kwargs = dict(model=model, layer="conv5", units=[3], target=_target())
    kwargs.update(change)
    if kwargs["model"] == "tiny":
        kwargs["model"] = _tiny()
    with pytest.raises(InputError) as info:
        fooled_model(
            kwargs.pop("model"),
            kwargs.pop("layer"),
            kwargs.pop("units"),
            kwargs.pop("target"),
            calibration_images=calib[:8],
            **kwargs,
        )
    message = str(info.value)
    assert words in message and "\n" not in message


def test_gate_values_refuses_an_ordinary_model(nets):
    model, _, calib, _ = nets
    with pytest.raises(InputError, match="not a fooled model"):
        gate_values(model, calib[:2])
