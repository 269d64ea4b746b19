"""cnnvis_jax: see what convolutional networks learn, as pure JAX functions.

The public API (everything else is implementation):

* models: :class:`Model`, :class:`InputContract`, :class:`LayerInfo`,
  :class:`ReceptiveField`, :func:`from_function`, :func:`from_nnx`,
  :func:`load_model` (zoo name or ``"default"``), :func:`default_model`;
* data: :mod:`cnnvis_jax.data` (concept set, Broden, image folders);
* features: :func:`extract_features`;
* training the default network: :mod:`cnnvis_jax.train`;
* relevance and concepts beyond single units: :mod:`cnnvis_jax.lrp` (layer-wise
  relevance propagation), :mod:`cnnvis_jax.crp` (concept relevance),
  :mod:`cnnvis_jax.atlas` (neuron groups, activation atlas);
* errors: :class:`CnnvisError`, :class:`InputError`, :class:`WeightsError`,
  :class:`DataError`.
"""

import importlib

_EXPORTS = {
    "CAFFE": "cnnvis_jax.model",
    "TORCHVISION": "cnnvis_jax.model",
    "InputContract": "cnnvis_jax.model",
    "LayerInfo": "cnnvis_jax.model",
    "Model": "cnnvis_jax.model",
    "from_function": "cnnvis_jax.model",
    "from_nnx": "cnnvis_jax.model",
    "CnnvisError": "cnnvis_jax.errors",
    "DataError": "cnnvis_jax.errors",
    "InputError": "cnnvis_jax.errors",
    "WeightsError": "cnnvis_jax.errors",
    "default_model": "cnnvis_jax.default",
    "extract_features": "cnnvis_jax.features",
    "ReceptiveField": "cnnvis_jax.receptive_field",
}
"""Public name -> the module defining it, imported on first use (so that
``import cnnvis_jax`` and ``cnnvis --help`` do not load JAX)."""

_SUBMODULES = ("atlas", "crp", "data", "lrp", "model", "zoo")


def __getattr__(name: str):
    if name == "load_model":
        return importlib.import_module("cnnvis_jax.models").load
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"cnnvis_jax.{name}")
    raise AttributeError(f"module 'cnnvis_jax' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


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
