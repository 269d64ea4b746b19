"""Streaming feature extraction: every requested layer from one forward per batch.

Batches have a fixed shape (the last one is padded and masked), so the forward is
compiled once. Images travel to the device as uint8 and are converted, resized to
the model's input size when the source differs, and normalized inside ``jit``.
Loading the next batch overlaps with computing the current one.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model
from cnnvis_jax.progress import progress_bar


def load_batch(source: Any, indices: np.ndarray) -> dict[str, np.ndarray]:
    """``{"image": uint8 (B, H, W, 3), "target": int32 (B,)}`` for ``indices``
    (plus whatever a vectorized ``source.batch(indices)`` returns)."""
    if hasattr(source, "batch"):
        return source.batch(np.asarray(indices))
    samples = [source[int(i)] for i in indices]
    images = [np.asarray(s["image"]) for s in samples]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise InputError(
            f"images of one batch differ in size {sorted(shapes)}; give the source a "
            "fixed size (e.g. FolderSource(size=...)) so batches can be stacked."
        )
    targets = np.asarray([s.get("target", -1) for s in samples], np.int32)
    return {"image": np.stack(images), "target": targets}


def decode_threads() -> int:
    """Threads that decode batches ahead of the device: ``$CNNVIS_DECODE_THREADS``, or
    the number of CPUs up to 4 (decoding releases the GIL; more threads than cores only
    take time from the forward on CPU)."""
    import os

    value = os.environ.get("CNNVIS_DECODE_THREADS")
    if value:
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise InputError(f"CNNVIS_DECODE_THREADS must be a positive integer, got {value!r}.")
        return threads
    return max(1, min(4, os.cpu_count() or 1))


def prefetched(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    threads: int | None = None,
    ahead: int | None = None,
) -> Iterator[Any]:
    """Yield ``fn(item)`` for each item in order, computing the next ones on ``threads``
    worker threads (default :func:`decode_threads`) while the caller works: at most
    ``ahead`` results (default ``threads + 1``) are computed or waiting at any time, so
    memory stays bounded; the order never depends on which thread finishes first."""
    if not items:
        return
    threads = decode_threads() if threads is None else max(1, int(threads))
    ahead = threads + 1 if ahead is None else max(1, int(ahead))
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        pending: collections.deque = collections.deque()
        upcoming = iter(items)
        for item in itertools.islice(upcoming, ahead):
            pending.append(pool.submit(fn, item))
        try:
            while pending:
                current = pending.popleft().result()
                for item in itertools.islice(upcoming, 1):
                    pending.append(pool.submit(fn, item))
                yield current
        finally:
            for future in pending:  # an early exit (error, Ctrl-C): drop what has not begun
                future.cancel()


def to_model_input(model: Model, images_uint8: jax.Array) -> jax.Array:
    """uint8 (B, H, W, 3) -> float32 [0, 1] at the model's input size (bilinear
    resize inside the traced function when the sizes differ)."""
    x = images_uint8.astype(jnp.float32) / 255.0
    h, w = model.input.size
    if x.shape[1:3] != (h, w):
        x = jax.image.resize(x, (x.shape[0], h, w, 3), method="bilinear", antialias=True)
    return x


def make_forward(
    model: Model,
    layers: Sequence[str],
    reduce: Callable[[str, jax.Array], jax.Array] | None = None,
) -> Callable:
    """A jitted ``forward(params, images_uint8) -> {layer: array}``.

    ``reduce(layer, activation)`` (optional) is applied on device before the
    result is returned, e.g. a spatial max, to keep transfers small.
    """
    layers = tuple(layers)

    @jax.jit
    def forward(params, images_uint8):
        out = model.apply(params, to_model_input(model, images_uint8), layers)
        if reduce is not None:
            out = {k: reduce(k, v) for k, v in out.items()}
        return out

    return forward


def _batches(source: Any, size: int, indices, rows: slice):
    if size < 1:
        raise InputError(f"batch_size must be >= 1, got {size}.")
    order = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64)
    if order.size == 0:
        raise InputError("no images to process: the source (or the index list) is empty.")

    from cnnvis_jax import parallel

    def prepare(start):
        chunk, valid = parallel.take_batch(order, start, size, rows)
        return chunk, valid, load_batch(source, chunk)

    yield from prefetched(prepare, list(range(0, len(order), size)))


def iterate_batches(
    source: Any,
    batch_size: int,
    indices: Sequence[int] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(indices, valid, batch)`` with a fixed batch shape.

    ``indices`` int64 (B,) (padding repeats the last index), ``valid`` bool (B,),
    ``batch`` as :func:`load_batch` (``batch["image"]`` uint8 (B, H, W, 3)). The
    next batches are loaded on worker threads while the caller works
    (:func:`prefetched`).
    """
    yield from _batches(source, batch_size, indices, slice(None))


def iterate_local_batches(
    source: Any,
    size: int,
    indices: Sequence[int] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """:func:`iterate_batches` over global batches of ``size`` (a multiple of the
    device count) split over the image mesh, yielding only this process's rows of each
    (:func:`cnnvis_jax.parallel.process_rows`): every row in one process; under
    ``jax.distributed`` a process decodes only its own images."""
    from cnnvis_jax import parallel

    yield from _batches(source, size, indices, parallel.process_rows(size))


def extract_features(
    model: Model,
    source: Any,
    layers: Sequence[str],
    *,
    batch_size: int = 64,
    indices: Sequence[int] | None = None,
    reduce: Callable[[str, jax.Array], jax.Array] | None = None,
    progress: bool = True,
    dtype: Any = np.float32,
) -> dict[str, np.ndarray]:
    """Activations of ``layers`` for every image of ``source`` (or ``indices``).

    Returns ``{layer: array (N, ...)}`` in the order of the images; with ``reduce``
    the per-layer reduced arrays. Memory grows with N: for whole data sets prefer
    a streaming consumer of :func:`iterate_batches` and :func:`make_forward`.
    """
    from cnnvis_jax import parallel

    layers = tuple(layers)
    for name in layers:
        model.resolve(name)
    forward = make_forward(model, layers, reduce)
    n = len(source) if indices is None else len(indices)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}.")
    if n == 0:
        raise InputError("no images to process: the source (or the index list) is empty.")
    size = parallel.devices_multiple(batch_size)
    mesh = parallel.image_mesh()
    replicated, split = parallel.shardings(mesh, None, PartitionSpec(parallel.AXIS))
    params = parallel.put(model.params, replicated)
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    with progress_bar(total=n, desc=f"features {','.join(layers)}", enabled=progress) as bar:
        for start, (_, _, batch) in zip(
            range(0, n, size), iterate_local_batches(source, size, indices)
        ):
            out = parallel.local_rows(
                forward(params, parallel.put_rows(batch["image"], split, size))
            )
            for name in layers:
                chunks[name].append(np.asarray(out[name], dtype))
            bar.update(min(size, n - start))
    return {name: parallel.gather_batches(np.concatenate(parts), n, size)
            for name, parts in chunks.items()}  # fmt: skip
