"""``cnnvis launch``: run a command as several local processes of one JAX run."""

from __future__ import annotations

import argparse

from cnnvis_jax.errors import InputError


def add_commands(sub) -> None:
    p = sub.add_parser(
        "launch",
        help="run a command as N local processes of one multi-process JAX run",
        description=(
            "Start N processes of `cnnvis <command>` on this machine, joined through "
            "jax.distributed on the loopback interface (CPU collectives over gloo): for "
            "testing multi-process runs and for using several local accelerators. Process "
            "0 prints and writes the results; when one process fails the others are "
            "stopped. On a TPU pod slice or under SLURM, start `cnnvis --distributed "
            "<command>` on every host instead (see docs/scale.md)."
        ),
    )
    p.add_argument("--processes", type=int, required=True, help="number of processes (N)")
    p.add_argument("--devices-per-process", type=int, default=None,
                   help="CPU devices per process (XLA's host device count; CPU only)")  # fmt: skip
    p.add_argument("--port", type=int, default=None,
                   help="coordinator port on 127.0.0.1 (default: a free one)")  # fmt: skip
    p.add_argument("--timeout", type=int, default=60,
                   help="seconds for the processes to find each other")  # fmt: skip
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="-- followed by the command and its arguments")  # fmt: skip
    p.set_defaults(func=cmd_launch, needs_cache=False)


def cmd_launch(args) -> int:
    from cnnvis_jax.launch import launch

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise InputError("give the command to run after --, e.g. cnnvis launch --processes 2 "
                         "-- dissect --model default --out OUT.")  # fmt: skip
    if command[0] == "launch":
        raise InputError("cnnvis launch cannot launch itself; give another command after --.")
    return launch(
        command,
        processes=args.processes,
        devices_per_process=args.devices_per_process,
        port=args.port,
        timeout=args.timeout,
    )
