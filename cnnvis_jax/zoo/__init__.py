"""Model zoo: NNX networks with survey layer names and torchvision aliases."""

from cnnvis_jax.zoo import alexnet, caffenet, conceptnet, googlenet, resnet, vgg
from cnnvis_jax.zoo.registry import (
    ZooEntry,
    as_model,
    entry,
    init_module,
    names,
    random_model,
    register,
)

register(
    "conceptnet",
    ZooEntry(
        init=conceptnet.init_fn,
        input=conceptnet.INPUT,
        layers=conceptnet.LAYERS,
        aliases={},
        logits=conceptnet.LOGITS,
        num_classes=10,
        description="AlexNet-shaped 5 conv + 3 fc for 64x64 concept images (the default)",
    ),
)

register(
    "alexnet",
    ZooEntry(
        init=alexnet.init_fn,
        input=alexnet.INPUT,
        layers=alexnet.LAYERS,
        aliases=alexnet.ALIASES,
        logits=alexnet.LOGITS,
        num_classes=1000,
        description="torchvision AlexNet (64/192/384/256/256, no LRN), 224x224",
    ),
)
register(
    "caffenet",
    ZooEntry(
        init=caffenet.init_fn,
        input=caffenet.INPUT,
        layers=caffenet.LAYERS,
        aliases=caffenet.ALIASES,
        logits=caffenet.LOGITS,
        num_classes=1000,
        description="BVLC CaffeNet (96/256/384/384/256, LRN, groups=2), 227x227 BGR",
    ),
)
register(
    "vgg16",
    ZooEntry(
        init=vgg.init_fn,
        input=vgg.INPUT,
        layers=vgg.LAYERS,
        aliases=vgg.ALIASES,
        logits=vgg.LOGITS,
        num_classes=1000,
        description="torchvision VGG16 (no BatchNorm), 224x224",
    ),
)
register(
    "resnet18",
    ZooEntry(
        init=resnet.init_resnet18,
        input=resnet.INPUT,
        layers=resnet.LAYERS18,
        aliases=resnet.ALIASES18,
        logits=resnet.LOGITS,
        num_classes=1000,
        description="torchvision ResNet-18, 224x224",
    ),
)
register(
    "resnet50",
    ZooEntry(
        init=resnet.init_resnet50,
        input=resnet.INPUT,
        layers=resnet.LAYERS50,
        aliases=resnet.ALIASES50,
        logits=resnet.LOGITS,
        num_classes=1000,
        description="torchvision ResNet-50 (v1.5), 224x224",
    ),
)
register(
    "googlenet",
    ZooEntry(
        init=googlenet.init_fn,
        input=googlenet.INPUT,
        layers=googlenet.LAYERS,
        aliases=googlenet.ALIASES,
        logits=googlenet.LOGITS,
        num_classes=1000,
        description="torchvision GoogLeNet (BatchNorm, no aux heads), 224x224",
    ),
)

__all__ = [
    "ZooEntry",
    "as_model",
    "entry",
    "init_module",
    "names",
    "random_model",
    "register",
]
