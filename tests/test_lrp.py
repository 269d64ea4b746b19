"""Tests of layer-wise relevance propagation (cnnvis_jax.lrp, LRP rules in cnnvis_jax.rules).

* Parity with zennit: AlexNet (torchvision's structure) with numpy-recipe weights,
  against zennit's maps stored in tests/golden/lrp_alexnet (zennit in float64, see
  benchmarks/make_lrp_golden.py), and a tiny conv/batch-norm network with batch
  norms merged (zennit's canonizer) or passed. Live zennit variants when torch and
  zennit are importable.
* Rules against slow float64 references of their formulas on a dense layer.
* Properties: conservation, LRP-0 = gradient x input on bias-free ReLU networks,
  all-gradient rules = the plain gradient, unchanged forward values.
* Composites, layer names and errors.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnvis_jax import lrp
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import InputContract, from_function
from cnnvis_jax.rules import (
    LayerRule,
    LayerRules,
    SiteInfo,
    lrp_sites,
    model_with_rules,
    with_rules,
)
from cnnvis_jax.zoo import layers

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "lrp_alexnet"
PARITY = 1e-5
"""max |ours - zennit| / max |zennit| allowed (measured on AlexNet: <= 3.5e-6)."""


def load_recipe():
    """benchmarks/make_lrp_golden.py: the numpy weight/image recipes (no torch needed)."""
    spec = importlib.util.spec_from_file_location(
        "make_lrp_golden", ROOT / "benchmarks" / "make_lrp_golden.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECIPE = load_recipe()


def relative_error(ours, reference) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


# --- networks ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alexnet():
    from cnnvis_jax import weights
    from cnnvis_jax.zoo import registry

    module = weights.load_torch_state_dict("alexnet", RECIPE.alexnet_state_dict())
    return registry.as_model(module, "alexnet")


def our_composite(name: str) -> lrp.Composite | str:
    """Our composite for a golden entry (see make_lrp_golden.ALEXNET_COMPOSITES)."""
    single = {
        "zero": lrp.zero(),
        "epsilon": lrp.epsilon(RECIPE.EPSILON_SINGLE),
        "gamma": lrp.gamma(0.25),
        "zplus": lrp.zplus(),
    }
    if name in single:
        return lrp.uniform(single[name])
    if name.endswith("_pass"):
        return dataclasses.replace(lrp.composite(name.removesuffix("_pass")), batch_norm="pass")
    return name.removesuffix("_merged")


def tiny_bn_params(state: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """The tiny network's torch state dict in NHWC layouts (HWIO kernels, (in, out) dense)."""
    params = {k: jnp.asarray(v) for k, v in state.items() if not k.endswith("weight")}
    for key in ("conv1", "conv2"):
        params[f"{key}.kernel"] = jnp.asarray(state[f"{key}.weight"].transpose(2, 3, 1, 0))
    for key in ("bn1", "bn2"):
        params[f"{key}.scale"] = jnp.asarray(state[f"{key}.weight"])
    params["fc.kernel"] = jnp.asarray(state["fc.weight"].T)
    return params


def tiny_bn_forward(params, x):
    """conv-bn-ReLU-maxpool-conv-bn-ReLU-avgpool(2)-flatten(C, H, W)-dense on NHWC input,
    batch norms written as Flax writes them."""

    def conv(h, key):
        spec = ("NHWC", "HWIO", "NHWC")
        pad = ((1, 1), (1, 1))
        y = lax.conv_general_dilated(
            h, params[f"{key}.kernel"], (1, 1), pad, dimension_numbers=spec
        )
        return y + params[f"{key}.bias"]

    def batch_norm(y, key):
        mul = lax.rsqrt(params[f"{key}.running_var"] + 1e-5) * params[f"{key}.scale"]
        return (y - params[f"{key}.running_mean"]) * mul + params[f"{key}.bias"]

    conv1 = jax.nn.relu(batch_norm(conv(x, "conv1"), "bn1"))
    pool1 = layers.max_pool2d(conv1, 2)
    conv2 = jax.nn.relu(batch_norm(conv(pool1, "conv2"), "bn2"))
    pool2 = layers.adaptive_avg_pool2d(conv2, 2)
    flat = pool2.transpose(0, 3, 1, 2).reshape(pool2.shape[0], -1)
    fc = flat @ params["fc.kernel"] + params["fc.bias"]
    return {"conv1": conv1, "pool1": pool1, "conv2": conv2, "pool2": pool2, "fc": fc}


@pytest.fixture(scope="module")
def tiny_bn():
    contract = InputContract(
        size=(RECIPE.TINY_SIZE,) * 2, mean=tuple(RECIPE.MEAN), std=tuple(RECIPE.STD)
    )
    return from_function(
        tiny_bn_forward,
        tiny_bn_params(RECIPE.tiny_bn_state_dict()),
        input=contract,
        name="tiny_bn",
        layer_names=("conv1", "pool1", "conv2", "pool2", "fc"),
        class_names=tuple(f"class_{i}" for i in range(10)),
        logits_layer="fc",
    )


# --- parity with zennit (golden) --------------------------------------------------------


@pytest.mark.parametrize("name", RECIPE.ALEXNET_COMPOSITES)
def test_alexnet_matches_zennit_golden(alexnet, name):
    golden = np.load(GOLDEN / "alexnet.npz")
    images = RECIPE.golden_images()
    with jax.default_matmul_precision("highest"):
        result = lrp.relevance(alexnet, images, golden["targets"], our_composite(name))
    ours = result.relevance if golden[name].ndim == 4 else result.pixels
    assert relative_error(ours, golden[name]) <= PARITY
    sums = np.asarray(ours).reshape(2, -1).sum(axis=1)
    np.testing.assert_allclose(sums, golden[name].reshape(2, -1).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(
        result.logits, golden["logits"][np.arange(2), golden["targets"]], rtol=1e-5
    )


@pytest.mark.parametrize("name", RECIPE.TINY_COMPOSITES)
def test_tiny_batch_norm_net_matches_zennit_golden(tiny_bn, name):
    golden = np.load(GOLDEN / "tiny_bn.npz")
    images = RECIPE.golden_images(2, RECIPE.TINY_SIZE)
    result = lrp.relevance(tiny_bn, images, golden["targets"], our_composite(name))
    assert relative_error(result.relevance, golden[name]) <= PARITY


def test_batch_norm_merge_and_pass_differ():
    """The batch-norm mode matters on this network, so the parity tests of both modes
    tell them apart."""
    golden = np.load(GOLDEN / "tiny_bn.npz")
    assert (
        relative_error(golden["epsilon_gamma_box_pass"], golden["epsilon_gamma_box_merged"]) > 0.01
    )


def _import_live_zennit():
    pytest.importorskip("torch")
    if importlib.util.find_spec("zennit") is None:
        pytest.skip("zennit is not installed")
    return RECIPE._import_zennit()


@pytest.mark.torch
def test_alexnet_matches_zennit_live(alexnet):
    """zennit run now (float64) on the same AlexNet: EpsilonGammaBox, first image."""
    _import_live_zennit()
    images = RECIPE.golden_images(1)
    net = RECIPE.torch_alexnet(RECIPE.alexnet_state_dict())
    targets = RECIPE.golden_targets(RECIPE.torch_logits(net, images))
    reference = RECIPE.zennit_relevance(net, images, targets, "epsilon_gamma_box")
    with jax.default_matmul_precision("highest"):
        ours = lrp.relevance(alexnet, images, targets, "epsilon_gamma_box").relevance
    assert relative_error(ours, reference) <= PARITY


@pytest.mark.torch
@pytest.mark.parametrize("name", RECIPE.TINY_COMPOSITES)
def test_tiny_batch_norm_net_matches_zennit_live(tiny_bn, name):
    _import_live_zennit()
    images = RECIPE.golden_images(2, RECIPE.TINY_SIZE)
    net = RECIPE.torch_tiny_bn(RECIPE.tiny_bn_state_dict())
    targets = RECIPE.golden_targets(RECIPE.torch_logits(net, images))
    reference = RECIPE.zennit_relevance(net, images, targets, name)
    ours = lrp.relevance(tiny_bn, images, targets, our_composite(name)).relevance
    assert relative_error(ours, reference) <= PARITY


# --- rules against float64 references on a dense layer ------------------------------------


def stabilized(z: np.ndarray, eps: float) -> np.ndarray:
    return z + np.where(z < 0, -eps, eps)


def reference_dense(rule: LayerRule, x, w, b, r) -> np.ndarray:
    """Relevance at x of z = x @ w + b for output relevance r, from the rule's formula
    (float64, x: (N, I), w: (I, J), b: (J,), r: (N, J))."""
    x, w, b, r = (np.asarray(a, np.float64) for a in (x, w, b, r))
    eps = rule.epsilon
    pos, neg = (lambda a: np.maximum(a, 0)), (lambda a: np.minimum(a, 0))

    def share(parts, bias):  # parts: [(x-part, w-part)]; contributions x_i w_ij per part
        z = sum(xp @ wp for xp, wp in parts) + bias
        g = r / stabilized(z, eps)
        return sum(xp[:, :, None] * wp[None] * g[:, None, :] for xp, wp in parts).sum(-1)

    if rule.name in ("epsilon", "norm"):
        return share([(x, w)], b)
    if rule.name == "zero":
        z = x @ w + b
        return (x[:, :, None] * w[None] * (r / z)[:, None, :]).sum(-1)
    if rule.name == "zplus":
        return share([(pos(x), pos(w)), (neg(x), neg(w))], pos(b))
    if rule.name == "alpha_beta":
        up = share([(pos(x), pos(w)), (neg(x), neg(w))], pos(b))
        down = share([(pos(x), neg(w)), (neg(x), pos(w))], neg(b))
        return rule.alpha * up - rule.beta * down
    if rule.name == "gamma":
        g = rule.gamma
        w_up, w_down = w + g * pos(w), w + g * neg(w)
        z = x @ w + b
        r_all = r
        r = np.where(z > 0, r_all, 0)
        up = share([(pos(x), w_up), (neg(x), w_down)], b + g * pos(b))
        r = np.where(z < 0, r_all, 0)
        down = share([(pos(x), w_down), (neg(x), w_up)], b + g * neg(b))
        return up + down
    if rule.name == "zbox":
        low = np.broadcast_to(np.asarray(rule.low), x.shape)
        high = np.broadcast_to(np.asarray(rule.high), x.shape)
        z = x @ w + b - (low @ pos(w) + pos(b)) - (high @ neg(w) + neg(b))
        g = r / stabilized(z, eps)
        terms = x[:, :, None] * w - low[:, :, None] * pos(w) - high[:, :, None] * neg(w)
        return (terms * g[:, None, :]).sum(-1)
    if rule.name == "flat":
        z = np.ones_like(x) @ np.ones_like(w)
        return (r / stabilized(z, eps)) @ np.ones_like(w).T
    if rule.name == "wsquare":
        z = np.ones_like(x) @ (w * w) + b * b
        return (r / stabilized(z, eps)) @ (w * w).T
    raise ValueError(rule.name)


DENSE_RULES = (
    lrp.zero(),
    lrp.epsilon(0.1),
    lrp.norm(),
    lrp.zplus(),
    lrp.gamma(0.25),
    lrp.alpha_beta(2.0, 1.0),
    lrp.alpha_beta(1.5, 0.5),
    LayerRule("zbox", low=-2.0, high=tuple(np.linspace(1.0, 2.0, 6))),
    lrp.flat(),
    lrp.wsquare(),
)


def dense_layer(x, w, b):
    return jnp.dot(x, w) + b


@pytest.mark.parametrize("rule", DENSE_RULES, ids=lambda r: f"{r.name}")
def test_dense_rules_match_float64_reference(rule):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 6)).astype(np.float32)  # negative inputs exercise every branch
    w = rng.normal(size=(6, 5)).astype(np.float32)
    b = rng.normal(scale=0.3, size=5).astype(np.float32)
    r = rng.normal(size=(3, 5)).astype(np.float32)
    ruled = with_rules(dense_layer, LayerRules(conv=rule, dense=rule))
    out, pull = jax.vjp(lambda v: ruled(v, w, b), jnp.asarray(x))
    np.testing.assert_array_equal(out, dense_layer(x, w, b))
    (ours,) = pull(jnp.asarray(r))
    np.testing.assert_allclose(ours, reference_dense(rule, x, w, b, r), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("rule", (lrp.zplus(), lrp.gamma(0.25), lrp.alpha_beta()), ids=str)
def test_nonnegative_input_shortcut_equals_general_formula(rule):
    """Behind a ReLU the negative input half is skipped; the result is the same as
    the general formula on the same (non-negative) values."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)

    def conv(h, k):
        return lax.conv_general_dilated(
            h, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def behind_relu(v, k):
        return conv(jax.nn.relu(v), k) + 0.1

    def behind_unknown(v, k):  # adding zero hides the sign from the analysis
        return conv(jax.nn.relu(v) + 0.0, k) + 0.1

    rules = LayerRules(conv=rule, dense=rule, activation="gradient")
    seed = jnp.asarray(rng.normal(size=(2, 8, 8, 4)).astype(np.float32))
    maps = []
    for fn in (behind_relu, behind_unknown):
        _, pull = jax.vjp(lambda v, fn=fn: with_rules(fn, rules)(v, kernel), jnp.asarray(x))
        maps.append(pull(seed)[0])
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "rule", (lrp.zplus(), lrp.gamma(0.25), lrp.alpha_beta(), lrp.epsilon(0.01)), ids=str
)
def test_batch_norm_after_dense_layer_merges_into_it(rule):
    """bn(x @ w + b) has the rules of x @ (w * s) + (b - mean) * s + beta, s the
    batch norm's per-feature scale (negative entries flip kernel columns)."""
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    b, mean, beta = (jnp.asarray(rng.normal(size=5), jnp.float32) for _ in range(3))
    scale = jnp.asarray([1.5, -0.7, 0.9, -1.2, 0.4], jnp.float32)

    def batch_normed(v, w, b, mean, scale, beta):
        return (jnp.dot(v, w) + b - mean) * scale + beta

    def merged(v, w, b, mean, scale, beta):
        return jnp.dot(v, w * scale) + ((b - mean) * scale + beta)

    seed = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    maps = []
    for fn in (batch_normed, merged):
        ruled = with_rules(fn, LayerRules(rule, rule))
        out, pull = jax.vjp(lambda v, ruled=ruled: ruled(v, w, b, mean, scale, beta), x)
        maps.append(pull(seed)[0])
        assert [s.ops for s in lrp_sites(fn, x, w, b, mean, scale, beta).sites][0][
            0
        ] == "dot_general"
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-5, atol=1e-6)


# --- properties on bias-free ReLU networks ----------------------------------------------


def bias_free_net(params, x):
    """conv-ReLU-maxpool-conv-ReLU-avgpool-dense-ReLU-dense, no biases, NHWC."""
    spec = ("NHWC", "HWIO", "NHWC")
    h = jax.nn.relu(
        lax.conv_general_dilated(x, params["k1"], (1, 1), "SAME", dimension_numbers=spec)
    )
    h = layers.max_pool2d(h, 2)
    h = jnp.maximum(
        lax.conv_general_dilated(h, params["k2"], (2, 2), "SAME", dimension_numbers=spec), 0
    )
    h = h.reshape(h.shape[0], 2, 2, 2, 2, h.shape[-1]).mean(axis=(2, 4))  # 2x2 average pool
    h = jax.nn.relu(h.reshape(h.shape[0], -1) @ params["d1"])
    return h @ params["d2"]


@pytest.fixture(scope="module")
def bias_free():
    rng = np.random.default_rng(5)
    shapes = {"k1": (3, 3, 3, 6), "k2": (3, 3, 6, 8), "d1": (32, 12), "d2": (12, 5)}
    params = {k: jnp.asarray(rng.normal(size=s) * (2 / np.prod(s[:-1])) ** 0.5, jnp.float32)
              for k, s in shapes.items()}  # fmt: skip
    x = jnp.asarray(rng.normal(size=(3, 16, 16, 3)), jnp.float32)
    return params, x


def target_relevance(fn, params, x, rules, target=1):
    """(relevance at x, target logits) with the target's logit as output relevance."""
    ruled = with_rules(fn, rules, data_argnums=1)
    logits, pull = jax.vjp(lambda v: ruled(params, v), x)
    seed = jax.nn.one_hot(jnp.full(x.shape[0], target), logits.shape[-1]) * logits
    return pull(seed)[0], logits[:, target]


def test_lrp_zero_is_gradient_times_input(bias_free):
    params, x = bias_free
    zero = lrp.zero()
    relevance, _ = target_relevance(bias_free_net, params, x, LayerRules(zero, zero, pool=zero))
    grad = jax.grad(lambda v: bias_free_net(params, v)[:, 1].sum())(x)
    np.testing.assert_allclose(
        relevance, x * grad, rtol=1e-4, atol=1e-6 * float(jnp.abs(x * grad).max())
    )


@pytest.mark.parametrize("pool", (lrp.zero(), lrp.norm()), ids=("zero", "norm"))
def test_lrp_zero_conserves_the_logit(bias_free, pool):
    params, x = bias_free
    rules = LayerRules(lrp.zero(), lrp.zero(), pool=pool)
    relevance, logits = target_relevance(bias_free_net, params, x, rules)
    np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), logits, rtol=1e-4)


def test_lrp_with_biases_does_not_conserve():
    """Sanity of the conservation test: biases absorb relevance."""
    rng = np.random.default_rng(6)
    w, b = rng.normal(size=(4, 3)).astype(np.float32), np.full(3, 0.5, np.float32)
    x = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
    ruled = with_rules(dense_layer, LayerRules(lrp.zero(), lrp.zero()))
    out, pull = jax.vjp(lambda v: ruled(v, w, b), x)
    relevance = pull(out)[0]
    assert not np.allclose(relevance.sum(axis=1), out.sum(axis=1), rtol=1e-2)
    np.testing.assert_allclose(relevance.sum(axis=1), (out - b).sum(axis=1), rtol=1e-4)


def test_gradient_everywhere_is_the_plain_gradient(bias_free):
    params, x = bias_free
    plain = LayerRule("gradient")
    rules = LayerRules(plain, plain, pool=plain, sum=plain, activation="gradient")
    ruled = with_rules(bias_free_net, rules, data_argnums=1)
    np.testing.assert_array_equal(ruled(params, x), bias_free_net(params, x))
    ours = jax.grad(lambda v: ruled(params, v)[:, 2].sum())(x)
    grad = jax.grad(lambda v: bias_free_net(params, v)[:, 2].sum())(x)
    np.testing.assert_allclose(ours, grad, rtol=1e-6, atol=1e-7)


def test_lrp_composes_with_jit_and_vmap(bias_free):
    params, x = bias_free
    rules = LayerRules(lrp.zplus(), lrp.epsilon(), first=lrp.flat())

    def relevance_of(v):
        return target_relevance(bias_free_net, params, v, rules)[0]

    direct = relevance_of(x)
    np.testing.assert_allclose(jax.jit(relevance_of)(x), direct, rtol=1e-5, atol=1e-7)
    per_image = jax.vmap(lambda v: relevance_of(v[None])[0])(x)
    np.testing.assert_allclose(per_image, direct, rtol=1e-5, atol=1e-7)


def test_residual_sum_shares_relevance_in_proportion():
    """norm at a sum of two activations: each operand gets x_k / (x_1 + x_2) of it."""
    x1 = jnp.asarray([[1.0, -2.0, 3.0]])
    x2 = jnp.asarray([[3.0, 1.0, 0.5]])
    rules = LayerRules(lrp.epsilon(), lrp.epsilon(), sum=lrp.zero())
    ruled = with_rules(lambda a, b: a + b, rules, data_argnums=(0, 1))
    out, pull = jax.vjp(ruled, x1, x2)
    r1, r2 = pull(jnp.ones_like(out))
    np.testing.assert_allclose(r1, x1 / (x1 + x2), rtol=1e-6)
    np.testing.assert_allclose(r2, x2 / (x1 + x2), rtol=1e-6)
    assert [s.kind for s in lrp_sites(lambda a, b: a + b, x1, x2, data_argnums=(0, 1)).sites] == [
        "sum"
    ]


# --- models, composites and names --------------------------------------------------------


def test_relevance_api_shapes_and_output_relevance(tiny_bn):
    images = RECIPE.golden_images(2, RECIPE.TINY_SIZE)
    by_logit = lrp.relevance(tiny_bn, images, 3)
    by_one = lrp.relevance(tiny_bn, images, [3, 3], output_relevance="one")
    assert by_logit.relevance.shape == (2, 16, 16, 3)
    assert by_logit.pixels.shape == (2, 16, 16)
    np.testing.assert_allclose(by_logit.pixels, by_logit.relevance.sum(-1), rtol=1e-6)
    scaled = by_one.relevance * by_logit.logits[:, None, None, None]
    np.testing.assert_allclose(by_logit.relevance, scaled, rtol=1e-4, atol=1e-9)


def test_relevance_under_jit_equals_direct_call(tiny_bn):
    images = jnp.asarray(RECIPE.golden_images(2, RECIPE.TINY_SIZE))
    targets = jnp.asarray([1, 7])
    direct = lrp.relevance(tiny_bn, images, targets, "epsilon_gamma_box").relevance
    jitted = jax.jit(lambda m, x, t: lrp.relevance(m, x, t, "epsilon_gamma_box").relevance)
    np.testing.assert_allclose(jitted(tiny_bn, images, targets), direct, rtol=1e-5, atol=1e-9)


def test_model_with_rules_takes_layer_rules(tiny_bn):
    """A Model wrapped with LayerRules gives the relevance as the cotangent at its
    normalized input, as lrp.relevance computes it."""
    images = RECIPE.golden_images(1, RECIPE.TINY_SIZE)
    ruled = model_with_rules(tiny_bn, lrp.epsilon_gamma_box().resolve(tiny_bn))
    x = tiny_bn.input.normalize(jnp.asarray(images))
    logits, pull = jax.vjp(lambda v: ruled.apply_fn(ruled.params, v, ("fc",))["fc"], x)
    (ours,) = pull(jax.nn.one_hot(jnp.asarray([2]), 10) * logits)
    expected = lrp.relevance(tiny_bn, images, 2, "epsilon_gamma_box").relevance
    assert relative_error(ours, expected) <= 1e-6


def test_bgr_model_returns_rgb_relevance(tiny_bn):
    """A BGR network fed the channel-reversed input with a channel-reversed first
    kernel computes the same function; its relevance comes back in RGB order."""
    params = dict(tiny_bn.params)
    params["conv1.kernel"] = params["conv1.kernel"][:, :, ::-1, :]
    bgr = tiny_bn.replace(
        input=InputContract(
            size=(16, 16), mean=tiny_bn.input.mean, std=tiny_bn.input.std, channel_order="BGR"
        ),  # fmt: skip
        params=params,
    )
    images = RECIPE.golden_images(1, RECIPE.TINY_SIZE)
    rgb_maps = lrp.relevance(tiny_bn, images, 2, "epsilon_gamma_box").relevance
    bgr_maps = lrp.relevance(bgr, images, 2, "epsilon_gamma_box").relevance
    np.testing.assert_allclose(
        bgr_maps, rgb_maps, rtol=1e-4, atol=1e-6 * float(jnp.abs(rgb_maps).max())
    )


def test_layer_sites_name_the_catalog(alexnet):
    sites = lrp.layer_sites(alexnet)
    indices = {name: s.index if isinstance(s, SiteInfo) else s for name, s in sites.items()}
    assert indices == {
        "conv1_pre": 0, "conv1": 0, "pool1": "max_pool", "conv2_pre": 1, "conv2": 1,
        "pool2": "max_pool", "conv3_pre": 2, "conv3": 2, "conv4_pre": 3, "conv4": 3,
        "conv5_pre": 4, "conv5": 4, "pool5": "max_pool", "fc6": 5, "fc7": 6, "fc8": 7,
    }  # fmt: skip
    assert sites["fc6"].kind == "dense" and sites["conv1"].kind == "conv"
    assert sites["conv1"].ops == ("conv_general_dilated", "add")


def test_tiny_net_sites_include_pools_and_merged_batch_norms(tiny_bn):
    sites = lrp.layer_sites(tiny_bn)
    assert sites["conv1"].ops == ("conv_general_dilated", "add", "sub", "mul", "add")
    assert sites["pool2"].kind == "pool"
    passed = lrp.layer_sites(tiny_bn, batch_norm="pass")
    assert passed["conv1"].ops == ("conv_general_dilated", "add")


def test_rules_by_layer_name_equal_rules_by_index(tiny_bn):
    images = RECIPE.golden_images(1, RECIPE.TINY_SIZE)
    base = lrp.epsilon_plus_flat()
    by_name = lrp.relevance(tiny_bn, images, 4, base.with_layers(conv2=lrp.gamma(0.5)))
    by_index = lrp.relevance(tiny_bn, images, 4, base.with_layers({1: lrp.gamma(0.5)}))
    plain = lrp.relevance(tiny_bn, images, 4, base)
    np.testing.assert_array_equal(by_name.relevance, by_index.relevance)
    assert relative_error(plain.relevance, by_name.relevance) > 1e-3
    assert base.with_layers(conv2=lrp.gamma(0.5)).resolve(tiny_bn).sites == ((1, lrp.gamma(0.5)),)


def test_first_layer_rule_and_model_input_bounds(tiny_bn):
    rules = lrp.epsilon_gamma_box().resolve(tiny_bn)
    low = (0.0 - RECIPE.MEAN) / RECIPE.STD
    high = (1.0 - RECIPE.MEAN) / RECIPE.STD
    assert rules.first.name == "zbox" and rules.first_kinds == ("conv",)
    np.testing.assert_allclose(rules.first.low, low, rtol=1e-6)
    np.testing.assert_allclose(rules.first.high, high, rtol=1e-6)
    assert rules.conv == lrp.gamma(0.25) and rules.dense == lrp.epsilon(1e-6)
    flat_first = lrp.epsilon_plus_flat().resolve(tiny_bn)
    assert flat_first.first == lrp.flat() and flat_first.first_kinds == ("conv", "dense")


@pytest.mark.parametrize(
    ("layer", "rule", "message"),
    [
        ("pool2", lrp.zplus(), "'zplus' is not defined for layer 'pool2'"),
        ("pool1", lrp.epsilon(), "max_pool"),
        ("conv9", lrp.epsilon(), "no layer 'conv9'"),
        (7, lrp.epsilon(), "no LRP layer 7"),
    ],
)
def test_bad_layer_assignments_name_the_layer_and_rules(tiny_bn, layer, rule, message):
    composite = lrp.epsilon_plus_flat().with_layers({layer: rule})
    with pytest.raises(InputError, match=message) as caught:
        composite.resolve(tiny_bn)
    if layer == "pool2":
        assert "norm, epsilon, zero, gradient" in str(caught.value)


def test_bad_rules_and_composites_raise_input_errors():
    with pytest.raises(InputError, match="unknown LRP rule"):
        LayerRule("lrp0")
    with pytest.raises(InputError, match="alpha - beta == 1"):
        lrp.alpha_beta(2.0, 2.0)
    with pytest.raises(InputError, match="bounds"):
        LayerRule("zbox")
    with pytest.raises(InputError, match="not defined for pool layers"):
        lrp.Composite("bad", conv=lrp.zplus(), dense=lrp.epsilon(), pool=lrp.gamma())
    with pytest.raises(InputError, match="unknown LRP composite"):
        lrp.composite("epsilon_plus_flatt")
    with pytest.raises(InputError, match="activation"):
        LayerRules(lrp.zplus(), lrp.epsilon(), activation="guided")
    with pytest.raises(InputError, match="batch_norm mode 'fold'"):
        lrp.Composite("bad", conv=lrp.zplus(), dense=lrp.epsilon(), batch_norm="fold")


def test_layers_inside_loops_are_refused():
    def looped(x, w):
        return lax.fori_loop(0, 2, lambda _, h: jnp.dot(h, w), x)

    ruled = with_rules(looped, LayerRules(lrp.epsilon(), lrp.epsilon()))
    with pytest.raises(InputError, match="straight-line"):
        jax.vjp(lambda v: ruled(v, jnp.eye(3)), jnp.ones((1, 3)))


def test_relevance_checks_targets(tiny_bn):
    images = RECIPE.golden_images(2, RECIPE.TINY_SIZE)
    with pytest.raises(InputError, match="out of range"):
        lrp.relevance(tiny_bn, images, [0, 10])
    with pytest.raises(InputError, match="shape"):
        lrp.relevance(tiny_bn, images, [0, 1, 2])
