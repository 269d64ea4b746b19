"""scikit-image's bundled natural images as a data source (``--dataset skimage``).

The images ship inside the scikit-image package (no download): astronaut,
chelsea, coffee, rocket, motorcycle_left, horse, hubble_deep_field, brick, grass,
gravel, coins, camera. Grey images are repeated to RGB; the horse silhouette
(boolean) becomes white (True) on black; everything is uint8 (H, W, 3) RGB.
With a ``size``, each image is resized to cover it and center cropped (as
:class:`~cnnvis_jax.data.FolderSource` does); without, images keep their sizes.
There are no classes and no concept labels (``target = -1``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from cnnvis_jax.data.imageio import as_size, resize_crop
from cnnvis_jax.data.types import Sample
from cnnvis_jax.errors import DataError, InputError, did_you_mean

__all__ = ["SKIMAGE_NAMES", "SkimageSource", "skimage_image"]

SKIMAGE_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "horse",
    "hubble_deep_field",
    "brick",
    "grass",
    "gravel",
    "coins",
    "camera",
)
"""The default images, in this order (index i of the source is ``SKIMAGE_NAMES[i]``)."""


def _data_module():
    try:
        import skimage.data
    except ImportError:
        raise DataError(
            "--dataset skimage needs scikit-image (a dependency of cnnvis-jax); install it "
            "with `pip install scikit-image`."
        ) from None
    return skimage.data


def _as_rgb_uint8(image: Any, name: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise DataError(
            f"scikit-image's {name!r} gives a {type(image).__name__}, not one image; "
            f"use one of {', '.join(SKIMAGE_NAMES)}."
        )
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        raise DataError(f"scikit-image image {name!r} has dtype {image.dtype}, expected uint8.")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    elif image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise DataError(f"scikit-image image {name!r} has shape {image.shape}, not an image.")
    return np.ascontiguousarray(image)


def skimage_image(name: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB of one bundled scikit-image image.

    ``name`` is a ``skimage.data`` function returning one image (``"astronaut"``,
    ``"camera"``, ...) or ``"motorcycle_left"``/``"motorcycle_right"`` (the stereo
    pair of ``stereo_motorcycle``). Raises :class:`InputError` for other names and
    :class:`DataError` when scikit-image cannot give the image (for example one it
    would have to download).
    """
    data = _data_module()
    if name in ("motorcycle_left", "motorcycle_right"):
        loader = lambda: data.stereo_motorcycle()[0 if name.endswith("left") else 1]  # noqa: E731
    else:
        loader = getattr(data, name, None)
        if not callable(loader) or name.startswith("_") or name in ("download_all", "data_dir"):
            raise InputError(
                f"scikit-image has no bundled image {name!r}; " + did_you_mean(name, SKIMAGE_NAMES)
            )
    try:
        image = loader()
    except Exception as e:  # pooch/network errors for images not bundled, decoding errors
        raise DataError(
            f"scikit-image could not give image {name!r} ({type(e).__name__}: {e}); use one "
            f"of the bundled images {', '.join(SKIMAGE_NAMES)}."
        ) from None
    return _as_rgb_uint8(image, name)


class SkimageSource:
    """Random-access source over scikit-image's bundled images.

    ``source[i]`` is a :class:`~cnnvis_jax.data.types.Sample` with ``"image"``
    uint8 (H, W, 3) RGB (``size`` when given), empty ``"pixel"``/``"scalar"``,
    ``"target"`` -1 and ``"index"`` ``i``.

    Args:
      names: image names (default :data:`SKIMAGE_NAMES`), see :func:`skimage_image`.
      size: output ``(H, W)`` (or an int, or an input contract); each image is
        resized to cover it and center cropped. None keeps the original sizes.

    Attributes:
      names, image_size, class_names (``()``), vocabulary (None).
    """

    vocabulary = None
    class_names: tuple[str, ...] = ()

    def __init__(self, names: Sequence[str] = SKIMAGE_NAMES, *, size: Any = None):
        if isinstance(names, str):
            names = [names]
        self.names = tuple(str(n) for n in names)
        if not self.names:
            raise InputError("SkimageSource needs at least one image name.")
        self.image_size = as_size(size) if size is not None else None
        self._cache: dict[str, np.ndarray] = {}
        for name in self.names:  # other names are checked now, not in the middle of a pass
            if name not in SKIMAGE_NAMES:
                skimage_image(name)

    def __len__(self) -> int:
        return len(self.names)

    def _position(self, index: int) -> int:
        n, i = len(self.names), int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} scikit-image images.")
        return i

    def read(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3) RGB of image ``index`` (resized/cropped when a size is set)."""
        name = self.names[self._position(index)]
        if name not in self._cache:
            image = skimage_image(name)
            if self.image_size is not None:
                image = resize_crop(image, self.image_size)
            self._cache[name] = image
        return self._cache[name]

    def __getitem__(self, index: int) -> Sample:
        i = self._position(index)
        return Sample(image=self.read(i), pixel={}, scalar={}, target=-1, index=i)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]
