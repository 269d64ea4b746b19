"""ConceptNet: the embedded default network, AlexNet-shaped, for 64x64 inputs.

Five convolutions and three fully connected layers, as AlexNet, scaled to 64x64
images of the embedded concept set::

    conv1  5x5/2 (48)   -> 32x32   [or 3x3/1 stride variant, see ``conv1_stride``]
    pool1  3x3/2        -> 16x16
    conv2  3x3/1 (64)   -> 16x16
    pool2  3x3/2        -> 8x8
    conv3  3x3/1 (128)  -> 8x8
    conv4  3x3/1 (128)  -> 8x8
    conv5  3x3/1 (96)   -> 8x8
    pool5  3x3/2        -> 4x4
    fc6    256, fc7 256 (dropout 0.5 before each in training), fc8 = logits

conv2 is 3x3 rather than AlexNet's 5x5: at this scale it sees as much (conv5 units
still cover the whole image) for a third of the multiply-adds, which makes training
on two CPU cores a quarter faster at the same accuracy. Convolutions and fc6/fc7
start from He-normal weights (the training loop then rescales them to the data, see
:meth:`cnnvis_jax.train.loop.Trainer.calibrate`), fc8 from zeros so that the first
loss is exactly ``ln(num_classes)``.

Taps follow Caffe's blobs: ``convN`` is the ReLU output (Caffe's in-place ReLU),
``convN_pre`` the convolution output, ``fc6``/``fc7`` after ReLU, ``fc8`` the
pre-softmax logits. Variants: ``dropout`` (default on), ``batchnorm`` (BatchNorm
after every convolution, before its ReLU), ``conv1_kernel``/``conv1_stride`` (the
ZFNet-style first-layer comparison).

Module paths mirror torch-style keys (``conv1.kernel`` <-> ``conv1.weight``) so the
generic weight import/export applies.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from cnnvis_jax.model import InputContract

INPUT = InputContract(size=(64, 64), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
LAYERS = (
    "conv1_pre", "conv1", "pool1",
    "conv2_pre", "conv2", "pool2",
    "conv3_pre", "conv3",
    "conv4_pre", "conv4",
    "conv5_pre", "conv5", "pool5",
    "fc6", "fc7", "fc8",
)  # fmt: skip
LOGITS = "fc8"
WIDTHS = (48, 64, 128, 128, 96)
KERNELS = (3, 3, 3, 3)  # conv2..conv5 (conv1's is a variant)
FC_WIDTH = 256
DROP_RATE = 0.5
HE_INIT = nnx.initializers.kaiming_normal()  # keeps ReLU activations at unit scale
FC8_INIT = nnx.initializers.zeros_init()  # uniform initial predictions


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """Max-pool NHWC with explicit symmetric padding (padding never wins a max)."""
    return nnx.max_pool(
        x,
        (window, window),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
    )


def max_pool_sliced(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """The same values as :func:`max_pool`, as separable maxima of strided slices.

    Used for training only: on CPU the gradient of ``reduce_window`` max-pooling
    (``select_and_scatter``) costs several times the forward pass, the gradient of
    these elementwise maxima very little. Visualization keeps :func:`max_pool`,
    whose ``reduce_window_max`` the backward rules and receptive-field tracing
    recognize.
    """
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    x = jnp.pad(x, pad, constant_values=-jnp.inf)
    for axis in (1, 2):
        n = (x.shape[axis] - window) // stride + 1
        parts = [
            jax.lax.slice_in_dim(x, i, i + stride * (n - 1) + 1, stride, axis)
            for i in range(window)
        ]
        x = functools.reduce(jnp.maximum, parts)
    return x


class ConceptNet(nnx.Module):
    """AlexNet-shaped CNN for 64x64 concept images. See the module docstring.

    ``__call__(x, layers)`` takes normalized NHWC input and returns the requested
    taps (all when ``layers`` is None), stopping after the deepest one.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        dropout: bool = True,
        batchnorm: bool = False,
        conv1_kernel: int = 5,
        conv1_stride: int = 2,
        rngs: nnx.Rngs,
    ):
        self.num_classes = num_classes
        self.config = dict(
            num_classes=num_classes,
            dropout=dropout,
            batchnorm=batchnorm,
            conv1_kernel=conv1_kernel,
            conv1_stride=conv1_stride,
        )
        kernels = (conv1_kernel, *KERNELS)
        strides = (conv1_stride, 1, 1, 1, 1)
        channels = (3, *WIDTHS)
        for i in range(5):
            k = kernels[i]
            conv = nnx.Conv(
                channels[i],
                channels[i + 1],
                (k, k),
                strides=strides[i],
                padding=((k // 2, k // 2), (k // 2, k // 2)),
                use_bias=not batchnorm,
                kernel_init=HE_INIT,
                rngs=rngs,
            )
            setattr(self, f"conv{i + 1}", conv)
            if batchnorm:
                setattr(
                    self,
                    f"bn{i + 1}",
                    nnx.BatchNorm(channels[i + 1], momentum=0.9, epsilon=1e-5, rngs=rngs),
                )
        spatial = INPUT.size[0] // conv1_stride // 2 // 2 // 2
        self.flat_shape = (spatial, spatial, WIDTHS[-1])
        self.fc6 = nnx.Linear(
            spatial * spatial * WIDTHS[-1], FC_WIDTH, kernel_init=HE_INIT, rngs=rngs
        )
        self.fc7 = nnx.Linear(FC_WIDTH, FC_WIDTH, kernel_init=HE_INIT, rngs=rngs)
        self.fc8 = nnx.Linear(FC_WIDTH, num_classes, kernel_init=FC8_INIT, rngs=rngs)
        # Dropout draws from the ``rngs`` passed at call time (explicit keys).
        self.drop6 = nnx.Dropout(DROP_RATE if dropout else 0.0)
        self.drop7 = nnx.Dropout(DROP_RATE if dropout else 0.0)
        self.batchnorm = batchnorm
        # Training sets this (same values, a cheaper gradient; see max_pool_sliced).
        self.sliced_pool = False

    @staticmethod
    def _drop(layer: nnx.Dropout, x: jax.Array, rngs, scale) -> jax.Array:
        """``layer`` applied to ``x``, its rate multiplied by ``scale`` when given."""
        if scale is None or layer.rate == 0.0 or layer.deterministic:
            return layer(x, rngs=rngs)
        keep = 1.0 - layer.rate * scale
        mask = jax.random.bernoulli(rngs[layer.rng_collection](), keep, x.shape)
        return jnp.where(mask, x / keep, 0.0)

    def __call__(
        self,
        x: jax.Array,
        layers: tuple[str, ...] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
        dropout_scale: jax.Array | float | None = None,
    ):
        """Taps for normalized NHWC input ``x``; ``rngs`` feeds dropout in training.

        ``dropout_scale`` (a scalar in [0, 1], may be traced) multiplies the dropout
        rate for this call: training ramps it up from 0 (see the training loop).
        """
        wanted = set(LAYERS if layers is None else layers)
        out: dict[str, jax.Array] = {}

        def tap(name, value):
            if name in wanted:
                out[name] = value
            return len(out) == len(wanted)

        for i in range(1, 6):
            x = getattr(self, f"conv{i}")(x)
            if self.batchnorm:
                x = getattr(self, f"bn{i}")(x)
            if tap(f"conv{i}_pre", x):
                return out
            x = jax.nn.relu(x)
            if tap(f"conv{i}", x):
                return out
            if i in (1, 2, 5):
                x = max_pool_sliced(x) if self.sliced_pool else max_pool(x)
                if tap(f"pool{i}", x):
                    return out
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(self.fc6(self._drop(self.drop6, x, rngs, dropout_scale)))
        if tap("fc6", x):
            return out
        x = jax.nn.relu(self.fc7(self._drop(self.drop7, x, rngs, dropout_scale)))
        if tap("fc7", x):
            return out
        tap("fc8", self.fc8(x))
        return out


def logits(module: ConceptNet, x: jax.Array) -> jax.Array:
    """Class scores (pre-softmax) for normalized input ``x``."""
    return module(x, ("fc8",))["fc8"]


def init_fn(num_classes: int = 10, *, seed: int = 0, **variant) -> ConceptNet:
    """A randomly initialized ConceptNet (``variant``: dropout, batchnorm, conv1_*)."""
    return ConceptNet(num_classes, rngs=nnx.Rngs(seed), **variant)


__all__ = ["ConceptNet", "INPUT", "LAYERS", "LOGITS", "init_fn", "logits"]
