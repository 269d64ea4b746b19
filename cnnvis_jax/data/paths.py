"""Safe path handling for data sets read from disk.

Data sets name their files with paths relative to a folder (Broden's ``images/``,
an image folder's root). Such a path is accepted only if it stays inside that
folder:

* :func:`check_relative` rejects, by looking at the text alone, empty paths,
  absolute paths (``/x``, ``C:\\x``), backslash separators and ``..`` components.
  It never touches the file system, so a rejected path is never opened.
* :func:`resolve_inside` then resolves symbolic links and rejects a path whose
  real location is outside the folder's real location. Call it right before
  opening a file and open the path it returns.

Both raise :class:`~cnnvis_jax.errors.DataError` with a message that starts with
``where`` (for example ``"index.csv line 7, column 'object'"``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cnnvis_jax.errors import DataError

_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relative(rel: str, *, where: str, base: str = "the data set folder") -> str:
    """Return ``rel`` unchanged if it is a safe relative POSIX path, else raise
    :class:`DataError`.

    Args:
      rel: the path as written in the data set's files.
      where: context for the message (file, line, column).
      base: how to name the folder ``rel`` is relative to, in the message.
    """
    if not rel:
        raise DataError(f"{where}: empty file path; write a path relative to {base}.")
    if "\x00" in rel:
        raise DataError(f"{where}: file path {rel!r} contains a NUL character; fix the path.")
    if "\\" in rel:
        raise DataError(
            f"{where}: file path {rel!r} uses '\\' separators; write it relative to "
            f"{base} with '/' separators."
        )
    if rel.startswith("/") or _DRIVE.match(rel):
        raise DataError(
            f"{where}: absolute file path {rel!r} is not allowed (it could point "
            f"anywhere); write it relative to {base}."
        )
    if ".." in rel.split("/"):
        raise DataError(
            f"{where}: file path {rel!r} contains '..' and would leave {base}; "
            f"write it relative to {base} without '..'."
        )
    return rel


def is_within(path: str | os.PathLike, base: str | os.PathLike) -> bool:
    """Whether ``path`` equals ``base`` or lies below it (both taken literally;
    pass real paths to compare real locations)."""
    path, base = os.fspath(path), os.fspath(base)
    try:
        return os.path.commonpath([path, base]) == base
    except ValueError:  # different drives
        return False


def real_dir(path: str | os.PathLike) -> Path:
    """The real (symlink-free, absolute) location of a folder."""
    return Path(os.path.realpath(path))


def resolve_inside(
    base_real: Path, rel: str, *, where: str, base: str = "the data set folder"
) -> Path:
    """Real path of ``base_real / rel``, checked to stay inside ``base_real``.

    Args:
      base_real: the folder's real location (see :func:`real_dir`).
      rel: path relative to it, as written in the data set's files.
      where: context for the message.
      base: how to name the folder in the message.

    Returns:
      The resolved path (symbolic links followed). It may not exist; opening it
      reports that.

    Raises:
      DataError: the text is not a safe relative path, or a symbolic link on the
        way leads outside ``base_real``. Nothing is opened in either case.
    """
    check_relative(rel, where=where, base=base)
    real = Path(os.path.realpath(base_real.joinpath(*rel.split("/"))))
    if not is_within(real, base_real):
        raise _escape_error(rel, real, where=where, base=base)
    return real


def _escape_error(rel: str, real: str | os.PathLike, *, where: str, base: str) -> DataError:
    return DataError(
        f"{where}: file path {rel!r} is a symbolic link (or goes through one) "
        f"that resolves to {os.fspath(real)!r}, outside {base}; copy the file into "
        f"{base} or remove the link."
    )


class Resolver:
    """:func:`resolve_inside` for many files of one folder, faster.

    The real location of each sub-folder is computed once and cached; each file
    then costs one ``lstat`` (plus a full resolution when it is itself a link).
    Thread-safe (the cache holds idempotent entries).

    Args:
      base_real: the folder's real location (see :func:`real_dir`).
      base: how to name the folder in messages.
    """

    def __init__(self, base_real: Path, base: str = "the data set folder"):
        self.base_real = Path(base_real)
        self.base = base
        self._dirs: dict[str, str] = {"": os.fspath(self.base_real)}

    def __call__(self, rel: str, *, where: str) -> Path:
        """Real path of ``rel`` inside the folder; see :func:`resolve_inside`."""
        check_relative(rel, where=where, base=self.base)
        parent, _, name = rel.rpartition("/")
        real_parent = self._dirs.get(parent)
        if real_parent is None:
            real_parent = os.path.realpath(self.base_real.joinpath(*parent.split("/")))
            self._dirs[parent] = real_parent
        if not is_within(real_parent, self.base_real):
            raise _escape_error(rel, real_parent, where=where, base=self.base)
        candidate = os.path.normpath(os.path.join(real_parent, name))
        real = os.path.realpath(candidate) if os.path.islink(candidate) else candidate
        if not is_within(real, self.base_real):
            raise _escape_error(rel, real, where=where, base=self.base)
        return Path(real)
