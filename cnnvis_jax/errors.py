"""Errors raised by cnnvis_jax.

Every message names the problem and how to fix it. The command line maps
:class:`InputError` (bad arguments, bad input files) to exit status 2 and any
other :class:`CnnvisError` to exit status 1.
"""

from __future__ import annotations


class CnnvisError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(CnnvisError, ValueError):
    """An argument or an input (images, names, indices) is not acceptable."""


class WeightsError(InputError):
    """A weights file is missing, unsafe, corrupt, or does not match the model."""


class DataError(InputError):
    """A data set directory or file is malformed, unsafe or inconsistent."""


def did_you_mean(name: str, valid: list[str] | tuple[str, ...], limit: int = 40) -> str:
    """Return a short ``valid names: ...`` clause for an error message."""
    import difflib

    close = difflib.get_close_matches(name, list(valid), n=3)
    shown = ", ".join(list(valid)[:limit])
    more = f" (+{len(valid) - limit} more)" if len(valid) > limit else ""
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"valid names: {shown}{more}.{hint}"
