"""Streaming feature extraction: every requested layer from one forward per batch.

Batches have a fixed shape (the last one is padded and masked), so the forward is
compiled once. Images travel to the device as uint8 and are converted, resized to
the model's input size when the source differs, and normalized inside ``jit``.
Loading the next batch overlaps with computing the current one.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
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


def _positive_env(name: str) -> int | None:
    """The positive integer in ``$name``, None when unset; InputError otherwise."""
    import os

    value = os.environ.get(name)
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}.")
    return number


def decode_threads() -> int:
    """Threads that decode batches ahead of the device: ``$CNNVIS_DECODE_THREADS``, or
    the number of CPUs up to 4 (decoding releases the GIL; more threads than cores only
    take time from the forward on CPU)."""
    import os

    threads = _positive_env("CNNVIS_DECODE_THREADS")
    return threads if threads is not None else max(1, min(4, os.cpu_count() or 1))


def decode_processes() -> int:
    """Worker processes that decode batches instead of threads:
    ``$CNNVIS_DECODE_PROCESSES``, or 0 (threads). Each worker has its own interpreter,
    so the Python part of decoding (opening files, checking paths, assembling labels)
    runs on as many cores as there are workers instead of taking turns for the GIL; a
    worker costs an interpreter's start (about a second) and its memory. For sources
    that read files (Broden, image folders) on hosts with many cores."""
    return _positive_env("CNNVIS_DECODE_PROCESSES") or 0


_installed: dict[str, Any] = {}


def _install(fn: Callable[[Any], Any]) -> None:
    """A decoding worker's start: keep ``fn``; leave Ctrl-C to the main process (it
    stops the pool) and keep JAX off any accelerator (the worker only decodes)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        jax.config.update("jax_platforms", "cpu")
    except Exception:  # a backend already started: it is not used here anyway
        pass
    _installed["fn"] = fn


def _call_installed(item: Any) -> Any:
    return _installed["fn"](item)


def _decoding_pool(fn: Callable[[Any], Any], threads: int, processes: int):
    """``(executor, submit)``: worker processes when asked for and ``fn`` can be sent to
    them (a closure cannot: it runs on threads), else threads."""
    if processes:
        import multiprocessing
        import pickle

        try:
            pickle.dumps(fn)
        except Exception:
            processes = 0
    if processes:
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_install, initargs=(fn,),
        )  # fmt: skip
        return pool, lambda item: pool.submit(_call_installed, item)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads)
    return pool, lambda item: pool.submit(fn, item)


def prefetched(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    threads: int | None = None,
    ahead: int | None = None,
    processes: int | None = None,
) -> Iterator[Any]:
    """Yield ``fn(item)`` for each item in order, computing the next ones on ``threads``
    worker threads (default :func:`decode_threads`) while the caller works: at most
    ``ahead`` results (default workers + 1) are computed or waiting at any time, so
    memory stays bounded; the order never depends on which worker finishes first.

    With ``processes`` (default :func:`decode_processes`; 0: threads) the items go to
    that many worker processes instead, ``fn`` sent to each once: it must be picklable
    (a module-level function or a ``functools.partial`` of one with picklable
    arguments; anything else runs on threads), and what it returns comes back pickled.
    """
    if not items:
        return
    threads = decode_threads() if threads is None else max(1, int(threads))
    processes = decode_processes() if processes is None else max(0, int(processes))
    pool, submit = _decoding_pool(fn, threads, processes)
    workers = processes or threads
    ahead = workers + 1 if ahead is None else max(1, int(ahead))
    with pool:
        pending: collections.deque = collections.deque()
        upcoming = iter(items)
        for item in itertools.islice(upcoming, ahead):
            pending.append(submit(item))
        try:
            while pending:
                current = pending.popleft().result()
                for item in itertools.islice(upcoming, 1):
                    pending.append(submit(item))
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

    prepare = functools.partial(_load_rows, source, order, size, rows)
    yield from prefetched(prepare, list(range(0, len(order), size)))


def _load_rows(source: Any, order: np.ndarray, size: int, rows: slice, start: int):
    """``(indices, valid, batch)`` of this process's rows of the batch at ``start``."""
    from cnnvis_jax import parallel

    chunk, valid = parallel.take_batch(order, start, size, rows)
    return chunk, valid, load_batch(source, chunk)


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
