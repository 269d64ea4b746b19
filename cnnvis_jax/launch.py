"""Start a command as N local processes of one ``jax.distributed`` run.

Each process gets the coordinator address (127.0.0.1 and a free port), the number of
processes and its id through :data:`cnnvis_jax.distributed.ENV`; ``cnnvis`` joins the
group before any work. The launcher waits for all of them; when one exits with an error
the others are stopped (SIGTERM, then SIGKILL), so a failure never leaves processes
waiting for a peer that is gone. Every process is reaped before :func:`launch` returns.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from cnnvis_jax.distributed import ENV
from cnnvis_jax.errors import InputError
from cnnvis_jax.interrupt import delivered

GRACE = 10.0
"""Seconds a stopped process gets to exit after SIGTERM before SIGKILL."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_env(
    index: int, processes: int, port: int, devices_per_process: int | None, base=None
) -> dict[str, str]:
    """The environment of process ``index``: :data:`~cnnvis_jax.distributed.ENV` and,
    with ``devices_per_process``, that many CPU devices."""
    env = dict(os.environ if base is None else base)
    env.update(zip(ENV, (f"127.0.0.1:{port}", str(processes), str(index))))
    if devices_per_process is not None:
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]  # fmt: skip
        flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
        env["XLA_FLAGS"] = " ".join(flags)
        env["JAX_NUM_CPU_DEVICES"] = str(devices_per_process)
    return env


def _ended(rc: int) -> str:
    """How a process ended, from its return code, in words."""
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(
    command: Sequence[str],
    *,
    processes: int,
    devices_per_process: int | None = None,
    port: int | None = None,
    timeout: int = 60,
    python: str = sys.executable,
) -> int:
    """Run ``cnnvis <command>`` as ``processes`` local processes; returns the first
    non-zero exit status (0 when all succeed).

    Raises:
      InputError: fewer than one process or device, a port out of range.
    """
    if processes < 1:
        raise InputError(f"--processes must be at least 1, got {processes}.")
    if devices_per_process is not None and devices_per_process < 1:
        raise InputError(f"--devices-per-process must be at least 1, got {devices_per_process}.")
    if port is not None and not 0 < port < 65536:
        raise InputError(f"--port must be in 1..65535, got {port}.")
    port = free_port() if port is None else port
    argv = [python, "-m", "cnnvis_jax.cli", *command]
    with delivered():  # Ctrl-C must reach this process and those it starts
        return _run(argv, processes, port, devices_per_process, timeout)


def _run(argv: list[str], processes: int, port: int, devices_per_process, timeout) -> int:
    """Start the processes, wait for them, stop the others when one fails."""
    procs: list[subprocess.Popen] = []
    code = 0
    try:
        for i in range(processes):
            env = process_env(i, processes, port, devices_per_process)
            env["CNNVIS_JOIN_TIMEOUT"] = str(int(timeout))
            procs.append(subprocess.Popen(argv, env=env))
        running = list(procs)
        while running:
            for p in list(running):
                rc = p.poll()
                if rc is None:
                    continue
                running.remove(p)
                if rc != 0 and code == 0:
                    code = rc
                    if running:
                        print(f"cnnvis launch: process {procs.index(p)} {_ended(rc)}; stopping "
                              f"the other {len(running)} (checkpoints written so far stay valid; "
                              "a rerun of the same command resumes).", file=sys.stderr,
                              flush=True)  # fmt: skip
                    _stop(running)
                    running = []
                    break
            time.sleep(0.05)
    except KeyboardInterrupt:
        # the terminal sent SIGINT to every process: give them time to save and stop
        deadline = time.monotonic() + GRACE
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        code = 130
    finally:
        _stop(procs)
    return code


__all__ = ["free_port", "launch", "process_env"]
