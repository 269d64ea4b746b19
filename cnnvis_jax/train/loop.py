"""Train ConceptNet on the embedded concept set with optax; resumable.

Layout of a run directory::

    DIR/config.json            the TrainConfig (a rerun must match it)
    DIR/checkpoints/<step>/    orbax checkpoints (params, batch stats, optimizer)
    DIR/snapshots/epoch_XXX.safetensors   weights kept for monitoring
    DIR/weights.safetensors    final weights
    DIR/metrics.json           val_accuracy, epochs, seconds, per-epoch history
    DIR/report/                training report (see cnnvis_jax.report.training)

Determinism: the data order of epoch ``e`` and the dropout key of step ``t`` are
derived from ``(seed, e)`` and ``(seed, t)``, and with ``shuffle_labels`` the label
permutation from ``seed`` alone (:func:`label_permutation`), so a run killed and
resumed from its last checkpoint ends with the same weights and metrics as an
uninterrupted one.
"""

from __future__ import annotations

import copy
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
from flax import nnx

from cnnvis_jax.errors import InputError
from cnnvis_jax.features import iterate_batches, prefetched
from cnnvis_jax.progress import progress_bar
from cnnvis_jax.report.files import write_json
from cnnvis_jax.train.config import TrainConfig
from cnnvis_jax.zoo import conceptnet

CALIBRATION_IMAGES = 256
"""Training images (the first ones of the set) of the data-dependent initialization."""


def _concept_sets(config: TrainConfig):
    from cnnvis_jax.data.concepts import ConceptSet

    epochs_of_data = config.epochs if config.fresh_data else 1
    train = ConceptSet(
        config.train_size * epochs_of_data,
        split="train",
        seed=config.data_seed,
        image_size=config.image_size,
        target=config.target,
    )
    val = ConceptSet(
        config.val_size,
        split="val",
        seed=config.data_seed,
        image_size=config.image_size,
        target=config.target,
    )
    return train, val


def epoch_order(config: TrainConfig, epoch: int) -> np.ndarray:
    """Indices into the training set for ``epoch`` (1-based), shuffled by (seed, epoch)."""
    base = (epoch - 1) * config.train_size if config.fresh_data else 0
    rng = np.random.default_rng([config.seed, epoch])
    return base + rng.permutation(config.train_size)


LABEL_SHUFFLE_STREAM = 0x5348_5546
"""Second entropy word of the label permutation's generator (epochs use 1, 2, ...)."""


def label_permutation(config: TrainConfig, size: int) -> np.ndarray | None:
    """With ``config.shuffle_labels``: int64 (size,), a permutation ``perm`` of the
    training set drawn from ``config.seed``; image ``i`` is trained with the true label
    of image ``perm[i]``. None without ``shuffle_labels``."""
    if not config.shuffle_labels:
        return None
    return np.random.default_rng([config.seed, LABEL_SHUFFLE_STREAM]).permutation(size)


def _training_batch(train_set, indices: np.ndarray, perm: np.ndarray | None) -> dict:
    """Images (and targets) of ``indices``; with ``perm`` the targets of ``perm[indices]``."""
    batch = train_set.batch(indices)
    if perm is not None:
        batch["target"] = train_set.batch(perm[indices])["target"]
    return batch


def _schedule(config: TrainConfig):
    warmup = max(1, config.total_steps // 20)
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup, max(config.total_steps, warmup + 1)
    )


def _is_first_layer_kernel(path, _leaf) -> bool:
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return "conv1" in keys and "kernel" in keys


def _optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay), with a stronger decay on conv1's kernels.

    The first layer's filters get small, inconsistent gradients, so with the
    network's weight decay alone they stay close to their random start within a
    short run (noise-like filters). A larger decoupled decay there removes what the
    gradients do not sustain and leaves the learned colour and edge structure.
    """

    def first_layer(params):
        return jax.tree_util.tree_map_with_path(_is_first_layer_kernel, params)

    return optax.chain(
        optax.scale_by_adam(),
        optax.add_decayed_weights(config.weight_decay),
        optax.add_decayed_weights(config.conv1_weight_decay, mask=first_layer),
        optax.scale_by_learning_rate(_schedule(config)),
    )


def _augment(images: jax.Array, key: jax.Array) -> jax.Array:
    """Random horizontal flips (the classes are left/right symmetric in meaning)."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1], images)


class Trainer:
    """Holds the compiled steps and the mutable training state of one run."""

    def __init__(self, config: TrainConfig, num_classes: int):
        self.config = config
        module = conceptnet.init_fn(num_classes, seed=config.seed, **config.variant)
        module.train()
        module.sliced_pool = True
        self.train_graph, self.params, self.rest = nnx.split(module, nnx.Param, ...)
        module.eval()
        module.sliced_pool = False
        self.eval_graph = nnx.graphdef(module)
        self.tx = _optimizer(config)
        self.opt_state = self.tx.init(self.params)
        self.step = 0
        self._train_step = jax.jit(self._make_train_step(), donate_argnums=(0, 1, 2))
        self._eval_step = jax.jit(self._make_eval_step())

    def calibrate(self, images_u8: np.ndarray) -> None:
        """Data-dependent initialization on a batch of training images.

        Layer by layer, from conv1 to fc7, rescales each unit's weights and sets its
        bias so that its pre-activation has zero mean and unit variance over the
        batch (convolutions only without BatchNorm, which normalizes them itself).
        Without it a plain ReLU network starts with per-unit offsets that grow with
        depth, so that its deep features barely differ between images and learning
        stalls for hundreds of steps.
        """
        module = nnx.merge(self.train_graph, self.params, self.rest)  # BatchNorm: batch stats
        x = conceptnet.INPUT.normalize(jnp.asarray(images_u8, jnp.float32) / 255.0)

        def taps(name):
            # dropout off (scale 0); BatchNorm statistics updated here are discarded
            return module(x, (name,), rngs=nnx.Rngs(dropout=0), dropout_scale=0.0)[name]

        def rescale(layer, pre):
            axes = tuple(range(pre.ndim - 1))
            mean, std = jnp.mean(pre, axes), jnp.std(pre, axes)
            std = jnp.where(std > 1e-3, std, 1.0)  # leave (nearly) constant units alone
            layer.kernel[...] = layer.kernel[...] / std
            layer.bias[...] = (layer.bias[...] - mean) / std

        if not self.config.batchnorm:
            for i in range(1, 6):
                rescale(getattr(module, f"conv{i}"), taps(f"conv{i}_pre"))
        rescale(module.fc6, module.fc6(taps("pool5").reshape(x.shape[0], -1)))
        rescale(module.fc7, module.fc7(taps("fc6")))
        _, self.params, _ = nnx.split(module, nnx.Param, ...)
        self.opt_state = self.tx.init(self.params)

    def _make_train_step(self):
        graph, tx = self.train_graph, self.tx

        def train_step(params, rest, opt_state, images_u8, targets, key, dropout_scale):
            aug_key, drop_key = jax.random.split(key)
            x = conceptnet.INPUT.normalize(images_u8.astype(jnp.float32) / 255.0)
            x = _augment(x, aug_key)

            def loss_fn(params, rest):
                # Rebuild the batch-stat variables in this trace so BatchNorm may update them.
                rest = jax.tree_util.tree_map(lambda v: v, rest)
                module = nnx.merge(graph, params, rest)
                logits = module(
                    x, ("fc8",), rngs=nnx.Rngs(dropout=drop_key), dropout_scale=dropout_scale
                )["fc8"]
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
                return loss, (logits, nnx.state(module, nnx.Not(nnx.Param)))

            (loss, (logits, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, rest
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            correct = jnp.sum(jnp.argmax(logits, -1) == targets)
            return params, new_rest, opt_state, loss, correct

        return train_step

    def _make_eval_step(self):
        graph = self.eval_graph

        def eval_step(params, rest, images_u8, targets, valid):
            x = conceptnet.INPUT.normalize(images_u8.astype(jnp.float32) / 255.0)
            logits = nnx.merge(graph, params, rest)(x, ("fc8",))["fc8"]
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
            correct = (jnp.argmax(logits, -1) == targets) & valid
            return jnp.sum(jnp.where(valid, loss, 0.0)), jnp.sum(correct)

        return eval_step

    def dropout_scale(self) -> np.float32:
        """Dropout rate multiplier of the current step: linear from 0 to 1 over the
        first ``dropout_warmup`` of the steps (curriculum dropout)."""
        ramp = self.config.dropout_warmup * self.config.total_steps
        return np.float32(1.0 if ramp < 1 else min(1.0, self.step / ramp))

    def train_batch(self, images_u8: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
        key = jax.random.fold_in(jax.random.key(self.config.seed), self.step)
        self.params, self.rest, self.opt_state, loss, correct = self._train_step(
            self.params, self.rest, self.opt_state, images_u8, targets, key, self.dropout_scale()
        )
        self.step += 1
        return loss, correct

    def evaluate(self, source, batch_size: int) -> dict[str, float]:
        total_loss, total_correct = 0.0, 0
        for _, valid, batch in iterate_batches(source, batch_size):
            loss, correct = self._eval_step(
                self.params, self.rest, batch["image"], batch["target"], valid
            )
            total_loss += float(loss)
            total_correct += int(correct)
        return {"loss": total_loss / len(source), "accuracy": total_correct / len(source)}

    def module(self) -> nnx.Module:
        """The trained network (evaluation mode)."""
        return nnx.merge(self.eval_graph, self.params, self.rest)

    # --- checkpoint state ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "params": self.params.to_pure_dict(),
            "rest": self.rest.to_pure_dict(),
            "opt_state": self.opt_state,
        }

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        nnx.replace_by_pure_dict(self.params, state["params"])
        nnx.replace_by_pure_dict(self.rest, state["rest"])
        self.opt_state = state["opt_state"]
        self.step = step


def _checkpoint_manager(run_dir: Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        (run_dir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
    )


def _check_config(run_dir: Path, config: TrainConfig) -> None:
    path = run_dir / "config.json"
    if path.exists():
        saved = TrainConfig.from_json(json.loads(path.read_text()))
        if saved.fingerprint() != config.fingerprint():
            raise InputError(
                f"{run_dir} holds a run with another configuration ({path}); use a new "
                "--out directory, or the same arguments to resume it."
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, config.to_json())


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    progress: bool = True,
    report: bool = True,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run in ``run_dir``; returns the metrics dict.

    ``stop_after_steps`` ends the process's work early after that many optimizer
    steps in this call, leaving a checkpoint, as an interruption would (used to
    test resumption).
    """
    from cnnvis_jax.train.snapshots import save_weights

    run_dir = Path(run_dir)
    _check_config(run_dir, config)
    train_set, val_set = _concept_sets(config)
    trainer = Trainer(config, len(train_set.class_names))
    manager = _checkpoint_manager(run_dir)
    history: list[dict[str, Any]] = []
    partial = {"loss_sum": 0.0, "correct_sum": 0, "seen": 0}  # of the unfinished epoch
    seconds_before = 0.0
    latest = manager.latest_step()
    if latest is not None:
        restored = manager.restore(
            latest,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(trainer.state_dict()),
                meta=ocp.args.JsonRestore(),
            ),
        )
        trainer.load_state_dict(restored.state, latest)
        history = restored.meta["history"]
        partial = restored.meta["partial"]
        seconds_before = restored.meta["seconds"]
    start = time.perf_counter()
    if latest is None:
        trainer.calibrate(
            train_set.batch(np.arange(min(CALIBRATION_IMAGES, len(train_set))))["image"]
        )
    steps_done_now = 0
    per_epoch = config.steps_per_epoch

    def save_checkpoint(wait: bool = False):
        # Host copies (the next step donates the device buffers) written in the
        # background while training goes on; a save waits for the previous one.
        state = jax.tree_util.tree_map(np.array, trainer.state_dict())
        meta = {
            "history": copy.deepcopy(history),
            "partial": dict(partial),
            "seconds": seconds_before + time.perf_counter() - start,
        }
        manager.save(
            trainer.step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        if wait:
            manager.wait_until_finished()

    first_epoch = trainer.step // per_epoch + 1
    B = config.batch_size
    perm = label_permutation(config, len(train_set))
    try:
        with progress_bar(
            total=config.last_epoch * per_epoch,
            desc="train conceptnet",
            enabled=progress,
            unit="step",
        ) as bar:
            bar.update(trainer.step)
            for epoch in range(first_epoch, config.last_epoch + 1):
                order = epoch_order(config, epoch)
                skip = trainer.step - (epoch - 1) * per_epoch
                if skip == 0:
                    partial = {"loss_sum": 0.0, "correct_sum": 0, "seen": 0}
                for batch in prefetched(
                    lambda k, order=order: _training_batch(
                        train_set, order[k * B : (k + 1) * B], perm
                    ),
                    list(range(skip, per_epoch)),
                ):
                    loss, correct = trainer.train_batch(batch["image"], batch["target"])
                    partial["loss_sum"] += float(loss) * B
                    partial["correct_sum"] += int(correct)
                    partial["seen"] += B
                    steps_done_now += 1
                    bar.update(1)
                    if config.checkpoint_every and trainer.step % config.checkpoint_every == 0:
                        save_checkpoint()
                    if stop_after_steps is not None and steps_done_now >= stop_after_steps:
                        save_checkpoint(wait=True)
                        return {"interrupted": True, "step": trainer.step}
                val = trainer.evaluate(val_set, config.batch_size)
                history.append(
                    {
                        "epoch": epoch,
                        "step": trainer.step,
                        "train_loss": partial["loss_sum"] / partial["seen"],
                        "train_accuracy": partial["correct_sum"] / partial["seen"],
                        "val_loss": val["loss"],
                        "val_accuracy": val["accuracy"],
                        "seconds": seconds_before + time.perf_counter() - start,
                    }
                )
                bar.set_postfix(epoch=epoch, val_acc=f"{val['accuracy']:.3f}")
                if epoch in config.kept_epochs:
                    save_weights(
                        trainer.module(),
                        run_dir / "snapshots" / f"epoch_{epoch:03d}.safetensors",
                        config=config,
                        class_names=train_set.class_names,
                        epoch=epoch,
                    )
                save_checkpoint()
    finally:
        manager.wait_until_finished()  # the last checkpoint is complete on disk
    module = trainer.module()
    save_weights(
        module,
        run_dir / "weights.safetensors",
        config=config,
        class_names=train_set.class_names,
        epoch=config.last_epoch,
    )
    metrics = {
        "val_accuracy": history[-1]["val_accuracy"],
        "val_loss": history[-1]["val_loss"],
        "epochs": config.last_epoch,
        "steps": trainer.step,
        "seconds": seconds_before + time.perf_counter() - start,
        "images_seen": trainer.step * config.batch_size,
        "class_names": list(train_set.class_names),
        "history": history,
        "snapshots": [f"snapshots/epoch_{e:03d}.safetensors" for e in config.kept_epochs],
    }
    write_json(run_dir / "metrics.json", metrics)
    if report:
        from cnnvis_jax.report.training import write_training_report

        write_training_report(run_dir, metrics, module, val_set)
    return metrics
