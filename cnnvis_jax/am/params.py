"""Parameterizations: what the optimizer moves, and how it becomes an image.

Every parameterization is a pytree (its arrays are data, its switches metadata)
with

* ``init(key, batch, contract, images=None) -> params``: a start for ``batch``
  images at the model's size ``contract.size`` (random, or from ``images`` in
  [0, 1], NHWC, where the parameterization can invert itself);
* ``to_image(params, contract) -> images``: float32 ``(B, H, W, 3)``, nominally in
  [0, 1] (the pixel parameterization may leave the range when not clipped);
* ``clip(params, contract) -> params``: the projection applied by the
  :class:`~cnnvis_jax.am.regularizers.ClipParams` step (pixel range, code bounds).

Parameterizations:

* :class:`Pixel`: the image itself, in ``space="unit"`` ([0, 1]),
  ``space="caffe"`` (0-255 minus the model's mean colour: MFV's pixel units) or
  ``space="input"`` (the network's normalized input, the ``data`` blob Yosinski et
  al. step in; for Caffe models the two coincide).
* :class:`Fourier`: Lucid's decorrelated FFT image: per channel a half spectrum
  ``(B, 3, H, W // 2 + 1)`` (real and imaginary parts as an extra axis), scaled by
  ``1 / max(f, 1 / max(H, W)) ** decay_power * sqrt(H W)``, inverse real FFT,
  divided by 4, mixed by Lucid's colour matrix normalized by its largest column
  norm, then a sigmoid.
* :class:`Maco`: MACO's phase-only Fourier image (Fel et al. 2023): a fixed
  amplitude spectrum (the data set's mean, :func:`natural_spectrum`) and a
  per-image phase ``(B, 3, H, W // 2 + 1)``; the phase is standardized, the image
  ``irfft2(A e^{i phase})`` standardized, colour-recorrelated as Lucid's, then a
  sigmoid. The canvas (H, W) is the spectrum's and may exceed the model's input:
  MACO scores random crops of it (:func:`~cnnvis_jax.am.transforms.maco_transforms`).
* :class:`Generator`: the code ``h`` (B, D) of a decoder ``G(params, h) -> images``
  in [0, 1] (DGN-AM); ``clip`` bounds every code unit to ``[lower, upper]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.am._tree import normal, pytree_dataclass
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import InputContract

__all__ = [
    "COLOR_CORRELATION",
    "DecoderCode",
    "Fourier",
    "Generator",
    "Maco",
    "Pixel",
    "code_bounds",
    "generator_from_decoder",
    "natural_spectrum",
    "rfft2d_freqs",
]

COLOR_CORRELATION = np.array(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32
)
"""Lucid's ``color_correlation_svd_sqrt`` (square root of ImageNet's colour covariance)."""

_COLOR = COLOR_CORRELATION / np.max(np.linalg.norm(COLOR_CORRELATION, axis=0))
"""The colour matrix divided by its largest column norm (Lucid's normalization)."""


def mean255(contract: InputContract) -> np.ndarray:
    """The model's mean colour in 0-255 RGB units (float32 (3,))."""
    return (np.asarray(contract.mean, np.float32) / contract.value_scale * 255.0).astype(np.float32)


# --- pixels -------------------------------------------------------------------------------


@pytree_dataclass(static=("space",))
class Pixel:
    """The image as parameters.

    Attributes:
      space: ``"unit"`` (params are images in [0, 1]), ``"caffe"`` (0-255 minus
        the model's mean colour) or ``"input"`` (the network's own normalized input,
        Caffe's ``data`` blob; for Caffe models the same as ``"caffe"``).
      init_value: start colour in 0-255 units, or ``None`` for the model's mean.
      init_sd: standard deviation of the start noise, in 0-255 units.
    """

    space: str = "caffe"
    init_value: Any = None
    init_sd: Any = 10.0

    def __post_init__(self):
        if self.space not in ("unit", "caffe", "input"):
            raise InputError(f"Pixel space must be 'unit', 'caffe' or 'input', got {self.space!r}.")

    def init(self, key, batch: int, contract: InputContract, images=None):
        if images is not None:
            return self.from_image(jnp.asarray(images, jnp.float32), contract)
        h, w = contract.size
        base = mean255(contract) if self.init_value is None else jnp.asarray(self.init_value)
        noise = normal(key, (batch, h, w, 3)) * self.init_sd
        return self.from_image((base + noise) / 255.0, contract).astype(jnp.float32)

    def from_image(self, images, contract: InputContract):
        if self.space == "unit":
            return images
        if self.space == "caffe":
            return images * 255.0 - mean255(contract)
        return contract.normalize(images)

    def to_image(self, params, contract: InputContract):
        if self.space == "unit":
            return params
        if self.space == "caffe":
            return (params + mean255(contract)) / 255.0
        return contract.denormalize(params)

    def clip(self, params, contract: InputContract):
        lo = self.from_image(jnp.zeros((3,), jnp.float32), contract)
        hi = self.from_image(jnp.ones((3,), jnp.float32), contract)
        return jnp.clip(params, jnp.minimum(lo, hi), jnp.maximum(lo, hi))


# --- Fourier ------------------------------------------------------------------------------


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Frequency magnitudes (h, w // 2 + 1) of a real 2-D FFT (cycles per pixel)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy).astype(np.float32)


@pytree_dataclass(static=("decorrelate", "sigmoid"))
class Fourier:
    """Lucid's FFT parameterization with decorrelated colour (see the module docstring).

    Params are float32 ``(B, 2, 3, H, W // 2 + 1)``: real and imaginary parts.
    """

    init_sd: Any = 0.01
    decay_power: Any = 1.0
    decorrelate: bool = True
    sigmoid: bool = True

    def spectrum_scale(self, h: int, w: int):
        """``1 / max(f, 1/max(h, w)) ** decay_power * sqrt(h w)`` (h, w // 2 + 1)."""
        freqs = rfft2d_freqs(h, w)
        return (1.0 / jnp.maximum(freqs, 1.0 / max(h, w)) ** self.decay_power) * np.sqrt(w * h)

    def init(self, key, batch: int, contract: InputContract, images=None):
        if images is not None:
            return self.from_image(jnp.asarray(images, jnp.float32), contract)
        h, w = contract.size
        shape = (batch, 2, 3, h, w // 2 + 1)
        return normal(key, shape) * self.init_sd

    def _linear(self, params, contract):
        h, w = contract.size
        spectrum = (params[:, 0] + 1j * params[:, 1]) * self.spectrum_scale(h, w)
        image = jnp.fft.irfft2(spectrum, s=(h, w), axes=(-2, -1))  # (B, 3, H, W)
        return jnp.moveaxis(image, 1, -1) / 4.0

    def to_image(self, params, contract: InputContract):
        t = self._linear(params, contract)
        if self.decorrelate:
            t = t @ jnp.asarray(_COLOR.T)
        if self.sigmoid:
            return jax.nn.sigmoid(t)
        return t

    def from_image(self, images, contract: InputContract):
        """The params whose image is ``images`` (values strictly inside (0, 1) with the
        sigmoid; they are clipped to [1e-4, 1 - 1e-4] first)."""
        t = images
        if self.sigmoid:
            t = jnp.clip(t, 1e-4, 1 - 1e-4)
            t = jnp.log(t) - jnp.log1p(-t)
        if self.decorrelate:
            t = t @ jnp.asarray(np.linalg.inv(_COLOR.T))
        h, w = contract.size
        spectrum = jnp.fft.rfft2(jnp.moveaxis(t * 4.0, -1, 1), s=(h, w), axes=(-2, -1))
        spectrum = spectrum / self.spectrum_scale(h, w)
        return jnp.stack([spectrum.real, spectrum.imag], axis=1).astype(jnp.float32)

    def clip(self, params, contract: InputContract):
        return params


# --- MACO -----------------------------------------------------------------------------------


def natural_spectrum(images, size: tuple[int, int]) -> np.ndarray:
    """The mean amplitude spectrum of natural images, for :class:`Maco`.

    Args:
      images: uint8 (N, h, w, 3) or float in [0, 1], N >= 1 (e.g. a few hundred
        images of the data set the model was trained on).
      size: the canvas (H, W) the spectrum is for; images are resized to it
        (bilinear, antialiased).

    Returns:
      float32 (3, H, W // 2 + 1): the mean over images of ``|rfft2|`` of each image
      in decorrelated colour (the inverse of the recorrelation :class:`Maco` and
      :class:`Fourier` apply), per channel. Xplique loads the same statistic of
      ImageNet from the web; here it comes from the images given.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise InputError(
            f"natural_spectrum needs images (N >= 1, H, W, 3), got shape {images.shape}."
        )
    h, w = int(size[0]), int(size[1])
    if h < 2 or w < 2 or w % 2:
        raise InputError(f"the MACO canvas needs an even width and sides >= 2, got {h}x{w}.")
    x = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    total = np.zeros((3, h, w // 2 + 1), np.float64)
    decorrelate = np.linalg.inv(_COLOR.T).astype(np.float32)
    for start in range(0, len(x), 64):
        part = jnp.asarray(x[start : start + 64])
        if part.shape[1:3] != (h, w):
            part = jax.image.resize(part, (len(part), h, w, 3), "bilinear", antialias=True)
        t = jnp.moveaxis(part @ decorrelate, -1, 1)  # (n, 3, H, W)
        total += np.asarray(jnp.abs(jnp.fft.rfft2(t, axes=(-2, -1))).sum(0), np.float64)
    return (total / len(x)).astype(np.float32)


def _standardized(x, axes):
    return (x - jnp.mean(x, axes, keepdims=True)) / (jnp.std(x, axes, keepdims=True) + 1e-5)


@pytree_dataclass
class Maco:
    """MACO's magnitude-constrained parameterization (see the module docstring).

    Params are the phases, float32 ``(B, 3, H, W // 2 + 1)`` for the canvas (H, W)
    of ``magnitude`` (3, H, W // 2 + 1); ``init_sd`` is the standard deviation of the
    random start phase (Xplique: 1). Only the phase moves; the image's amplitude
    spectrum is the natural one up to the standardizations.
    """

    magnitude: Any
    init_sd: Any = 1.0

    @property
    def canvas(self) -> tuple[int, int]:
        """(H, W) of the images this parameterization draws."""
        _, h, half = np.shape(self.magnitude)
        return int(h), int(2 * (half - 1))

    def init(self, key, batch: int, contract: InputContract, images=None):
        if images is not None:
            raise InputError(
                "the maco parameterization starts from a random phase, not from images; "
                "drop init_images (or start from an image with the accentuate preset)."
            )
        return normal(key, (batch, *np.shape(self.magnitude))) * self.init_sd

    def to_image(self, params, contract: InputContract):
        h, w = self.canvas
        phase = _standardized(params, (1, 2, 3))
        magnitude = jnp.asarray(self.magnitude)
        spectrum = magnitude * jnp.cos(phase) + 1j * (magnitude * jnp.sin(phase))
        image = jnp.fft.irfft2(spectrum, s=(h, w), axes=(-2, -1))  # (B, 3, H, W)
        image = _standardized(jnp.moveaxis(image, 1, -1), (1, 2, 3))
        return jax.nn.sigmoid(image @ jnp.asarray(_COLOR.T))

    def clip(self, params, contract: InputContract):
        return params


# --- generator (DGN-AM) -------------------------------------------------------------------


@pytree_dataclass(static=("decoder", "code_size"))
class Generator:
    """The code of a decoder ``decoder(decoder_params, h (B, D)) -> images (B, H', W', 3)``
    in [0, 1] (an UpconvNet trained to invert a layer; DGN-AM).

    Attributes:
      decoder: the pure decoder function (hashable: a module-level function or a
        closure made once).
      decoder_params: its parameters (data: passed to ``jit``, never closed over).
      lower, upper: per-unit code bounds, float32 (D,) (DGN-AM: 0 and the 3-sigma
        upper bound of the layer's activations over training images).
      code_size: D.
      init_sd: standard deviation of the random start code (clipped to the bounds).

    The decoder's images may be larger than the model's input; the render loop
    centre-crops them (DGN-AM crops 256 to 227), or resizes smaller ones.
    """

    decoder: Callable[[Any, jax.Array], jax.Array]
    decoder_params: Any
    lower: Any
    upper: Any
    code_size: int
    init_sd: Any = 1.0

    def init(self, key, batch: int, contract: InputContract, images=None):
        if images is not None:
            raise InputError(
                "a generator parameterization starts from codes, not images; pass "
                "init_params=codes (B, D), e.g. the encoder's features of the images."
            )
        h = normal(key, (batch, self.code_size)) * self.init_sd
        return self.clip(h, contract)

    def to_image(self, params, contract: InputContract):
        return self.decoder(self.decoder_params, params).astype(jnp.float32)

    def clip(self, params, contract: InputContract):
        return jnp.clip(params, jnp.asarray(self.lower), jnp.asarray(self.upper))


def code_bounds(features: np.ndarray, sigmas: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """DGN-AM's per-unit code bounds from training features (N, D): ``lower`` is 0
    (codes of a layer after ReLU) and ``upper`` is ``mean + sigmas * std`` per unit."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise InputError(f"features must be (N >= 2, D), got shape {features.shape}.")
    upper = features.mean(0) + sigmas * features.std(0)
    lower = np.minimum(0.0, features.min(0))
    return lower.astype(np.float32), upper.astype(np.float32)


class DecoderCode:
    """A decoder's apply function on flat codes (B, D), hashed by identity (a static
    field of a pytree); codes are reshaped to the decoder's feature shape."""

    def __init__(self, apply, feature_shape):
        self.apply, self.feature_shape = apply, tuple(feature_shape)

    def __call__(self, params, h):
        return self.apply(params, h.reshape(h.shape[0], *self.feature_shape))


def generator_from_decoder(decoder: Any, features: np.ndarray) -> Generator:
    """DGN-AM's :class:`Generator` from an UpconvNet decoder
    (:class:`cnnvis_jax.inversion.Decoder`: ``apply``, ``params``, ``feature_shape``)
    with the code bounds of :func:`code_bounds` over ``features`` (N, *feature_shape),
    the decoder layer's activations on training images."""
    features = np.asarray(features)
    lower, upper = code_bounds(features.reshape(len(features), -1))
    return Generator(
        decoder=DecoderCode(decoder.apply, decoder.feature_shape),
        decoder_params=decoder.params,
        lower=lower,
        upper=upper,
        code_size=int(lower.size),
    )
