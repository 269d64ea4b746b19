"""The phase-split input gradient of strided convolutions equals JAX's (float64):
1-, 2- and 3-D, every layout, asymmetric padding, kernels smaller and larger than
the stride, and an output that does not cover the whole input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnvis_jax.conv_grad import phase_kernel, phase_split_applies, strided_input_gradient

CASES = [
    # (input shape, kernel shape, strides, padding, dimension names)
    ((2, 227, 227, 3), (11, 11, 3, 8), (4, 4), ((2, 2), (2, 2)), ("NHWC", "HWIO", "NHWC")),
    ((2, 3, 16, 15), (6, 3, 3, 3), (2, 3), ((1, 0), (0, 2)), ("NCHW", "OIHW", "NCHW")),
    ((1, 9, 10, 2), (2, 2, 2, 3), (3, 3), ((0, 0), (0, 0)), ("NHWC", "HWIO", "NHWC")),
    ((1, 13, 11, 2), (3, 3, 2, 3), (2, 1), ((0, 0), (1, 1)), ("NHWC", "HWIO", "NHWC")),
    ((2, 4, 21), (5, 4, 7), (3,), ((3, 1),), ("NCH", "OIH", "NCH")),
    (
        (1, 7, 8, 9, 2),
        (3, 2, 3, 2, 4),
        (2, 2, 3),
        ((1, 1), (0, 0), (2, 0)),
        ("NDHWC", "DHWIO", "NDHWC"),
    ),
    ((1, 2, 10, 12), (3, 3, 2, 5), (2, 2), ((1, 1), (1, 1)), ("NCHW", "HWIO", "NHWC")),
]


@pytest.mark.parametrize("shape, kernel_shape, strides, padding, names", CASES)
def test_equals_jax_input_gradient(shape, kernel_shape, strides, padding, names):
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal(shape))
        w = jnp.asarray(rng.standard_normal(kernel_shape))
        numbers = lax.conv_dimension_numbers(shape, kernel_shape, names)
        params = {"window_strides": strides, "padding": padding, "lhs_dilation": None,
                  "rhs_dilation": None, "feature_group_count": 1, "batch_group_count": 1}  # fmt: skip
        assert phase_split_applies(params)

        def conv(x):
            return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=numbers)

        y, pull = jax.vjp(conv, x)
        g = jnp.asarray(rng.standard_normal(y.shape))
        kernel = phase_kernel(w, numbers.rhs_spec, strides)
        got = strided_input_gradient(g, kernel, numbers, strides, padding, shape)
        assert got.shape == x.shape and got.dtype == jnp.float64
        np.testing.assert_allclose(got, pull(g)[0], rtol=1e-12, atol=1e-12)


def test_applies_only_to_plain_strided_convolutions():
    base = {"window_strides": (2, 2), "padding": ((1, 1), (1, 1)), "lhs_dilation": (1, 1),
            "rhs_dilation": (1, 1), "feature_group_count": 1, "batch_group_count": 1}  # fmt: skip
    assert phase_split_applies(base)
    assert not phase_split_applies({**base, "window_strides": (1, 1)})
    assert not phase_split_applies({**base, "rhs_dilation": (2, 1)})
    assert not phase_split_applies({**base, "lhs_dilation": (1, 2)})
    assert not phase_split_applies({**base, "padding": ((-1, 0), (0, 0))})
    assert not phase_split_applies({**base, "feature_group_count": 2})
