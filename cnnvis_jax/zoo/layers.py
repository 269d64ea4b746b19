"""Building blocks shared by the zoo networks, matching PyTorch/Caffe semantics.

Every function works on NHWC arrays. The stateless modules (:class:`ReLU`,
:class:`MaxPool2d`, :class:`AdaptiveAvgPool2d`, :class:`LocalResponseNorm`) exist so
that an ``nnx.List`` can hold a whole ``torch.nn.Sequential``, index for index:
the parameter paths of the NNX network then equal the torchvision state-dict keys
(``features/0/kernel`` <-> ``features.0.weight``).

Pooling follows PyTorch exactly, ``ceil_mode`` included (the last window may hang
over the bottom/right border, as long as it starts inside the input or its left
padding); padding never wins a max. Adaptive average pooling uses torch's window
formula ``start = floor(i * L / n)``, ``end = ceil((i + 1) * L / n)``, so it is
right for every input size, not only the identity case.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from cnnvis_jax.errors import InputError, did_you_mean

# torch.nn.Conv2d / Linear default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
TORCH_DEFAULT_INIT = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# kaiming_normal_(mode="fan_out", nonlinearity="relu"): torchvision VGG and ResNet convs.
KAIMING_FAN_OUT_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


# --- convolution ------------------------------------------------------------------


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    groups: int = 1,
    use_bias: bool = True,
    kernel_init=TORCH_DEFAULT_INIT,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """An ``nnx.Conv`` with torch.nn.Conv2d's arguments and explicit symmetric padding.

    Kernel layout HWIO ``(kh, kw, in_channels // groups, out_channels)``; torch's
    OIHW weight maps to it by ``w.transpose(2, 3, 1, 0)`` (groups included: both
    frameworks split the output channels into ``groups`` contiguous blocks).
    """
    ph, pw = _pair(padding)
    return nnx.Conv(
        in_channels,
        out_channels,
        _pair(kernel_size),
        strides=_pair(stride),
        padding=((ph, ph), (pw, pw)),
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=kernel_init,
        rngs=rngs,
    )


def linear(
    in_features: int,
    out_features: int,
    *,
    kernel_init=TORCH_DEFAULT_INIT,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """An ``nnx.Linear`` (kernel ``(in, out)``, the transpose of torch's weight)."""
    return nnx.Linear(in_features, out_features, kernel_init=kernel_init, rngs=rngs)


# --- pooling ----------------------------------------------------------------------


def pool_output_size(length: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output length of a PyTorch pooling window along one axis."""
    span = length + 2 * padding - kernel
    if span < 0:
        raise InputError(
            f"pooling window {kernel} is larger than the padded input ({length} + 2*{padding}); "
            "use larger images."
        )
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= length + padding:
        out -= 1  # the last window would start inside the right padding
    return out


def max_pool2d(
    x: jax.Array,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
) -> jax.Array:
    """torch.nn.functional.max_pool2d on NHWC input (``stride`` defaults to the kernel).

    Uses ``nnx.max_pool`` (reduce_window max, padding ``-inf`` so it never wins);
    the gradient goes to a single maximum of each window (Zeiler's switches).
    """
    kernel = _pair(kernel_size)
    strides = _pair(stride if stride is not None else kernel_size)
    pads = _pair(padding)
    window_pads = []
    for axis, (k, s, p) in enumerate(zip(kernel, strides, pads)):
        length = x.shape[1 + axis]
        out = pool_output_size(length, k, s, p, ceil_mode)
        extra = max(0, (out - 1) * s + k - (length + 2 * p))
        window_pads.append((p, p + extra))
    return nnx.max_pool(x, kernel, strides=strides, padding=tuple(window_pads))


def _adaptive_avg_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    length = x.shape[axis]
    if length == size:
        return x
    if length % size == 0:
        step = length // size
        shape = x.shape[:axis] + (size, step) + x.shape[axis + 1 :]
        return x.reshape(shape).mean(axis=axis + 1)
    pieces = []
    for i in range(size):
        start = (i * length) // size
        end = -(-((i + 1) * length) // size)
        pieces.append(lax.slice_in_dim(x, start, end, axis=axis).mean(axis=axis, keepdims=True))
    return jnp.concatenate(pieces, axis=axis)


def adaptive_avg_pool2d(x: jax.Array, output_size: int | Sequence[int]) -> jax.Array:
    """torch.nn.functional.adaptive_avg_pool2d on NHWC input, any input size.

    Output position ``i`` of an axis of length ``L`` averages inputs
    ``floor(i*L/n) .. ceil((i+1)*L/n) - 1``; when ``L == n`` it is the identity,
    when ``L < n`` inputs are repeated.
    """
    oh, ow = _pair(output_size)
    return _adaptive_avg_axis(_adaptive_avg_axis(x, 1, oh), 2, ow)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """AdaptiveAvgPool2d((1, 1)) followed by flatten: ``(N, H, W, C) -> (N, C)``."""
    return jnp.mean(x, axis=(1, 2))


# --- normalization ----------------------------------------------------------------


def local_response_norm(
    x: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> jax.Array:
    """Cross-channel LRN as Caffe and torch.nn.LocalResponseNorm define it.

    ``b_c = a_c / (k + alpha / size * sum_{c' in window(c)} a_{c'}^2) ** beta`` with the
    window ``c - size//2 .. c + (size-1)//2`` clipped at the channel ends (NHWC).
    """
    squares = lax.reduce_window(  # a Python 0.0 keeps it the differentiable window sum
        x * x,
        0.0,
        lax.add,
        (1, 1, 1, size),
        (1, 1, 1, 1),
        ((0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2)),
    )
    return x / (k + (alpha / size) * squares) ** beta


# --- stateless modules (Sequential slots) -----------------------------------------


class ReLU(nnx.Module):
    """``jax.nn.relu`` (relu'(0) = 0, as torch); appears as a named relu in jaxprs."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(x)


class MaxPool2d(nnx.Module):
    """torch.nn.MaxPool2d on NHWC input; see :func:`max_pool2d`."""

    def __init__(
        self, kernel_size: int, stride: int | None = None, padding: int = 0, ceil_mode: bool = False
    ):
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode = ceil_mode

    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)


class AdaptiveAvgPool2d(nnx.Module):
    """torch.nn.AdaptiveAvgPool2d on NHWC input; see :func:`adaptive_avg_pool2d`."""

    def __init__(self, output_size: int | tuple[int, int]):
        self.output_size = _pair(output_size)

    def __call__(self, x: jax.Array) -> jax.Array:
        return adaptive_avg_pool2d(x, self.output_size)


class LocalResponseNorm(nnx.Module):
    """torch.nn.LocalResponseNorm / Caffe LRN (ACROSS_CHANNELS) on NHWC input."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def __call__(self, x: jax.Array) -> jax.Array:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k)


# --- taps -------------------------------------------------------------------------


class Taps:
    """Collects requested activations and says when the forward may stop.

    ``taps = Taps(LAYERS, layers)``; then ``if taps(name, x): return taps.out`` after
    each tap point. ``name=None`` is a no-op. Unknown requested names raise
    :class:`InputError` listing the valid ones.
    """

    def __init__(
        self, valid: Sequence[str], requested: Iterable[str] | None, model: str = "network"
    ):
        wanted = tuple(valid) if requested is None else tuple(requested)
        unknown = [n for n in wanted if n not in valid]
        if unknown:
            raise InputError(
                f"{model} has no layer {unknown[0]!r}; " + did_you_mean(unknown[0], tuple(valid))
            )
        self.wanted = frozenset(wanted)
        self.out: dict[str, jax.Array] = {}

    @property
    def done(self) -> bool:
        return len(self.out) == len(self.wanted)

    def __call__(self, name: str | None, value: jax.Array) -> bool:
        if name is not None and name in self.wanted:
            self.out[name] = value
        return self.done


def run_sequential(
    modules: nnx.List,
    x: jax.Array,
    taps: Taps,
    names: dict[int, str],
    *,
    rngs: nnx.Rngs | None = None,
) -> tuple[jax.Array, bool]:
    """Run ``modules`` in order, tapping the output of index ``i`` as ``names[i]``.

    ``rngs`` goes to the ``nnx.Dropout`` members (needed in training mode only).
    Returns ``(x, done)``; ``done`` means every requested tap is recorded.
    """
    for i, module in enumerate(modules):
        x = module(x, rngs=rngs) if isinstance(module, nnx.Dropout) else module(x)
        if taps(names.get(i), x):
            return x, True
    return x, False


__all__ = [
    "KAIMING_FAN_OUT_INIT",
    "TORCH_DEFAULT_INIT",
    "AdaptiveAvgPool2d",
    "LocalResponseNorm",
    "MaxPool2d",
    "ReLU",
    "Taps",
    "adaptive_avg_pool2d",
    "conv2d",
    "global_avg_pool",
    "linear",
    "local_response_norm",
    "max_pool2d",
    "pool_output_size",
    "run_sequential",
]
