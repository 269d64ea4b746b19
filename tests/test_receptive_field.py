"""Tests of cnnvis_jax.receptive_field: hand-computed fields and an empirical check."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from cnnvis_jax.receptive_field import (
    ReceptiveField,
    compute_receptive_fields,
    explain_receptive_fields,
)

NHWC = ("NHWC", "HWIO", "NHWC")

# Weights do not change receptive fields; constant initializers keep module
# construction cheap (eager random initializers compile one small program each).
Conv = functools.partial(nnx.Conv, kernel_init=nnx.initializers.ones)
Linear = functools.partial(nnx.Linear, kernel_init=nnx.initializers.ones)


def rf(size, stride, offset) -> ReceptiveField:
    """Square field shorthand."""
    return ReceptiveField((size, size), (stride, stride), (offset, offset))


def conv(x, k, stride=1, pad=0, dilation=1, channels=2):
    """NHWC convolution with a k x k kernel of ones; pad is low (= high) padding."""
    w = jnp.ones((k, k, x.shape[-1], channels), x.dtype)
    pads = pad if isinstance(pad, tuple) else (pad, pad)
    return lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        (pads, pads),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=NHWC,
    )


def max_pool(x, k, stride, pad=0):
    return lax.reduce_window(
        x,
        -jnp.inf,
        lax.max,
        (1, k, k, 1),
        (1, stride, stride, 1),
        ((0, 0), (pad, pad), (pad, pad), (0, 0)),
    )


# --- ReceptiveField ---------------------------------------------------------------


def test_box_and_center():
    field = ReceptiveField(size=(11, 7), stride=(4, 2), offset=(-2, 1))
    assert field.box(0, 0) == (-2, 1, 9, 8)
    assert field.box(3, 5) == (10, 11, 21, 18)
    assert field.box(0, 0, image_size=(20, 20)) == (0, 1, 9, 8)
    assert field.box(4, 9, image_size=(20, 20)) == (14, 19, 20, 20)
    assert field.center(0, 0) == (3.0, 4.0)
    assert field.center(1, 1) == (7.0, 6.0)


def test_field_fields_are_int_tuples_and_validated():
    field = ReceptiveField(size=[np.int64(3), 3], stride=(1, 1), offset=(0, 0))
    assert field.size == (3, 3) and isinstance(field.size[0], int)
    assert hash(field) == hash(rf(3, 1, 0))
    with pytest.raises(ValueError, match="positive"):
        ReceptiveField((0, 1), (1, 1), (0, 0))


# --- single primitives ------------------------------------------------------------


def test_identity_and_elementwise():
    fields = compute_receptive_fields(
        lambda x: {"x": x, "y": jnp.tanh(x * 2.0 + 1.0)}, (1, 8, 8, 3)
    )
    assert fields == {"x": rf(1, 1, 0), "y": rf(1, 1, 0)}


def test_single_array_output_is_named_output():
    assert compute_receptive_fields(lambda x: conv(x, 3), (1, 8, 8, 3)) == {"output": rf(3, 1, 0)}


@pytest.mark.parametrize(
    "k, stride, pad, dilation, expected",
    [
        (3, 1, 0, 1, rf(3, 1, 0)),
        (3, 2, 1, 1, rf(3, 2, -1)),
        (3, 1, 2, 2, rf(5, 1, -2)),
        (5, 3, 2, 1, rf(5, 3, -2)),
        (1, 2, 0, 1, rf(1, 2, 0)),
    ],
)
def test_conv(k, stride, pad, dilation, expected):
    fields = compute_receptive_fields(lambda x: conv(x, k, stride, pad, dilation), (1, 16, 16, 3))
    assert fields["output"] == expected


def test_conv_stack_arithmetic():
    def fn(x):
        a = conv(x, 3, 2, 1)  # size 3, stride 2, offset -1
        b = conv(a, 3, 1, 2, dilation=2)  # k_eff 5: size 3 + 4*2 = 11, offset -1 - 2*2 = -5
        c = max_pool(b, 2, 2)  # size 11 + 1*2 = 13, stride 4
        return {"a": a, "b": b, "c": c}

    assert compute_receptive_fields(fn, (1, 32, 32, 3)) == {
        "a": rf(3, 2, -1),
        "b": rf(11, 2, -5),
        "c": rf(13, 4, -5),
    }


def test_anisotropic_conv_and_pool():
    def fn(x):
        w = jnp.ones((5, 3, 3, 2))
        y = lax.conv_general_dilated(x, w, (2, 1), ((2, 0), (0, 1)), dimension_numbers=NHWC)
        return lax.reduce_window(y, 0.0, lax.add, (1, 1, 3, 1), (1, 1, 2, 1), "VALID")

    assert compute_receptive_fields(fn, (1, 16, 16, 3))["output"] == ReceptiveField(
        size=(5, 5), stride=(2, 2), offset=(-2, 0)
    )


def test_nchw_layout_via_transposes():
    """Channels-first inside, channels-last out; and a channels-first activation."""

    def fn(x):
        xc = x.transpose(0, 3, 1, 2)  # NCHW
        w = jnp.ones((4, 3, 3, 3))  # OIHW
        y = lax.conv_general_dilated(
            xc, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        z = lax.reduce_window(
            y, 0.0, lax.add, (1, 1, 3, 3), (1, 1, 2, 2), ((0, 0), (0, 0), (1, 1), (1, 1))
        )
        return {"nchw": z, "nhwc": z.transpose(0, 2, 3, 1)}

    fields = compute_receptive_fields(fn, (1, 16, 16, 3))
    # conv: 3 / 2 / -1; pool 3/2 pad 1: size 3 + 2*2 = 7, offset -1 - 2 = -3, stride 4.
    assert fields == {"nchw": rf(7, 4, -3), "nhwc": rf(7, 4, -3)}


def test_transpose_swapping_height_and_width_keeps_fields_per_input_axis():
    def fn(x):
        w = jnp.ones((3, 1, 3, 2))  # 3 tall, 1 wide
        y = lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC)
        return y.transpose(0, 2, 1, 3)

    field = compute_receptive_fields(fn, (1, 8, 8, 3))["output"]
    assert field == ReceptiveField(size=(3, 1), stride=(1, 1), offset=(0, 0))


def test_reduce_window_variants():
    def fn(x):
        generic = lax.reduce_window(
            (x, x),
            (0.0, 0.0),
            lambda a, b: (a[0] + b[0], jnp.maximum(a[1], b[1])),
            (1, 3, 3, 1),
            (1, 2, 2, 1),
            ((0, 0), (1, 1), (1, 1), (0, 0)),
        )
        dilated = lax.reduce_window(
            x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "VALID", window_dilation=(1, 2, 2, 1)
        )
        return {
            "generic": generic[0],
            "dilated": dilated,
            "avg": nnx.avg_pool(x, (2, 2), (2, 2)),
            "min": lax.reduce_window(x, jnp.inf, lax.min, (1, 2, 2, 1), (1, 1, 1, 1), "SAME"),
        }

    assert compute_receptive_fields(fn, (1, 16, 16, 3)) == {
        "generic": rf(3, 2, -1),
        "dilated": rf(5, 1, 0),
        "avg": rf(2, 2, 0),
        "min": rf(2, 1, 0),
    }


def test_pad_and_slice():
    def fn(x):
        padded = lax.pad(x, 0.0, ((0, 0, 0), (3, 0, 0), (-2, 1, 0), (0, 0, 0)))
        return {
            "padded": padded,
            "padded_conv": conv(padded, 3),
            "sliced": x[:, 2:14:3, 1:, :],
            "np_pad": jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")[:, :, 1:-1],
        }

    fields = compute_receptive_fields(fn, (1, 16, 16, 3))
    assert fields["padded"] == ReceptiveField((1, 1), (1, 1), (-3, 2))
    assert fields["padded_conv"] == ReceptiveField((3, 3), (1, 1), (-3, 2))
    assert fields["sliced"] == ReceptiveField((1, 1), (3, 1), (2, 1))
    # Edge padding is a concatenation of edge slices along the padded axis: the
    # field is no longer a sliding window along the height.
    assert fields["np_pad"] is None


def test_reshape_expand_squeeze_broadcast_keep_spatial_axes():
    def fn(x):
        y = conv(x, 3, channels=4)  # (1, 14, 14, 4)
        return {
            "split_channels": y.reshape(1, 14, 14, 2, 2),
            "expand": jnp.expand_dims(y, 0),
            "squeeze": jnp.squeeze(y, 0),
            "broadcast": jnp.broadcast_to(y[:, :, :, None, :], (1, 14, 14, 5, 4)),
            "merged_batch": y.reshape(14, 14, 4),
            "flatten": y.reshape(1, -1),
            "merge_hw": y.reshape(1, 196, 4),
        }

    fields = compute_receptive_fields(fn, (1, 16, 16, 3))
    for name in ("split_channels", "expand", "squeeze", "broadcast", "merged_batch"):
        assert fields[name] == rf(3, 1, 0), name
    assert fields["flatten"] is None
    assert fields["merge_hw"] is None


def test_concatenate_on_channels_is_union_and_on_space_is_global():
    def fn(x):
        a = conv(x, 3, pad=(0, 2))  # offset 0, size 3
        b = conv(x, 3, pad=(2, 0))  # offset -2, size 3
        return {
            "channels": jnp.concatenate([a, b], axis=-1),
            "height": jnp.concatenate([a, b], axis=1),
            "with_constant": jnp.concatenate([a, jnp.zeros_like(a)], axis=-1),
        }

    fields = compute_receptive_fields(fn, (1, 16, 16, 3))
    assert fields["channels"] == rf(5, 1, -2)
    assert fields["with_constant"] == rf(3, 1, 0)
    assert fields["height"] is None


def test_split_shifts_offsets():
    def fn(x):
        top, bottom = jnp.split(x, [5], axis=1)
        return {"top": top, "bottom": bottom}

    fields = compute_receptive_fields(fn, (1, 16, 16, 3))
    assert fields["top"] == rf(1, 1, 0)
    assert fields["bottom"] == ReceptiveField((1, 1), (1, 1), (5, 0))


def test_union_of_different_strides_covers_both():
    """Conservative union: one field that covers both inputs at every position."""

    def fn(x):
        a = x[:, ::2][:, :6, :14, :2]  # stride 2
        b = conv(x, 3)[:, :6, :, :3]  # stride 1, size 3
        return a + b

    field = compute_receptive_fields(fn, (1, 16, 16, 3))["output"]
    for i in range(6):
        top, _, bottom, _ = field.box(i, 0)
        assert top <= min(2 * i, i) and bottom >= max(2 * i + 1, i + 3)
    assert field.size[0] <= 9  # not the whole image


# --- values that see the whole image -------------------------------------------------


def test_global_ops_give_none_with_reasons():
    def fn(x):
        y = conv(x, 3)
        idx = jnp.array([0, 3])
        return {
            "gap": y.mean(axis=(1, 2)),
            "row_mean": y.mean(axis=1),
            "argmax_h": jnp.argmax(y, axis=1),
            "dense": y.reshape(1, -1) @ jnp.ones((14 * 14 * 2, 5)),
            "dot_h": jnp.einsum("nhwc,hk->nkwc", y, jnp.ones((14, 4))),
            "dyn_slice": lax.dynamic_slice_in_dim(y, jnp.argmax(y[0, 0, 0]), 4, axis=1),
            "gather_h": y[:, idx],
            "gather_c": jnp.take(y, idx % 2, axis=3),
            "norm": y / jnp.sum(y),
            "cumsum": jnp.cumsum(y, axis=2),
            "cumsum_c": jnp.cumsum(y, axis=3),
            "sorted_h": jnp.sort(y, axis=1),
            "flip_c": y[..., ::-1],
            "flip_h": y[:, ::-1],
        }

    reasons = explain_receptive_fields(fn, (1, 16, 16, 3))
    fields = compute_receptive_fields(fn, (1, 16, 16, 3))
    for name in ("gap", "row_mean", "argmax_h", "dense", "dot_h", "dyn_slice", "gather_h", "norm"):
        assert fields[name] is None, name
        assert isinstance(reasons[name], str)
    assert fields["cumsum"] is None and fields["sorted_h"] is None and fields["flip_h"] is None
    assert "reduce" in reasons["gap"]
    assert "dot_general" in reasons["dot_h"] or "reshape" in reasons["dot_h"]
    for name in ("gather_c", "cumsum_c", "flip_c"):
        assert fields[name] == rf(3, 1, 0), name


def test_more_primitives():
    def fn(x):
        y = conv(x, 3, channels=4)
        pair = lax.reduce((y, -y), (0.0, 0.0), lambda a, b: (a[0] + b[0], a[1] + b[1]), (3,))
        keys, vals = lax.sort((y, y * 2.0), dimension=3, num_keys=1)
        return {
            "reduce_c": pair[0],
            "reduce_h": lax.reduce(y, 0.0, lax.add, (1,)),
            "prod_c": jnp.prod(y, axis=-1),
            "argmin_c": jnp.argmin(y, axis=-1),
            "sort_c": vals,
            "top_k_c": lax.top_k(y, 2)[0],
            "top_k_w": lax.top_k(y.transpose(0, 1, 3, 2), 2)[0],
            "set_const": y.at[:, 0].set(0.0),
            "set_dependent": y.at[:, 0].set(y[:, 1]),
            "add_at_c": y.at[..., 0].add(1.0),
            "dus": lax.dynamic_update_slice(y, jnp.zeros((1, 2, 2, 4)), (0, 3, 3, 0)),
            "while": lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 0.5), (0, y))[
                1
            ],
            "barrier": lax.optimization_barrier((y, x))[0],
            "where": jnp.where(y > 1.0, y, jnp.zeros_like(y)),
            "erf_pow": lax.erf(y) ** 2 + jnp.sqrt(jnp.abs(y)) + jnp.sign(y),
            "int_cast": y.astype(jnp.int32).astype(jnp.float32),
        }

    fields = compute_receptive_fields(fn, (1, 16, 16, 3))
    kept = ["reduce_c", "prod_c", "argmin_c", "sort_c", "top_k_c", "set_const", "add_at_c"]
    kept += ["dus", "while", "barrier", "where", "erf_pow", "int_cast"]
    for name in kept:
        assert fields[name] == rf(3, 1, 0), name
    for name in ("reduce_h", "top_k_w", "set_dependent"):
        assert fields[name] is None, name


def test_dot_general_over_channels_keeps_field():
    fn = lambda x: jnp.einsum("nhwc,cd->nhwd", conv(x, 3), jnp.ones((2, 5)))  # noqa: E731
    assert compute_receptive_fields(fn, (1, 16, 16, 3))["output"] == rf(3, 1, 0)


def test_transposed_conv_and_interior_padding_are_unsupported():
    def fn(x):
        return {
            "tconv": lax.conv_transpose(
                x, jnp.ones((3, 3, 3, 2)), (2, 2), "SAME", dimension_numbers=NHWC
            ),
            "interior": lax.pad(x, 0.0, ((0, 0, 0), (0, 0, 1), (0, 0, 0), (0, 0, 0))),
            "upsample": jax.image.resize(x, (1, 32, 32, 3), "nearest"),
        }

    reasons = explain_receptive_fields(fn, (1, 8, 8, 3))
    assert "transposed" in reasons["tconv"]
    assert "interior" in reasons["interior"]
    assert isinstance(reasons["upsample"], str)


def test_constant_layer_and_pytree_layer():
    reasons = explain_receptive_fields(
        lambda x: {"const": jnp.zeros((1, 4, 4, 2)), "pair": (x, x)}, (1, 4, 4, 3)
    )
    assert reasons["const"] == "does not depend on the input"
    assert "pytree" in reasons["pair"]


def test_input_shape_must_be_nhwc():
    with pytest.raises(ValueError, match="NHWC"):
        compute_receptive_fields(lambda x: x, (4, 4, 3))


# --- nonlinearities and sub-jaxprs ---------------------------------------------------


@jax.custom_jvp
def soft_relu(x):
    return jnp.where(x > 0, x, 0.01 * x)


soft_relu.defjvp(lambda primals, tangents: (soft_relu(primals[0]), tangents[0]))


@jax.custom_vjp
def clip_grad(x):
    return x


clip_grad.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -1, 1),))


@jax.jit
def jitted_block(x):
    return jax.nn.relu(conv(x, 3, pad=1))


def test_relus_custom_derivatives_and_calls_are_followed():
    def fn(x):
        y = jax.nn.relu(conv(x, 3))  # custom_jvp_call wrapping a jit
        y = jnp.maximum(y, 0.0)
        y = soft_relu(y)
        y = clip_grad(y)
        y = jitted_block(y)  # size 5, offset -1
        y = jax.checkpoint(lambda t: jax.nn.gelu(conv(t, 3)))(y)  # size 7
        y = lax.cond(jnp.float32(1.0) > 0, lambda t: t * 2.0, lambda t: jnp.tanh(t), y)
        y = jax.nn.sigmoid(nnx.relu(y)) * lax.clamp(0.0, y, 6.0)
        return {"y": y, "fori": lax.fori_loop(0, 3, lambda i, t: jax.nn.relu(t) * 0.5, y)}

    fields = compute_receptive_fields(fn, (1, 16, 16, 3))
    assert fields == {"y": rf(7, 1, -1), "fori": rf(7, 1, -1)}


def test_cond_is_union_of_branches_and_data_dependent_predicate_is_global():
    def fn(x):
        const = lax.cond(True, lambda t: conv(t, 3, pad=1), lambda t: conv(t, 5, pad=2), x)
        dependent = lax.cond(x.sum() > 0, lambda t: t, lambda t: t * 2.0, x)
        return {"const": const, "dependent": dependent}

    fields = compute_receptive_fields(fn, (1, 16, 16, 3))
    assert fields["const"] == rf(5, 1, -2)
    assert fields["dependent"] is None


def test_loops_that_grow_the_field_are_global():
    fn = lambda x: lax.fori_loop(0, 3, lambda i, t: conv(t, 3, pad=1, channels=3), x)  # noqa: E731
    assert compute_receptive_fields(fn, (1, 16, 16, 3))["output"] is None


def test_scan_over_channels_keeps_field():
    def fn(x):
        y = conv(x, 3).transpose(3, 0, 1, 2)  # channels first: scan over them

        def step(carry, xs):
            return carry + xs, xs * 2.0

        total, doubled = lax.scan(step, jnp.zeros_like(y[0]), y)
        return {"total": total, "doubled": doubled.transpose(1, 2, 3, 0)}

    fields = compute_receptive_fields(fn, (1, 16, 16, 3))
    assert fields == {"total": ReceptiveField((3, 3), (1, 1), (0, 0)), "doubled": rf(3, 1, 0)}


def _primitive(name, shape_fn):
    try:
        from jax.extend.core import Primitive
    except ImportError:  # pragma: no cover - older jax
        from jax.core import Primitive
    shaped_array = getattr(jax.core, "ShapedArray", None)
    if shaped_array is None:  # pragma: no cover - depends on the jax version
        pytest.skip("this jax version does not expose ShapedArray")
    prim = Primitive(name)
    prim.def_abstract_eval(lambda x: shaped_array(shape_fn(x.shape), x.dtype))
    return prim


def test_unknown_primitives_are_conservative():
    same = _primitive("mystery_same_shape", lambda s: s)
    shrink = _primitive("mystery_shrink", lambda s: (s[0], s[1] - 1, s[2], s[3]))

    def fn(x):
        y = conv(x, 3)
        return {"same": same.bind(y), "shrink": shrink.bind(y)}

    reasons = explain_receptive_fields(fn, (1, 16, 16, 3))
    assert reasons["same"] == rf(3, 1, 0)
    assert "mystery_shrink" in reasons["shrink"]


# --- networks ----------------------------------------------------------------------


class TinyAlexNet(nnx.Module):
    """torchvision AlexNet geometry with tiny channel counts."""

    def __init__(self, rngs: nnx.Rngs, c: int = 4):
        self.conv1 = Conv(3, c, (11, 11), strides=4, padding=2, rngs=rngs)
        self.conv2 = Conv(c, c, (5, 5), padding=2, rngs=rngs)
        self.conv3 = Conv(c, c, (3, 3), padding=1, rngs=rngs)
        self.conv4 = Conv(c, c, (3, 3), padding=1, rngs=rngs)
        self.conv5 = Conv(c, c, (3, 3), padding=1, rngs=rngs)
        self.fc6 = Linear(c * 6 * 6, 8, rngs=rngs)

    def __call__(self, x):
        out = {}
        x = out["conv1"] = nnx.relu(self.conv1(x))
        x = out["pool1"] = nnx.max_pool(x, (3, 3), (2, 2))
        x = out["conv2"] = nnx.relu(self.conv2(x))
        x = out["pool2"] = nnx.max_pool(x, (3, 3), (2, 2))
        x = out["conv3"] = nnx.relu(self.conv3(x))
        x = out["conv4"] = nnx.relu(self.conv4(x))
        x = out["conv5"] = nnx.relu(self.conv5(x))
        x = out["pool5"] = nnx.max_pool(x, (3, 3), (2, 2))
        out["fc6"] = nnx.relu(self.fc6(x.reshape(x.shape[0], -1)))
        return out


def test_alexnet():
    fields = compute_receptive_fields(TinyAlexNet(nnx.Rngs(0)), (1, 224, 224, 3))
    assert fields == {
        "conv1": rf(11, 4, -2),
        "pool1": rf(19, 8, -2),
        "conv2": rf(51, 8, -18),
        "pool2": rf(67, 16, -18),
        "conv3": rf(99, 16, -34),
        "conv4": rf(131, 16, -50),
        "conv5": rf(163, 16, -66),
        "pool5": rf(195, 32, -66),
        "fc6": None,
    }


def test_alexnet_box_is_clipped_to_the_image():
    field = compute_receptive_fields(TinyAlexNet(nnx.Rngs(0)), (1, 224, 224, 3))["pool5"]
    assert field.box(0, 0, (224, 224)) == (0, 0, 129, 129)
    assert field.box(5, 5, (224, 224)) == (94, 94, 224, 224)


def vgg16_features(x, c=2):
    """VGG16 conv/pool skeleton (3x3 convs, padding 1; 2x2 pools), ReLUs as jnp.maximum."""
    out = {}
    for block, n_convs in enumerate((2, 2, 3, 3, 3), start=1):
        for i in range(1, n_convs + 1):
            x = jnp.maximum(conv(x, 3, pad=1, channels=c), 0.0)
            out[f"conv{block}_{i}"] = x
        x = out[f"pool{block}"] = max_pool(x, 2, 2)
    return out


def test_vgg16():
    fields = compute_receptive_fields(vgg16_features, (1, 224, 224, 3))
    assert fields["conv1_2"] == rf(5, 1, -2)
    assert fields["pool1"] == rf(6, 2, -2)
    assert fields["conv3_3"] == rf(40, 4, -18)
    assert fields["pool4"] == rf(100, 16, -42)
    assert fields["conv5_3"].size == (196, 196) and fields["conv5_3"].stride == (16, 16)
    assert fields["pool5"] == rf(212, 32, -90)


class Bottleneck(nnx.Module):
    """ResNet basic block with a strided 1x1 projection shortcut."""

    def __init__(self, rngs: nnx.Rngs, c: int = 3):
        self.conv_a = Conv(c, c, (3, 3), strides=2, padding=1, rngs=rngs)
        self.bn = nnx.BatchNorm(c, use_running_average=True, rngs=rngs)
        self.conv_b = Conv(c, c, (3, 3), padding=1, rngs=rngs)
        self.proj = Conv(c, c, (1, 1), strides=2, rngs=rngs)

    def __call__(self, x):
        y = self.conv_b(nnx.relu(self.bn(self.conv_a(x))))
        return nnx.relu(y + self.proj(x))


class Inception(nnx.Module):
    """Inception module: 1x1, 3x3, 5x5 and a pooled branch, concatenated on channels."""

    def __init__(self, rngs: nnx.Rngs, c: int = 3):
        self.b1 = Conv(c, 2, (1, 1), rngs=rngs)
        self.b3 = Conv(c, 2, (3, 3), padding=1, rngs=rngs)
        self.b5 = Conv(c, 2, (5, 5), padding=2, rngs=rngs)
        self.bp = Conv(c, 2, (1, 1), rngs=rngs)

    def __call__(self, x):
        pooled = nnx.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
        branches = [self.b1(x), self.b3(x), self.b5(x), self.bp(pooled)]
        return jnp.concatenate([jax.nn.relu(b) for b in branches], axis=-1)


def test_residual_and_inception():
    rngs = nnx.Rngs(0)
    block, incept = Bottleneck(rngs), Inception(rngs)

    def fn(x):
        r = block(x)
        return {"res": r, "incept": incept(x), "both": incept(r), "gap": r.mean(axis=(1, 2))}

    fields = compute_receptive_fields(fn, (1, 32, 32, 3))
    # main: 3/2/-1 then 3 more at stride 2 -> 7/2/-3; shortcut 1/2/0 lies inside.
    assert fields["res"] == rf(7, 2, -3)
    assert fields["incept"] == rf(5, 1, -2)
    assert fields["both"] == rf(7 + 4 * 2, 2, -3 - 2 * 2)
    assert fields["gap"] is None


def test_residual_union_extends_both_sides():
    def fn(x):
        return conv(x, 3, pad=(0, 2)) + conv(x, 3, pad=(2, 0))

    assert compute_receptive_fields(fn, (1, 16, 16, 3))["output"] == rf(5, 1, -2)


# --- empirical check against gradients --------------------------------------------------
#
# A stack is a tuple of layer specs applied to an NHWC input with positive weights, so
# the gradient of an output unit is non-zero exactly at the pixels it depends on.
# ("window", kind, k, stride, dilation, pad_low, pad_high) is a conv or a sum pool;
# ("pad", low, high) pads (or crops, when negative) both spatial axes;
# ("slice", start) drops `start` rows/columns in front and 2 - start at the back.


def covering_stack(rng: np.random.Generator, size: int):
    """Windows with kernel >= stride whose padding keeps the whole image covered.

    Every intermediate position then depends on a contiguous block of pixels, and
    padding only ever stands for pixels outside the image, so the gradient support
    of each unit is exactly its box clipped to the image.
    """
    layers, n = [], size
    for _ in range(rng.integers(2, 6)):
        k = int(rng.integers(1, 5))
        s = int(rng.integers(1, k + 1))
        low = int(rng.integers(0, k))
        high = (k - n - low) % s  # the last window ends on the last position
        m = (n + low + high - k) // s + 1
        if n + low + high < k or m < 2:
            break
        layers.append(("window", str(rng.choice(["conv", "pool"])), k, s, 1, low, high))
        n = m
    return tuple(layers)


def general_stack(rng: np.random.Generator, size: int, dilated: bool):
    """Any windows (gaps, dilation), crops, slices and pads."""
    layers, n = [], size
    for _ in range(rng.integers(2, 6)):
        kind = str(rng.choice(["conv", "pool", "conv", "pad", "slice"]))
        if kind == "pad":
            low, high = (int(v) for v in rng.integers(-1, 3, 2))
            layer, m = ("pad", low, high), n + low + high
        elif kind == "slice":
            layer, m = ("slice", int(rng.integers(0, 3))), n - 2
        else:
            k = int(rng.integers(1, 5))
            s = int(rng.integers(1, 4))
            d = int(rng.integers(1, 3)) if dilated and kind == "conv" else 1
            low, high = (int(v) for v in rng.integers(0, k, 2))
            layer = ("window", kind, k, s, d, low, high)
            m = (n + low + high - (d * (k - 1) + 1)) // s + 1
        if m < 2:
            break
        layers.append(layer)
        n = m
    return tuple(layers)


def apply_stack(layers, x, pad_value=0.0):
    """Run a stack; padding uses `pad_value` (NaN marks units that read padding)."""

    def pad(x, low, high):
        cfg = ((0, 0, 0), (low, high, 0), (low, high, 0), (0, 0, 0))
        return lax.pad(x, jnp.asarray(pad_value, x.dtype), cfg)

    for layer in layers:
        if layer[0] == "pad":
            x = pad(x, layer[1], layer[2])
        elif layer[0] == "slice":
            start = layer[1]
            x = x[:, start : x.shape[1] - 2 + start, start : x.shape[2] - 2 + start]
        else:
            _, kind, k, s, d, low, high = layer
            x = pad(x, low, high)
            if kind == "conv":
                w = jnp.full((k, k, x.shape[-1], 2), 0.5, x.dtype)
                x = lax.conv_general_dilated(
                    x, w, (s, s), "VALID", rhs_dilation=(d, d), dimension_numbers=NHWC
                )
                x = jax.nn.relu(x + 0.1)
            else:
                x = lax.reduce_window(x, 0.0, lax.add, (1, k, k, 1), (1, s, s, 1), "VALID")
    return x


@functools.partial(jax.jit, static_argnums=0)
def _support_and_padding(layers, x):
    jac = jax.jacrev(lambda t: apply_stack(layers, t)[0, :, :, 0])(x)  # (oh, ow, 1, H, W, C)
    probe = apply_stack(layers, x, pad_value=jnp.nan)[0, :, :, 0]
    return jnp.any(jac[:, :, 0] != 0, axis=-1), jnp.isnan(probe)


def support_and_padding(layers, shape):
    """(support, reads_padding): support[i, j] is the (H, W) mask of pixels unit (i, j)
    of channel 0 depends on; reads_padding[i, j] whether any of its taps is padding."""
    x = jnp.linspace(0.5, 1.0, int(np.prod(shape)), dtype=jnp.float32).reshape(shape)
    support, reads_padding = _support_and_padding(layers, x)
    return np.asarray(support), np.asarray(reads_padding)


def box_mask(field, i, j, size):
    top, left, bottom, right = field.box(i, j, (size, size))
    mask = np.zeros((size, size), bool)
    mask[top:bottom, left:right] = True
    return mask


def field_of(layers, shape):
    return compute_receptive_fields(functools.partial(apply_stack, layers), shape)["output"]


@pytest.mark.parametrize("seed", range(8))
def test_field_matches_gradient_support_exactly(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(12, 28))
    layers = covering_stack(rng, size)
    shape = (1, size, size, 2)
    field = field_of(layers, shape)
    support, _ = support_and_padding(layers, shape)
    for i, j in np.ndindex(support.shape[:2]):
        np.testing.assert_array_equal(
            support[i, j], box_mask(field, i, j, size), err_msg=f"{layers} at {(i, j)}"
        )


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dilated", [False, True])
def test_field_bounds_gradient_support(seed, dilated):
    """Any stack: the support lies in the box; a unit that reads no padding spans it
    (and fills it when there is no dilation and no gap)."""
    rng = np.random.default_rng(100 + seed + 50 * dilated)
    size = int(rng.integers(14, 28))
    layers = general_stack(rng, size, dilated)
    shape = (1, size, size, 2)
    field = field_of(layers, shape)
    support, reads_padding = support_and_padding(layers, shape)
    gaps = dilated or any(layer[0] == "window" and layer[3] > layer[2] for layer in layers)
    checked = 0
    for i, j in np.ndindex(support.shape[:2]):
        inside = box_mask(field, i, j, size)
        assert not np.any(support[i, j] & ~inside), (layers, i, j)
        if reads_padding[i, j]:
            continue
        checked += 1
        assert field.box(i, j) == field.box(i, j, (size, size))
        rows = np.flatnonzero(support[i, j].any(axis=1))
        cols = np.flatnonzero(support[i, j].any(axis=0))
        assert (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) == field.box(i, j), (layers, i, j)
        if not gaps:
            np.testing.assert_array_equal(support[i, j], inside)
    assert checked or reads_padding.all()
