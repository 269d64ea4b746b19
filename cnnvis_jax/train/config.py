"""Training configuration for ConceptNet (configs are code: a frozen dataclass)."""

from __future__ import annotations

import dataclasses
import json

from cnnvis_jax.errors import InputError

DEFAULT_SNAPSHOTS = (1, 2, 5, 10, 20, 30, 40, 64)
"""Zeiler & Fergus's monitoring epochs; the last epoch is always added."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (the same config and seed give
    the same weights and metrics, interrupted or not).

    Attributes:
      epochs: passes; with ``fresh_data`` every epoch sees new images.
      train_size: training images per epoch.
      val_size: validation images (the concept set's ``val`` split).
      batch_size: images per optimizer step.
      learning_rate: peak AdamW learning rate (warm-up then cosine decay).
      weight_decay: AdamW decoupled weight decay (multiplied by the learning rate).
      conv1_weight_decay: extra decoupled decay on conv1's kernels only: without
        it the first-layer filters of a short run stay close to their random
        start (noise); with it they become colour blobs and edges, as in AlexNet.
      seed: initialization, data order and dropout keys.
      data_seed: the concept set's seed (which images exist).
      image_size: concept image size (ConceptNet expects 64).
      target: "object" (main object class) or "scene" (the Places-like variant).
      dropout, batchnorm, conv1_kernel, conv1_stride: ConceptNet variant.
      fresh_data: draw new images every epoch (the generator is cheap) instead of
        repeating one set.
      snapshot_epochs: epochs whose weights are kept for monitoring (the last
        epoch is always kept).
      checkpoint_every: optimizer steps between resumable checkpoints (0: only at
        the end of each epoch).
      stop_epoch: end the run after this epoch (None: after ``epochs``), keeping the
        schedule of ``epochs``: the weights are those of a full run at that epoch (the
        survey's quick training-conditions study trains its variants this way).
      dropout_warmup: fraction of the steps over which the dropout rate ramps up
        linearly from 0 to its full value (curriculum dropout: full dropout from
        the first step keeps a freshly initialized network at chance for epochs).
      shuffle_labels: train on shuffled labels (Adebayo et al. 2018's data
        randomization test, :mod:`cnnvis_jax.evaluate.sanity`): training image ``i``
        gets the true label of image ``perm[i]``, ``perm`` a fixed permutation of the
        whole training set drawn from ``seed`` (see
        :func:`cnnvis_jax.train.loop.label_permutation`), so labels keep their class
        frequencies and are the same at every visit and after a resume, but say
        nothing about the image. Validation uses the true labels (a network that
        learned nothing from the images stays at chance there).

    The default recipe (batch 16, AdamW 1e-3 with decay 0.3 and 5 on conv1, 8
    epochs of 8,192 fresh images, calibrated initialization, dropout ramped over
    the first half) reaches ~95% validation accuracy in about three minutes on two
    CPU cores; see ``benchmarks/RESULTS.md``.
    """

    epochs: int = 8
    train_size: int = 8192
    val_size: int = 2048
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.3
    seed: int = 0
    data_seed: int = 0
    image_size: int = 64
    target: str = "object"
    dropout: bool = True
    batchnorm: bool = False
    conv1_kernel: int = 5
    conv1_stride: int = 2
    fresh_data: bool = True
    snapshot_epochs: tuple[int, ...] = DEFAULT_SNAPSHOTS
    checkpoint_every: int = 0
    dropout_warmup: float = 0.5
    conv1_weight_decay: float = 5.0
    stop_epoch: int | None = None
    shuffle_labels: bool = False

    def __post_init__(self):
        for name in ("epochs", "train_size", "val_size", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.batch_size > self.train_size:
            raise InputError(f"batch_size {self.batch_size} exceeds train_size {self.train_size}.")
        if self.target not in ("object", "scene"):
            raise InputError(f"target must be 'object' or 'scene', got {self.target!r}.")
        if self.learning_rate <= 0:
            raise InputError(f"learning_rate must be > 0, got {self.learning_rate}.")
        if self.checkpoint_every < 0:
            raise InputError("checkpoint_every must be >= 0.")
        if self.weight_decay < 0 or self.conv1_weight_decay < 0:
            raise InputError("weight_decay and conv1_weight_decay must be >= 0.")
        if self.stop_epoch is not None and not 1 <= self.stop_epoch <= self.epochs:
            raise InputError(
                f"stop_epoch must be between 1 and epochs ({self.epochs}), got {self.stop_epoch}."
            )
        if not 0.0 <= self.dropout_warmup <= 1.0:
            raise InputError(f"dropout_warmup must be in [0, 1], got {self.dropout_warmup}.")
        if not isinstance(self.shuffle_labels, bool):
            raise InputError(f"shuffle_labels must be True or False, got {self.shuffle_labels!r}.")

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch (a partial last batch is dropped: one compiled shape)."""
        return self.train_size // self.batch_size

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def last_epoch(self) -> int:
        """The epoch the run ends after (``stop_epoch`` or ``epochs``)."""
        return self.epochs if self.stop_epoch is None else self.stop_epoch

    @property
    def kept_epochs(self) -> tuple[int, ...]:
        kept = {e for e in self.snapshot_epochs if 1 <= e <= self.last_epoch}
        return tuple(sorted(kept | {self.last_epoch}))

    @property
    def variant(self) -> dict:
        """Keyword arguments that build this run's ConceptNet."""
        return dict(
            dropout=self.dropout,
            batchnorm=self.batchnorm,
            conv1_kernel=self.conv1_kernel,
            conv1_stride=self.conv1_stride,
        )

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["snapshot_epochs"] = list(self.snapshot_epochs)
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["snapshot_epochs"] = tuple(d.get("snapshot_epochs", DEFAULT_SNAPSHOTS))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def fingerprint(self) -> str:
        """Fields that must match for a run directory to be resumed (all but the
        snapshot list: the learning-rate schedule depends on ``epochs``)."""
        d = self.to_json()
        d.pop("snapshot_epochs")
        return json.dumps(d, sort_keys=True)
