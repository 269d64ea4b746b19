"""GoogLeNet (Inception v1) exactly as torchvision defines it.

torchvision's variant: every convolution is bias-free and followed by BatchNorm
(eps 1e-3) and ReLU (``BasicConv2d``); the "5x5" branch really is 3x3; every
max-pool uses ``ceil_mode=True``; no auxiliary heads (``aux1.*``/``aux2.*`` keys of
a torchvision state dict are dropped at import). ``transform_input`` re-maps
torchvision-normalized input to the [-1, 1] scaling of the weights ported from
TensorFlow; torchvision turns it on for its pretrained weights, and
:func:`cnnvis_jax.weights.load_model` does the same when a weights file is given
(see :data:`PRETRAINED_VARIANT`). 224x224 input with torchvision's preprocessing.
Shapes at 224x224, NHWC::

    tap           shape        torchvision module (alias)
    conv1         112x112x64   conv1 (7x7/2 pad 3, BN, ReLU)
    pool1         56x56x64     maxpool1 (3x3/2, ceil)
    conv2         56x56x64     conv2 (1x1)
    conv3         56x56x192    conv3 (3x3 pad 1)
    pool2         28x28x192    maxpool2 (3x3/2, ceil)
    inception3a   28x28x256    inception3a
    inception3b   28x28x480    inception3b
    pool3         14x14x480    maxpool3 (3x3/2, ceil)
    inception4a   14x14x512    inception4a
    inception4b   14x14x512    inception4b
    inception4c   14x14x512    inception4c
    inception4d   14x14x528    inception4d
    inception4e   14x14x832    inception4e
    pool4         7x7x832      maxpool4 (2x2/2, ceil)
    inception5a   7x7x832      inception5a
    inception5b   7x7x1024     inception5b
    avgpool       1024         avgpool (flattened)
    fc            num_classes  fc (logits; dropout 0.2 before it in training)

Parameter paths equal torchvision's keys (``conv1/conv/kernel`` <->
``conv1.conv.weight``, ``conv1/bn/scale`` <-> ``conv1.bn.weight``,
``inception3a/branch2/1/conv/kernel`` <-> ``inception3a.branch2.1.conv.weight``,
``inception3a/branch4/1/...`` with the pool at ``branch4.0``). Any input size
>= 15 px works (global average pooling).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cnnvis_jax.model import TORCHVISION
from cnnvis_jax.zoo.layers import MaxPool2d, Taps, conv2d, global_avg_pool, linear

INPUT = TORCHVISION
LAYERS = (
    "conv1", "pool1", "conv2", "conv3", "pool2",
    "inception3a", "inception3b", "pool3",
    "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "pool4",
    "inception5a", "inception5b",
    "avgpool", "fc",
)  # fmt: skip
LOGITS = "fc"
ALIASES = {f"pool{i}": (f"maxpool{i}",) for i in range(1, 5)}
PRETRAINED_VARIANT = {"transform_input": True}
"""Variant torchvision uses with its ImageNet weights (applied by ``load_model``)."""

# in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5" (really 3x3), pool projection
INCEPTION = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}
# Per-channel affine of torchvision's GoogLeNet._transform_input.
_TRANSFORM_SCALE = (0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5)
_TRANSFORM_SHIFT = ((0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5)
# torchvision: trunc_normal_(std=0.01, a=-2, b=2); the bounds are absolute (200 std),
# so this is a plain normal.
_CONV_INIT = jax.nn.initializers.normal(0.01)


class BasicConv2d(nnx.Module):
    """Bias-free convolution, BatchNorm (eps 1e-3), ReLU: torchvision's BasicConv2d."""

    def __init__(
        self, cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0, rngs: nnx.Rngs
    ):
        self.conv = conv2d(
            cin,
            cout,
            kernel,
            stride=stride,
            padding=padding,
            use_bias=False,
            kernel_init=_CONV_INIT,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


class Inception(nnx.Module):
    """Four branches concatenated on channels: 1x1 | 1x1->3x3 | 1x1->3x3 | pool->1x1."""

    def __init__(self, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj, *, rngs: nnx.Rngs):
        self.branch1 = BasicConv2d(cin, ch1x1, 1, rngs=rngs)
        self.branch2 = nnx.List(
            [
                BasicConv2d(cin, ch3x3red, 1, rngs=rngs),
                BasicConv2d(ch3x3red, ch3x3, 3, padding=1, rngs=rngs),
            ]
        )
        self.branch3 = nnx.List(
            [
                BasicConv2d(cin, ch5x5red, 1, rngs=rngs),
                BasicConv2d(ch5x5red, ch5x5, 3, padding=1, rngs=rngs),
            ]
        )
        self.branch4 = nnx.List(
            [MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv2d(cin, pool_proj, 1, rngs=rngs)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        branches = [self.branch1(x)]
        for seq in (self.branch2, self.branch3, self.branch4):
            y = x
            for module in seq:
                y = module(y)
            branches.append(y)
        return jnp.concatenate(branches, axis=-1)


class GoogLeNet(nnx.Module):
    """torchvision GoogLeNet (no aux heads) over torchvision-normalized NHWC input.

    ``__call__(x, layers)`` returns the requested taps (all when ``layers`` is None),
    stopping after the deepest one. See the module docstring for names and shapes.
    """

    torch_ignored_prefixes = ("aux1.", "aux2.")

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        transform_input: bool = False,
        dropout: float = 0.2,
        rngs: nnx.Rngs,
    ):
        self.transform_input = transform_input
        self.conv1 = BasicConv2d(3, 64, 7, stride=2, padding=3, rngs=rngs)
        self.maxpool1 = MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, 1, rngs=rngs)
        self.conv3 = BasicConv2d(64, 192, 3, padding=1, rngs=rngs)
        self.maxpool2 = MaxPool2d(3, 2, ceil_mode=True)
        for name, spec in INCEPTION.items():
            setattr(self, name, Inception(*spec, rngs=rngs))
        self.maxpool3 = MaxPool2d(3, 2, ceil_mode=True)
        self.maxpool4 = MaxPool2d(2, 2, ceil_mode=True)
        self.dropout = nnx.Dropout(dropout)
        self.fc = linear(1024, num_classes, kernel_init=_CONV_INIT, rngs=rngs)

    def _stages(self):
        """``(tap, callable)`` in forward order up to inception5b."""
        return (
            ("conv1", self.conv1),
            ("pool1", self.maxpool1),
            ("conv2", self.conv2),
            ("conv3", self.conv3),
            ("pool2", self.maxpool2),
            ("inception3a", self.inception3a),
            ("inception3b", self.inception3b),
            ("pool3", self.maxpool3),
            ("inception4a", self.inception4a),
            ("inception4b", self.inception4b),
            ("inception4c", self.inception4c),
            ("inception4d", self.inception4d),
            ("inception4e", self.inception4e),
            ("pool4", self.maxpool4),
            ("inception5a", self.inception5a),
            ("inception5b", self.inception5b),
        )

    def __call__(
        self,
        x: jax.Array,
        layers: tuple[str, ...] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> dict[str, jax.Array]:
        """Taps for normalized NHWC input ``x``; ``rngs`` feeds dropout in training."""
        taps = Taps(LAYERS, layers, "googlenet")
        if taps.done:
            return taps.out
        if self.transform_input:
            x = x * jnp.asarray(_TRANSFORM_SCALE, x.dtype) + jnp.asarray(_TRANSFORM_SHIFT, x.dtype)
        for name, stage in self._stages():
            x = stage(x)
            if taps(name, x):
                return taps.out
        x = global_avg_pool(x)
        if taps("avgpool", x):
            return taps.out
        taps("fc", self.fc(self.dropout(x, rngs=rngs)))
        return taps.out


def init_fn(num_classes: int = 1000, *, seed: int = 0, **variant) -> GoogLeNet:
    """A randomly initialized GoogLeNet (``variant``: ``transform_input``, ``dropout``)."""
    return GoogLeNet(num_classes, rngs=nnx.Rngs(seed), **variant)


__all__ = [
    "ALIASES",
    "INPUT",
    "LAYERS",
    "LOGITS",
    "PRETRAINED_VARIANT",
    "BasicConv2d",
    "GoogLeNet",
    "Inception",
    "init_fn",
]
