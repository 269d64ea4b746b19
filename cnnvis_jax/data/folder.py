"""Image-folder data source.

Two layouts::

    ROOT/<class>/.../*.jpg     class sub-folders: class_names = sorted sub-folder
                               names, target = index of the image's class
    ROOT/*.jpg                 flat folder: class_names = (), target = -1

A folder is read with classes when at least one non-hidden sub-folder exists;
image files lying directly in ROOT next to class folders are then ignored (and
counted). Class folders are searched recursively. Hidden files and folders
(names starting with ``.``) are skipped; files with other endings than
``extensions`` are ignored and counted. Every file must stay inside ROOT: a
symbolic link (file or folder) that resolves outside it is an error.

Images are decoded with Pillow (EXIF orientation applied), converted to RGB,
resized to cover ``size`` and center cropped with Pillow's antialiased bilinear
filter (see :mod:`cnnvis_jax.data.imageio`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnvis_jax.data.imageio import (
    IMAGE_EXTENSIONS,
    as_size,
    load_images,
    read_image,
    resize_crop,
)
from cnnvis_jax.data.paths import is_within, real_dir
from cnnvis_jax.data.types import Sample
from cnnvis_jax.errors import DataError, InputError

__all__ = ["FolderSource", "load_images"]


def _normalize_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = [extensions]
    out = []
    for e in extensions:
        e = str(e).strip().lower()
        if not e or e == ".":
            raise InputError(f"empty file extension in {list(extensions)!r}.")
        out.append(e if e.startswith(".") else "." + e)
    if not out:
        raise InputError("extensions is empty; give at least one, e.g. ('.jpg', '.png').")
    return tuple(dict.fromkeys(out))


class FolderSource:
    """Random-access source over an image folder (see the module doc for layouts).

    ``source[i]`` is a :class:`~cnnvis_jax.data.types.Sample` with ``"image"``
    uint8 (H, W, 3) RGB, ``"pixel"`` {}, ``"scalar"`` {}, ``"target"`` the class
    index (-1 in a flat folder) and ``"index"`` ``i``.

    Args:
      root: the folder.
      size: output ``(H, W)`` (or an int for square); each image is resized to
        cover it and center cropped.
      contract: an :class:`~cnnvis_jax.model.InputContract`; its ``size`` is used
        (give ``size`` or ``contract``, not both). With neither, images keep
        their own sizes.
      extensions: file name endings read as images (case-insensitive).

    Attributes:
      class_names: sorted class sub-folder names, () for a flat folder.
      files: image paths, sorted by class then path.
      targets: class index of each file (-1 in a flat folder).
      ignored: {"unsupported_type": n, "outside_class_folders": n} counts of
        files left out.
      image_size: (H, W) of every sample, or None when images keep their sizes.

    Raises:
      DataError: the folder is missing or has no images, a class folder has no
        images, or a symbolic link leads outside the folder. Unreadable images
        are reported (named) when read.
    """

    vocabulary = None

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        size: Any = None,
        contract: Any = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ):
        if size is not None and contract is not None:
            raise InputError("give size=(H, W) or contract=, not both.")
        self.image_size: tuple[int, int] | None = (
            as_size(size)
            if size is not None
            else as_size(contract)
            if contract is not None
            else None
        )
        self.extensions = _normalize_extensions(extensions)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(
                f"image folder {os.fspath(root)!r} does not exist or is not a folder; "
                "pass a folder of images (optionally in class sub-folders)."
            )
        self._root_real = real_dir(self.root)
        self.ignored = {"unsupported_type": 0, "outside_class_folders": 0}
        class_dirs: list[tuple[str, Path]] = []
        loose: list[Path] = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if path.is_dir():
                self._checked(path)
                class_dirs.append((entry.name, path))
            elif path.is_file():
                loose.append(path)
        files: list[Path] = []
        targets: list[int] = []
        if class_dirs:
            self.class_names: tuple[str, ...] = tuple(name for name, _ in class_dirs)
            self.ignored["outside_class_folders"] = sum(1 for p in loose if self._is_image(p))
            self.ignored["unsupported_type"] += sum(1 for p in loose if not self._is_image(p))
            for target, (_, folder) in enumerate(class_dirs):
                found = self._walk(folder)
                if not found:
                    raise DataError(
                        f"class folder {os.fspath(folder)!r} holds no images (endings "
                        f"{', '.join(self.extensions)}); add images or remove the folder."
                    )
                files += found
                targets += [target] * len(found)
        else:
            self.class_names = ()
            files = [p for p in loose if self._is_image(p)]
            for p in files:
                self._checked(p)
            self.ignored["unsupported_type"] += len(loose) - len(files)
            targets = [-1] * len(files)
        if not files:
            raise DataError(
                f"image folder {os.fspath(root)!r} holds no images (endings "
                f"{', '.join(self.extensions)}; {self.ignored['unsupported_type']} other "
                "files ignored); add images or pass extensions=."
            )
        self.files: tuple[Path, ...] = tuple(files)
        self.targets: tuple[int, ...] = tuple(targets)

    # --- discovery --------------------------------------------------------------
    def _is_image(self, path: Path) -> bool:
        return path.name.lower().endswith(self.extensions)

    def _checked(self, path: Path) -> Path:
        """Real path of ``path``; DataError when it resolves outside the root."""
        real = Path(os.path.realpath(path))
        if not is_within(real, self._root_real):
            raise DataError(
                f"{os.fspath(path)!r} is a symbolic link to {os.fspath(real)!r}, outside "
                f"the image folder {os.fspath(self.root)!r}; copy the files in or remove "
                "the link."
            )
        return real

    def _walk(self, folder: Path) -> list[Path]:
        found: list[Path] = []
        visited: set[Path] = set()
        stack = [folder]
        while stack:
            current = stack.pop()
            real = self._checked(current)
            if real in visited:
                continue  # a link cycle
            visited.add(real)
            subdirs = []
            for entry in sorted(os.scandir(current), key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                if entry.is_dir():  # follows links; checked when visited
                    subdirs.append(path)
                elif self._is_image(path) and entry.is_file():
                    if entry.is_symlink():  # else it lies in the checked folder
                        self._checked(path)
                    found.append(path)
                else:
                    self.ignored["unsupported_type"] += 1
            stack.extend(reversed(subdirs))
        return sorted(found)

    # --- access -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    def _position(self, index: int) -> int:
        n = len(self.files)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for an image folder of {n} images.")
        return i

    def read(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3) RGB of image ``index`` (resized/cropped when a size is set)."""
        path = self.files[self._position(index)]
        image = read_image(self._checked(path), display=os.fspath(path), exif_transpose=True)
        if self.image_size is not None:
            image = resize_crop(image, self.image_size)
        return image

    def __getitem__(self, index: int) -> Sample:
        i = self._position(index)
        return Sample(image=self.read(i), pixel={}, scalar={}, target=self.targets[i], index=i)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def validate(self, *, on_error: str = "raise", progress: bool = True) -> dict[str, Any]:
        """Decode every image and return a summary (see :func:`format_summary` in
        :mod:`cnnvis_jax.data.broden`).

        Args:
          on_error: ``"raise"`` stops at the first unreadable image; ``"skip"``
            records it, counts it and goes on.
          progress: show a progress bar (tqdm).

        Returns:
          dict with ``kind`` ("folder"), ``root``, ``images``, ``size``,
          ``classes`` {class: images}, ``ignored`` (see the class doc),
          ``skipped`` and ``errors`` (the first 100 messages).
        """
        if on_error not in ("raise", "skip"):
            raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
        from tqdm.auto import tqdm

        errors: list[str] = []
        skipped = 0
        for i in tqdm(range(len(self)), desc="checking images", unit="img", disable=not progress):
            try:
                read_image(self._checked(self.files[i]), display=os.fspath(self.files[i]))
            except DataError as e:
                if on_error == "raise":
                    raise
                skipped += 1
                if len(errors) < 100:
                    errors.append(str(e))
        classes = {name: self.targets.count(k) for k, name in enumerate(self.class_names)}
        return {
            "kind": "folder",
            "root": os.fspath(self.root),
            "images": len(self),
            "size": self.image_size,
            "classes": classes,
            "ignored": dict(self.ignored),
            "skipped": skipped,
            "errors": errors,
        }
