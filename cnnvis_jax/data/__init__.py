"""Data sources: the embedded concept set, Broden directories, image folders,
scikit-image's bundled natural images.

Every source is random access (``len``, ``source[i]``) and returns the in-memory
form documented in :mod:`cnnvis_jax.data.types`. ``open_dataset`` parses the CLI's
``--dataset`` values (``concepts``, ``broden:DIR``, ``folder:DIR``, ``skimage``,
``skimage:NAME,NAME``).

TensorFlow Datasets support (:func:`build_tfds`, :func:`tfds_source`) is imported
on first use only.
"""

from __future__ import annotations

from cnnvis_jax._lazy import lazy_getattr
from cnnvis_jax.data.types import (
    CATEGORIES,
    IMAGE_LEVEL,
    PIXEL_LEVEL,
    Label,
    Sample,
    Source,
    Vocabulary,
)
from cnnvis_jax.errors import DataError, InputError

_LAZY = {
    "ConceptSet": "cnnvis_jax.data.concepts",
    "concept_vocabulary": "cnnvis_jax.data.concepts",
    "CLASS_NAMES": "cnnvis_jax.data.concepts",
    "generate_batch": "cnnvis_jax.data.concepts",
    "BrodenSource": "cnnvis_jax.data.broden",
    "FolderSource": "cnnvis_jax.data.folder",
    "SkimageSource": "cnnvis_jax.data.skimage_source",
    "SKIMAGE_NAMES": "cnnvis_jax.data.skimage_source",
    "skimage_image": "cnnvis_jax.data.skimage_source",
    "load_images": "cnnvis_jax.data.imageio",
    "resize_to_contract": "cnnvis_jax.data.imageio",
    "export_broden": "cnnvis_jax.data.broden_export",
    "build_tfds": "cnnvis_jax.data.tfds_concepts",
    "tfds_source": "cnnvis_jax.data.tfds_concepts",
}

DEFAULT_CONCEPT_COUNT = {"train": 10_000, "val": 2_000, "test": 2_000}


__getattr__ = lazy_getattr(__name__, _LAZY)


def parse_dataset(spec: str) -> tuple[str, str | None]:
    """Split ``concepts`` / ``broden:DIR`` / ``folder:DIR`` / ``tfds:DIR`` /
    ``skimage[:NAMES]`` into (kind, path); for ``skimage`` the "path" is the
    comma-separated image names or None."""
    kind, _, path = spec.partition(":")
    if kind == "concepts" and not path:
        return kind, None
    if kind in ("broden", "folder", "tfds") and path:
        return kind, path
    if kind == "skimage":
        return kind, path or None
    raise InputError(
        f"unknown dataset {spec!r}; use 'concepts', 'broden:DIR', 'folder:DIR', 'tfds:DIR' "
        "(the concept set as written by `cnnvis data generate --format tfds`) or 'skimage' "
        "(scikit-image's bundled images; 'skimage:astronaut,coffee' for some of them)."
    )


def open_dataset(
    spec: str,
    *,
    split: str | None = None,
    size: tuple[int, int] | None = None,
    count: int | None = None,
    seed: int = 0,
    image_size: int = 64,
):
    """The source named by a ``--dataset`` value.

    Args:
      spec: ``concepts``, ``broden:DIR``, ``folder:DIR``, ``tfds:DIR`` (the concept
        set prepared by :func:`build_tfds`), ``skimage`` or ``skimage:NAME,NAME`` (see
        :mod:`cnnvis_jax.data.skimage_source`).
      split: concept set split (default ``val``; for ``tfds:DIR`` ``val`` when it was
        prepared, else ``train``) or Broden split (default all).
      size: (H, W) images of an image folder or of scikit-image are resized/cropped
        to (default: each keeps its own size).
      count: number of concept images (default per split, see
        ``DEFAULT_CONCEPT_COUNT``).
      seed, image_size: the concept set's seed and image size.
    """
    kind, path = parse_dataset(spec)
    if kind == "concepts":
        from cnnvis_jax.data.concepts import ConceptSet

        split = split or "val"
        if split not in DEFAULT_CONCEPT_COUNT:
            raise InputError(
                f"the concept set has splits {sorted(DEFAULT_CONCEPT_COUNT)}, not {split!r}."
            )
        return ConceptSet(
            count or DEFAULT_CONCEPT_COUNT[split], split=split, seed=seed, image_size=image_size
        )
    if kind == "broden":
        from cnnvis_jax.data.broden import BrodenSource

        return BrodenSource(path, split=split)
    if kind == "tfds":
        return _tfds_split(path, split)
    if kind == "skimage":
        from cnnvis_jax.data.skimage_source import SKIMAGE_NAMES, SkimageSource

        names = [n.strip() for n in path.split(",") if n.strip()] if path else SKIMAGE_NAMES
        return SkimageSource(names, size=size)
    from cnnvis_jax.data.folder import FolderSource

    return FolderSource(path, size=size)


def _tfds_split(path: str, split: str | None):
    """The prepared TFDS concept set in ``path``: ``split``, else val (or train)."""
    from cnnvis_jax.data.tfds_concepts import tfds_source

    if split is not None:
        return tfds_source(path, split)
    try:
        return tfds_source(path, "val")
    except DataError:
        raise
    except InputError:  # no val split prepared
        return tfds_source(path, "train")


def inspect_dataset(spec: str, *, progress: bool = True) -> str:
    """Validate a data set fully (every row, every file) and return its summary."""
    kind, path = parse_dataset(spec)
    if kind == "tfds":
        source = _tfds_split(path, None)
        return (
            f"TFDS concept set {source.directory}: split {source.split!r}, {len(source)} "
            f"images {source.image_size}x{source.image_size}, target {source.target!r}, "
            f"classes ({len(source.class_names)}): {', '.join(source.class_names)}"
        )
    if kind == "broden":
        from cnnvis_jax.data.broden import format_summary, validate

        return format_summary(validate(path, progress=progress))
    if kind == "folder":
        from cnnvis_jax.data.broden import format_summary
        from cnnvis_jax.data.folder import FolderSource

        return format_summary(FolderSource(path).validate(progress=progress))
    if kind == "skimage":
        from cnnvis_jax.data.skimage_source import SKIMAGE_NAMES, SkimageSource

        names = [n.strip() for n in path.split(",") if n.strip()] if path else SKIMAGE_NAMES
        source = SkimageSource(names)
        sizes = [source.read(i).shape for i in range(len(source))]
        return "\n".join(
            [f"scikit-image bundled images ({len(source)}, no classes, no concept labels):"]
            + [f"  {n}: {h}x{w}" for n, (h, w, _) in zip(source.names, sizes)]
        )
    from cnnvis_jax.data.concepts import PIXEL_CATEGORIES, ConceptSet

    source = ConceptSet(DEFAULT_CONCEPT_COUNT["val"], split="val")
    vocab = source.vocabulary
    lines = [
        f"embedded concept set: images {source.image_size}x{source.image_size}, generated "
        f"on demand (default sizes {DEFAULT_CONCEPT_COUNT})",
        f"classes ({len(source.class_names)}): {', '.join(source.class_names)}",
    ]
    for category in vocab.categories:
        labels = vocab.in_category(category)
        level = "pixel-level" if category in PIXEL_CATEGORIES else "image-level"
        lines.append(
            f"{category} ({level}, {len(labels)} labels): " + ", ".join(lab.name for lab in labels)
        )
    return "\n".join(lines)


__all__ = [
    "CATEGORIES",
    "IMAGE_LEVEL",
    "PIXEL_LEVEL",
    "Label",
    "Sample",
    "Source",
    "Vocabulary",
    "inspect_dataset",
    "open_dataset",
    "parse_dataset",
    *sorted(_LAZY),
]
