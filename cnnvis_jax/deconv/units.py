"""Parsing unit selections given on the command line (``3``, ``0:16``, ``1,5,9``)."""

from __future__ import annotations

from cnnvis_jax.errors import InputError

_FORMS = "use a unit ('3'), a range ('0:16', end exclusive) or a list ('1,5,9')"


def _integer(text: str, spec: str) -> int:
    text = text.strip()
    try:
        value = int(text, 10)
    except ValueError:
        raise InputError(f"--units {spec!r}: {text!r} is not an integer; {_FORMS}.") from None
    if value < 0:
        raise InputError(f"--units {spec!r}: unit {value} is negative; units count from 0.")
    return value


def parse_units(spec: str, channels: int | None = None) -> tuple[int, ...]:
    """Unit indices named by ``spec``, in the order given.

    ``spec`` is a comma-separated list whose items are single units (``3``) or
    half-open ranges ``start:stop`` (``0:16`` is units 0..15); ``1,5,9`` and
    ``0:4,10`` are lists. With ``channels`` (the layer's channel count) every unit
    must lie in ``0..channels-1``.

    Returns:
      A non-empty tuple of distinct non-negative ints.

    Raises:
      InputError: for an empty or malformed spec, an empty or reversed range, a
        repeated unit, or (with ``channels``) a unit out of range.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"--units is empty; {_FORMS}.")
    units: list[int] = []
    for item in spec.split(","):
        if not item.strip():
            raise InputError(f"--units {spec!r} has an empty item; {_FORMS}.")
        if ":" in item:
            parts = item.split(":")
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                raise InputError(
                    f"--units {spec!r}: range {item.strip()!r} needs a start and a stop, "
                    f"as in '0:16'; {_FORMS}."
                )
            start, stop = _integer(parts[0], spec), _integer(parts[1], spec)
            if stop <= start:
                raise InputError(
                    f"--units {spec!r}: range {item.strip()!r} is empty (the stop is "
                    f"exclusive and must exceed the start), e.g. '{start}:{start + 1}'."
                )
            units.extend(range(start, stop))
        else:
            units.append(_integer(item, spec))
    seen: set[int] = set()
    for unit in units:
        if unit in seen:
            raise InputError(f"--units {spec!r} names unit {unit} more than once.")
        seen.add(unit)
    if channels is not None:
        bad = [u for u in units if u >= channels]
        if bad:
            raise InputError(
                f"--units {spec!r}: unit {bad[0]} is out of range; the layer has "
                f"{channels} units (0..{channels - 1})."
            )
    return tuple(units)
