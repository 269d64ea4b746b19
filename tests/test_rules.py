"""Tests of cnnvis_jax.rules: Captum's golden arrays, float64 rule references,
composition with jit/vmap/grad, nested ReLUs, max-pool switches and Model wrapping."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from cnnvis_jax.errors import InputError
from cnnvis_jax.model import InputContract, from_function, from_nnx
from cnnvis_jax.rules import RULES, model_with_rules, relu_count, with_rules

# --- references -------------------------------------------------------------------


def reference_rule(rule: str, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Slow, element by element numpy version of each rule (leading axis = examples)."""
    x, g = np.asarray(x), np.asarray(g)
    out = np.zeros_like(g)
    for i in range(x.shape[0]):
        plain_passes = any(x[i][j] > 0 and g[i][j] != 0 for j in np.ndindex(x[i].shape))
        for j in np.ndindex(x[i].shape):
            xv, gv = x[i][j], g[i][j]
            if rule == "gradient":
                v = gv if xv > 0 else 0.0
            elif rule == "deconvnet":
                v = max(gv, 0.0)
            elif rule == "guided":
                v = max(gv, 0.0) if xv > 0 else 0.0
            elif plain_passes:  # redirected, plain gradient reaches the example
                v = gv if xv > 0 else 0.0
            else:  # redirected, dead example: only signals raising x pass below the kink
                v = gv if (xv > 0 or gv > 0) else 0.0
            out[i][j] = v
    return out


def reference_relu(rule: str):
    """A hand-written ReLU with the rule's VJP, independent of the module under test."""

    @jax.custom_vjp
    def relu(x):
        return jnp.maximum(x, 0.0)

    def bwd(x, g):
        if rule == "gradient":
            return (g * (x > 0),)
        if rule == "deconvnet":
            return (jnp.clip(g, 0.0, None),)
        if rule == "guided":
            return (jnp.clip(g, 0.0, None) * (x > 0),)
        raise ValueError(rule)

    relu.defvjp(lambda x: (relu(x), x), bwd)
    return relu


# --- Captum's golden test -------------------------------------------------------------

GOLDEN = {
    "deconvnet": [[2, 3, 3, 1], [3, 5, 5, 2], [3, 5, 5, 2], [1, 2, 2, 1]],
    "guided": [[0, 1, 1, 1], [1, 3, 3, 2], [1, 3, 3, 2], [1, 2, 2, 1]],
    "gradient": [[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]],
}
GOLDEN_GUIDED_PLUS_ONE = [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]]


def _maximum_relu(t):
    return jnp.maximum(t, 0)


def _captum_net(x, first, second):
    """conv 1->2 (3x3 ones, bias -50/-75), ReLU, flatten C,H,W, fc 8->4, ReLU. x: NCHW."""
    w = jnp.ones((2, 1, 3, 3))
    h = lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    h = first(h + jnp.array([-50.0, -75.0])[None, :, None, None])
    h = h.reshape(x.shape[0], 8)  # NCHW row-major: C, H, W order
    fc = jnp.concatenate([jnp.ones((4, 5)), -jnp.ones((4, 3))], axis=1)
    return second(h @ fc.T)


_SHARED_RELU = jax.jit(jax.nn.relu)  # one function object, used at both sites

NETS = {
    "nn_relu": functools.partial(_captum_net, first=jax.nn.relu, second=jax.nn.relu),
    "maximum": functools.partial(_captum_net, first=_maximum_relu, second=_maximum_relu),
    "mixed": functools.partial(
        _captum_net, first=lambda t: lax.max(jnp.zeros_like(t), t), second=jax.nn.relu
    ),
    "reused": functools.partial(_captum_net, first=_SHARED_RELU, second=_SHARED_RELU),
}


def _attribute(net, rule, x):
    out, pullback = jax.vjp(with_rules(net, rule), x)
    (grad,) = pullback(jnp.zeros_like(out).at[0, 0].set(1.0))
    return np.asarray(grad[0, 0])


@pytest.mark.parametrize("variant", sorted(NETS))
def test_captum_golden_arrays(variant):
    net = NETS[variant]
    x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    assert relu_count(net, x) == 2
    for rule, expected in GOLDEN.items():
        np.testing.assert_array_equal(_attribute(net, rule, x), np.array(expected, np.float32))
    np.testing.assert_array_equal(
        _attribute(net, "guided", x + 1), np.array(GOLDEN_GUIDED_PLUS_ONE, np.float32)
    )


def test_golden_net_tells_the_rules_apart():
    x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    grads = [_attribute(NETS["nn_relu"], rule, x) for rule in GOLDEN]
    for a in range(len(grads)):
        for b in range(a + 1, len(grads)):
            assert not np.array_equal(grads[a], grads[b])


# --- rules in float64 ----------------------------------------------------------------


def _x_and_g(rng):
    """Inputs with exact zeros, a dead example (row 1) and one whose live units get
    a zero signal (row 2), and random-sign cotangents with exact zeros."""
    x = rng.normal(size=(4, 3, 5))
    x[0, 0, :2] = 0.0
    x[1] = -np.abs(x[1])
    x[1, 2, 3] = 0.0
    g = rng.normal(size=x.shape)
    g[0, 1, :3] = 0.0
    g[2] = np.where(x[2] > 0, 0.0, g[2])
    return x, g


RELU_FORMS = {
    "nn_relu": jax.nn.relu,
    "maximum": lambda t: jnp.maximum(t, 0.0),
    "max_zero_first": lambda t: lax.max(jnp.zeros_like(t), t),
}


@pytest.mark.parametrize("rule", RULES)
def test_rules_match_numpy_reference_in_float64(rule):
    rng = np.random.default_rng(0)
    x, g = _x_and_g(rng)
    expected = reference_rule(rule, x, g)
    with jax.enable_x64(True):
        for form in RELU_FORMS.values():
            out, pullback = jax.vjp(with_rules(form, rule), jnp.asarray(x))
            (grad,) = pullback(jnp.asarray(g))
            assert grad.dtype == jnp.float64
            np.testing.assert_array_equal(out, np.maximum(x, 0.0))
            np.testing.assert_array_equal(grad, expected)


def test_redirected_differs_from_gradient_only_on_dead_examples():
    x, g = _x_and_g(np.random.default_rng(1))
    redirected, plain = reference_rule("redirected", x, g), reference_rule("gradient", x, g)
    np.testing.assert_array_equal(redirected[[0, 3]], plain[[0, 3]])
    assert not np.array_equal(redirected[1], plain[1]) and not plain[1].any()
    assert not np.array_equal(redirected[2], plain[2]) and not plain[2].any()


@pytest.mark.parametrize("rule", RULES)
def test_two_layer_chain_matches_numpy_backward_in_float64(rule):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 6))
    w1, w2 = rng.normal(size=(6, 5)), rng.normal(size=(5, 4))
    x[2] = -10.0 * np.abs(x[2])  # a negative input makes example 2 dead at layer 1 ...
    w1[:, :] = np.abs(w1)  # ... given positive weights
    g = rng.choice([-2.0, -1.0, 0.0, 1.0, 2.0], size=(3, 4))

    def mlp(x, w1, w2):
        return jax.nn.relu(jnp.maximum(x @ w1, 0.0) @ w2)

    h = x @ w1
    y = np.maximum(h, 0.0) @ w2
    expected = reference_rule(rule, h, reference_rule(rule, y, g) @ w2.T) @ w1.T
    with jax.enable_x64(True):
        _, pullback = jax.vjp(with_rules(mlp, rule), jnp.asarray(x), w1, w2)
        grad_x = pullback(jnp.asarray(g))[0]
    np.testing.assert_allclose(grad_x, expected, rtol=1e-12, atol=1e-12)


# --- forward values and composition -----------------------------------------------------


def _pool(x, k=2, stride=2, padding="VALID"):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, stride, stride, 1), padding)


def _small_cnn(x, w_conv, w_fc):
    """NHWC conv, ReLU, 2x2 max-pool, flatten, fc, ReLU: (N, 8, 8, 3) -> (N, 5)."""
    h = lax.conv_general_dilated(
        x, w_conv, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = _pool(jax.nn.relu(h))
    return jnp.maximum(h.reshape(h.shape[0], -1) @ w_fc, 0.0)


@pytest.fixture(scope="module")
def cnn():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    w_conv = jax.random.normal(k1, (3, 3, 3, 4)) * 0.5
    w_fc = jax.random.normal(k2, (64, 5)) * 0.3
    x = jax.random.normal(k3, (2, 8, 8, 3))
    return functools.partial(_small_cnn, w_conv=w_conv, w_fc=w_fc), x


@pytest.mark.parametrize("pool", ["switches", "center"])
def test_forward_values_unchanged(cnn, pool):
    f, x = cnn
    expected = f(x)
    for rule in RULES:
        np.testing.assert_array_equal(with_rules(f, rule, pool=pool)(x), expected)
        np.testing.assert_array_equal(jax.jit(with_rules(f, rule, pool=pool))(x), expected)


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_composes_with_jit_vmap_and_grad(cnn, rule):
    f, x = cnn
    ruled = with_rules(f, rule)
    cotangents = jax.random.normal(jax.random.key(1), (3, 2, 5))

    @jax.jit
    def pull_all(x, cts):  # the VJP is built inside jit, as the project requires
        _, pullback = jax.vjp(ruled, x)
        return jax.vmap(lambda ct: pullback(ct)[0])(cts)

    batched = pull_all(x, cotangents)
    _, pullback = jax.vjp(ruled, x)
    for k in range(cotangents.shape[0]):
        np.testing.assert_allclose(batched[k], pullback(cotangents[k])[0], rtol=1e-5, atol=1e-6)

    grad = jax.grad(lambda x: ruled(x)[1, 3])(x)
    (by_vjp,) = pullback(jnp.zeros((2, 5)).at[1, 3].set(1.0))
    np.testing.assert_allclose(grad, by_vjp, rtol=1e-6, atol=1e-7)

    def unit(image):
        return ruled(image[None])[0, 3]

    per_image = jax.vmap(jax.grad(unit))(x)
    for i in range(x.shape[0]):
        np.testing.assert_allclose(per_image[i], jax.grad(unit)(x[i]), rtol=1e-5, atol=1e-6)


def test_traces_once_per_argument_signature():
    traces = []

    def f(x):
        traces.append(x.shape)
        return jax.nn.relu(x) * 2.0

    ruled = with_rules(f, "guided")
    ruled(jnp.ones(3))
    ruled(jnp.arange(3.0))
    jax.grad(lambda x: ruled(x).sum())(jnp.ones(3))
    assert traces == [(3,)]
    ruled(jnp.ones(4))
    assert traces == [(3,), (4,)]


# --- ReLUs anywhere in the program -----------------------------------------------------


def _structured(x, relu, relu_max, relu_zero):
    """A function-style model: a reused ReLU object, functional ReLUs, and ReLUs inside
    jit, checkpoint, scan, cond and a zero array handed into a jitted function."""
    w = jnp.linspace(-1.0, 1.0, x.shape[-1] * x.shape[-1]).reshape(x.shape[-1], -1)
    h = relu(x @ w + 0.1)  # site 1
    h = relu(h @ w - 0.2) + h  # site 2: the same ReLU object again
    h = jax.jit(lambda t, zero: relu_zero(t @ w, zero))(h, jnp.zeros(x.shape))  # site 3
    h = jax.checkpoint(lambda t: relu_max(t @ w + 0.05))(h)  # site 4

    def step(carry, _):
        return relu(carry @ w - 0.1) + 0.5 * carry, relu_max(carry)  # sites 5, 6

    h, ys = lax.scan(step, h, None, length=3)
    h = lax.cond(h.sum() > -1e9, lambda t: relu(t - 0.3), lambda t: t, h)  # site 7
    return h + ys.sum(0)


@pytest.mark.parametrize("rule", ["gradient", "deconvnet", "guided"])
def test_every_relu_is_caught_against_hand_written_reference(rule):
    native = functools.partial(
        _structured, relu=jax.nn.relu, relu_max=lambda t: jnp.maximum(t, 0), relu_zero=lax.max
    )
    ref_relu = reference_relu(rule)
    reference = functools.partial(
        _structured, relu=ref_relu, relu_max=ref_relu, relu_zero=lambda t, _: ref_relu(t)
    )
    x = jax.random.normal(jax.random.key(3), (2, 6))
    g = jax.random.normal(jax.random.key(4), (2, 6))
    assert relu_count(native, x) == 7

    out, pullback = jax.vjp(with_rules(native, rule), x)
    ref_out, ref_pullback = jax.vjp(reference, x)
    np.testing.assert_array_equal(out, native(x))
    np.testing.assert_allclose(out, ref_out, rtol=1e-6)
    np.testing.assert_allclose(pullback(g)[0], ref_pullback(g)[0], rtol=1e-5, atol=1e-6)
    if rule != "gradient":  # the rule mattered
        assert not np.allclose(pullback(g)[0], jax.vjp(native, x)[1](g)[0])


def test_relu_inside_while_loop_is_counted_and_forward_kept():
    def f(x):
        return lax.while_loop(
            lambda c: c[0] < 3, lambda c: (c[0] + 1, jax.nn.relu(c[1] - 0.5)), (0, x)
        )[1]

    x = jnp.linspace(-1.0, 3.0, 5)
    assert relu_count(f, x) == 1
    np.testing.assert_array_equal(with_rules(f, "guided")(x), f(x))
    np.testing.assert_array_equal(jax.jit(with_rules(f, "deconvnet"))(x), f(x))


def test_custom_derivative_functions_keep_their_rule_unless_they_hold_a_relu():
    @jax.custom_vjp
    def scaled_relu(x):
        return jax.nn.relu(x) * 2.0

    scaled_relu.defvjp(lambda x: (scaled_relu(x), None), lambda _, g: (7.0 * g,))

    @jax.custom_vjp
    def scaled(x):
        return x * 2.0

    scaled.defvjp(lambda x: (scaled(x), None), lambda _, g: (7.0 * g,))

    x = jnp.array([-1.0, 2.0, 3.0])
    g = jnp.array([1.0, -1.0, 1.0])
    # The ReLU inside scaled_relu is ruled (its hand-written bwd is replaced by its body's).
    _, pullback = jax.vjp(with_rules(scaled_relu, "deconvnet"), x)
    np.testing.assert_array_equal(pullback(g)[0], [2.0, 0.0, 2.0])
    # Without a ReLU inside, the user's derivative stays.
    _, pullback = jax.vjp(with_rules(lambda x: jax.nn.relu(scaled(x)), "deconvnet"), x)
    np.testing.assert_array_equal(pullback(g)[0], [7.0, 0.0, 7.0])


def test_integer_and_non_relu_maximum_are_left_alone():
    def f(x, n):
        return jnp.maximum(x, 1.0) + jnp.maximum(n, 0).astype(x.dtype) + jnp.maximum(x, x[::-1])

    assert relu_count(f, jnp.ones(3), jnp.ones(3, jnp.int32)) == 0
    ruled = with_rules(f, "guided", require_relu=False)
    x, n = jnp.array([0.5, 2.0, -1.0]), jnp.array([1, -2, 3])
    np.testing.assert_array_equal(
        jax.grad(lambda x: ruled(x, n).sum())(x), jax.grad(lambda x: f(x, n).sum())(x)
    )


# --- max-pool switches -------------------------------------------------------------------


def _pooled(x, k=2, stride=2):
    return _pool(jax.nn.relu(x), k, stride)


def _projection(x, pool, k=2, stride=2):
    f = functools.partial(_pooled, k=k, stride=stride)
    out, pullback = jax.vjp(with_rules(f, "deconvnet", pool=pool), x)
    return np.asarray(pullback(jnp.ones_like(out))[0][0, :, :, 0])


def test_switches_route_to_the_argmax():
    x = jax.random.permutation(jax.random.key(5), jnp.arange(1.0, 37.0)).reshape(1, 6, 6, 1)
    grad = _projection(x, "switches")
    windows = np.asarray(x[0, :, :, 0]).reshape(3, 2, 3, 2).transpose(0, 2, 1, 3).reshape(3, 3, 4)
    expected = np.zeros((6, 6), np.float32)
    for i in range(3):
        for j in range(3):
            a = int(np.argmax(windows[i, j]))
            expected[2 * i + a // 2, 2 * j + a % 2] = 1.0
    np.testing.assert_array_equal(grad, expected)


@pytest.mark.parametrize(
    "window, stride, padding",
    [((3, 3), (2, 2), "VALID"), ((2, 3), (2, 1), "SAME"), ((3, 3), (3, 2), ((1, 2), (0, 1)))],
)
def test_dense_switch_routing_is_bit_identical_to_select_and_scatter(window, stride, padding):
    """The explicit-transpose interpreter routes max-pool switches without
    select-and-scatter; ties (ReLU zeros) go to the first maximum and overlapping
    windows add up in the same order."""
    rng = np.random.default_rng(11)
    x = np.maximum(rng.normal(size=(2, 11, 12, 3)), 0).astype(np.float32)
    x[0, :4, :4, 0] = 0.5  # plateaus: ties inside and across windows

    def net(x):
        y = lax.reduce_window(
            jax.nn.relu(x), -jnp.inf, lax.max, (1, *window, 1), (1, *stride, 1),
            padding if isinstance(padding, str) else ((0, 0), *padding, (0, 0)),
        )  # fmt: skip
        return y * jnp.arange(1.0, y.shape[-1] + 1)

    fast = with_rules(net, "gradient", explicit_conv_transpose=True)
    out, pull = jax.vjp(net, x)
    fast_out, fast_pull = jax.vjp(jax.jit(fast), x)
    np.testing.assert_array_equal(fast_out, out)
    cot = rng.normal(size=out.shape).astype(np.float32)
    np.testing.assert_array_equal(fast_pull(cot)[0], pull(cot)[0])
    assert "select_and_scatter" not in str(jax.make_jaxpr(jax.grad(lambda x: fast(x).sum()))(x))


def test_center_discards_switches():
    x = jnp.arange(1.0, 37.0).reshape(1, 6, 6, 1)  # every 2x2 argmax is bottom-right
    switches, center = _projection(x, "switches"), _projection(x, "center")
    assert not np.array_equal(switches, center)
    expected = np.zeros((6, 6), np.float32)
    expected[0::2, 0::2] = 1.0  # even window: the first middle tap, the top-left pixel
    np.testing.assert_array_equal(center, expected)
    expected_switches = np.zeros((6, 6), np.float32)
    expected_switches[1::2, 1::2] = 1.0
    np.testing.assert_array_equal(switches, expected_switches)

    center3 = _projection(x, "center", k=3, stride=3)  # odd window: its true centre
    expected3 = np.zeros((6, 6), np.float32)
    expected3[1::3, 1::3] = 1.0
    np.testing.assert_array_equal(center3, expected3)
    np.testing.assert_array_equal(with_rules(_pooled, "guided", pool="center")(x), _pooled(x))


def test_center_with_padding_under_jit_and_vmap():
    x = jax.random.normal(jax.random.key(7), (3, 1, 5, 5, 1))
    f = functools.partial(_pooled, k=2, stride=2)  # 5x5 -> 2x2, no padding
    same = functools.partial(_pool, k=2, stride=2, padding="SAME")  # 5x5 -> 3x3, pad (0, 1)
    for fn in (f, same):
        ruled = with_rules(fn, "deconvnet", pool="center", require_relu=False)
        np.testing.assert_array_equal(jax.vmap(ruled)(x), jax.vmap(fn)(x))
    ruled = jax.jit(
        jax.vmap(
            jax.grad(
                lambda im: with_rules(same, "guided", pool="center", require_relu=False)(im).sum()
            )
        )
    )
    grads = np.asarray(ruled(x))[:, 0, :, :, 0]
    expected = np.zeros((5, 5), np.float32)
    expected[0::2, 0::2] = 1.0  # every window's top-left tap lies inside the image
    np.testing.assert_array_equal(grads, np.broadcast_to(expected, grads.shape))


def test_zero_constant_and_zero_argument_count_as_relu():
    zeros = np.zeros(3, np.float32)

    def f(x):
        return jnp.maximum(x, zeros) + jax.jit(jnp.maximum)(jnp.zeros(3), 2.0 * x)

    assert relu_count(f, jnp.ones(3)) == 2
    x = jnp.array([-1.0, 0.0, 2.0])
    _, pullback = jax.vjp(with_rules(f, "deconvnet"), x)
    np.testing.assert_array_equal(pullback(jnp.array([1.0, 1.0, -1.0]))[0], [3.0, 3.0, 0.0])


# --- Model wrapping --------------------------------------------------------------------


class _TinyNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(4 * 4 * 4, 6, rngs=rngs)

    def __call__(self, x):
        h = nnx.max_pool(jax.nn.relu(self.conv(x)), (2, 2), (2, 2))
        return jax.nn.relu(self.fc(h.reshape(x.shape[0], -1)))


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_nnx_model_with_rules(rule):
    module = _TinyNet(nnx.Rngs(0))
    model = from_nnx(module, input=InputContract(size=(8, 8)), layers=("conv", "fc"))
    ruled = model_with_rules(model, rule)
    assert ruled.layers == model.layers and ruled.name == model.name
    assert model_with_rules(model, rule).apply_fn == ruled.apply_fn  # same jit cache key
    assert model_with_rules(ruled, "gradient").apply_fn.apply_fn is model.apply_fn
    images = jax.random.uniform(jax.random.key(6), (2, 8, 8, 3))

    def unit(m, im):
        return m.apply(m.params, im, "fc")["fc"][:, 2].sum()

    grad = jax.jit(jax.grad(functools.partial(unit, ruled)))(images)
    ref_relu = reference_relu(rule)

    def reference(im):  # the same network by hand, with the rule's ReLU
        h = nnx.max_pool(ref_relu(module.conv(im)), (2, 2), (2, 2))
        return module.fc(h.reshape(im.shape[0], -1))[:, 2].sum()

    np.testing.assert_allclose(grad, jax.grad(reference)(images), rtol=1e-5, atol=1e-6)
    plain = jax.grad(functools.partial(unit, model))(images)
    assert not np.allclose(grad, plain)
    # conv is pre-activation: no ReLU on its path, plain gradients, no error.
    conv_grad = jax.grad(lambda im: ruled.apply(ruled.params, im, "conv")["conv"].sum())(images)
    np.testing.assert_allclose(
        conv_grad,
        jax.grad(lambda im: model.apply(model.params, im, "conv")["conv"].sum())(images),
        rtol=1e-6,
    )


# --- errors ------------------------------------------------------------------------------


def test_unknown_rule_and_pool_list_the_valid_ones():
    with pytest.raises(InputError) as err:
        with_rules(jax.nn.relu, "guided_backprop")
    assert all(rule in str(err.value) for rule in RULES)
    with pytest.raises(InputError, match="switches, center"):
        with_rules(jax.nn.relu, "guided", pool="average")


def test_function_without_relu():
    def f(x):
        return jnp.tanh(x) * 3.0

    x = jnp.array([0.3, -1.0])
    with pytest.raises(InputError, match="no ReLU.*require_relu=False"):
        with_rules(f, "deconvnet")(x)
    out, pullback = jax.vjp(with_rules(f, "deconvnet", require_relu=False), x)
    expected_out, expected_pullback = jax.vjp(f, x)
    np.testing.assert_array_equal(out, expected_out)
    np.testing.assert_array_equal(pullback(jnp.ones(2))[0], expected_pullback(jnp.ones(2))[0])

    model = from_function(lambda p, x: x * p, jnp.float32(2.0), input=InputContract(size=(4, 4)))
    with pytest.raises(InputError, match="no ReLU"):
        model_with_rules(model, "guided")
    assert model_with_rules(model, "guided", require_relu=False).apply_fn.rule == "guided"


def test_static_arguments_must_be_bound():
    with pytest.raises(InputError, match="functools.partial"):
        with_rules(lambda x, name: jax.nn.relu(x), "guided")(jnp.ones(2), "conv1")


@pytest.mark.parametrize(
    "stride, padding, rhs_dilation, numbers",
    [
        ((1, 1), ((1, 1), (1, 1)), (1, 1), ("NHWC", "HWIO", "NHWC")),
        ((2, 2), ((2, 1), (0, 3)), (1, 1), ("NHWC", "HWIO", "NHWC")),
        ((1, 2), "VALID", (2, 1), ("NCHW", "OIHW", "NCHW")),
        ((3, 2), ((1, 2), (1, 0)), (1, 1), ("NCHW", "OIHW", "NCHW")),
    ],
)
def test_explicit_conv_transpose_keeps_values_and_derivatives(
    stride, padding, rhs_dilation, numbers
):
    rng = np.random.default_rng(7)
    nhwc = numbers[0] == "NHWC"

    def net(x, w):
        y = lax.conv_general_dilated(
            x, w, stride, padding, rhs_dilation=rhs_dilation, dimension_numbers=numbers
        )
        return jax.nn.relu(y)

    fast = with_rules(net, "gradient", explicit_conv_transpose=True)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(2, 9, 11, 3) if nhwc else (2, 3, 9, 11)), jnp.float64)
        w = jnp.asarray(rng.normal(size=(3, 3, 3, 4) if nhwc else (4, 3, 3, 3)), jnp.float64)
        cot = jnp.asarray(rng.normal(size=net(x, w).shape), jnp.float64)
        out, pull = jax.vjp(net, x, w)
        fast_out, fast_pull = jax.vjp(fast, x, w)
        np.testing.assert_array_equal(fast_out, out)
        for got, want in zip(fast_pull(cot), pull(cot)):
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

        def ascend(f, x):  # inside a scan, where the rewrite matters
            def step(x, _):
                return x + 0.1 * jax.grad(lambda x: f(x, w).sum())(x), None

            return lax.scan(step, x, None, length=3)[0]

        np.testing.assert_allclose(
            jax.jit(functools.partial(ascend, fast))(x), ascend(net, x), rtol=1e-12, atol=1e-12
        )
        per_example = jax.vmap(jax.grad(lambda x: fast(x[None], w).sum()))(x)
        np.testing.assert_allclose(
            per_example, jax.grad(lambda x: net(x, w).sum())(x), rtol=1e-12, atol=1e-12
        )


def test_model_for_input_gradients_has_the_plain_gradient():
    from cnnvis_jax.rules import model_for_input_gradients

    model = from_nnx(_TinyNet(nnx.Rngs(0)), input=InputContract(size=(8, 8)), layers=("conv", "fc"))
    fast = model_for_input_gradients(model)
    assert fast.apply_fn.explicit_conv_transpose and fast.apply_fn.rule == "gradient"
    assert model_for_input_gradients(fast) is fast
    guided = model_for_input_gradients(model_with_rules(model, "guided"))
    assert guided.apply_fn.rule == "guided" and guided.apply_fn.explicit_conv_transpose
    x = jax.random.uniform(jax.random.key(2), (2, 8, 8, 3))

    def score(m, x):
        return m.apply(m.params, x, "fc")["fc"][:, 1].sum()

    np.testing.assert_allclose(
        jax.jit(jax.grad(lambda x: score(fast, x)))(x),
        jax.grad(lambda x: score(model, x))(x),
        rtol=1e-5,
        atol=1e-6,
    )
