"""ResNet-18 and ResNet-50 exactly as torchvision defines them (v1.5).

Bottleneck blocks put the stride on the 3x3 convolution (torchvision's "v1.5");
a block whose input and output shapes differ has a 1x1 ``downsample`` convolution
plus BatchNorm. BatchNorm (eps 1e-5) uses running statistics in evaluation mode.
224x224 input with torchvision's preprocessing. Shapes at 224x224, NHWC
(ResNet-18 / ResNet-50 channels)::

    tap        shape                 torchvision module (alias)
    conv1_pre  112x112x64            bn1   (conv1 7x7/2 pad 3, then BatchNorm)
    conv1      112x112x64            relu
    pool1      56x56x64              maxpool (3x3/2, pad 1)
    layer1.0   56x56x64 / 256        layer1.0  (a block's output, after its ReLU)
    layer1     56x56x64 / 256        layer1, also the last block (layer1.1 / layer1.2)
    layer2.*   28x28x128 / 512       layer2.0, ...
    layer2     28x28x128 / 512       layer2
    layer3     14x14x256 / 1024      layer3
    layer4     7x7x512 / 2048        layer4
    avgpool    512 / 2048            avgpool (flattened)
    fc         num_classes           fc (logits)

Every block but the last of a stage is a tap named like its module
(``layer3.0`` ... ``layer3.4`` for ResNet-50); the last block of a stage is the
stage tap ``layerN`` with the block's name as alias. Note that the canonical
``conv1`` is the ReLU output, while torchvision's module ``conv1`` is the bare
convolution (not a tap). Parameter paths equal torchvision's keys
(``layer1/0/conv1/kernel`` <-> ``layer1.0.conv1.weight``, ``bn1/scale`` <->
``bn1.weight``, ``bn1/mean`` <-> ``bn1.running_mean``,
``layer2/0/downsample/0/kernel`` <-> ``layer2.0.downsample.0.weight``).
Any input size >= 32 px works (global average pooling).
"""

from __future__ import annotations

import jax
from flax import nnx

from cnnvis_jax.errors import InputError
from cnnvis_jax.model import TORCHVISION
from cnnvis_jax.zoo.layers import (
    KAIMING_FAN_OUT_INIT,
    Taps,
    conv2d,
    global_avg_pool,
    linear,
    max_pool2d,
)

INPUT = TORCHVISION
LOGITS = "fc"
STAGES = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}
WIDTHS = (64, 128, 256, 512)


def _bn(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return conv2d(
        cin,
        cout,
        k,
        stride=stride,
        padding=k // 2,
        use_bias=False,
        kernel_init=KAIMING_FAN_OUT_INIT,
        rngs=rngs,
    )


def _downsample(cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> nnx.List | None:
    if stride == 1 and cin == cout:
        return None
    return nnx.List([_conv(cin, cout, 1, stride, rngs), _bn(cout, rngs)])


class BasicBlock(nnx.Module):
    """Two 3x3 convolutions with BatchNorm and an identity/projection shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, planes, 3, stride, rngs)
        self.bn1 = _bn(planes, rngs)
        self.conv2 = _conv(planes, planes, 3, 1, rngs)
        self.bn2 = _bn(planes, rngs)
        self.downsample = _downsample(cin, planes, stride, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(out + identity)


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 (carries the stride, v1.5) -> 1x1 (4x planes), with shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, planes, 1, 1, rngs)
        self.bn1 = _bn(planes, rngs)
        self.conv2 = _conv(planes, planes, 3, stride, rngs)
        self.bn2 = _bn(planes, rngs)
        self.conv3 = _conv(planes, planes * 4, 1, 1, rngs)
        self.bn3 = _bn(planes * 4, rngs)
        self.downsample = _downsample(cin, planes * 4, stride, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = jax.nn.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(out + identity)


def block_taps(depth: int) -> list[tuple[str, str]]:
    """``(module path, tap name)`` for every block of ResNet-``depth``."""
    out = []
    for stage, count in enumerate(STAGES[depth], start=1):
        for b in range(count):
            path = f"layer{stage}.{b}"
            out.append((path, f"layer{stage}" if b == count - 1 else path))
    return out


def layer_names(depth: int) -> tuple[str, ...]:
    return ("conv1_pre", "conv1", "pool1", *(t for _, t in block_taps(depth)), "avgpool", "fc")


def aliases(depth: int) -> dict[str, tuple[str, ...]]:
    stage_ends = {t: (p,) for p, t in block_taps(depth) if p != t}
    return {"conv1_pre": ("bn1",), "conv1": ("relu",), "pool1": ("maxpool",), **stage_ends}


class ResNet(nnx.Module):
    """torchvision ResNet over normalized NHWC input (``depth`` 18 or 50).

    ``__call__(x, layers)`` returns the requested taps (all when ``layers`` is None),
    stopping after the deepest one. See the module docstring for names and shapes.
    """

    def __init__(self, depth: int = 50, num_classes: int = 1000, *, rngs: nnx.Rngs):
        if depth not in STAGES:
            raise InputError(f"ResNet depth must be one of {sorted(STAGES)}, got {depth}.")
        self.depth = depth
        block = BasicBlock if depth < 50 else Bottleneck
        self.conv1 = _conv(3, 64, 7, 2, rngs)
        self.bn1 = _bn(64, rngs)
        cin = 64
        for stage, (count, planes) in enumerate(zip(STAGES[depth], WIDTHS), start=1):
            blocks = []
            for b in range(count):
                stride = 2 if stage > 1 and b == 0 else 1
                blocks.append(block(cin, planes, stride, rngs=rngs))
                cin = planes * block.expansion
            setattr(self, f"layer{stage}", nnx.List(blocks))
        self.fc = linear(cin, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, layers: tuple[str, ...] | None = None) -> dict[str, jax.Array]:
        """Taps for normalized NHWC input ``x`` (BatchNorm: see ``.train()``/``.eval()``)."""
        taps = Taps(layer_names(self.depth), layers, f"resnet{self.depth}")
        if taps.done:
            return taps.out
        x = self.bn1(self.conv1(x))
        if taps("conv1_pre", x):
            return taps.out
        x = jax.nn.relu(x)
        if taps("conv1", x):
            return taps.out
        x = max_pool2d(x, 3, 2, 1)
        if taps("pool1", x):
            return taps.out
        for path, name in block_taps(self.depth):
            stage, index = path.split(".")
            x = getattr(self, stage)[int(index)](x)
            if taps(name, x):
                return taps.out
        x = global_avg_pool(x)
        if taps("avgpool", x):
            return taps.out
        taps("fc", self.fc(x))
        return taps.out


LAYERS18 = layer_names(18)
LAYERS50 = layer_names(50)
ALIASES18 = aliases(18)
ALIASES50 = aliases(50)


def _no_variant(depth: int, variant: dict) -> None:
    if variant:
        raise InputError(
            f"resnet{depth} has no variants, got {sorted(variant)}; pass num_classes and seed only."
        )


def init_resnet18(num_classes: int = 1000, *, seed: int = 0, **variant) -> ResNet:
    """A randomly initialized ResNet-18 (there are no variants)."""
    _no_variant(18, variant)
    return ResNet(18, num_classes, rngs=nnx.Rngs(seed))


def init_resnet50(num_classes: int = 1000, *, seed: int = 0, **variant) -> ResNet:
    """A randomly initialized ResNet-50 (there are no variants)."""
    _no_variant(50, variant)
    return ResNet(50, num_classes, rngs=nnx.Rngs(seed))


__all__ = [
    "ALIASES18",
    "ALIASES50",
    "INPUT",
    "LAYERS18",
    "LAYERS50",
    "LOGITS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "init_resnet18",
    "init_resnet50",
]
