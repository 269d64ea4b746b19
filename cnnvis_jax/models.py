"""Resolving ``--model``/``--weights`` to a :class:`Model`, and abstract catalogs."""

from __future__ import annotations

from flax import nnx

from cnnvis_jax.model import Model


def load(name: str, *, weights: str | None = None, seed: int = 0) -> Model:
    """``"default"`` -> the trained default ConceptNet; ``"vgg16-hed"`` -> VGG16's
    conv layers with HED's weights (``cnnvis weights get vgg16-hed`` first; see
    :mod:`cnnvis_jax.hub`); a zoo name -> that network with ``weights`` (a file
    written by ``cnnvis train`` is recognized by its metadata), or random weights
    with a warning when ``weights`` is None."""
    if name == "default":
        if weights is not None:
            from cnnvis_jax.errors import InputError

            raise InputError(
                "--weights goes with a zoo model name, not 'default'; use "
                "--model conceptnet --weights FILE for a trained ConceptNet file."
            )
        from cnnvis_jax.default import default_model

        return default_model()
    if name == "vgg16-hed":  # VGG16 conv layers with HED's weights; no classifier
        from cnnvis_jax.hub import load_vgg16_hed

        return load_vgg16_hed(weights)
    from cnnvis_jax import zoo
    from cnnvis_jax.weights import load_model

    zoo.entry(name)  # unknown names fail here, listing the valid ones
    if weights is not None and name == "conceptnet":
        from cnnvis_jax.train.snapshots import MODEL_KEY, load_trained, read_metadata

        if str(weights).endswith(".safetensors") and MODEL_KEY in read_metadata(weights):
            return load_trained(weights)
    return load_model(name, weights, seed=seed)


def catalog(name: str) -> Model:
    """Zoo network ``name`` with abstract parameters (shapes only, nothing
    allocated): enough for its layer catalog, fast even for VGG16."""
    from cnnvis_jax import zoo

    abstract = nnx.eval_shape(lambda: zoo.init_module(name))
    return zoo.as_model(abstract, name, class_names=())
