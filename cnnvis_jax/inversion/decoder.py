"""UpconvNet decoders (Dosovitskiy & Brox, CVPR'16): features of one layer -> image.

The published per-layer tables are not available, so the architecture is derived
from the feature shape by :func:`design` (all activations leaky ReLU 0.2)::

  conv layer (h, w, c):  x / s  -> 3x3 conv (W(h)) -> 3x3 conv (W(h))
                         -> k × [stride-2 up-convolution (W(2h), W(4h), …)]
                         -> 3x3 conv (3) -> sigmoid
  fc layer (c,):         x / s  -> fc (FC_WIDTH) -> fc (h0·w0·W(h0)) -> reshape (h0, w0)
                         -> k × [stride-2 up-convolution] -> 3x3 conv (3) -> sigmoid

Up-convolutions are sub-pixel convolutions (a 3x3 conv to 4× the channels, then
depth-to-space), which can express any 4x4 stride-2 transposed convolution and run
at the speed of plain convolutions on CPU. ``k = ceil(log2(H / h))`` of them bring the map to the image size (H, W); a
final bilinear resize fixes sizes that are not a power-of-two multiple. Widths
shrink as the resolution grows, ``W(r) = clip(1024 / r, 32, 128)`` channels (128 at
8×8 and below, 64 at 16×16, 32 at 32×32 and above), so every stage costs about the
same. fc decoders start from ``h0 = ceil(H / 16)`` (4×4 for 64-pixel images).
``s`` is the RMS of the layer's features on the training set (stored with the
decoder), so every layer's input has unit scale. The sigmoid keeps outputs in
[0, 1] (NHWC), the contract of images everywhere in the package.

For ConceptNet at 64×64: conv1 (32×32×48) -> 2 convs of 32, 1 up-conv; conv2
(16×16) -> 2 convs of 64, 2 up-convs; conv3–5 (8×8) -> 2 convs of 128, 3 up-convs;
fc6–fc8 -> fc 512, fc 4·4·128, 4 up-convs.

Parameters are a flat ``{name: array}`` dict (``conv0/w``, ``fc1/b``, ``up2/w``, …),
so they save as safetensors without pickling.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.errors import InputError

__all__ = ["FC_WIDTH", "Decoder", "DecoderDesign", "design", "init_params", "width"]

FC_WIDTH = 512
LEAK = 0.2
DN = ("NHWC", "HWIO", "NHWC")


def width(resolution: int) -> int:
    """Channels of a decoder stage at ``resolution`` pixels (see module docstring)."""
    return int(min(128, max(16, 512 // max(int(resolution), 1))))


@dataclasses.dataclass(frozen=True)
class DecoderDesign:
    """The architecture: ``kind`` "conv" or "fc"; ``convs`` widths of the 3x3 convs
    at the feature resolution (conv kind); ``fcs`` fc widths (fc kind, the last one
    is ``start``'s size); ``start`` the (h, w, c) map the up-convolutions begin from;
    ``ups`` widths of the stride-2 up-convolutions; ``image_size`` (H, W)."""

    feature_shape: tuple[int, ...]
    image_size: tuple[int, int]
    kind: str
    convs: tuple[int, ...]
    fcs: tuple[int, ...]
    start: tuple[int, int, int]
    ups: tuple[int, ...]

    def to_json(self) -> dict:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_json(cls, record: dict) -> DecoderDesign:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})


def design(feature_shape, image_size) -> DecoderDesign:
    """The decoder architecture for features of ``feature_shape`` and an image of
    ``image_size`` (H, W); see the module docstring."""
    shape = tuple(int(d) for d in feature_shape)
    H, W = (int(image_size[0]), int(image_size[1]))
    if len(shape) == 3:
        h, w, _ = shape
        if h > H or w > W:
            raise InputError(
                f"features {shape} are larger than the image {H}x{W}; nothing to decode."
            )
        k = max(0, math.ceil(math.log2(max(H / h, W / w))))
        return DecoderDesign(
            feature_shape=shape,
            image_size=(H, W),
            kind="conv",
            convs=(width(h), width(h)),
            fcs=(),
            start=(h, w, width(h)),
            ups=tuple(width(h * 2 ** (i + 1)) for i in range(k)),
        )
    if len(shape) == 1:
        h0, w0 = math.ceil(H / 16), math.ceil(W / 16)
        c0 = width(h0)
        k = max(0, math.ceil(math.log2(max(H / h0, W / w0))))
        return DecoderDesign(
            feature_shape=shape,
            image_size=(H, W),
            kind="fc",
            convs=(),
            fcs=(FC_WIDTH, h0 * w0 * c0),
            start=(h0, w0, c0),
            ups=tuple(width(h0 * 2 ** (i + 1)) for i in range(k)),
        )
    raise InputError(f"decoders need features (H, W, C) or (C,), got shape {shape}.")


def _he(key, shape, fan_in):
    return (
        jax.random.normal(key, shape, jnp.float32) * np.sqrt(2.0 / (1 + LEAK**2) / fan_in)
    ).astype(jnp.float32)


def init_params(d: DecoderDesign, key: jax.Array) -> dict[str, jax.Array]:
    """He-initialized parameters (leaky-ReLU gain), zero biases."""
    params: dict[str, jax.Array] = {}
    keys = iter(jax.random.split(key, 16 + len(d.ups) + len(d.convs) + len(d.fcs)))
    channels = d.feature_shape[-1]
    if d.kind == "fc":
        fan = channels
        for i, n in enumerate(d.fcs):
            params[f"fc{i}/w"] = _he(next(keys), (fan, n), fan)
            params[f"fc{i}/b"] = jnp.zeros((n,), jnp.float32)
            fan = n
        channels = d.start[2]
    for i, n in enumerate(d.convs):
        params[f"conv{i}/w"] = _he(next(keys), (3, 3, channels, n), 9 * channels)
        params[f"conv{i}/b"] = jnp.zeros((n,), jnp.float32)
        channels = n
    for i, n in enumerate(d.ups):
        # sub-pixel up-convolution (see _up): each output sees 3x3 taps of each input
        w = _he(next(keys), (3, 3, channels, n), 9 * channels)
        params[f"up{i}/w"] = jnp.tile(w, (1, 1, 1, 4))  # the 4 phases start equal
        params[f"up{i}/b"] = jnp.zeros((4 * n,), jnp.float32)
        channels = n
    params["out/w"] = _he(next(keys), (3, 3, channels, 3), 9 * channels) * 0.1
    params["out/b"] = jnp.zeros((3,), jnp.float32)
    return params


def _leaky(x):
    return jnp.where(x >= 0, x, LEAK * x)


def _conv(x, w, b):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN) + b


def _up(x, w, b):
    """Stride-2 up-convolution as a sub-pixel convolution: a 3x3 conv to 4·C
    channels, then depth-to-space (each 2x2 output block reads its own C channels).
    This expresses every 4x4 stride-2 transposed convolution (each output phase sees
    at most 2x2 input taps, inside the 3x3 window) and runs at plain-convolution
    speed on CPU, where dilated (transposed) convolutions are very slow."""
    y = _conv(x, w, b)  # (N, h, w, 4C), channels ordered (dy, dx, C)
    n, h, wd, c4 = y.shape
    c = c4 // 4
    y = y.reshape(n, h, wd, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, 2 * h, 2 * wd, c)


def forward(d: DecoderDesign, params: dict[str, Any], features: jax.Array, scale) -> jax.Array:
    """Decode features (N, *feature_shape) -> images (N, H, W, 3) in [0, 1]."""
    x = jnp.asarray(features, jnp.float32) / scale
    if d.kind == "fc":
        for i in range(len(d.fcs)):
            x = _leaky(x @ params[f"fc{i}/w"] + params[f"fc{i}/b"])
        x = x.reshape(x.shape[0], *d.start)
    for i in range(len(d.convs)):
        x = _leaky(_conv(x, params[f"conv{i}/w"], params[f"conv{i}/b"]))
    for i in range(len(d.ups)):
        x = _leaky(_up(x, params[f"up{i}/w"], params[f"up{i}/b"]))
    H, W = d.image_size
    if x.shape[1:3] != (H, W):
        x = jax.image.resize(x, (x.shape[0], H, W, x.shape[3]), method="bilinear")
    return jax.nn.sigmoid(_conv(x, params["out/w"], params["out/b"]))


@dataclasses.dataclass(frozen=True)
class Decoder:
    """A trained (or fresh) decoder for one layer of one model.

    ``decoder.apply(params, features) -> images`` (features (N, *feature_shape),
    images float (N, H, W, 3) in [0, 1], NHWC) is pure and jit/grad-friendly;
    ``decoder(features)`` uses the decoder's own params. A pytree whose only child
    is ``params``.

    Attributes:
      params: flat ``{name: array}`` dict.
      design: the :class:`DecoderDesign`.
      layer: canonical layer name it decodes.
      model_name: the model's name.
      model_fingerprint: hash of the model's weights (see :func:`.io.fingerprint`).
      feature_scale: RMS of the training features (the input is divided by it).
    """

    params: dict[str, Any]
    design: DecoderDesign
    layer: str
    model_name: str
    model_fingerprint: str
    feature_scale: float

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self.design.feature_shape

    @property
    def image_size(self) -> tuple[int, int]:
        return self.design.image_size

    def apply(self, params: dict[str, Any], features: jax.Array) -> jax.Array:
        f = jnp.asarray(features)
        if tuple(f.shape[1:]) != self.feature_shape:
            raise InputError(
                f"features of shape {tuple(f.shape)} do not fit the decoder of layer "
                f"{self.layer!r}, which takes (N, {', '.join(map(str, self.feature_shape))})."
            )
        return forward(self.design, params, f, self.feature_scale)

    def __call__(self, features: jax.Array) -> jax.Array:
        return self.apply(self.params, features)


jax.tree_util.register_dataclass(
    Decoder,
    data_fields=["params"],
    meta_fields=["design", "layer", "model_name", "model_fingerprint", "feature_scale"],
)
