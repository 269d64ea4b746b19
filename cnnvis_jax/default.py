"""The "default model": the cached trained ConceptNet, trained on first use.

The cache directory is ``$CNNVIS_CACHE`` if set, else ``~/.cache/cnnvis_jax``. The
default recipe (:class:`cnnvis_jax.train.TrainConfig` defaults) runs once; later
calls load ``<cache>/conceptnet-default/weights.safetensors``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnnvis_jax.model import Model


def cache_dir() -> Path:
    """Where trained defaults and converted weights are kept."""
    return Path(os.environ.get("CNNVIS_CACHE") or Path.home() / ".cache" / "cnnvis_jax")


def default_run_dir() -> Path:
    return cache_dir() / "conceptnet-default"


def default_model(*, progress: bool = True) -> Model:
    """The trained default ConceptNet (trains it first, a few minutes, if absent).

    Training happens in ``<cache>/conceptnet-default.partial`` and is moved into
    place when finished, so an interrupted first use resumes and never leaves a
    half-trained default behind.
    """
    from cnnvis_jax.train import TrainConfig, load_trained, train

    final = default_run_dir()
    weights = final / "weights.safetensors"
    if not weights.exists():
        partial = final.with_name(final.name + ".partial")
        print(
            f"cnnvis: training the default model once (cached in {final})...",
            file=sys.stderr,
        )
        train(TrainConfig(), partial, progress=progress)  # every process of a run takes part
        from cnnvis_jax import distributed

        if distributed.is_primary():  # process 0 wrote it and moves it into place
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
        distributed.all_succeeded(True, "training the default model")  # then all load it
    return load_trained(weights)
