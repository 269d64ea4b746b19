"""Spatial activation vectors of a layer, sampled over a data set by streaming.

The first ``images`` images of a source give ``images * H * W`` candidate positions
of an ``H x W`` layer (fully connected layers count as ``1 x 1``). ``points`` of them
are drawn without replacement by a seeded generator *before* any forward pass
(:func:`sample_positions`), so the sample depends only on the seed and the counts,
never on batching. The images then stream through one jitted forward in batches of
a fixed shape (the last one padded), and only the drawn positions are kept: memory is
``points x C`` whatever the number of images.

Each kept vector carries where it came from (image index, position) and the concept
label of that position (:func:`cnnvis_jax.atlas.labels.block_majority` of the
image's ``category`` mask); sources without concept masks (image folders) give
label 0 everywhere.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from jax.sharding import PartitionSpec

from cnnvis_jax import parallel
from cnnvis_jax.atlas.labels import block_majority
from cnnvis_jax.errors import InputError
from cnnvis_jax.features import iterate_batches, make_forward
from cnnvis_jax.model import LayerInfo, Model
from cnnvis_jax.progress import progress_bar

__all__ = [
    "Samples",
    "collect",
    "grid_of",
    "pixel_category",
    "planned_points",
    "sample_positions",
]


class Samples(NamedTuple):
    """Activation vectors of one layer at sampled positions (numpy arrays).

    Attributes:
      vectors: float32 (P, C), the activation vector at each sampled position.
      image_index: int64 (P,), the source index of its image.
      position: int32 (P, 2), ``(row, col)`` in the layer's grid (``(0, 0)`` for a
        fully connected layer).
      label: int32 (P,), the concept label number of the position (0 = none or no
        masks).
      layer: canonical layer name.
      grid: (H, W), the layer's spatial size (``(1, 1)`` when fully connected).
    """

    vectors: np.ndarray
    image_index: np.ndarray
    position: np.ndarray
    label: np.ndarray
    layer: str
    grid: tuple[int, int]

    def take(self, keep: np.ndarray) -> Samples:
        """The samples selected by ``keep`` (a boolean mask or indices over P)."""
        return self._replace(
            vectors=self.vectors[keep],
            image_index=self.image_index[keep],
            position=self.position[keep],
            label=self.label[keep],
        )


def grid_of(info: LayerInfo) -> tuple[int, int]:
    """(H, W) of a spatial layer, ``(1, 1)`` for a fully connected one."""
    return (int(info.shape[0]), int(info.shape[1])) if info.spatial else (1, 1)


def planned_points(model: Model, layer: str, images: int, points: int) -> int:
    """How many positions :func:`collect` keeps: ``min(points, images * H * W)``.

    Raises:
      InputError: unknown layer (the message lists the valid names); ``images`` or
        ``points`` below 1.
    """
    for name, value in (("images", images), ("points", points)):
        if int(value) < 1:
            raise InputError(f"{name} must be at least 1, got {value}.")
    rows, cols = grid_of(model.layer(layer))
    return min(int(points), int(images) * rows * cols)


def sample_positions(n_images: int, grid: tuple[int, int], points: int,
                     seed: int) -> np.ndarray:  # fmt: skip
    """Sorted flat indices ``image * H * W + row * W + col`` of ``min(points, n_images
    * H * W)`` distinct positions drawn uniformly by ``numpy.random.default_rng(seed)``
    (all positions, in order, when ``points`` covers them)."""
    total = int(n_images) * int(grid[0]) * int(grid[1])
    if points >= total:
        return np.arange(total, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=int(points), replace=False)).astype(np.int64)


def pixel_category(source: Any, category: str) -> str | None:
    """``category`` when ``source`` has pixel masks of it, None when the source has no
    concept labels at all (an image folder).

    Raises:
      InputError: a labelled source without pixel masks of ``category`` (the message
        lists those it has).
    """
    if getattr(source, "vocabulary", None) is None or len(source) == 0:
        return None
    available = sorted(source[0].get("pixel", {}))
    if category not in available:
        raise InputError(
            f"the data set has no pixel masks of category {category!r}; choose one of "
            f"{', '.join(available) or '(none)'} (--category)."
        )
    return category


def _masks(source: Any, batch: dict, indices: np.ndarray, category: str) -> np.ndarray:
    """int (B, L, h, w) masks of ``category`` for the images at ``indices``: from the
    batch when the source generated them vectorized, else image by image (an image
    without that mask is all 0)."""
    pixel = batch.get("pixel")
    if pixel is not None and category in pixel:
        return np.asarray(pixel[category])[: len(indices)]
    masks = []
    for index in indices:
        sample = source[int(index)]
        mask = sample.get("pixel", {}).get(category)
        if mask is None:
            h, w = np.asarray(sample["image"]).shape[:2]
            mask = np.zeros((1, h, w), np.int32)
        masks.append(np.asarray(mask))
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise InputError(
            f"the {category} masks of one batch differ in shape {sorted(shapes)}; use a source "
            "whose masks share one size."
        )
    return np.stack(masks)


def collect(
    model: Model,
    source: Any,
    layer: str,
    *,
    images: int,
    points: int,
    seed: int = 0,
    category: str = "object",
    batch_size: int = 64,
    progress: bool = False,
) -> Samples:
    """Activation vectors of ``layer`` at ``points`` positions sampled over the first
    ``images`` images of ``source`` (see the module docstring).

    Args:
      model: the network.
      source: random-access data source (uint8 images, resized to the model's input
        on device); with a vocabulary, its ``category`` masks label the positions.
      layer: layer name or alias.
      images: how many images (the first ones of the source; at most its length).
      points: how many positions to keep (all of them when there are fewer).
      seed: seed of the position sample.
      category: pixel-level concept category that labels positions (``object``,
        ``part``, ``texture``, ``color`` in the concept set).
      batch_size: images per forward pass.
      progress: show a progress bar.

    Returns:
      :class:`Samples` ordered by image, then row-major position.

    Raises:
      InputError: unknown layer; counts below 1; more images than the source holds; a
        category the source has no masks of.
    """
    info = model.layer(layer)
    planned = planned_points(model, info.name, images, points)
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    if images > len(source):
        raise InputError(
            f"the data set has {len(source)} images, fewer than the {images} asked; lower "
            f"--images to at most {len(source)}."
        )
    labelled = pixel_category(source, category)
    num_labels = source.vocabulary.num_labels if labelled else 1
    grid = grid_of(info)
    per_image = grid[0] * grid[1]
    chosen = sample_positions(images, grid, planned, seed)
    size = parallel.devices_multiple(min(int(batch_size), int(images)))
    mesh = parallel.image_mesh()
    replicated, split = parallel.shardings(mesh, None, PartitionSpec(parallel.AXIS))
    params = parallel.put(model.params, replicated)
    forward = make_forward(model, (info.name,))
    vectors = np.empty((len(chosen), info.channels), np.float32)
    labels = np.zeros(len(chosen), np.int32)
    done = 0  # sampled positions filled so far (they are sorted by image)
    with progress_bar(images, f"activations {info.name}", enabled=progress) as bar:
        for start, (indices, _, batch) in zip(
            range(0, images, size), iterate_batches(source, size, np.arange(images))
        ):
            count = min(size, images - start)
            stop = np.searchsorted(chosen, (start + count) * per_image)
            if stop > done:
                acts = forward(params, parallel.put(batch["image"], split))[info.name]
                acts = np.asarray(parallel.to_host(acts), np.float32)
                acts = acts.reshape(len(indices), per_image, info.channels)
                local = chosen[done:stop] - start * per_image
                image, cell = local // per_image, local % per_image
                vectors[done:stop] = acts[image, cell]
                if labelled:
                    masks = _masks(source, batch, indices[:count], labelled)
                    cells = block_majority(masks, grid, num_labels).reshape(count, per_image)
                    labels[done:stop] = cells[image, cell]
                done = int(stop)
            bar.update(count)
    cell = chosen % per_image
    position = np.stack([cell // grid[1], cell % grid[1]], axis=-1).astype(np.int32)
    return Samples(vectors, chosen // per_image, position, labels, info.name, grid)
