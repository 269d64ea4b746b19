"""Network Dissection of several layers at once: pass 1 (thresholds), pass 2 (tally),
scoring, with checkpoints so an interrupted run resumes where it stopped.

Both passes stream the data set in a fixed batch shape (the last batch padded and
masked), share one forward per batch among all requested layers, and shard images
over the device mesh. With ``checkpoint=DIR`` the pass-1 state (each unit's top
values, merged over devices) and the partial tallies are written to ``DIR`` every
``checkpoint_every`` batches (atomically); a later call with the same arguments
continues from there, a call with different arguments starts over.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cnnvis_jax import distributed, parallel
from cnnvis_jax.checkpoint import load_arrays, save_arrays
from cnnvis_jax.dissection import _mesh, sparse_tally
from cnnvis_jax.dissection import thresholds as th
from cnnvis_jax.dissection.labels import LabelLayout, label_layout, load_labelled
from cnnvis_jax.dissection.scoring import MODES, Counts, Scores, score
from cnnvis_jax.dissection.sparse_thresholds import HostTopK
from cnnvis_jax.dissection.sparse_thresholds import compiled_step as sparse_step
from cnnvis_jax.dissection.tally import CONTRACTIONS, compiled_tally, resolve_contraction
from cnnvis_jax.dissection.upsample import layer_matrices
from cnnvis_jax.errors import InputError
from cnnvis_jax.features import load_batch, prefetched
from cnnvis_jax.model import Model
from cnnvis_jax.progress import progress_bar

COUNT_KEYS = ("both", "units", "units_cat_lite", "units_cat_original")
FEATURE_MEMORY = 1 << 30
"""Default host memory (bytes) for keeping pass-1 activations for pass 2 (1 GiB)."""
ENGINES = ("auto", "sparse", "dense")
PREPROCESS = ("model", "lite")
LITE_MEAN = (124.6901, 118.6897, 109.5388)
"""NetDissect-Lite's RGB mean on 0-255 values (it subtracts the BGR mean
[109.5388, 118.6897, 124.6901] in BGR order, then flips back to RGB)."""
LITE_STD = 255.0 * 0.224
"""NetDissect-Lite divides by 255 * 0.224 = 57.12 for every channel."""


def with_lite_preprocessing(model: Model) -> Model:
    """``model`` fed as NetDissect-Lite feeds its networks: ``(x - LITE_MEAN) / 57.12``
    on 0-255 RGB values (instead of the model's own normalization)."""
    contract = dataclasses.replace(
        model.input, mean=LITE_MEAN, std=(LITE_STD,) * 3, value_scale=255.0, channel_order="RGB"
    )
    return model.replace(input=contract)


@dataclasses.dataclass
class LayerResult:
    """One layer: its thresholds (pass 1), counts (pass 2) and scores."""

    layer: str
    thresholds: th.Thresholds
    counts: Counts
    scores: Scores
    pictures: tuple[bytes, ...] | None = dataclasses.field(default=None, repr=False)
    """Per unit, the JPEG of its top images with its mask (``dissect(...,
    pictures=True)``), or None (drawn when the result is saved)."""

    def summary(self, layout: LabelLayout) -> dict[str, Any]:
        s = self.scores
        per_cat = {
            c: int(np.sum(s.detector & (s.category == i))) for i, c in enumerate(layout.categories)
        }
        return {
            "units": int(len(s.score)),
            "detectors": int(s.detector.sum()),
            "unique": dict(s.unique),
            "concepts": int(sum(s.unique.values())),
            "detectors_per_category": per_cat,
            "constant_units": [int(u) for u in np.nonzero(self.thresholds.constant)[0]],
        }


@dataclasses.dataclass
class Dissection:
    """Result of :func:`dissect`: per-layer results plus the settings used."""

    layers: dict[str, LayerResult]
    layout: LabelLayout
    mode: str
    quantile: float
    iou_threshold: float
    images: int
    skipped: tuple[str, ...] = ()
    order: np.ndarray | None = dataclasses.field(default=None, repr=False)
    """int64 (N,) the source indices dissected, in order."""
    features: dict[str, np.ndarray] | None = dataclasses.field(default=None, repr=False)
    """{layer: float32 (N, h, w, U)} activations kept from pass 1 (rows in ``order``),
    or None when they were not kept (see ``feature_memory``)."""
    preprocess: str = "model"
    """The input normalization the model ran with (``dissect(..., preprocess=)``)."""

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{layer: {units, detectors, unique: {category: n}, ...}}``."""
        return {name: r.summary(self.layout) for name, r in self.layers.items()}

    def save(self, out_dir, *, model: Model | None = None, source: Any = None,
             extra: dict[str, Any] | None = None, compose: dict[str, Any] | None = None,
             ) -> Path:  # fmt: skip
        """Write the dissection's files into ``out_dir`` (tally.csv and report per
        layer, summary.json, run.json, detectors.csv; see
        :func:`~cnnvis_jax.dissection.outputs.write_outputs`); with ``model`` and
        ``source`` (or pictures drawn by ``dissect(..., pictures=True)``) the reports
        show each unit's top images; with ``compose`` ({layer: ComposeResult}) the
        layers' compositional explanations. Returns the folder."""
        from cnnvis_jax.dissection.outputs import write_outputs

        write_outputs(out_dir, self, model=model, source=source, extra=extra, compose=compose)
        return Path(out_dir)

    def rescore(self, mode: str | None = None, iou_threshold: float | None = None) -> Dissection:
        """The same counts scored with another mode or IoU threshold (thresholds are
        the pass-1 ones; the lite read-out differs from the exact one only there)."""
        mode = mode or self.mode
        t = self.iou_threshold if iou_threshold is None else iou_threshold
        layers = {
            n: dataclasses.replace(r, scores=score(r.counts, self.layout, mode, t))
            for n, r in self.layers.items()
        }
        return dataclasses.replace(self, layers=layers, mode=mode, iou_threshold=t)


class FeatureStore:
    """The dissected layers' activations for every image, kept on the host from pass 1
    so that pass 2 and the report need no second forward.

    ``acts[layer]`` is float32 (N, h, w, U) in the order the images are dissected;
    :attr:`complete` says whether pass 1 filled every row (a resumed pass 1 does not).
    """

    def __init__(self, model: Model, layers: Sequence[str], n: int):
        self.acts = {}
        for name in layers:
            h, w, u = model.layer(name).shape
            self.acts[name] = np.empty((n, h, w, u), np.float32)
        self.filled = 0
        self.n = n

    @staticmethod
    def size(model: Model, layers: Sequence[str], n: int) -> int:
        """Bytes the store needs for ``n`` images."""
        return n * sum(4 * int(np.prod(model.layer(name).shape)) for name in layers)

    def put(self, start: int, acts: dict[str, np.ndarray], count: int) -> None:
        """Rows ``start .. start + count - 1`` from a batch's activations (B, h, w, U)."""
        for name, a in acts.items():
            self.acts[name][start : start + count] = a[:count]
        self.filled += count

    @property
    def complete(self) -> bool:
        return self.filled == self.n

    def batch(self, start: int, size: int) -> dict[str, np.ndarray]:
        """Rows ``start ..`` as a fixed (size, h, w, U) batch (zero-padded at the end)."""
        out = {}
        for name, a in self.acts.items():
            part = a[start : start + size]
            if len(part) < size:
                part = np.concatenate([part, np.zeros((size - len(part),) + a.shape[1:], a.dtype)])
            out[name] = part
        return out


def at_image_size(model: Model, layers: Sequence[str], size: tuple[int, int] | int | None) -> Model:
    """``model`` fed images at ``size`` as they are (no resize), as NetDissect-Lite feeds
    Broden's 227 px images to AlexNet: the input size becomes ``size`` and the shapes of
    ``layers`` (all convolutional) are traced again. Unchanged when ``size`` is None or
    already the model's."""
    if isinstance(size, int):
        size = (size, size)
    if size is None or tuple(size) == tuple(model.input.size):
        return model
    contract = dataclasses.replace(model.input, size=tuple(int(v) for v in size))
    moved = model.replace(input=contract)
    x = jax.ShapeDtypeStruct((1, *contract.size, 3), np.float32)
    shapes = jax.eval_shape(lambda p, im: moved.apply(p, im, tuple(layers)), moved.params, x)
    canonical = {moved.resolve(n): n for n in layers}
    infos = tuple(
        dataclasses.replace(info, shape=tuple(shapes[canonical[info.name]].shape[1:]))
        if info.name in canonical
        else info
        for info in moved.layers
    )
    return moved.replace(layers=infos)


def dissection_model(model: Model, source: Any, layers: Sequence[str], preprocess: str) -> Model:
    """The model as :func:`dissect` runs it on ``source``: with ``preprocess``'s input
    normalization, fed the source's images at their own size (:func:`at_image_size`).
    The report's pictures must come from the same model."""
    if preprocess not in PREPROCESS:
        raise InputError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}.")
    rows = getattr(source, "rows", None)
    if rows and getattr(source, "image_size", None) is None:  # Broden rows of several sizes
        sizes = collections.Counter((r.ih, r.iw) for r in rows).most_common()
        shown = ", ".join(f"{h}x{w} ({n} images)" for (h, w), n in sizes[:4])
        raise InputError(
            f"the Broden images differ in size: {shown}{' ...' if len(sizes) > 4 else ''}. "
            "Dissection feeds each image at its own size, as NetDissect does, so it needs "
            "one size: select a split with one size or resize the images (and ih, iw)."
        )
    if preprocess == "lite":
        model = with_lite_preprocessing(model)
    return at_image_size(model, layers, getattr(source, "image_size", None))


def default_batch_size(model: Model) -> int:
    """Images per step: on CPU about 32 images' worth of 224 x 224 pixels (large batches
    of large images run slower there), at least 8 and at most 128; 64 elsewhere."""
    if jax.default_backend() != "cpu":
        return 64
    h, w = model.input.size
    fit = 32 * 224 * 224 // max(h * w, 1)
    return int(min(128, max(8, 1 << max(fit, 1).bit_length() - 1)))


# --- checks ----------------------------------------------------------------------------


def spatial_layers(model: Model, layers: Sequence[str] | str) -> tuple[str, ...]:
    """Canonical names of ``layers``; each must have a spatial map."""
    if isinstance(layers, str):
        layers = [n.strip() for n in layers.split(",") if n.strip()]
    if not layers:
        raise InputError("no layers given; name at least one convolutional layer (e.g. conv5).")
    out = []
    for name in layers:
        info = model.layer(name)
        if not info.spatial:
            raise InputError(
                f"layer {info.name!r} has no spatial map (shape {info.shape}); pixel-level "
                "dissection needs a convolutional layer with an (H, W, C) output."
            )
        if info.name not in out:
            out.append(info.name)
    return tuple(out)


def _order(source: Any, indices: Sequence[int] | None) -> np.ndarray:
    order = (
        np.arange(len(source), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
    )
    if order.ndim != 1 or order.size == 0:
        raise InputError("no images to dissect: the data set (or the index list) is empty.")
    if order.min() < 0 or order.max() >= len(source):
        raise InputError(f"image indices must be in 0..{len(source) - 1}.")
    if order.max() >= th.NO_IMAGE:
        raise InputError(f"image indices must be below {th.NO_IMAGE}; split the data set.")
    return order


def _describe_source(source: Any) -> str:
    if type(source).__repr__ is not object.__repr__:
        return repr(source)
    root = getattr(source, "root", "")
    return f"{type(source).__name__}:{root}:{getattr(source, 'split', '')}:{len(source)}"


def resolve_engine(engine: str) -> str:
    """``auto`` -> ``sparse`` on CPU (the device computes, the host keeps the few
    values that matter), ``dense`` on accelerators (everything on device, counts
    summed over the mesh)."""
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}, got {engine!r}.")
    if engine == "auto":
        return "sparse" if jax.default_backend() == "cpu" else "dense"
    return engine


def _params_digest(model: Model) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(model.params):
        a = np.asarray(leaf)
        h.update(str((a.shape, a.dtype)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _given_thresholds(model: Model, layers, given) -> dict[str, np.ndarray]:
    """Checked float64 (U,) arrays of ``given`` ({layer: thresholds})."""
    out = {}
    for name, values in (given or {}).items():
        layer = model.layer(name).name
        if layer not in layers:
            raise InputError(
                f"thresholds were given for layer {name!r}, which is not dissected "
                f"({', '.join(layers)}); give them for a dissected layer."
            )
        v = np.asarray(values, np.float64).reshape(-1)
        units = model.layer(layer).channels
        if v.shape != (units,):
            raise InputError(
                f"{v.size} thresholds given for layer {layer!r}, which has {units} units; "
                "give one threshold per unit."
            )
        if np.isnan(v).any():
            raise InputError(f"the thresholds given for layer {layer!r} contain NaN.")
        out[layer] = v
    return out


# --- checkpoints -----------------------------------------------------------------------


def _resumed_at(saved: dict[str, np.ndarray] | None) -> int:
    """Images done by a checkpoint, as process 0 read it (every process resumes there)."""
    done = 0 if saved is None else int(saved["done"])
    return int(distributed.broadcast(np.asarray(done, np.int64)))


def merged_over_processes(
    states: dict[str, dict[str, np.ndarray]], specs: dict[str, th.PassOneSpec]
) -> dict[str, dict[str, np.ndarray]]:
    """Each process's merged pass-1 states (one device's worth per layer) merged
    exactly into one, the same on every process (the states themselves in one process)."""
    if distributed.process_count() == 1:
        return states
    out = {}
    for name, state in states.items():
        every = distributed.allgather(state)  # (processes, 1, ...) per key
        stacked = {k: v.reshape(-1, *v.shape[2:]) for k, v in every.items()}
        top = stacked["top"]
        stacked["buf"] = np.zeros((top.shape[0], top.shape[1], 0), top.dtype)
        out[name] = th.merge_devices(stacked, specs[name])
    return out


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    save_arrays(path, {k: v for k, v in arrays.items() if k != "fingerprint"},
                str(arrays["fingerprint"]))  # fmt: skip


def _load_npz(path: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
    data = load_arrays(path, fingerprint)
    return None if data is None else {**data, "fingerprint": np.asarray(fingerprint)}


# --- batches ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Batches:
    """Both passes' global batches of ``size`` images over ``n`` and this process's
    rows of each (all of them in one process; see :func:`cnnvis_jax.parallel.process_rows`).

    A process decodes, keeps and counts only its rows; the :class:`FeatureStore` holds
    them batch after batch (row :meth:`stored` of the store is the first local row of a
    batch).
    """

    n: int
    size: int
    rows: slice

    @staticmethod
    def of(n: int, batch_size: int) -> Batches:
        size = parallel.devices_multiple(batch_size)
        return Batches(int(n), size, parallel.process_rows(size))

    @property
    def local(self) -> int:
        return self.rows.stop - self.rows.start

    def starts(self, done: int) -> list[int]:
        return list(range(done, self.n, self.size))

    def take(self, order: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's ``(indices, valid)`` of the batch at ``start``
        (:func:`cnnvis_jax.parallel.take_batch`)."""
        return parallel.take_batch(order, start, self.size, self.rows)

    def stored(self, start: int) -> int:
        return (start // self.size) * self.local

    def stored_total(self) -> int:
        """This process's valid rows over all batches."""
        full, rest = divmod(self.n, self.size)
        last = min(max(rest - self.rows.start, 0), self.local)
        return full * self.local + last


def _threshold_rows(source: Any, batches: Batches, order: np.ndarray, start: int):
    """Pass 1's ``(start, indices, valid, images)`` of this process's rows of a batch."""
    chunk, valid = batches.take(order, start)
    return start, chunk, valid, load_batch(source, chunk)["image"]


def _tally_rows(source: Any, batches: Batches, order: np.ndarray, layout, images: bool,
                start: int):  # fmt: skip
    """Pass 2's ``(start, valid, labelled batch)`` of this process's rows of a batch."""
    chunk, valid = batches.take(order, start)
    return start, valid, load_labelled(source, chunk, layout, images=images)


# --- pass 1 ----------------------------------------------------------------------------


def compute_thresholds(
    model: Model,
    source: Any,
    layers: Sequence[str],
    *,
    quantile: float = 0.005,
    readout: str = "exact",
    batch_size: int = 64,
    indices: Sequence[int] | None = None,
    top_images: int = 8,
    engine: str = "auto",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 25,
    fingerprint: str = "",
    on_checkpoint: Callable[[str, int], None] | None = None,
    progress: bool = True,
    store: FeatureStore | None = None,
) -> dict[str, th.Thresholds]:
    """Pass 1 over ``source``: per-unit thresholds of every layer (see
    :mod:`~cnnvis_jax.dissection.thresholds`; ``engine="sparse"`` keeps the state on
    the host, :mod:`~cnnvis_jax.dissection.sparse_thresholds`; both are exact).

    With ``store`` (sparse engine), the activations of every batch are kept in it.

    Returns ``{layer: Thresholds}``.
    """
    layers = spatial_layers(model, layers)
    quantile = th.check_quantile(quantile)
    if readout not in th.READOUTS:
        raise InputError(f"readout must be one of {th.READOUTS}, got {readout!r}.")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}.")
    engine = resolve_engine(engine)
    order = _order(source, indices)
    n = len(order)
    devices = _mesh.devices()
    batches = Batches.of(n, batch_size)
    size = batches.size
    local = size // devices if engine == "dense" else batches.local
    specs = th.layer_specs(model, layers, n, quantile, local, top_images)
    path = Path(checkpoint) / "pass1.npz" if checkpoint is not None else None
    saved = _load_npz(path, fingerprint) if path is not None else None
    done = _resumed_at(saved)
    merged: dict[str, dict[str, np.ndarray]] | None = None
    if saved is not None and distributed.is_primary():  # the others start empty
        merged = {
            name: {k: saved[f"{name}/{k}"] for k in ("top", "lo", "hi", "img_v", "img_i")}
            for name in layers
        }
    mesh = _mesh.mesh()
    split = parallel.shardings(mesh, _mesh.SPLIT)[0]
    replicated = parallel.shardings(mesh, None)[0]
    placed = parallel.put(model, replicated)
    if engine == "dense":
        runner = _DenseThresholds(layers, specs, merged, devices, split, placed)
    else:
        runner = _SparseThresholds(layers, specs, merged, split, replicated, placed, store)

    def save(done_now: int) -> None:
        if path is None:
            return
        arrays = {"fingerprint": np.array(fingerprint), "done": np.array(done_now)}
        for name, state in merged_over_processes(runner.merged(), specs).items():
            for k in ("top", "lo", "hi", "img_v", "img_i"):
                arrays[f"{name}/{k}"] = state[k]
        _save_npz(path, arrays)  # process 0 writes
        if on_checkpoint is not None:
            on_checkpoint("thresholds", done_now)

    prepare = functools.partial(_threshold_rows, source, batches, order)

    with progress_bar(n, f"thresholds {','.join(layers)}", enabled=progress) as bar:
        bar.update(done)
        for k, (start, chunk, valid, images) in enumerate(
            prefetched(prepare, batches.starts(done))
        ):
            indices = np.where(valid, chunk, th.NO_IMAGE).astype(np.int32)
            runner.step(images, indices, valid, start, batches)
            bar.update(min(size, n - start))
            if (k + 1) % checkpoint_every == 0 and start + size < n:
                save(start + size)
    out = {}
    for name, state in merged_over_processes(runner.merged(), specs).items():
        h, w, _ = model.layer(name).shape
        out[name] = th.finish(name, state, n * h * w, quantile, readout)
    if path is not None:
        save(n)
    return out


class _DenseThresholds:
    """Pass-1 state on the device(s), updated by one jitted step per batch."""

    def __init__(self, layers, specs, merged, devices, split, placed):
        self.layers, self.specs, self.placed, self.split = layers, specs, placed, split
        if merged is not None:
            host = {name: th.spread(merged[name], specs[name], devices) for name in layers}
        else:
            host = {name: th.init_state(specs[name], devices) for name in layers}
        if split is None:
            self.state = jax.device_put(host)
        else:  # this process's devices' rows of the (devices, ...) state
            mine = parallel.process_rows(devices)
            host = jax.tree_util.tree_map(lambda a: a[mine], host)
            self.state = parallel.put_rows(host, split, devices)
        self.run = th.compiled_step(layers, devices)

    def step(self, images, indices, valid, start, batches) -> None:
        put = functools.partial(parallel.put_rows, sharding=self.split, size=batches.size)
        self.state = self.run(self.placed, put(images), put(indices), put(valid), self.state)

    def merged(self) -> dict[str, dict[str, np.ndarray]]:
        """This process's devices' states merged (:func:`merged_over_processes` merges
        the processes')."""
        local = parallel.local_rows(self.state)
        return {name: th.merge_devices(local[name], self.specs[name]) for name in self.layers}


class _SparseThresholds:
    """Pass-1 state on the host (:class:`~cnnvis_jax.dissection.sparse_thresholds.HostTopK`);
    the host absorbs batch ``i`` while the device computes batch ``i + 1``."""

    def __init__(self, layers, specs, merged, split, replicated, placed, store):
        self.layers, self.placed, self.split, self.replicated = layers, placed, split, replicated
        self.store = store
        self.tops = {
            name: HostTopK(specs[name], None if merged is None else merged[name]) for name in layers
        }
        self.run = sparse_step(layers)
        self.pending = None

    def _absorb_pending(self) -> None:
        if self.pending is not None:
            out, indices, row, count = self.pending
            self.pending = None
            out = parallel.local_rows(out)
            for name in self.layers:
                self.tops[name].absorb(out[name], indices)
            if self.store is not None:
                self.store.put(row, {n: out[n]["acts"] for n in self.layers}, count)

    def step(self, images, indices, valid, start, batches) -> None:
        put = functools.partial(parallel.put_rows, sharding=self.split, size=batches.size)
        # each image is compared with its own process's running K-th values
        kth = {n: np.broadcast_to(t.kth, (len(valid), len(t.kth))) for n, t in self.tops.items()}
        out = self.run(self.placed, put(images), put(valid), put(kth))
        self._absorb_pending()
        self.pending = (out, indices, batches.stored(start), int(valid.sum()))

    def merged(self) -> dict[str, dict[str, np.ndarray]]:
        self._absorb_pending()
        return {name: top.merged() for name, top in self.tops.items()}


# --- pass 2 ----------------------------------------------------------------------------


def _zero_counts(model: Model, layers, layout: LabelLayout) -> dict[str, Any]:
    n_cat, n_lab = len(layout.categories), layout.num_labels
    acc: dict[str, Any] = {
        "labels": np.zeros(n_lab, np.int64),
        "images": np.zeros((), np.int64),
        "category_images": np.zeros(n_cat, np.int64),
    }
    for name in layers:
        u = model.layer(name).channels
        acc[name] = {
            "both": np.zeros((u, n_lab), np.int64),
            "units": np.zeros(u, np.int64),
            "units_cat_lite": np.zeros((u, n_cat), np.int64),
            "units_cat_original": np.zeros((u, n_cat), np.int64),
        }
    return acc


def _add(acc, part) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add(acc[key], value)
        else:
            acc[key] += np.asarray(value, np.int64)


def _flatten(acc, prefix="") -> dict[str, np.ndarray]:
    out = {}
    for key, value in acc.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def compute_tally(
    model: Model,
    source: Any,
    layout: LabelLayout,
    thresholds: dict[str, th.Thresholds],
    *,
    batch_size: int = 64,
    indices: Sequence[int] | None = None,
    contraction: str = "auto",
    engine: str = "auto",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 25,
    fingerprint: str = "",
    on_checkpoint: Callable[[str, int], None] | None = None,
    progress: bool = True,
    store: FeatureStore | None = None,
) -> dict[str, Counts]:
    """Pass 2 over ``source``: the fused tally of every layer of ``thresholds``
    (see :mod:`~cnnvis_jax.dissection.tally`; ``engine="sparse"`` counts on the host
    where a unit can exceed its threshold, :mod:`~cnnvis_jax.dissection.sparse_tally`,
    for layers that upsample to the segmentation; the counts are the same integers).
    With a complete ``store`` of the layers' activations (sparse engine) no forward
    runs and no image is decoded. Returns ``{layer: Counts}``."""
    layers = tuple(thresholds)
    if contraction not in CONTRACTIONS:
        raise InputError(f"contraction must be one of {CONTRACTIONS}, got {contraction!r}.")
    contraction = resolve_contraction(contraction)
    engine = resolve_engine(engine)
    if engine == "sparse" and not sparse_tally.sparse_applies(model, layers, layout.seg_size):
        engine = "dense"  # maps larger than the segmentation: the dense tally resamples them
    order = _order(source, indices)
    n = len(order)
    devices = _mesh.devices()
    batches = Batches.of(n, batch_size)
    size = batches.size
    acc = _zero_counts(model, layers, layout)
    path = Path(checkpoint) / "tally.npz" if checkpoint is not None else None
    saved = _load_npz(path, fingerprint) if path is not None else None
    done = _resumed_at(saved)
    if saved is not None and distributed.is_primary():  # the others count from zero
        flat = _flatten(acc)
        for key in flat:
            flat[key][...] = saved[key]
    mesh = _mesh.mesh()
    split = parallel.shardings(mesh, _mesh.SPLIT)[0]
    replicated = parallel.shardings(mesh, None)[0]
    placed = parallel.put(model, replicated)
    thr = {k: th.float32_below(t.values) for k, t in thresholds.items()}
    cached = store if engine == "sparse" and store is not None and store.complete else None
    if engine == "dense":
        runner = _DenseTally(layers, layout, thr, contraction, devices, split, replicated, placed)
    else:
        runner = _SparseTally(layers, layout, thr, split, replicated, placed, cached)

    def combined() -> dict[str, np.ndarray]:
        """The counts of all processes so far (the dense tally sums them on the mesh)."""
        runner.flush(acc)
        flat = _flatten(acc)
        if engine == "dense" or distributed.process_count() == 1:
            return flat
        return distributed.sum_over_processes(flat)

    def save(done_now: int, counts: dict[str, np.ndarray]) -> None:
        arrays = {"fingerprint": np.array(fingerprint), "done": np.array(done_now)}
        arrays.update(counts)
        _save_npz(path, arrays)  # process 0 writes
        if on_checkpoint is not None:
            on_checkpoint("tally", done_now)

    prepare = functools.partial(_tally_rows, source, batches, order, layout, cached is None)

    with progress_bar(n, f"tally {','.join(layers)}", enabled=progress) as bar:
        bar.update(done)
        for k, (start, valid, batch) in enumerate(prefetched(prepare, batches.starts(done))):
            runner.step(batch, valid, acc, start, batches)
            bar.update(min(size, n - start))
            if path is not None and (k + 1) % checkpoint_every == 0 and start + size < n:
                save(start + size, combined())
    total = combined()
    if path is not None:
        save(n, total)
    for key, value in _flatten(acc).items():  # views of acc's arrays (in one process: total)
        value[...] = total[key]
    return {
        name: Counts(
            both=acc[name]["both"],
            units=acc[name]["units"],
            units_cat_lite=acc[name]["units_cat_lite"],
            units_cat_original=acc[name]["units_cat_original"],
            labels=acc["labels"].copy(),
            images=int(acc["images"]),
            category_images=acc["category_images"].copy(),
        )
        for name in layers
    }


class _DenseTally:
    """Pass 2 on the device(s): one jitted tally per batch, counts summed over the
    mesh; the host adds batch ``i`` while the device computes batch ``i + 1``."""

    def __init__(self, layers, layout, thr, contraction, devices, split, replicated, placed):
        self.placed, self.split = placed, split
        self.thr = parallel.put(thr, replicated)
        taps = {}
        for name in layers:
            h, w, _ = placed.layer(name).shape
            taps[name] = layer_matrices((h, w), layout.seg_size)
        self.taps = parallel.put(taps, replicated)
        self.labelcat = parallel.put(layout.labelcat(), replicated)
        self.run = compiled_tally(layers, contraction, devices)
        self.pending = None

    def step(self, batch, valid, acc, start, batches) -> None:
        put = functools.partial(parallel.put_rows, sharding=self.split, size=batches.size)

        result = self.run(
            self.placed,
            put(batch["image"]),
            put(valid),
            put(batch["pixel"]),
            put(batch["scalar"]),
            self.thr,
            self.taps,
            self.labelcat,
        )
        self.flush(acc)
        self.pending = result

    def flush(self, acc) -> None:
        if self.pending is not None:
            _add(acc, parallel.local_rows(self.pending))  # summed on the mesh: replicated
            self.pending = None


class _SparseTally:
    """Pass 2 with sparse bookkeeping (:mod:`~cnnvis_jax.dissection.sparse_tally`);
    the host counts batch ``i`` while the device computes batch ``i + 1``."""

    def __init__(self, layers, layout, thr, split, replicated, placed, store=None):
        self.layers, self.layout, self.placed, self.split = layers, layout, placed, split
        self.store = store
        self.thr_host = thr
        self.thr = parallel.put(thr, replicated)
        sh, sw = layout.seg_size
        self.cells = {}
        for name in layers:
            h, w, _ = placed.layer(name).shape
            self.cells[name] = (sparse_tally.axis_cells(h, sh), sparse_tally.axis_cells(w, sw))
        self.run = sparse_tally.compiled_cells(layers)
        self.pending = None

    def step(self, batch, valid, acc, start, batches) -> None:
        if self.store is not None:
            acts = self.store.batch(batches.stored(start), len(valid))
            out = {n: sparse_tally.host_cells(a, self.thr_host[n], valid) for n, a in acts.items()}
        else:
            put = functools.partial(parallel.put_rows, sharding=self.split, size=batches.size)
            out = self.run(self.placed, put(batch["image"]), put(valid), self.thr)
        self.flush(acc)
        self.pending = (out, batch, valid)

    def flush(self, acc) -> None:
        if self.pending is None:
            return
        out, batch, valid = self.pending
        self.pending = None
        out = parallel.local_rows(out)
        labels = sparse_tally.batch_labels(batch["pixel"], batch["scalar"], valid, self.layout)
        part: dict[str, Any] = sparse_tally.image_counts(labels, valid)
        for name in self.layers:
            acts, cells = out[name]
            rows, cols = self.cells[name]
            part[name] = sparse_tally.layer_counts(
                acts, cells, self.thr_host[name], rows, cols, labels, self.layout
            )
        _add(acc, part)


# --- both passes -----------------------------------------------------------------------


def _draw_pictures(model, source, thresholds, layout, store, order):
    """Start drawing every layer's unit pictures in one worker thread (from the kept
    activations when ``store`` is complete, else by a forward of the top images);
    ``(executor, {layer: future})``."""
    from cnnvis_jax.dissection.outputs import unit_pictures

    kept = store is not None and store.complete
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    futures = {
        name: pool.submit(
            unit_pictures,
            model,
            source,
            name,
            t,
            layout.seg_size,
            features=store.acts[name] if kept else None,
            order=order,
        )  # fmt: skip
        for name, t in thresholds.items()
    }
    return pool, futures


def dissect(
    model: Model,
    source: Any,
    layers: Sequence[str] | str,
    *,
    mode: str = "lite",
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    readout: str | None = None,
    batch_size: int | None = None,
    indices: Sequence[int] | None = None,
    categories: Sequence[str] | None = None,
    zero_scalar: bool = False,
    top_images: int = 8,
    contraction: str = "auto",
    engine: str = "auto",
    preprocess: str = "model",
    thresholds: dict[str, Any] | None = None,
    feature_memory: int | None = None,
    pictures: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 25,
    on_checkpoint: Callable[[str, int], None] | None = None,
    progress: bool = True,
) -> Dissection:
    """Network Dissection of ``layers`` of ``model`` on a labelled ``source``.

    Args:
      model: the network.
      source: a concept data set (``ConceptSet``, ``BrodenSource``,
        :class:`~cnnvis_jax.dissection.labels.ArrayConceptSource`).
      layers: spatial layer names (or one comma-separated string).
      mode: ``"lite"`` (NetDissect-Lite's denominator and quantile read-out) or
        ``"original"`` (NetDissect's image-has-category denominator, exact
        order-statistic threshold).
      quantile: top fraction of activations above the threshold (0.005).
      iou_threshold: IoU at which a unit counts as a detector (0.04).
      readout: override the threshold read-out (``"exact"`` or ``"lite"``).
      batch_size: images per step (rounded up to a multiple of the device count;
        default :func:`default_batch_size`).
      indices: the images to use (default all).
      categories: categories to score (default all of the data set).
      zero_scalar: score image-level label 0 as NetDissect-Lite does (a texture).
      top_images: images kept per unit for the report (by per-image maximum).
      contraction: ``"auto"``, ``"segment"`` or ``"einsum"`` (the dense tally's).
      engine: ``"sparse"`` (the device marks where units can exceed their
        thresholds, the host keeps and counts those; fastest on CPU), ``"dense"``
        (both passes entirely on device, counts summed over the mesh; for
        accelerators) or ``"auto"`` (sparse on CPU). The results are the same.
      preprocess: ``"model"`` (the model's own input normalization, right for the
        networks of this package) or ``"lite"`` (NetDissect-Lite's, for networks
        trained with it; see :func:`with_lite_preprocessing`).
      thresholds: ``{layer: (U,) array}`` per-unit thresholds to use instead of the
        pass-1 read-out (e.g. NetDissect-Lite's ``quantile.npy``); pass 1 still runs
        for the unit's top images and range.
      feature_memory: bytes of host memory for keeping the layers' activations from
        pass 1 so that pass 2 needs no second forward (default
        :data:`FEATURE_MEMORY`; 0 always runs two forwards). When the activations of
        the whole data set don't fit, pass 2 runs the forward again, so memory stays
        flat in the data set's size.
      pictures: also draw each unit's top images with its mask
        (:func:`~cnnvis_jax.dissection.outputs.unit_pictures`, JPEG in
        ``LayerResult.pictures``) in a worker thread while pass 2 counts: they need
        only pass 1's thresholds and top images, so the report costs little more.
      checkpoint: folder for resumable state (``pass1.npz``, ``tally.npz``).
      checkpoint_every: batches between checkpoints.
      on_checkpoint: called as ``(stage, images_done)`` after each checkpoint.
      progress: show progress bars.

    Raises:
      InputError: unknown/fully connected layers, an unlabelled data set, a missing
        category, bad quantile/threshold/mode.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
    layers = spatial_layers(model, layers)
    quantile = th.check_quantile(quantile)
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise InputError(f"the IoU threshold must be in [0, 1], got {iou_threshold!r}.")
    if int(top_images) != top_images or top_images < 1:
        raise InputError(f"top_images must be a positive integer, got {top_images!r}.")
    if checkpoint_every < 1:
        raise InputError(f"checkpoint_every must be >= 1, got {checkpoint_every}.")
    readout = readout or ("lite" if mode == "lite" else "exact")
    model = dissection_model(model, source, layers, preprocess)
    layout = label_layout(source, categories, zero_scalar=zero_scalar)
    order = _order(source, indices)
    batch_size = default_batch_size(model) if batch_size is None else batch_size
    budget = FEATURE_MEMORY if feature_memory is None else int(feature_memory)
    kept = Batches.of(len(order), batch_size).stored_total()  # this process's images
    store = None
    if (
        resolve_engine(engine) == "sparse"
        and FeatureStore.size(model, layers, kept) <= budget
        and sparse_tally.sparse_applies(model, layers, layout.seg_size)
    ):
        store = FeatureStore(model, layers, kept)
    if checkpoint is not None:
        Path(checkpoint).mkdir(parents=True, exist_ok=True)
    base = {
        "model": model.name,
        "params": _params_digest(model) if checkpoint is not None else "",
        "source": _describe_source(source),
        "indices": hashlib.sha256(order.tobytes()).hexdigest()[:16],
        "layers": list(layers),
        "quantile": quantile,
        "readout": readout,
        "top_images": int(top_images),
        "preprocess": preprocess,
    }
    given = _given_thresholds(model, layers, thresholds)
    fp1 = json.dumps(base, sort_keys=True)
    thresholds = compute_thresholds(
        model,
        source,
        layers,
        quantile=quantile,
        readout=readout,
        batch_size=batch_size,
        engine=engine,
        indices=order,
        top_images=top_images,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        fingerprint=fp1,
        on_checkpoint=on_checkpoint,
        progress=progress,
        store=store,
    )
    for name, values in given.items():
        thresholds[name] = dataclasses.replace(
            thresholds[name],
            values=np.where(thresholds[name].constant, np.inf, values),
            readout="given",
        )
    one = distributed.process_count() == 1  # else each process kept only its own rows
    drawing = None
    if pictures and distributed.is_primary():
        drawing = _draw_pictures(model, source, thresholds, layout, store if one else None, order)
    digest = hashlib.sha256(b"".join(t.values.tobytes() for t in thresholds.values()))
    fp2 = json.dumps(
        {**base, "layout": layout.describe(), "thresholds": digest.hexdigest()[:16]},
        sort_keys=True,
    )
    try:
        counts = compute_tally(
            model,
            source,
            layout,
            thresholds,
            batch_size=batch_size,
            indices=order,
            contraction=contraction,
            engine=engine,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            fingerprint=fp2,
            on_checkpoint=on_checkpoint,
            progress=progress,
            store=store,
        )
    except BaseException:  # interrupted or failed: drop the pictures not begun
        if drawing is not None:
            drawing[0].shutdown(wait=True, cancel_futures=True)
        raise
    drawn = {name: future.result() for name, future in drawing[1].items()} if drawing else {}
    if drawing is not None:
        drawing[0].shutdown()
    results = {
        name: LayerResult(
            name,
            thresholds[name],
            counts[name],
            score(counts[name], layout, mode, iou_threshold),
            drawn.get(name),
        )
        for name in layers
    }
    return Dissection(
        layers=results,
        layout=layout,
        mode=mode,
        quantile=quantile,
        iou_threshold=float(iou_threshold),
        images=len(order),
        skipped=tuple(getattr(source, "skipped", ())),
        order=order,
        features=store.acts if one and store is not None and store.complete else None,
        preprocess=preprocess,
    )
