"""Model zoo: NNX networks with survey layer names and torchvision aliases."""

from cnnvis_jax.zoo import conceptnet
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

__all__ = [
    "ZooEntry",
    "as_model",
    "entry",
    "init_module",
    "names",
    "random_model",
    "register",
]
