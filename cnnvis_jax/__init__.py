"""cnnvis_jax: see what convolutional networks learn, as pure JAX functions.

The public API (everything else is implementation):

* models: :class:`Model`, :class:`InputContract`, :class:`LayerInfo`,
  :class:`ReceptiveField`, :func:`from_function`, :func:`from_nnx`,
  :func:`load_model` (zoo name or ``"default"``), :func:`default_model`;
* data: :mod:`cnnvis_jax.data` (concept set, Broden, image folders);
* features: :func:`extract_features`;
* training the default network: :mod:`cnnvis_jax.train`;
* errors: :class:`CnnvisError`, :class:`InputError`, :class:`WeightsError`,
  :class:`DataError`.
"""

from cnnvis_jax import data, model, zoo
from cnnvis_jax.default import default_model
from cnnvis_jax.errors import CnnvisError, DataError, InputError, WeightsError
from cnnvis_jax.features import extract_features
from cnnvis_jax.model import (
    CAFFE,
    TORCHVISION,
    InputContract,
    LayerInfo,
    Model,
    from_function,
    from_nnx,
)
from cnnvis_jax.models import load as load_model
from cnnvis_jax.receptive_field import ReceptiveField

__version__ = "0.1.0"

__all__ = [
    "CAFFE",
    "TORCHVISION",
    "CnnvisError",
    "DataError",
    "InputContract",
    "InputError",
    "LayerInfo",
    "Model",
    "ReceptiveField",
    "WeightsError",
    "default_model",
    "extract_features",
    "from_function",
    "from_nnx",
    "load_model",
    "data",
    "model",
    "zoo",
]
