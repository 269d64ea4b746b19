"""Several processes as one run, through ``jax.distributed``.

One process per host (or per local accelerator); together they see one global device
mesh (:mod:`cnnvis_jax.parallel`) and the library's functions run unchanged: each
process reads only its rows of every batch, per-process host state (top values, counts)
is merged exactly at the end, and process 0 alone writes files.

How processes find each other:

* explicitly: ``coordinator="HOST:PORT"``, ``num_processes``, ``process_id`` (the
  command line's ``--coordinator``/``--num-processes``/``--process-id``, or the
  environment variables ``CNNVIS_COORDINATOR``, ``CNNVIS_NUM_PROCESSES``,
  ``CNNVIS_PROCESS_ID`` that ``cnnvis launch`` sets);
* by JAX's cluster detection (TPU pod slices, SLURM, ...): ``auto=True`` (``cnnvis
  --distributed``).

On CPU the processes' collectives run over gloo (loopback or the network).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from typing import Any

import numpy as np

from cnnvis_jax.errors import CnnvisError, InputError

ENV = ("CNNVIS_COORDINATOR", "CNNVIS_NUM_PROCESSES", "CNNVIS_PROCESS_ID")
"""The environment variables ``cnnvis launch`` sets for each process it starts."""

INIT_TIMEOUT = 60
"""Seconds to wait for every process to reach the coordinator."""

HEARTBEAT_TIMEOUT = 30
"""Seconds after which the others stop when a process stops answering."""

_state: dict[str, Any] = {"initialized": False}


def settings_from_env(environ=os.environ) -> dict[str, Any] | None:
    """``{coordinator, num_processes, process_id}`` from :data:`ENV`, or None when
    unset. Raises :class:`InputError` for a partial or malformed set."""
    values = [environ.get(name) for name in ENV]
    if not any(values):
        return None
    if not all(values):
        missing = [n for n, v in zip(ENV, values) if not v]
        raise InputError(f"{', '.join(missing)} unset while {ENV[0]} etc. are set; set all three.")
    try:
        return {"coordinator": values[0], "num_processes": int(values[1]),
                "process_id": int(values[2])}  # fmt: skip
    except ValueError:
        raise InputError(
            f"{ENV[1]}={values[1]!r} and {ENV[2]}={values[2]!r} must be integers."
        ) from None


def check_settings(coordinator: str, num_processes: int, process_id: int) -> None:
    """Refuse a malformed address or process numbers before any connection is tried."""
    host, _, port = str(coordinator).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"coordinator {coordinator!r} is not HOST:PORT (e.g. 10.0.0.1:1234).")
    if num_processes < 1:
        raise InputError(f"the number of processes must be at least 1, got {num_processes}.")
    if not 0 <= process_id < num_processes:
        raise InputError(
            f"process id {process_id} is out of range for {num_processes} processes "
            f"(0..{num_processes - 1})."
        )


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    timeout: int = INIT_TIMEOUT,
) -> bool:
    """Join the run's process group (once; later calls do nothing). Returns whether
    this is a run of several processes.

    With no arguments and ``auto=False`` the environment (:data:`ENV`) decides; when it
    is unset this is a one-process run and nothing happens.

    When the group does not form within ``timeout`` seconds (a coordinator that does
    not answer, a process that never starts) the process prints one line naming the
    address on stderr and exits with status 2: JAX's runtime would otherwise abort it.

    Raises:
      InputError: malformed settings or an address that cannot be used.
    """
    if _state["initialized"]:
        return process_count() > 1
    explicit = coordinator is not None or num_processes is not None or process_id is not None
    if explicit:
        if coordinator is None or num_processes is None or process_id is None:
            raise InputError("give --coordinator, --num-processes and --process-id together.")
        settings = {"coordinator": coordinator, "num_processes": num_processes,
                    "process_id": process_id}  # fmt: skip
    else:
        settings = settings_from_env()
    if settings is None and not auto:
        return False
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only
    kwargs = dict(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT)
    if settings is not None:
        check_settings(**settings)
        if settings["num_processes"] == 1:
            _state["initialized"] = True
            return False
        kwargs.update(coordinator_address=settings["coordinator"],
                      num_processes=settings["num_processes"],
                      process_id=settings["process_id"])  # fmt: skip
    where = settings["coordinator"] if settings else "the cluster's coordinator (auto-detected)"
    message = (
        f"could not join the process group at {where} within {timeout} s; start every "
        "process with the same --coordinator and --num-processes, and check the address."
    )
    # JAX's client aborts the whole process when the group does not form in time, so a
    # watchdog says why first (and exits with the status of bad input).
    kwargs["initialization_timeout"] = int(timeout) + 30
    watchdog = threading.Timer(float(timeout), _give_up, (message,))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # a refused or malformed address
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{message} ({text})") from None
    finally:
        watchdog.cancel()
    _state["initialized"] = True
    return process_count() > 1


def _give_up(message: str) -> None:
    sys.stderr.write(f"cnnvis: error: {message}\n")
    sys.stderr.flush()
    os._exit(2)


def process_count() -> int:
    import jax

    return jax.process_count()


def process_index() -> int:
    import jax

    return jax.process_index()


def is_primary() -> bool:
    """Whether this process writes the run's files: process 0 of a multi-process run,
    and always a process that never loaded JAX or runs alone."""
    if "jax" not in sys.modules:
        return True
    return process_index() == 0


def allgather(tree):
    """Every process's ``tree`` (numpy arrays), stacked on a new leading axis in process
    order; in one process, each array with a leading axis of 1."""
    if process_count() == 1:
        import jax

        return jax.tree_util.tree_map(lambda a: np.asarray(a)[None], tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=False)


def sum_over_processes(tree):
    """The element-wise sum of ``tree`` (numpy arrays) over the processes."""
    import jax

    return jax.tree_util.tree_map(lambda a: np.asarray(a).sum(axis=0), allgather(tree))


def broadcast(tree):
    """Process 0's ``tree`` on every process."""
    if process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return multihost_utils.broadcast_one_to_all(tree)


def _text_gather(text: str) -> list[str]:
    data = np.frombuffer(text.encode(), np.uint8)
    longest = int(allgather(np.asarray(len(data), np.int64)).max())
    padded = np.zeros(longest, np.uint8)
    padded[: len(data)] = data
    rows = allgather(padded)
    return [bytes(r).rstrip(b"\0").decode() for r in rows]


def agree(fields: dict[str, Any]) -> None:
    """Refuse to go on unless every process has the same ``fields`` (e.g. the command
    line and the package versions), naming the first one that differs.

    Raises:
      InputError: on every process, naming the field and the processes' values.
    """
    if process_count() == 1:
        return
    text = json.dumps(fields, sort_keys=True, default=str)
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
    digests = allgather(digest)
    if (digests == digests[0]).all():
        return
    seen = [json.loads(t) for t in _text_gather(text)]
    for key in sorted(set().union(*seen)):
        values = [s.get(key) for s in seen]
        if any(v != values[0] for v in values):
            shown = "; ".join(f"process {i}: {v!r}" for i, v in enumerate(values))
            raise InputError(
                f"the processes were started differently ({key} differs: {shown}); start "
                "every process with the same command and installation."
            )
    raise CnnvisError("the processes' settings differ")  # pragma: no cover


def all_succeeded(ok: bool, what: str) -> None:
    """A barrier that also says whether every process got past ``what``.

    Raises:
      CnnvisError: on the processes that succeeded, when another one failed (its own
        error is printed by that process).
    """
    if process_count() == 1:
        return
    flags = allgather(np.asarray(bool(ok), np.int32))
    failed = [i for i, f in enumerate(flags.tolist()) if not f]
    if failed and ok:
        raise CnnvisError(
            f"process(es) {', '.join(map(str, failed))} failed at {what}; see their error."
        )


__all__ = [
    "ENV",
    "agree",
    "all_succeeded",
    "allgather",
    "broadcast",
    "check_settings",
    "initialize",
    "is_primary",
    "process_count",
    "process_index",
    "settings_from_env",
    "sum_over_processes",
]
