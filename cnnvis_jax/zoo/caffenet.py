"""CaffeNet (BVLC reference CaffeNet): the Krizhevsky network of the survey's figures.

96/256/384/384/256 filters, LRN after pool1 and pool2 (Caffe's CaffeNet order
conv -> relu -> pool -> norm), groups=2 in conv2/conv4/conv5, 227x227 BGR input in
0-255 minus the mean (:data:`cnnvis_jax.model.CAFFE`). Pooling uses Caffe's ceil
rounding (identical to floor at 227 px). Shapes at 227x227, NHWC::

    tap        shape        layer
    conv1_pre  55x55x96     Conv 11x11/4, pad 0
    conv1      55x55x96     ReLU (Caffe's in-place blob ``conv1``)
    pool1      27x27x96     MaxPool 3x3/2
    norm1      27x27x96     LRN size 5, alpha 1e-4, beta 0.75, k 1
    conv2_pre  27x27x256    Conv 5x5/1, pad 2, groups 2
    conv2      27x27x256
    pool2      13x13x256
    norm2      13x13x256
    conv3_pre  13x13x384    Conv 3x3/1, pad 1
    conv3      13x13x384
    conv4_pre  13x13x384    Conv 3x3/1, pad 1, groups 2
    conv4      13x13x384
    conv5_pre  13x13x256    Conv 3x3/1, pad 1, groups 2
    conv5      13x13x256
    pool5      6x6x256
    fc6        4096         InnerProduct + ReLU (dropout 0.5 after, in training)
    fc7        4096         InnerProduct + ReLU
    fc8        num_classes  logits

The tap names are Caffe's blob names, so there are no aliases. Weights use Caffe's
layer names in torch style: ``conv1.weight`` (OIHW; ``(out, in/groups, kh, kw)`` for
grouped layers), ``conv1.bias``, ..., ``fc6.weight`` ``(4096, 9216)`` whose columns
follow Caffe's (C, H, W) flatten order (permuted to (H, W, C) at import), ...,
``fc8.bias``. Caffe's LRN divides alpha by the window size, as
``torch.nn.LocalResponseNorm`` does. Only 227x227 input fits fc6.
"""

from __future__ import annotations

import jax
from flax import nnx

from cnnvis_jax.model import CAFFE
from cnnvis_jax.zoo.layers import Taps, conv2d, linear, local_response_norm, max_pool2d

INPUT = CAFFE
LAYERS = (
    "conv1_pre", "conv1", "pool1", "norm1",
    "conv2_pre", "conv2", "pool2", "norm2",
    "conv3_pre", "conv3",
    "conv4_pre", "conv4",
    "conv5_pre", "conv5", "pool5",
    "fc6", "fc7", "fc8",
)  # fmt: skip
LOGITS = "fc8"
ALIASES: dict[str, tuple[str, ...]] = {}
# (out, kernel, stride, pad, groups) of conv1..conv5
CONVS = (
    (96, 11, 4, 0, 1),
    (256, 5, 1, 2, 2),
    (384, 3, 1, 1, 1),
    (384, 3, 1, 1, 2),
    (256, 3, 1, 1, 2),
)
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=1.0)


def _pool(x: jax.Array) -> jax.Array:
    return max_pool2d(x, 3, 2, 0, ceil_mode=True)


class CaffeNet(nnx.Module):
    """BVLC reference CaffeNet over Caffe-normalized NHWC input (BGR, 0-255 - mean).

    ``__call__(x, layers)`` returns the requested taps (all when ``layers`` is None),
    stopping after the deepest one. See the module docstring for shapes.
    """

    torch_flatten_chw = {"fc6": (256, 6, 6)}

    def __init__(self, num_classes: int = 1000, *, dropout: float = 0.5, rngs: nnx.Rngs):
        # Caffe's reference solver: Gaussian filters, std 0.01 (convs, fc8), 0.005 (fc6/7).
        in_channels = 3
        for i, (out, k, s, p, g) in enumerate(CONVS, start=1):
            conv = conv2d(
                in_channels,
                out,
                k,
                stride=s,
                padding=p,
                groups=g,
                kernel_init=jax.nn.initializers.normal(0.01),
                rngs=rngs,
            )
            setattr(self, f"conv{i}", conv)
            in_channels = out
        init = jax.nn.initializers.normal(0.005)
        self.fc6 = linear(256 * 6 * 6, 4096, kernel_init=init, rngs=rngs)
        self.fc7 = linear(4096, 4096, kernel_init=init, rngs=rngs)
        self.fc8 = linear(
            4096, num_classes, kernel_init=jax.nn.initializers.normal(0.01), rngs=rngs
        )
        self.drop6 = nnx.Dropout(dropout)
        self.drop7 = nnx.Dropout(dropout)

    def __call__(
        self,
        x: jax.Array,
        layers: tuple[str, ...] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> dict[str, jax.Array]:
        """Taps for normalized NHWC input ``x``; ``rngs`` feeds dropout in training."""
        taps = Taps(LAYERS, layers, "caffenet")
        if taps.done:
            return taps.out
        for i in range(1, 6):
            x = getattr(self, f"conv{i}")(x)
            if taps(f"conv{i}_pre", x):
                return taps.out
            x = jax.nn.relu(x)
            if taps(f"conv{i}", x):
                return taps.out
            if i in (1, 2, 5):
                x = _pool(x)
                if taps(f"pool{i}", x):
                    return taps.out
            if i in (1, 2):
                x = local_response_norm(x, **LRN)
                if taps(f"norm{i}", x):
                    return taps.out
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(self.fc6(x))
        if taps("fc6", x):
            return taps.out
        x = jax.nn.relu(self.fc7(self.drop6(x, rngs=rngs)))
        if taps("fc7", x):
            return taps.out
        taps("fc8", self.fc8(self.drop7(x, rngs=rngs)))
        return taps.out


def init_fn(num_classes: int = 1000, *, seed: int = 0, **variant) -> CaffeNet:
    """A randomly initialized CaffeNet (``variant``: ``dropout`` rate)."""
    return CaffeNet(num_classes, rngs=nnx.Rngs(seed), **variant)


__all__ = ["ALIASES", "INPUT", "LAYERS", "LOGITS", "CaffeNet", "init_fn"]
