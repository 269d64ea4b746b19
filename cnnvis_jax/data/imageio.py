"""Decoding and resizing images and Broden label masks (numpy in, numpy out).

Conventions:

* Images are ``uint8 (H, W, 3)`` RGB. Grey images are repeated to three
  channels; an alpha channel is dropped (colour values are kept as stored, not
  composited on a background); 16-bit grey is scaled to 8 bits; palette, CMYK
  and other modes go through Pillow's RGB conversion.
* Resizing (:func:`resize_crop`, :func:`resize_to_contract`, :func:`load_images`)
  scales the image so that it covers the target ``(H, W)`` (for a square target:
  the shorter side becomes the target size, the longer side
  ``floor(long * target / short)``, as torchvision's ``Resize(int)``), then takes
  the center crop (offsets ``round((size - target) / 2)``, as torchvision's
  ``CenterCrop``). The filter is Pillow's bilinear filter, whose support widens
  when shrinking, so downscaling is antialiased (like torchvision's
  ``antialias=True``).
* A Broden label mask is an RGB PNG with label ``R + 256 * G`` (blue unused),
  decoded to ``int32 (h, w)``.

Every failure to read a file raises :class:`~cnnvis_jax.errors.DataError` naming
the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnvis_jax.errors import DataError, InputError

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)
"""File name endings read as images by default (compared case-insensitively)."""

_READ_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


# --- decoding -------------------------------------------------------------------


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3) RGB from a Pillow image of any common mode (see module doc)."""
    if im.mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if im.mode in _SIXTEEN_BIT:
        grey = np.asarray(im).astype(np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _name(path: str | os.PathLike, display: str | None) -> str:
    return display if display is not None else os.fspath(path)


def read_image(
    path: str | os.PathLike,
    *,
    where: str = "",
    display: str | None = None,
    exif_transpose: bool = False,
) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB.

    Args:
      path: file to open.
      where: context prefixed to error messages (file/line/column of the reference).
      display: how to name the file in messages (default: ``path``).
      exif_transpose: apply the EXIF orientation tag (photos from cameras).

    Raises:
      DataError: the file is missing, unreadable, truncated or not an image.
    """
    prefix = f"{where}: " if where else ""
    name = _name(path, display)
    try:
        with Image.open(path) as im:
            im.load()
            if exif_transpose:
                im = ImageOps.exif_transpose(im)
            return pil_to_rgb(im)
    except FileNotFoundError:
        raise DataError(
            f"{prefix}image file {name!r} does not exist; add it or fix the path."
        ) from None
    except IsADirectoryError:
        raise DataError(f"{prefix}{name!r} is a folder, not an image file; fix the path.") from None
    except PermissionError:
        raise DataError(
            f"{prefix}image file {name!r} cannot be read (permission denied)."
        ) from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{prefix}image file {name!r} is too large to decode safely ({e}).") from e
    except _READ_ERRORS as e:
        raise DataError(
            f"{prefix}image file {name!r} is corrupt or not an image ({type(e).__name__}: "
            f"{e}); replace or remove it."
        ) from e


def read_label_png(
    path: str | os.PathLike,
    *,
    expect_hw: tuple[int, int] | None = None,
    where: str = "",
    display: str | None = None,
) -> np.ndarray:
    """Decode a Broden label mask PNG to int32 (h, w) with label ``R + 256 * G``.

    Args:
      path: the PNG file.
      expect_hw: the (height, width) the mask must have; checked from the header
        before the pixels are decoded.
      where: context prefixed to error messages.
      display: how to name the file in messages.

    Raises:
      DataError: missing, corrupt, not a PNG, single-channel, or of the wrong size.
    """
    prefix = f"{where}: " if where else ""
    name = _name(path, display)
    try:
        with Image.open(path, formats=("PNG",)) as im:
            w, h = im.size
            if expect_hw is not None and (h, w) != tuple(expect_hw):
                eh, ew = expect_hw
                raise DataError(
                    f"{prefix}mask {name!r} is {h}x{w} (height x width) but the "
                    f"segmentation size sh x sw is {eh}x{ew}; re-export the mask at "
                    f"{eh}x{ew} or fix sh/sw."
                )
            if im.mode not in ("RGB", "RGBA", "P"):
                raise DataError(
                    f"{prefix}mask {name!r} has mode {im.mode!r}; Broden masks are RGB "
                    "PNGs with label = R + 256 * G. Re-encode it as RGB."
                )
            if im.mode == "P":
                im = im.convert("RGB")
            rgb = np.asarray(im)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(
            f"{prefix}mask file {name!r} does not exist; add it or fix the path."
        ) from None
    except IsADirectoryError:
        raise DataError(f"{prefix}{name!r} is a folder, not a mask PNG; fix the path.") from None
    except PermissionError:
        raise DataError(f"{prefix}mask file {name!r} cannot be read (permission denied).") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{prefix}mask file {name!r} is too large to decode safely ({e}).") from e
    except _READ_ERRORS as e:
        raise DataError(
            f"{prefix}mask file {name!r} is corrupt or not a PNG ({type(e).__name__}: {e}); "
            "replace it."
        ) from e
    return rgb[..., 0].astype(np.int32) + 256 * rgb[..., 1].astype(np.int32)


# --- resizing -------------------------------------------------------------------


def as_size(size: Any) -> tuple[int, int]:
    """Normalize ``size`` to ``(H, W)``: accepts an int, an ``(H, W)`` pair, or an
    object with a ``.size`` pair (an :class:`~cnnvis_jax.model.InputContract`)."""
    if hasattr(size, "size") and not isinstance(size, np.ndarray):
        size = size.size
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
        ok = all(float(s) == int(s) for s in size)
    except (TypeError, ValueError):
        raise InputError(f"size must be (height, width) in pixels, got {size!r}.") from None
    if not ok or h < 1 or w < 1:
        raise InputError(f"size must be two positive integers (height, width), got {size!r}.")
    return h, w


def cover_size(hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Smallest scaled size of an ``hw`` image that covers ``size``, keeping the
    aspect ratio (the binding side gets the target, the other side is floored)."""
    h, w = hw
    th, tw = size
    if th * w >= tw * h:  # th / h >= tw / w: height binds
        return th, max(tw, (w * th) // h)
    return max(th, (h * tw) // w), tw


def crop_offsets(hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the center crop of ``size`` from an ``hw`` image."""
    return int(round((hw[0] - size[0]) / 2.0)), int(round((hw[1] - size[1]) / 2.0))


def resize_crop(image: np.ndarray, size: Any) -> np.ndarray:
    """Resize to cover ``size`` and center crop (see module doc).

    Args:
      image: uint8 (h, w, 3), or float (h, w, 3) with any range (resized per
        channel in float32 without rounding).
      size: ``(H, W)``, an int, or an input contract.

    Returns:
      (H, W, 3) array of the input's dtype kind (uint8 stays uint8, float becomes
      float32). An image already of size (H, W) is returned unchanged in value.
    """
    th, tw = as_size(size)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise InputError(f"resize_crop expects one (h, w, 3) image, got shape {image.shape}.")
    h, w = image.shape[:2]
    nh, nw = cover_size((h, w), (th, tw))
    if image.dtype == np.uint8:
        if (nh, nw) != (h, w):
            image = np.asarray(
                Image.fromarray(image, "RGB").resize((nw, nh), Image.Resampling.BILINEAR)
            )
    else:
        image = image.astype(np.float32)
        if (nh, nw) != (h, w):
            image = np.stack(
                [
                    np.asarray(
                        Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
                            (nw, nh), Image.Resampling.BILINEAR
                        )
                    )
                    for c in range(3)
                ],
                axis=-1,
            )
    top, left = crop_offsets((nh, nw), (th, tw))
    return np.ascontiguousarray(image[top : top + th, left : left + tw])


def _to_rgb_batch(images: Any) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None, ..., None]
    elif arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4):
        arr = arr[..., None]  # a batch of grey images (N, H, W)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"images must be (H, W), (H, W, C) or (N, H, W, C) with C in 1, 3, 4 "
            f"(channels last), got shape {np.shape(images)}."
        )
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    return arr


def resize_to_contract(images: Any, contract: Any) -> np.ndarray:
    """Images of any size to float32 (N, H, W, 3) in [0, 1] at ``contract.size``.

    Args:
      images: uint8 (values 0..255) or float (values in [0, 1]) images, shaped
        (H, W), (H, W, C) or (N, H, W, C), C in {1, 3, 4} (grey repeated, alpha
        dropped). Each image is resized to cover the size and center cropped
        (see module doc); uint8 images take exactly the path
        :class:`~cnnvis_jax.data.folder.FolderSource` takes, then are divided
        by 255.
      contract: an :class:`~cnnvis_jax.model.InputContract` (its ``size``), or a
        ``(H, W)`` pair.

    Returns:
      float32 numpy array (N, H, W, 3) in [0, 1], ready for ``Model.apply``.

    Raises:
      InputError: bad shape, non-finite values, or float values outside [0, 1]
        (0..255 floats must be divided by 255 first).
    """
    size = as_size(contract)
    arr = _to_rgb_batch(images)
    if arr.dtype == np.uint8:
        out = [resize_crop(im, size) for im in arr]
        return np.stack(out).astype(np.float32) / np.float32(255.0)
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise InputError(f"images must be uint8 or float, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.integer):
        raise InputError(
            f"integer images must be uint8 (0..255), got dtype {arr.dtype}; convert "
            "them with .astype('uint8') or to float in [0, 1]."
        )
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise InputError("images contain NaN or inf; clean them (np.nan_to_num) first.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"float images must be in [0, 1], got values in [{lo:g}, {hi:g}]; divide "
            "0..255 images by 255 (or pass them as uint8)."
        )
    out = [np.clip(resize_crop(im, size), 0.0, 1.0) for im in arr]
    return np.stack(out).astype(np.float32)


def load_images(paths: Sequence[str | os.PathLike], size: Any) -> np.ndarray:
    """Read image files (as given on a command line) into uint8 (N, H, W, 3).

    Each file is decoded to RGB (EXIF orientation applied), resized to cover
    ``size`` and center cropped (see module doc).

    Args:
      paths: image files, in order.
      size: ``(H, W)``, an int, or an input contract.

    Raises:
      InputError: no paths or a bad size.
      DataError: a file is missing, unreadable or not an image (named).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise InputError("no image files given; pass at least one path.")
    hw = as_size(size)
    out = np.empty((len(paths), *hw, 3), np.uint8)
    for i, p in enumerate(paths):
        if Path(p).is_dir():
            raise DataError(f"{os.fspath(p)!r} is a folder; pass image files.")
        out[i] = resize_crop(read_image(p, exif_transpose=True), hw)
    return out
