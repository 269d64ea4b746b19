"""Train an UpconvNet decoder for one layer: pixel MSE with optax, resumable.

The network stays frozen: each step computes the layer's features of a batch of
concept-set images inside the jitted step (no parameter gradients of the model),
decodes them and takes an Adam step on the pixel MSE ``mean((D(Φ(x)) − x)²)``
over images in [0, 1].

Run directory layout::

    DIR/config.json               DecoderConfig + model fingerprint (a rerun must match)
    DIR/checkpoints/<step>/       orbax checkpoints (params, optimizer state, losses)
    DIR/decoder.safetensors       the trained decoder (+ DIR/decoder.json record)

Data-parallel: with several devices the batch is split over the 1-D ``images``
mesh (:mod:`cnnvis_jax.parallel`) and the parameters are replicated; XLA sums the
gradients across devices. Exact resumption: the data order of epoch ``e`` is a
permutation seeded by ``(seed, e)``, so a run stopped after any checkpoint and
resumed ends with the same parameters, bit for bit, as an uninterrupted one.

Default length: ``steps=400`` batches of 32 (12 800 images, about 1.6 epochs of
the 8 192-image training set) trains a ConceptNet decoder in one to two minutes
on two CPU cores; the loss is still falling by then, so longer runs (``--steps``)
give sharper reconstructions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import PartitionSpec as P

from cnnvis_jax import interrupt, parallel
from cnnvis_jax.errors import InputError
from cnnvis_jax.features import prefetched, to_model_input
from cnnvis_jax.inversion.decoder import Decoder, design, forward, init_params
from cnnvis_jax.inversion.io import DECODER_FILE, fingerprint, save_decoder
from cnnvis_jax.model import Model
from cnnvis_jax.progress import progress_bar
from cnnvis_jax.report.files import write_json

__all__ = ["DecoderConfig", "feature_scale", "train_decoder"]


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Decoder training settings (see the module docstring for the defaults)."""

    layer: str
    steps: int = 400
    batch_size: int = 32
    learning_rate: float = 1e-3
    final_lr_fraction: float = 0.1
    train_size: int = 8192
    seed: int = 0
    data_seed: int = 0
    checkpoint_every: int = 100
    scale_images: int = 256

    def __post_init__(self):
        for name in ("steps", "batch_size", "train_size", "scale_images"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.learning_rate <= 0:
            raise InputError(f"learning_rate must be positive, got {self.learning_rate}.")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _source(model: Model, config: DecoderConfig):
    from cnnvis_jax.data.concepts import ConceptSet

    return ConceptSet(
        config.train_size, split="train", seed=config.data_seed, image_size=max(model.input.size)
    )


def epoch_order(config: DecoderConfig, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([config.seed, epoch]).permutation(n)


def batch_indices(config: DecoderConfig, step: int, n: int) -> np.ndarray:
    """Image indices of training step ``step`` (0-based), a pure function of the config."""
    per_epoch = max(n // config.batch_size, 1)
    epoch, k = divmod(step, per_epoch)
    order = epoch_order(config, epoch, n)
    return order[k * config.batch_size : (k + 1) * config.batch_size]


def feature_scale(model: Model, layer: str, images_u8: np.ndarray) -> float:
    """RMS of ``layer``'s features over ``images_u8`` (uint8 (N, H, W, 3))."""
    fn = jax.jit(lambda m, x: m.apply(m.params, to_model_input(m, x), (layer,))[layer])
    f = np.asarray(fn(model, images_u8), np.float64)
    rms = float(np.sqrt(np.mean(f * f)))
    if not np.isfinite(rms) or rms == 0:
        raise InputError(
            f"layer {layer!r} of model {model.name!r} gives all-zero or non-finite features on "
            "the training images; a decoder cannot be trained from it."
        )
    return rms


def _optimizer(config: DecoderConfig) -> optax.GradientTransformation:
    schedule = optax.cosine_decay_schedule(
        config.learning_rate, config.steps, alpha=config.final_lr_fraction
    )
    return optax.adam(schedule)


@functools.lru_cache(maxsize=16)
def _step_fn(layer: str, d, scale: float, config: DecoderConfig, devices: int):
    opt = _optimizer(config)

    def step(params, opt_state, model, images_u8):
        x = to_model_input(model, images_u8)
        f = jax.lax.stop_gradient(model.apply(model.params, x, (layer,))[layer])

        def loss_fn(p):
            return jnp.mean((forward(d, p, f, scale) - x) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    mesh = parallel.image_mesh() if devices > 1 else None
    if mesh is None:
        return jax.jit(step)
    rep, batch = parallel.shardings(mesh, None, P(parallel.AXIS))
    return jax.jit(step, in_shardings=(rep, rep, rep, batch), out_shardings=(rep, rep, rep))


def _check_run_dir(out: Path, record: dict) -> None:
    path = out / "config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != record:
            raise InputError(
                f"{out} holds a decoder run with other settings or another model ({path}); use "
                "a new --out directory, or the same arguments to resume it."
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


def train_decoder(
    model: Model,
    config: DecoderConfig,
    out: str | os.PathLike,
    *,
    source: Any = None,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> Decoder | dict:
    """Train (or resume) the decoder of ``config.layer`` in ``out``.

    ``source`` (default: the concept set's training split, ``config.train_size``
    images) is any random-access source with ``batch(indices)``.
    ``stop_after_steps`` ends this call after that many steps with a checkpoint, as
    an interruption would; it then returns ``{"interrupted": True, "step": s}``.
    Returns the trained :class:`Decoder` (also saved as ``out/decoder.safetensors``).
    """
    out = Path(out)
    layer = model.resolve(config.layer)
    info = model.layer(layer)
    config = dataclasses.replace(config, layer=layer)
    model_fp = fingerprint(model)
    source = source if source is not None else _source(model, config)
    n = len(source)
    if n < config.batch_size:
        raise InputError(
            f"the training set has {n} images, fewer than one batch ({config.batch_size})."
        )
    if config.batch_size % jax.device_count():
        raise InputError(
            f"batch_size {config.batch_size} must be a multiple of the {jax.device_count()} devices."
        )
    record = {"config": config.to_json(), "model_name": model.name, "model_fingerprint": model_fp}
    _check_run_dir(out, record)
    d = design(info.shape, model.input.size)
    scale_idx = np.arange(min(config.scale_images, n))
    scale = feature_scale(model, layer, source.batch(scale_idx)["image"])
    params = init_params(d, jax.random.key(config.seed))
    opt_state = _optimizer(config).init(params)
    step = 0
    losses: list[float] = []
    seconds = 0.0
    manager = ocp.CheckpointManager(
        (out / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
    )
    latest = manager.latest_step()
    if latest is not None:
        restored = manager.restore(
            latest,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore({"params": params, "opt_state": opt_state}),
                meta=ocp.args.JsonRestore(),
            ),
        )
        params, opt_state = restored.state["params"], restored.state["opt_state"]
        losses, seconds, step = restored.meta["losses"], restored.meta["seconds"], latest

    saved = {"step": latest}

    def save(wait: bool = False):
        if saved["step"] == step:
            return
        saved["step"] = step
        state = jax.tree_util.tree_map(np.array, {"params": params, "opt_state": opt_state})
        meta = {"losses": list(losses), "seconds": seconds + time.perf_counter() - start}
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        if wait:
            manager.wait_until_finished()

    mesh = parallel.image_mesh()
    rep, batch_sharding = parallel.shardings(mesh, None, P(parallel.AXIS))
    rows = parallel.process_rows(config.batch_size, mesh) if mesh is not None else slice(None)
    fn = _step_fn(layer, d, scale, config, jax.device_count())
    placed = parallel.put(model, rep)
    params = parallel.put(params, rep)
    opt_state = parallel.put(opt_state, rep)
    start = time.perf_counter()
    done_now = 0
    try:
        with interrupt.graceful(), progress_bar(config.steps, f"decoder {layer}",
                                                enabled=progress, unit="step") as bar:  # fmt: skip
            bar.update(step)
            for images in prefetched(  # this process's rows of each batch
                lambda s: source.batch(batch_indices(config, s, n)[rows])["image"],
                list(range(step, config.steps)),
            ):
                params, opt_state, loss = fn(
                    params, opt_state, placed,
                    parallel.put_rows(images, batch_sharding, config.batch_size),
                )  # fmt: skip
                losses.append(float(loss))
                step += 1
                done_now += 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if stop_after_steps is not None and done_now >= stop_after_steps:
                    save(wait=True)
                    return {"interrupted": True, "step": step}
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    save()
                if interrupt.requested():  # Ctrl-C / SIGTERM: save, then stop
                    save(wait=True)
                interrupt.check(f"decoder {layer}")
            save()
    finally:
        manager.wait_until_finished()
    elapsed = seconds + time.perf_counter() - start
    decoder = Decoder(
        params=jax.tree_util.tree_map(np.asarray, params),
        design=d,
        layer=layer,
        model_name=model.name,
        model_fingerprint=model_fp,
        feature_scale=scale,
    )
    tail = losses[-max(len(losses) // 10, 1) :]
    save_decoder(
        decoder,
        out / DECODER_FILE,
        extra={
            "training": {
                **config.to_json(),
                "first_loss": losses[0] if losses else None,
                "final_loss": float(np.mean(tail)) if tail else None,
                "seconds": elapsed,
                "losses": losses,
            }
        },
    )
    return decoder
