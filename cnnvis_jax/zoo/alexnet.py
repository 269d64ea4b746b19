"""AlexNet exactly as torchvision defines it (the "one weird trick" variant).

64/192/384/256/256 filters, no LRN, no groups, AdaptiveAvgPool2d((6, 6)) before the
classifier; 224x224 input with torchvision's preprocessing. (The survey's figures
use the Krizhevsky/Caffe network: see :mod:`cnnvis_jax.zoo.caffenet`.) Shapes at
224x224, NHWC::

    tap        shape          torchvision module (alias)
    conv1_pre  55x55x64       features.0   Conv 11x11/4, pad 2
    conv1      55x55x64       features.1   ReLU
    pool1      27x27x64       features.2   MaxPool 3x3/2
    conv2_pre  27x27x192      features.3   Conv 5x5/1, pad 2
    conv2      27x27x192      features.4
    pool2      13x13x192      features.5
    conv3_pre  13x13x384      features.6   Conv 3x3/1, pad 1
    conv3      13x13x384      features.7
    conv4_pre  13x13x256      features.8   Conv 3x3/1, pad 1
    conv4      13x13x256      features.9
    conv5_pre  13x13x256      features.10  Conv 3x3/1, pad 1
    conv5      13x13x256      features.11
    pool5      6x6x256        features.12
    fc6        4096           classifier.2 (ReLU after classifier.1)
    fc7        4096           classifier.5 (ReLU after classifier.4)
    fc8        num_classes    classifier.6 (logits)

``convN`` is the ReLU output (Caffe's in-place blob), ``convN_pre`` the
convolution output. The module's parameter paths are torchvision's keys
(``features/0/kernel`` <-> ``features.0.weight``, ``classifier/1/kernel`` <->
``classifier.1.weight``); dropout sits at ``classifier.0`` and ``classifier.3``.
Other input sizes (>= 63 px) work: the adaptive pool brings pool5 to 6x6 as torch
does.
"""

from __future__ import annotations

import jax
from flax import nnx

from cnnvis_jax.model import TORCHVISION
from cnnvis_jax.zoo.layers import (
    AdaptiveAvgPool2d,
    MaxPool2d,
    ReLU,
    Taps,
    conv2d,
    linear,
    run_sequential,
)

INPUT = TORCHVISION
FEATURE_TAPS = {
    0: "conv1_pre", 1: "conv1", 2: "pool1",
    3: "conv2_pre", 4: "conv2", 5: "pool2",
    6: "conv3_pre", 7: "conv3",
    8: "conv4_pre", 9: "conv4",
    10: "conv5_pre", 11: "conv5", 12: "pool5",
}  # fmt: skip
CLASSIFIER_TAPS = {2: "fc6", 5: "fc7", 6: "fc8"}
LAYERS = (*FEATURE_TAPS.values(), *CLASSIFIER_TAPS.values())
LOGITS = "fc8"
ALIASES = {
    **{name: (f"features.{i}",) for i, name in FEATURE_TAPS.items()},
    **{name: (f"classifier.{i}",) for i, name in CLASSIFIER_TAPS.items()},
}
POOL_SIZE = (6, 6)


class AlexNet(nnx.Module):
    """torchvision AlexNet over normalized NHWC input. See the module docstring.

    ``__call__(x, layers)`` returns the requested taps (all when ``layers`` is None),
    stopping after the deepest one.
    """

    # The first Linear sees the flattened (C, H, W) = (256, 6, 6) map in torch;
    # weight import permutes its columns to this module's (H, W, C) order.
    torch_flatten_chw = {"classifier.1": (256, *POOL_SIZE)}

    def __init__(self, num_classes: int = 1000, *, dropout: float = 0.5, rngs: nnx.Rngs):
        self.features = nnx.List(
            [
                conv2d(3, 64, 11, stride=4, padding=2, rngs=rngs),
                ReLU(),
                MaxPool2d(3, 2),
                conv2d(64, 192, 5, padding=2, rngs=rngs),
                ReLU(),
                MaxPool2d(3, 2),
                conv2d(192, 384, 3, padding=1, rngs=rngs),
                ReLU(),
                conv2d(384, 256, 3, padding=1, rngs=rngs),
                ReLU(),
                conv2d(256, 256, 3, padding=1, rngs=rngs),
                ReLU(),
                MaxPool2d(3, 2),
            ]
        )
        self.avgpool = AdaptiveAvgPool2d(POOL_SIZE)
        self.classifier = nnx.List(
            [
                nnx.Dropout(dropout),
                linear(256 * POOL_SIZE[0] * POOL_SIZE[1], 4096, rngs=rngs),
                ReLU(),
                nnx.Dropout(dropout),
                linear(4096, 4096, rngs=rngs),
                ReLU(),
                linear(4096, num_classes, rngs=rngs),
            ]
        )

    def __call__(
        self,
        x: jax.Array,
        layers: tuple[str, ...] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> dict[str, jax.Array]:
        """Taps for normalized NHWC input ``x``; ``rngs`` feeds dropout in training."""
        taps = Taps(LAYERS, layers, "alexnet")
        if taps.done:
            return taps.out
        x, done = run_sequential(self.features, x, taps, FEATURE_TAPS)
        if done:
            return taps.out
        x = self.avgpool(x).reshape(x.shape[0], -1)
        run_sequential(self.classifier, x, taps, CLASSIFIER_TAPS, rngs=rngs)
        return taps.out


def init_fn(num_classes: int = 1000, *, seed: int = 0, **variant) -> AlexNet:
    """A randomly initialized AlexNet (``variant``: ``dropout`` rate)."""
    return AlexNet(num_classes, rngs=nnx.Rngs(seed), **variant)


__all__ = ["ALIASES", "INPUT", "LAYERS", "LOGITS", "AlexNet", "init_fn"]
