"""The ``cnnvis`` command: parse arguments, call the library, write files.

Conventions shared by every command: ``--model default`` (the cached trained
ConceptNet) or ``--model NAME [--weights FILE]``; ``--dataset concepts |
broden:DIR | folder:DIR``; ``--out DIR`` receives every file. Errors go to stderr
as one line naming the problem and the fix; exit status 2 for bad arguments or
input, 1 for other failures.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cnnvis_jax.errors import CnnvisError, InputError

COMMAND_MODULES = ("survey", "train", "models", "am", "evaluate", "deconv", "inversion", "monitor",
                   "dissection", "atlas", "explain", "robustness", "sweep", "hub", "launch")  # fmt: skip
"""The modules of ``cnnvis_jax.cli`` that register commands (``add_commands(sub)``), in
the order ``cnnvis --help`` lists them. They import the library only inside their
command functions, so ``cnnvis --help`` loads no JAX."""


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="cnnvis",
        description="See what convolutional networks learn (JAX).",
    )
    group = parser.add_argument_group(
        "several processes (jax.distributed; see docs/scale.md)",
        "run the command as one process of a multi-process run; `cnnvis launch` sets "
        "these for local processes",
    )
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    group.add_argument("--process-id", type=int, metavar="I", help="this process (0..N-1)")
    group.add_argument("--distributed", action="store_true",
                       help="find the other processes by JAX's cluster detection (TPU pod "
                       "slice, SLURM)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"cnnvis_jax.cli.{name}").add_commands(sub)
    return parser


def enable_compilation_cache() -> None:
    """Keep compiled XLA programs across runs (``<cache>/xla``): a rerun of a
    command starts in seconds instead of recompiling. Set through JAX's environment
    variables when JAX is not loaded yet, so commands that need no JAX never load it."""
    import os

    from cnnvis_jax.default import cache_dir

    # Programs that take 0.1 s or more to compile are kept: a ResNet-18 forward compiles
    # in 0.35 s on a 2-core CPU and loads from the cache in 0.03 s.
    settings = {"jax_compilation_cache_dir": str(cache_dir() / "xla"),
                "jax_persistent_cache_min_compile_time_secs": 0.1}  # fmt: skip
    if "jax" in sys.modules:
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    else:
        for name, value in settings.items():
            os.environ.setdefault(name.upper(), str(value))


_PROCESS_FLAGS = ("--coordinator", "--num-processes", "--process-id")


def _same_everywhere(argv: Sequence[str]) -> dict[str, str]:
    """What every process of a run must share: the command line (without the process's
    own id) and the versions of the package, JAX and Python."""
    import jax

    from cnnvis_jax import __version__

    command, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _PROCESS_FLAGS:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in _PROCESS_FLAGS)):
            command.append(a)
    return {"command line": " ".join(command), "cnnvis_jax": __version__,
            "jax": jax.__version__, "python": sys.version.split()[0]}  # fmt: skip


def join_processes(args, argv: Sequence[str]) -> bool:
    """Join a multi-process run when the flags or the environment say so (nothing for
    ``launch`` itself); a process other than 0 then prints nothing on stdout and shows
    no progress. Returns whether this is a run of several processes.

    Raises:
      InputError: bad settings, an unanswered coordinator, or processes started with
        different commands or versions.
    """
    import os

    from cnnvis_jax import distributed

    if args.command == "launch":
        return False
    timeout = int(os.environ.get("CNNVIS_JOIN_TIMEOUT", distributed.INIT_TIMEOUT))
    several = distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                     auto=args.distributed, timeout=timeout)  # fmt: skip
    if several:
        distributed.agree(_same_everywhere(argv))
        if not distributed.is_primary():
            os.environ["CNNVIS_PROGRESS"] = "0"
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the whole process
    return several


def _lost_a_peer(error: BaseException) -> bool:
    """Whether ``error`` is JAX's runtime failing a collective (a process of the run
    died or its connection broke)."""
    import jax

    return isinstance(error, getattr(jax.errors, "JaxRuntimeError", ()))


def main(argv: Sequence[str] | None = None) -> int:
    from cnnvis_jax import distributed
    from cnnvis_jax.cli.common import check_outputs, release_locks

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    code = 1
    several = False
    try:
        enable_compilation_cache()  # before JAX loads
        several = join_processes(args, argv)
        ok = False
        try:
            if distributed.is_primary():  # process 0 alone owns (and locks) the output folder
                check_outputs(args)  # before any work
            ok = True
        finally:
            if several:
                distributed.all_succeeded(ok, "checking the output folder")
        code = int(args.func(args) or 0)
        return code
    except InputError as e:
        print(f"cnnvis: error: {e}", file=sys.stderr)
        return 2
    except CnnvisError as e:
        print(f"cnnvis: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cnnvis: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    except OSError as e:  # a write failed mid-run (full disk, permissions)
        where = f" {e.filename}" if e.filename else ""
        print(
            f"cnnvis: error: cannot write{where} ({e.strerror or e}); free space or fix "
            "permissions and rerun (finished work is kept).",
            file=sys.stderr,
        )
        return 2
    except Exception as e:
        if not (several and _lost_a_peer(e)):
            raise
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        print(f"cnnvis: failed: lost contact with another process of this run ({first}); "
              "checkpoints written so far are kept: rerun the same command, with any number "
              "of processes, to resume.", file=sys.stderr)  # fmt: skip
        return 1
    finally:
        release_locks(failed=code != 0)
