"""The render loop on a tiny network: ascent under each preset, vmap == loop,
determinism, sweeps, non-finite objectives, the generator parameterization, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_am_helpers import tiny_model

from cnnvis_jax import am
from cnnvis_jax.am._tree import replace
from cnnvis_jax.errors import InputError

MODEL = tiny_model()
FAST = am.Recipe(
    name="fast",
    steps=6,
    param=am.Pixel("unit", None, 10.0),
    optimizer=am.Ascent("progress", max_lr=1e4, desired=0.5),
    post=(am.Decay(0.01), am.ClipParams()),
)


@pytest.mark.parametrize(
    "objective, preset, steps, batch",
    [
        (am.neuron("conv2", 1), "yosinski3", 10, 1),
        (am.channel("conv2", 2), "lucid", 24, 1),
        (am.class_logit(3), "simonyan", 10, 1),
        (am.direction("conv2", [1.0, -1.0, 0.5, 0.0, 2.0]), "yosinski1", 10, 1),
        (am.layer_norm("conv1"), "yosinski4", 10, 1),
    ],
    ids=["neuron", "channel", "class", "direction", "layer_norm"],
)
def test_each_objective_increases_under_its_preset(objective, preset, steps, batch):
    result = am.render(MODEL, objective, preset, key=0, steps=steps, batch=batch)
    assert result.images.shape == (1, batch, 16, 16, 3)
    assert result.trajectory.shape == (1, steps, batch)
    assert np.all(result.stopped_at == -1)
    assert np.all(result.final_activation > result.start_activation + 1e-3)
    assert np.all(result.best_activation >= result.final_activation - 1e-6)
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1


def test_vmap_equals_loop_and_same_key_same_images():
    units = [0, 2, 4]
    together = am.render(MODEL, [am.channel("conv2", u) for u in units], FAST, key=7)
    again = am.render(MODEL, [am.channel("conv2", u) for u in units], FAST, key=7)
    np.testing.assert_array_equal(together.images, again.images)
    for k, unit in enumerate(units):
        alone = am.render(MODEL, am.channel("conv2", unit), FAST, key=7)
        np.testing.assert_allclose(alone.images[0], together.images[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            alone.final_activation[0], together.final_activation[k], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(alone.trajectory[0], together.trajectory[k], rtol=1e-5)
    other = am.render(MODEL, [am.channel("conv2", u) for u in units], FAST, key=8)
    assert not np.allclose(other.start_images, together.start_images)


def test_sweep_over_hyperparameters_and_seeds_is_one_call():
    recipes = [
        replace(FAST, optimizer=am.Ascent("progress", max_lr=1e4, desired=d)) for d in (0.1, 0.5)
    ]
    sweep = am.render(MODEL, [am.channel("conv2", u) for u in (0, 2, 4)], recipes, key=7, seeds=2)
    assert sweep.images.shape == (2, 2, 3, 1, 16, 16, 3)
    base = am.render(MODEL, [am.channel("conv2", u) for u in (0, 2, 4)], recipes[1], key=7, seeds=2)
    np.testing.assert_allclose(sweep.images[1], base.images[0], rtol=1e-5, atol=1e-6)
    # a larger desired progress climbs faster
    gain = sweep.final_activation - sweep.start_activation
    assert np.all(gain[1] >= gain[0] - 1e-6)
    with pytest.raises(InputError, match="differ only in numbers"):
        am.render(MODEL, am.channel("conv2", 0), [FAST, replace(FAST, steps=3)], key=0)


def test_non_finite_objective_stops_only_that_unit():
    result = am.render(MODEL, [am.neuron("odd", 0), am.neuron("odd", 1)], FAST, key=0)
    assert result.stopped_at[0] == -1 and result.stopped_at[1] == 0
    assert result.final_activation[0, 0] > result.start_activation[0, 0]
    assert np.all(np.isnan(result.trajectory[1]))
    assert np.all(np.isfinite(result.images[1]))  # the last finite image is kept


def test_init_images_and_errors():
    start = np.full((2, 1, 16, 16, 3), 0.5, np.float32)
    start[1] = 0.25
    result = am.render(MODEL, [am.channel("conv2", 0), am.channel("conv2", 0)], FAST, key=0,
                       init_images=start)  # fmt: skip
    np.testing.assert_allclose(result.start_images, start, atol=1e-6)
    with pytest.raises(InputError, match="model expects 16x16"):
        am.render(MODEL, am.channel("conv2", 0), FAST, key=0, init_images=np.zeros((1, 8, 8, 3)))
    with pytest.raises(InputError, match="non-finite"):
        am.render(MODEL, am.channel("conv2", 0), FAST, key=0,
                  init_images=np.full((1, 16, 16, 3), np.nan, np.float32))  # fmt: skip
    with pytest.raises(InputError, match="unknown preset 'lucidd'.*'lucid'"):
        am.render(MODEL, am.channel("conv2", 0), "lucidd", key=0)
    with pytest.raises(InputError, match="no layer 'conv7'"):
        am.render(MODEL, am.channel("conv7", 0), FAST, key=0)
    with pytest.raises(InputError, match=r"valid units are 0\.\.4"):
        am.objectives_for_units(MODEL, "conv2", [0, 9])
    with pytest.raises(InputError, match="outside"):
        am.render(MODEL, am.neuron("conv2", 0, (3, 8)), FAST, key=0)
    with pytest.raises(InputError, match="generator"):
        am.preset("dgn")


def test_generator_parameterization_with_a_random_decoder():
    rng = np.random.default_rng(0)
    code = 8

    def decoder(params, h):  # a small random decoder: code -> 20x20 image in [0, 1]
        x = jax.nn.relu(h @ params["w1"])
        return jax.nn.sigmoid(x @ params["w2"]).reshape(h.shape[0], 20, 20, 3)

    params = {
        "w1": jnp.asarray(rng.normal(size=(code, 32)) * 0.5, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(32, 20 * 20 * 3)) * 0.3, jnp.float32),
    }
    generator = am.Generator(decoder, params, np.zeros(code), np.full(code, 3.0), code)
    recipe = am.preset("dgn", generator=generator)
    assert recipe.steps == 200 and recipe.output == "last"
    result = am.render(MODEL, [am.class_logit(1), am.class_logit(4)], recipe, key=0, steps=15)
    assert result.images.shape == (2, 1, 20, 20, 3)  # the decoder's size; cropped for the model
    assert np.all(result.final_activation > result.start_activation)
    with pytest.raises(InputError, match=r"shape \(5,\) per image, but the generator's code has 8"):
        am.render(MODEL, am.class_logit(1), recipe, key=0, steps=2, init_params=np.zeros((1, 1, 5)))
