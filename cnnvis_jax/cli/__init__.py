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

COMMAND_MODULES = ("survey", "train", "models", "am", "deconv", "inversion", "monitor",
                   "dissection", "robustness", "sweep", "hub")  # fmt: skip
"""The modules of ``cnnvis_jax.cli`` that register commands (``add_commands(sub)``), in
the order ``cnnvis --help`` lists them. They import the library only inside their
command functions, so ``cnnvis --help`` loads no JAX."""


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="cnnvis",
        description="See what convolutional networks learn (JAX).",
    )
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


def main(argv: Sequence[str] | None = None) -> int:
    from cnnvis_jax.cli.common import check_outputs, release_locks

    parser = build_parser()
    args = parser.parse_args(argv)
    code = 1
    try:
        check_outputs(args)  # before any work
        enable_compilation_cache()
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
    finally:
        release_locks(failed=code != 0)
