"""ConceptNet: the embedded default network, AlexNet-shaped, for 64x64 inputs.

Five convolutions and three fully connected layers, as AlexNet, scaled to 64x64
images of the embedded concept set::

    conv1  5x5/2 (48)   -> 32x32   [or 3x3/1 stride variant, see ``conv1_stride``]
    pool1  3x3/2        -> 16x16
    conv2  5x5/1 (64)   -> 16x16
    pool2  3x3/2        -> 8x8
    conv3  3x3/1 (128)  -> 8x8
    conv4  3x3/1 (128)  -> 8x8
    conv5  3x3/1 (96)   -> 8x8
    pool5  3x3/2        -> 4x4
    fc6    256, fc7 256 (dropout 0.5 before each in training), fc8 = logits

Taps follow Caffe's blobs: ``convN`` is the ReLU output (Caffe's in-place ReLU),
``convN_pre`` the convolution output, ``fc6``/``fc7`` after ReLU, ``fc8`` the
pre-softmax logits. Variants: ``dropout`` (default on), ``batchnorm`` (BatchNorm
after every convolution, before its ReLU), ``conv1_kernel``/``conv1_stride`` (the
ZFNet-style first-layer comparison).

Module paths mirror torch-style keys (``conv1.kernel`` <-> ``conv1.weight``) so the
generic weight import/export applies.
"""

from __future__ import annotations

import jax
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
HE_INIT = nnx.initializers.kaiming_normal()  # keeps ReLU activations at unit scale


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """Max-pool NHWC with explicit symmetric padding (padding never wins a max)."""
    return nnx.max_pool(
        x,
        (window, window),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
    )


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
        kernels = (conv1_kernel, 5, 3, 3, 3)
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
        self.fc6 = nnx.Linear(spatial * spatial * WIDTHS[-1], 256, kernel_init=HE_INIT, rngs=rngs)
        self.fc7 = nnx.Linear(256, 256, kernel_init=HE_INIT, rngs=rngs)
        self.fc8 = nnx.Linear(256, num_classes, rngs=rngs)
        # Dropout draws from the ``rngs`` passed at call time (explicit keys).
        self.drop6 = nnx.Dropout(0.5 if dropout else 0.0)
        self.drop7 = nnx.Dropout(0.5 if dropout else 0.0)
        self.batchnorm = batchnorm

    def __call__(
        self,
        x: jax.Array,
        layers: tuple[str, ...] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ):
        """Taps for normalized NHWC input ``x``; ``rngs`` feeds dropout in training."""
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
                x = max_pool(x)
                if tap(f"pool{i}", x):
                    return out
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(self.fc6(self.drop6(x, rngs=rngs)))
        if tap("fc6", x):
            return out
        x = jax.nn.relu(self.fc7(self.drop7(x, rngs=rngs)))
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
