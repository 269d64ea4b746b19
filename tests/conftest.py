"""Test settings: a private cache directory and no progress bars."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep trained defaults and compiled programs of the tests out of ~/.cache."""
    cache = tmp_path_factory.mktemp("cnnvis_cache")
    previous = os.environ.get("CNNVIS_CACHE")
    os.environ["CNNVIS_CACHE"] = str(cache)
    os.environ.setdefault("CNNVIS_PROGRESS", "0")
    yield cache
    if previous is None:
        os.environ.pop("CNNVIS_CACHE", None)
    else:
        os.environ["CNNVIS_CACHE"] = previous


QUICK_RECIPE = dict(epochs=2, train_size=1024, val_size=256, batch_size=32, snapshot_epochs=(1, 2))
"""A small trained ConceptNet for method tests: trains in seconds, and its units
already respond to colours and shapes (the full default recipe takes minutes)."""


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """Run directory of a quickly trained ConceptNet (``weights.safetensors``,
    ``snapshots/epoch_001.safetensors`` and ``epoch_002``, ``metrics.json``)."""
    from cnnvis_jax.train import TrainConfig, train

    run_dir = tmp_path_factory.mktemp("trained_conceptnet")
    train(TrainConfig(**QUICK_RECIPE), run_dir, progress=False, report=False)
    return run_dir


@pytest.fixture(scope="session")
def trained_conceptnet(trained_run):
    """The :class:`cnnvis_jax.Model` of :func:`trained_run` (shared by the tests)."""
    from cnnvis_jax.train import load_trained

    return load_trained(trained_run / "weights.safetensors")
