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
