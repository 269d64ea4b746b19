"""VGG16 exactly as torchvision defines it (configuration "D", no BatchNorm).

13 3x3 convolutions (pad 1) in five blocks of 64/128/256/512/512 filters, each block
closed by a 2x2/2 max-pool, AdaptiveAvgPool2d((7, 7)), then three Linear layers.
224x224 input with torchvision's preprocessing. Shapes at 224x224, NHWC::

    tap             shape          torchvision module (alias)
    conv1_1_pre     224x224x64     features.0
    conv1_1         224x224x64     features.1  (ReLU)
    conv1_2_pre/_2  224x224x64     features.2 / features.3
    pool1           112x112x64     features.4
    conv2_1..2_2    112x112x128    features.5..8
    pool2           56x56x128      features.9
    conv3_1..3_3    56x56x256      features.10..15
    pool3           28x28x256      features.16
    conv4_1..4_3    28x28x512      features.17..22
    pool4           14x14x512      features.23
    conv5_1..5_3    14x14x512      features.24..29
    pool5           7x7x512        features.30
    fc6             4096           classifier.1 (ReLU after classifier.0)
    fc7             4096           classifier.4 (ReLU after classifier.3)
    fc8             num_classes    classifier.6 (logits)

``convB_I`` is the ReLU output, ``convB_I_pre`` the convolution output; every
convolution at feature index ``j`` has ``_pre`` alias ``features.j`` and its ReLU
alias ``features.j+1``. Parameter paths equal torchvision's keys
(``features/0/kernel`` <-> ``features.0.weight``, ``classifier/0/kernel`` <->
``classifier.0.weight``); dropout sits at ``classifier.2`` and ``classifier.5``.
Any input size >= 32 px works (the adaptive pool brings pool5 to 7x7 as torch does).
"""

from __future__ import annotations

import jax
from flax import nnx

from cnnvis_jax.model import TORCHVISION
from cnnvis_jax.zoo.layers import (
    KAIMING_FAN_OUT_INIT,
    AdaptiveAvgPool2d,
    MaxPool2d,
    ReLU,
    Taps,
    conv2d,
    linear,
    run_sequential,
)

INPUT = TORCHVISION
CFG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
POOL_SIZE = (7, 7)
LOGITS = "fc8"
CLASSIFIER_TAPS = {1: "fc6", 4: "fc7", 6: "fc8"}


def feature_taps(cfg=CFG16) -> dict[int, str]:
    """Index in ``features`` -> tap name, for a torchvision VGG configuration."""
    names: dict[int, str] = {}
    index, block, conv = 0, 1, 1
    for item in cfg:
        if item == "M":
            names[index] = f"pool{block}"
            index, block, conv = index + 1, block + 1, 1
        else:
            names[index] = f"conv{block}_{conv}_pre"
            names[index + 1] = f"conv{block}_{conv}"
            index, conv = index + 2, conv + 1
    return names


FEATURE_TAPS = feature_taps(CFG16)
LAYERS = (*FEATURE_TAPS.values(), *CLASSIFIER_TAPS.values())
ALIASES = {
    **{name: (f"features.{i}",) for i, name in FEATURE_TAPS.items()},
    **{name: (f"classifier.{i}",) for i, name in CLASSIFIER_TAPS.items()},
}


class VGG(nnx.Module):
    """torchvision VGG (no BatchNorm) over normalized NHWC input.

    ``cfg`` is torchvision's configuration list (numbers: 3x3 conv widths, ``"M"``:
    2x2 max-pool). ``__call__(x, layers)`` returns the requested taps (all when
    ``layers`` is None), stopping after the deepest one.
    """

    torch_flatten_chw = {"classifier.0": (512, *POOL_SIZE)}

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        cfg=CFG16,
        dropout: float = 0.5,
        rngs: nnx.Rngs,
    ):
        features: list[nnx.Module] = []
        in_channels = 3
        for item in cfg:
            if item == "M":
                features.append(MaxPool2d(2, 2))
            else:
                conv = conv2d(
                    in_channels, item, 3, padding=1, kernel_init=KAIMING_FAN_OUT_INIT, rngs=rngs
                )
                features += [conv, ReLU()]
                in_channels = item
        self.features = nnx.List(features)
        self.avgpool = AdaptiveAvgPool2d(POOL_SIZE)
        fc_init = jax.nn.initializers.normal(0.01)
        self.classifier = nnx.List(
            [
                linear(
                    in_channels * POOL_SIZE[0] * POOL_SIZE[1], 4096, kernel_init=fc_init, rngs=rngs
                ),
                ReLU(),
                nnx.Dropout(dropout),
                linear(4096, 4096, kernel_init=fc_init, rngs=rngs),
                ReLU(),
                nnx.Dropout(dropout),
                linear(4096, num_classes, kernel_init=fc_init, rngs=rngs),
            ]
        )
        self.cfg = tuple(cfg)

    def __call__(
        self,
        x: jax.Array,
        layers: tuple[str, ...] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> dict[str, jax.Array]:
        """Taps for normalized NHWC input ``x``; ``rngs`` feeds dropout in training."""
        names = feature_taps(self.cfg)
        taps = Taps((*names.values(), *CLASSIFIER_TAPS.values()), layers, "vgg")
        if taps.done:
            return taps.out
        x, done = run_sequential(self.features, x, taps, names)
        if done:
            return taps.out
        x = self.avgpool(x).reshape(x.shape[0], -1)
        run_sequential(self.classifier, x, taps, CLASSIFIER_TAPS, rngs=rngs)
        return taps.out


def init_fn(num_classes: int = 1000, *, seed: int = 0, **variant) -> VGG:
    """A randomly initialized VGG16 (``variant``: ``dropout`` rate)."""
    return VGG(num_classes, rngs=nnx.Rngs(seed), **variant)


__all__ = ["ALIASES", "CFG16", "INPUT", "LAYERS", "LOGITS", "VGG", "feature_taps", "init_fn"]
