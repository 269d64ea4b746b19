"""Preset constants against reference/inversion.md, and their per-layer plans."""

from __future__ import annotations

import dataclasses
import math

import pytest

from cnnvis_jax.errors import InputError
from cnnvis_jax.inversion import Mahendran2015, Mahendran2016, preset
from cnnvis_jax.inversion.presets import lambda_tv_group, layer_stride, matlab_round
from cnnvis_jax.models import catalog


@pytest.fixture(scope="module")
def conceptnet():
    return catalog("conceptnet")


def test_mahendran2015_constants():
    p = Mahendran2015()
    assert (p.alpha, p.beta, p.lambda_alpha) == (6.0, 2.0, 8e-10)
    assert p.lambda_tv_by_depth == (1.0, 10.0, 100.0)
    assert p.B == 27098.1 and p.B_size == (227, 227)
    assert p.learning_rate == 0.004 and p.momentum == 0.9
    assert p.schedule == ((1.0, 100), (0.1, 200), (0.01, 100))
    assert p.image_B((227, 227)) == 27098.1
    assert preset("mahendran2015") == p


def test_mahendran2016_constants():
    p = Mahendran2016()
    assert (p.alpha, p.beta, p.B, p.B_plus) == (6.0, 2.0, 80.0, 160.0)
    assert p.lambda_alpha == (1 / 80) ** 6
    assert p.lambda_beta == (6.5 / 80) ** 2
    assert p.learning_rate == 0.05 * 80**2 / 6
    assert (p.fast_steps, p.slow_steps, p.slow_factor, p.momentum) == (300, 50, 0.1, 0.9)
    assert preset("mahendran2016") == p


def test_mahendran2015_plan_by_depth(conceptnet):
    preset = Mahendran2015()
    B = 27098.1 * 64 / 227
    assert math.isclose(preset.image_B((64, 64)), B)
    for layer, lam in [("conv1", 1), ("conv2_pre", 1), ("pool1", 1), ("pool2", 10),
                       ("conv4", 10), ("conv5", 100), ("pool5", 100), ("fc8", 100)]:  # fmt: skip
        plan = preset.plan(conceptnet, layer)
        assert math.isclose(plan.lambda_tv, lam / 2 / B**2), layer
        assert math.isclose(plan.lambda_alpha, 8e-10 / 2 / B**2)
        assert math.isclose(plan.grad_scale, B**2)
        assert plan.bound is None and plan.init == "gaussian" and plan.optimizer == "momentum"
        assert plan.stages[0].schedule == ((0.004, 100), (0.0004, 200), (0.004 * 0.01, 100))
        assert plan.stages[0].jitter == 1 and plan.steps == 400
    assert lambda_tv_group(conceptnet, "conv3_pre") == 1


def test_mahendran2016_plan_jitter_from_stride(conceptnet):
    preset = Mahendran2016()
    for layer, stride in [("conv1", 2), ("conv2", 4), ("conv3", 8), ("pool5", 16), ("fc7", 16)]:
        assert layer_stride(conceptnet, layer) == stride
        plan = preset.plan(conceptnet, layer)
        fast, slow = plan.stages
        assert fast.jitter == max(matlab_round(stride / 4), 1)
        assert slow.jitter == 1
        assert fast.schedule == ((preset.learning_rate, 300),)
        assert slow.schedule == ((0.1 * preset.learning_rate, 50),)
        assert plan.bound == 160.0 and plan.init_scale == 80.0 and plan.rate_scale_pixels
        assert plan.optimizer == "adagrad"
    assert matlab_round(2.5) == 3 and matlab_round(0.5) == 1  # MATLAB rounds halves up
    no_jitter = dataclasses.replace(preset, jitter=False).plan(conceptnet, "fc7")
    assert no_jitter.stages[0].jitter == 1


def test_plan_rescaling_and_unknown_preset(conceptnet):
    plan = Mahendran2016().plan(conceptnet, "conv3").with_steps(35)
    assert [s.steps for s in plan.stages] == [30, 5]
    for published in (Mahendran2015().plan(conceptnet, "fc7"), plan):
        for steps in range(1, 60):  # exactly the steps asked for, even below the pieces
            scaled = published.with_steps(steps)
            assert scaled.steps == steps and all(s.steps >= 1 for s in scaled.stages)
    assert [s.steps for s in plan.with_steps(1).stages] == [1]  # the first stage runs
    assert Mahendran2015().plan(conceptnet, "conv3").without_priors().lambda_tv == 0
    with pytest.raises(InputError, match="mahendran2016"):
        preset("mahendran2017")
