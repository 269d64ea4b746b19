"""Decoding ahead of the device (``features.prefetched``): results in item order on
threads or worker processes, bounded look-ahead, a closure kept on threads, and a
dissection of Broden-format files counting the same with decoding processes."""

from __future__ import annotations

import functools
import threading
import time

import numpy as np
import pytest

from cnnvis_jax.errors import InputError
from cnnvis_jax.features import decode_processes, decode_threads, prefetched


def _slow_square(delay: float, x: int) -> int:
    time.sleep(delay * (x % 3))  # later items often finish first
    return x * x


@pytest.mark.parametrize("workers", [{"threads": 3, "processes": 0}, {"processes": 2}])
def test_results_come_in_item_order(workers):
    items = list(range(12))
    fn = functools.partial(_slow_square, 0.01)
    assert list(prefetched(fn, items, **workers)) == [x * x for x in items]


def test_look_ahead_is_bounded():
    started, lock = [], threading.Lock()

    def record(x):
        with lock:
            started.append(x)
        return x

    seen = []
    for x in prefetched(record, list(range(20)), threads=2, ahead=3):
        time.sleep(0.01)
        with lock:
            assert len(started) <= x + 1 + 3  # at most `ahead` beyond what was taken
        seen.append(x)
    assert seen == list(range(20))


def test_a_closure_runs_on_threads_when_processes_are_asked():
    here = threading.get_ident()
    ids = list(prefetched(lambda _: threading.get_ident(), [0, 1, 2], processes=2))
    assert here not in ids  # decoded on worker threads of this process


def test_worker_counts_from_the_environment(monkeypatch):
    monkeypatch.delenv("CNNVIS_DECODE_PROCESSES", raising=False)
    assert decode_processes() == 0
    monkeypatch.setenv("CNNVIS_DECODE_PROCESSES", "3")
    monkeypatch.setenv("CNNVIS_DECODE_THREADS", "5")
    assert (decode_processes(), decode_threads()) == (3, 5)
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv("CNNVIS_DECODE_PROCESSES", bad)
        with pytest.raises(InputError, match="CNNVIS_DECODE_PROCESSES must be a positive"):
            decode_processes()


def test_dissection_counts_the_same_with_decoding_processes(tmp_path, monkeypatch):
    from cnnvis_jax import zoo
    from cnnvis_jax.data.broden import BrodenSource
    from cnnvis_jax.data.synthetic_broden import write_synthetic_broden
    from cnnvis_jax.dissection import dissect

    write_synthetic_broden(tmp_path / "b", images=24, image_size=64, seed=0)
    source = BrodenSource(tmp_path / "b")
    model = zoo.random_model("conceptnet", warn=False)

    def counts():
        d = dissect(model, source, ["conv3"], batch_size=8, engine="sparse", progress=False)
        return d.layers["conv3"].counts

    from cnnvis_jax import features

    pools = []
    original = features._decoding_pool

    def spy(*args):
        pool, submit = original(*args)
        pools.append(type(pool).__name__)
        return pool, submit

    monkeypatch.setattr(features, "_decoding_pool", spy)
    monkeypatch.delenv("CNNVIS_DECODE_PROCESSES", raising=False)
    threads = counts()
    monkeypatch.setenv("CNNVIS_DECODE_PROCESSES", "2")
    processes = counts()
    assert pools == ["ThreadPoolExecutor"] * 2 + ["ProcessPoolExecutor"] * 2  # both passes
    for key in ("both", "units", "labels"):
        np.testing.assert_array_equal(getattr(threads, key), getattr(processes, key), key)
