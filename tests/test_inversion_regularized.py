"""Regularized inversion: recovery on linear/identity maps, vmap == loop, masks, bad input."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnvis_jax.errors import InputError
from cnnvis_jax.inversion import (
    Mahendran2015,
    Mahendran2016,
    Stage,
    central_neighbourhood,
    channel_group,
    features_of,
    invert,
    invert_layers,
)
from cnnvis_jax.model import InputContract, from_function

DN = ("NHWC", "HWIO", "NHWC")
SIZE = (12, 12)


def tiny_apply(params, x):
    """conv 3x3 (4) -> ReLU -> max-pool 2/2 -> fc (5)."""
    c1 = lax.conv_general_dilated(x, params["w1"], (1, 1), "SAME", dimension_numbers=DN)
    a1 = jax.nn.relu(c1 + params["b1"])
    p1 = lax.reduce_window(a1, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return {"conv": a1, "fc": p1.reshape(p1.shape[0], -1) @ params["w2"]}


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(0.5 * rng.standard_normal((3, 3, 3, 4)), jnp.float32),
        "b1": jnp.full((4,), 0.05),
        "w2": jnp.asarray(0.1 * rng.standard_normal((6 * 6 * 4, 5)), jnp.float32),
    }
    contract = InputContract(size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return from_function(tiny_apply, params, input=contract, name="tiny")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(0.1, 0.9, (3, *SIZE, 3)).astype(np.float32)


def linear_model(kind: str):
    """identity (the normalized input itself) or a random linear map with more
    outputs than inputs (injective), on 8x8 images."""
    contract = InputContract(size=(8, 8), mean=(0.5, 0.5, 0.5))
    if kind == "identity":
        return from_function(lambda p, x: {"out": x}, {}, input=contract, name="identity")
    w = np.random.default_rng(2).normal(size=(192, 768)).astype(np.float32) / np.sqrt(768)
    return from_function(
        lambda p, x: {"out": x.reshape(x.shape[0], -1) @ p["w"]},
        {"w": jnp.asarray(w)},
        input=contract,
        name="linear",
    )


@pytest.mark.parametrize("kind", ["identity", "linear"])
@pytest.mark.parametrize("preset", ["mahendran2015", "mahendran2016"])
def test_priors_off_recovers_the_image(kind, preset):
    model = linear_model(kind)
    x0 = np.random.default_rng(3).uniform(0.2, 0.8, (2, 8, 8, 3)).astype(np.float32)
    target = features_of(model, x0, ["out"])["out"]
    if preset == "mahendran2015":  # the published step, 30x the rate (8x8 images: tiny B)
        plan = Mahendran2015().plan(model, "out").without_priors()
        plan = dataclasses.replace(plan, stages=(Stage(((0.12, 200),)),))
    else:  # the published step and rates, without jitter
        plan = Mahendran2016(jitter=False).plan(model, "out").without_priors().with_steps(200)
    result = invert(model, "out", target, preset=plan, key=jax.random.key(0))
    assert result.finite.all()
    np.testing.assert_allclose(result.images[0], x0, atol=2e-2)
    assert result.feature_error.max() < 1e-3


def test_vmap_over_images_equals_loop(tiny, images):
    target = features_of(tiny, images, ["conv"])["conv"]
    plan = Mahendran2015().plan(tiny, "conv").with_steps(12)
    start = np.full_like(images, 0.5)
    together = invert(tiny, "conv", target, preset=plan, key=jax.random.key(0), init=start)
    for i in range(len(images)):
        alone = invert(tiny, "conv", target[i : i + 1], preset=plan, key=jax.random.key(0),
                       init=start[i : i + 1])  # fmt: skip
        np.testing.assert_allclose(alone.images[0, 0], together.images[0, i], atol=1e-5)
        np.testing.assert_allclose(alone.energy[0, 0], together.energy[0, i], rtol=1e-4)


def test_layers_and_restarts_are_lanes(tiny, images):
    feats = features_of(tiny, images[:2], ["conv", "fc"])
    plan = Mahendran2015().plan(tiny, "conv").with_steps(8)
    key = jax.random.key(1)
    both = invert_layers(tiny, feats, preset=plan, key=key, restarts=2)
    assert set(both) == {"conv", "fc"}
    assert both["fc"].images.shape == (2, 2, *SIZE, 3) and both["fc"].energy.shape == (2, 2, 8)
    assert not np.allclose(both["conv"].images[0], both["conv"].images[1])  # restarts differ
    again = invert_layers(tiny, feats, preset=plan, key=key, restarts=2)
    np.testing.assert_array_equal(both["fc"].images, again["fc"].images)  # same key, same result
    start = np.full_like(images[:2], 0.5)
    joint = invert_layers(tiny, feats, preset=plan, key=key, init=start)
    single = invert(tiny, "fc", feats["fc"], preset=plan, key=key, init=start)
    np.testing.assert_allclose(joint["fc"].images, single.images, atol=1e-5)
    best, err = both["conv"].best()
    assert best.shape == (2, *SIZE, 3) and err.shape == (2,)


def test_mask_ignores_features_outside_it(tiny, images):
    target = features_of(tiny, images[:1], ["conv"])["conv"]
    mask = central_neighbourhood((12, 12, 4), 4) * channel_group((12, 12, 4), 0)
    noisy = np.where(mask > 0, target, 123.0).astype(np.float32)
    plan = Mahendran2016().plan(tiny, "conv").with_steps(6)
    start = np.full_like(images[:1], 0.5)
    a = invert(tiny, "conv", target, preset=plan, key=jax.random.key(0), mask=mask, init=start)
    b = invert(tiny, "conv", noisy, preset=plan, key=jax.random.key(0), mask=mask, init=start)
    np.testing.assert_allclose(a.images, b.images, atol=1e-6)


def test_masks_follow_the_reference_placement():
    m = central_neighbourhood((7, 8, 2), 3)
    rows, cols = np.nonzero(m[..., 0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 4, 2, 4)
    assert central_neighbourhood((5, 5, 1), 99).sum() == 25
    g = channel_group((6,), 1)
    np.testing.assert_array_equal(g, [0, 0, 0, 1, 1, 1])
    with pytest.raises(InputError, match="spatial"):
        central_neighbourhood((6,), 2)


def test_bad_targets_are_refused(tiny, images):
    key = jax.random.key(0)
    with pytest.raises(InputError, match=r"shape \(2, 5, 5, 4\).*\(N, 12, 12, 4\)"):
        invert(tiny, "conv", np.ones((2, 5, 5, 4)), key=key)
    target = np.array(features_of(tiny, images[:2], ["fc"])["fc"])
    target[1] = 0
    with pytest.raises(InputError, match=r"images \[1\].*divide by zero"):
        invert(tiny, "fc", target, key=key)
    target[1, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        invert(tiny, "fc", target, key=key)


def test_non_finite_lane_is_reported_and_others_continue():
    contract = InputContract(size=(4, 4))
    model = from_function(lambda p, x: {"root": jnp.sqrt(x)}, {}, input=contract, name="sqrt")
    x0 = np.full((2, 4, 4, 3), 0.5, np.float32)
    target = features_of(model, x0, ["root"])["root"]
    # image 0 starts at its solution (zero gradient); image 1 above it, so the huge step
    # throws it below zero, where the square root is NaN
    start = np.stack([np.full((4, 4, 3), 0.5), np.full((4, 4, 3), 0.9)]).astype(np.float32)
    plan = dataclasses.replace(
        Mahendran2015().plan(model, "root").without_priors(), grad_scale=1e12
    )
    with pytest.warns(RuntimeWarning, match=r"image 1 \(restart 0\) hit non-finite"):
        result = invert(model, "root", target, preset=plan.with_steps(60), key=jax.random.key(0),
                        init=start)  # fmt: skip
    assert result.finite.tolist() == [[True, False]]
    assert np.all(np.isfinite(result.images))
    assert result.feature_error[0, 0] < 1e-3


def test_reconstruction_measures_and_saves(tiny, images, tmp_path):
    import json

    from cnnvis_jax.inversion import reconstruction

    exact = reconstruction(tiny, "conv", images, images, method="upconv")
    np.testing.assert_allclose(exact.feature_error, 0.0, atol=1e-12)
    np.testing.assert_allclose(exact.image_error, 0.0, atol=1e-12)
    off = reconstruction(tiny, "conv", images, images + 5.0, method="regularized",
                         finite=[True, False, True], preset="mahendran2016", steps=3)  # fmt: skip
    assert np.all(off.images <= 1.0)  # clipped before measuring
    record = off.summary()
    assert record["non_finite"] == [1] and record["steps"] == 3
    assert record["normalized_image_error"] == pytest.approx(np.mean(off.image_error[[0, 2]]))
    assert off.save(tmp_path) == tmp_path
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["file"] for r in saved["images"]] == [f"reconstruction_{i:03d}.png" for i in range(3)]
    assert (tmp_path / "reconstructions.png").exists()
