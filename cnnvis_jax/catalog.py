"""Names the command line offers: every model ``--model`` accepts (with its one-line
description) and the method presets.

Plain data, so that ``cnnvis models`` and ``cnnvis --help`` answer without importing
JAX; :mod:`cnnvis_jax.zoo` registers its networks with these descriptions, and a test
keeps the preset names equal to the presets.
"""

ZOO = {
    "conceptnet": "AlexNet-shaped 5 conv + 3 fc for 64x64 concept images (the default)",
    "alexnet": "torchvision AlexNet (64/192/384/256/256, no LRN), 224x224",
    "caffenet": "BVLC CaffeNet (96/256/384/384/256, LRN, groups=2), 227x227 BGR",
    "vgg16": "torchvision VGG16 (no BatchNorm), 224x224",
    "resnet18": "torchvision ResNet-18, 224x224",
    "resnet50": "torchvision ResNet-50 (v1.5), 224x224",
    "googlenet": "torchvision GoogLeNet (BatchNorm, no aux heads), 224x224",
}
"""Zoo name -> description (the networks of :mod:`cnnvis_jax.zoo`)."""

NAMED = {
    "default": "conceptnet trained by the default recipe (cached; trained on first use)",
    "vgg16-hed": "VGG16 conv1_1..conv5_3 with HED's ImageNet-initialized weights "
    "(`cnnvis weights get vgg16-hed`; no classifier)",
}
"""Names that stand for trained weights of a zoo network."""

AM_PRESETS = (
    "yosinski1", "yosinski2", "yosinski3", "yosinski4", "simonyan", "lucid", "distill", "dgn",
    "mfv-center", "mfv-mean", "maco", "accentuate",
)  # fmt: skip
"""The names of :data:`cnnvis_jax.am.PRESETS`, in its order."""

INVERSION_PRESETS = ("mahendran2015", "mahendran2016")
"""The names of :data:`cnnvis_jax.inversion.presets.PRESETS`, in its order."""

PERTURBATIONS = ("binarize", "dropout", "drop-least")
"""The feature perturbations of :mod:`cnnvis_jax.inversion.perturb`."""
