"""Resumable state as ``.npz`` files: written atomically, read without pickle.

A checkpoint holds named arrays plus a ``fingerprint`` string saying what produced
it (settings, weights, data). :func:`load_arrays` returns None when there is no
checkpoint or it belongs to other settings (the work starts from the beginning), and
refuses a file that cannot be read (corrupt, or written by another version) with a
message saying how to start fresh. :func:`save_tree` / :func:`load_tree` do the same
for a pytree of arrays whose structure the caller knows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cnnvis_jax.errors import InputError
from cnnvis_jax.report.files import naming

VERSION = "1"
"""Layout version of the files; part of every fingerprint check."""


def save_arrays(path: str | os.PathLike, arrays: dict[str, Any], fingerprint: str) -> Path:
    """Write ``arrays`` and ``fingerprint`` to ``path`` (``.npz``) atomically (process 0
    alone in a run of several processes: the others hold the same state)."""
    from cnnvis_jax.report.files import writes_here

    path = Path(path)
    if not writes_here():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with naming(path), open(tmp, "wb") as f:
        np.savez(f, fingerprint=np.asarray(fingerprint), version=np.asarray(VERSION),
                 **{k: np.asarray(v) for k, v in arrays.items()})  # fmt: skip
    os.replace(tmp, path)
    return path


def load_arrays(path: str | os.PathLike, fingerprint: str) -> dict[str, np.ndarray] | None:
    """The arrays saved at ``path`` for ``fingerprint``; None when absent or made for
    other settings.

    Raises:
      InputError: the file is not a readable checkpoint of this version.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        version = str(data.pop("version"))
        saved = str(data.pop("fingerprint"))
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise InputError(
            f"checkpoint {os.fspath(path)} is corrupt or not a checkpoint ({e}); delete it "
            "to start this work from the beginning."
        ) from None
    if version != VERSION:
        raise InputError(
            f"checkpoint {os.fspath(path)} was written by another version of cnnvis_jax "
            f"(layout {version}, this one reads {VERSION}); delete it to start fresh."
        )
    return data if saved == fingerprint else None


def tree_arrays(tree: Any, prefix: str = "leaf") -> dict[str, np.ndarray]:
    """The leaves of ``tree`` as named host arrays (``{prefix}_0000``, ...)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return {f"{prefix}_{i:04d}": np.asarray(jax.device_get(v)) for i, v in enumerate(leaves)}


def tree_from(data: dict, like: Any, path: str | os.PathLike, prefix: str = "leaf"):
    """Pop the leaves :func:`tree_arrays` named from ``data`` into a tree shaped like
    ``like``.

    Raises:
      InputError: leaves missing, extra, or of another shape or dtype than ``like``'s.
    """
    leaves, treedef = jax.tree_util.tree_flatten(like)
    restored = []
    for i, ref in enumerate(leaves):
        value = data.pop(f"{prefix}_{i:04d}", None)
        if value is None or value.shape != np.shape(ref) or value.dtype != np.asarray(ref).dtype:
            raise InputError(
                f"checkpoint {os.fspath(path)} does not match this work (leaf {i}); delete it "
                "to start fresh."
            )
        restored.append(value)
    if any(k.startswith(f"{prefix}_") and k[len(prefix) + 1 :].isdigit() for k in data):
        raise InputError(
            f"checkpoint {os.fspath(path)} does not match this work (extra leaves); delete it "
            "to start fresh."
        )
    return jax.tree_util.tree_unflatten(treedef, restored)


def save_tree(path: str | os.PathLike, tree: Any, fingerprint: str, **extra) -> Path:
    """Save the leaves of ``tree`` (and ``extra`` arrays) as a checkpoint."""
    return save_arrays(path, {**tree_arrays(tree), **extra}, fingerprint)


def load_tree(path: str | os.PathLike, like: Any, fingerprint: str):
    """(tree shaped like ``like``, the extra arrays) from :func:`save_tree`, or None.

    Raises:
      InputError: an unreadable file, or leaves that do not match ``like``'s.
    """
    data = load_arrays(path, fingerprint)
    if data is None:
        return None
    return tree_from(data, like, path), data


def digest(*trees: Any) -> str:
    """16 hex digits identifying the values of ``trees`` (shapes, dtypes, bytes)."""
    import hashlib

    from cnnvis_jax import parallel

    h = hashlib.sha256()
    for tree in trees:
        for leaf in jax.tree_util.tree_leaves(tree):
            if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)  # typed PRNG keys hash as their data
            a = np.ascontiguousarray(parallel.to_host(leaf))  # split over processes: gathered
            h.update(str((a.dtype, a.shape)).encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def even_chunk(lengths: Sequence[int], parts: int = 20) -> int:
    """Steps per chunk when work of consecutive segments of ``lengths`` steps runs in
    about ``parts`` chunks: the largest divisor of every length not above
    ``ceil(total / parts)``, so that every chunk has one length and lies inside one
    segment (one compiled program instead of one per distinct chunk); the plain
    ``ceil(total / parts)`` when that divisor would make more than ``5 * parts`` chunks.
    """
    lengths = [int(n) for n in lengths if int(n) > 0]
    total = sum(lengths)
    if total == 0:
        return 1
    want = max(1, -(-total // parts))
    g = math.gcd(*lengths)
    best = max(d for d in range(1, min(g, want) + 1) if g % d == 0)
    return best if total // best <= 5 * parts else want


INTERVAL_S = 10.0
"""Seconds between the saves of a :class:`Periodic` checkpoint (0: after every step)."""


class Periodic:
    """Saves a loop's state every :data:`INTERVAL_S` seconds, and at once when an
    interrupt is pending, then lets the interrupt stop the loop
    (:func:`cnnvis_jax.interrupt.check`). With ``path`` None it does nothing.

    Use inside :func:`cnnvis_jax.interrupt.graceful`::

        saver = Periodic(path, fingerprint)
        state = saver.load()             # dict of arrays, or None: start afresh
        for step in ...:
            ...
            saver.step({"done": step + 1, ...}, "what")
    """

    def __init__(self, path: str | os.PathLike | None, fingerprint: str):
        self.path = None if path is None else Path(path)
        self.fingerprint = fingerprint
        self._last = None

    def load(self) -> dict[str, np.ndarray] | None:
        """The saved arrays for this fingerprint, or None."""
        return None if self.path is None else load_arrays(self.path, self.fingerprint)

    def step(self, arrays, what: str = "work", *, force: bool = False) -> None:
        """After a step: save ``arrays`` (a dict of arrays, or a callable returning
        one, called only when saving) when due, forced or interrupted; then raise
        :class:`~cnnvis_jax.interrupt.Interrupted` if an interrupt is pending."""
        import time

        from cnnvis_jax import interrupt

        if self.path is None:
            return
        now = time.monotonic()
        if self._last is None:
            self._last = now
        if force or interrupt.requested() or now - self._last >= INTERVAL_S:
            save_arrays(self.path, arrays() if callable(arrays) else arrays, self.fingerprint)
            self._last = now
        interrupt.check(what)
