"""Argument helpers shared by every command (``--model``, ``--dataset``, counts)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from cnnvis_jax.errors import InputError


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="'default' (the trained ConceptNet, trained on first use) or a zoo name "
        "(see `cnnvis models`)",
    )
    p.add_argument("--weights", help="weights file (.safetensors, .npz, or .pth with torch)")


def add_dataset_arg(p: argparse.ArgumentParser, default: str = "concepts") -> None:
    p.add_argument(
        "--dataset",
        default=default,
        help="concepts | broden:DIR | folder:DIR | tfds:DIR | skimage (default: %(default)s)",
    )


def given_or_default(name: str, value: int | None, default: int) -> int:
    """``value`` of option ``--name`` when given (it must be >= 1: 0 is not "the
    default"), else ``default``."""
    if value is None:
        return default
    if value < 1:
        raise InputError(f"--{name} must be at least 1, got {value}; omit it for {default}.")
    return value


def class_index(model, text: str) -> int:
    """A class of ``model`` given on the command line by name or index.

    Raises:
      InputError: a model without classes, an unknown name (with the closest names),
        an index out of range.
    """
    names = model.class_names
    if names is None:
        model.check_class(0)  # raises: no classifier
    if text in names:
        return names.index(text)
    try:
        index = int(text)
    except ValueError:
        from cnnvis_jax.errors import did_you_mean

        raise InputError(f"unknown class {text!r}; " + did_you_mean(text, list(names))) from None
    model.check_class(index)
    return index


def load_model_arg(args):
    from cnnvis_jax.models import load

    return load(args.model, weights=args.weights)


def writable_folder(path: str, what: str) -> Path:
    """``path`` as a folder that exists and can be written, checked before any work.

    Raises:
      InputError: an empty path, a path naming a file, or a folder that cannot be
        created or written (read-only, no permission, full disk); the message names
        ``what`` (the option or variable) and the fix.
    """
    if not path or not str(path).strip():
        raise InputError(f"{what} must name a folder, got an empty string.")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {os.fspath(folder)!r} is a file; give a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise InputError(
            f"cannot write into {what} {os.fspath(folder)!r} ({e.strerror or e}); choose a "
            "writable folder."
        ) from None
    return folder


def check_outputs(args) -> None:
    """The output folder (``--out``) and, unless the command sets ``needs_cache=False``,
    the cache (``$CNNVIS_CACHE``: trained defaults, converted weights, compiled
    programs) are writable."""
    from cnnvis_jax.default import cache_dir

    if getattr(args, "out", None) is not None:
        existed = os.path.isdir(args.out)
        folder = writable_folder(args.out, "--out")
        lock_folder(folder)
        if not existed:
            _CREATED.append(folder)
    if getattr(args, "needs_cache", True):
        writable_folder(os.fspath(cache_dir()), "the cache ($CNNVIS_CACHE)")


def same_run(path: Path, run: dict, *, overwrite: bool) -> bool:
    """Whether ``path`` (a folder's ``run.json``) records ``run``: True when it does,
    False when there is none (or ``overwrite``); a different run is refused.

    Raises:
      InputError: the folder holds a run with other arguments (naming them), unless
        ``overwrite``.
    """
    import json

    if overwrite or not path.exists():
        return False
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    if old == run:
        return True
    if not isinstance(old, dict):
        raise InputError(f"{path} is unreadable; delete it, or add --overwrite.")
    changed = sorted(k for k in set(old) | set(run) if old.get(k) != run.get(k))
    shown = "; ".join(f"{k}: {old.get(k)!r} then, {run.get(k)!r} now" for k in changed)
    raise InputError(
        f"{path.parent} holds a run with other arguments ({shown}); choose another --out, "
        "rerun with the same arguments to resume, or add --overwrite."
    )


def start_run(out: Path, run: dict, *, overwrite: bool, done: tuple[str, ...],
              checkpoint: Path) -> bool:  # fmt: skip
    """Begin a resumable command writing into ``out``: True when ``out`` already holds
    the finished files ``done`` of this very run (the caller reuses them and stops);
    otherwise record ``run`` in ``out/run.json`` (a run with other arguments is
    refused, see :func:`same_run`) and, with ``overwrite``, drop the ``checkpoint``
    (file or folder) of the run it replaces.
    """
    import shutil

    from cnnvis_jax.report.files import write_json

    same = same_run(out / "run.json", run, overwrite=overwrite)
    if same and all((out / name).exists() for name in done):
        print(f"{out}: already computed with these arguments; reusing {out / done[0]}")
        return True
    if overwrite:
        if checkpoint.is_dir():
            shutil.rmtree(checkpoint, ignore_errors=True)
        else:
            checkpoint.unlink(missing_ok=True)
    write_json(out / "run.json", run)  # what the folder holds (or is computing)
    return False


_LOCKS: list = []  # open lock files, held until the command ends
_CREATED: list[Path] = []  # output folders this command created


def lock_folder(folder: Path) -> None:
    """Hold ``folder/.cnnvis.lock`` until :func:`release_locks`, so that two commands
    never write into one folder at once (the lock goes with the process, even when it
    is killed).

    Raises:
      InputError: another running command holds the folder.
    """
    import fcntl

    f = open(folder / ".cnnvis.lock", "a+")  # noqa: SIM115 (held open on purpose)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise InputError(
            f"another cnnvis command ({holder}) is writing into {os.fspath(folder)!r}; wait "
            "for it to finish or choose another --out."
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    _LOCKS.append(f)


def release_locks(*, failed: bool = False) -> None:
    """Release the folders locked by :func:`lock_folder`; after a command that failed,
    remove the output folders it created and left empty (no litter from a typo)."""
    while _LOCKS:
        f = _LOCKS.pop()
        f.close()
    while _CREATED:
        folder = _CREATED.pop()
        if failed and [p.name for p in folder.iterdir()] == [".cnnvis.lock"]:
            (folder / ".cnnvis.lock").unlink()
            folder.rmdir()
