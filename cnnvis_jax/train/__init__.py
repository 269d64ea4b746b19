"""Training the embedded default network (ConceptNet) on the concept set."""

from cnnvis_jax.train.config import DEFAULT_SNAPSHOTS, TrainConfig
from cnnvis_jax.train.loop import train
from cnnvis_jax.train.snapshots import load_trained, save_weights

__all__ = ["DEFAULT_SNAPSHOTS", "TrainConfig", "load_trained", "save_weights", "train"]
