"""The one parser of paces and pace sets ("1/3", "1,2,3,4"): exact `Fraction`s, so 1/3 never drifts.

Config validation checks `pace.paces` / `rspnet.speeds` with it, and every layer above (samplers, objectives,
eval) reads paces through it, so a set means the same classes everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

import numpy as np

PaceLike = str | int | Fraction


def parse_pace(s: PaceLike | float) -> Fraction:
    """Parse ``"1/3"``, ``"2"``, ``"0.5"``, ``3`` or a ``Fraction`` into an exact positive ``Fraction``.

    Floats are accepted only when they are exactly a simple fraction (0.5, 0.25); ``1/3`` as a float is
    rejected because the rounding would silently change which frames are sampled.
    """
    if isinstance(s, bool):
        raise ValueError(f"invalid pace {s!r}: expected a positive number such as 2 or '1/3'")
    if isinstance(s, Fraction):
        p = s
    elif isinstance(s, int | np.integer):
        p = Fraction(int(s))
    elif isinstance(s, float | np.floating):
        if not np.isfinite(s) or Fraction(float(s)).denominator > 1000:
            raise ValueError(f"invalid pace {s!r}: not an exact fraction; write it as a string, e.g. '1/3'")
        p = Fraction(float(s))
    elif isinstance(s, str):
        try:
            p = Fraction(s.replace(" ", ""))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"invalid pace {s!r}: expected a positive number such as '2' or '1/3'") from None
    else:
        raise ValueError(f"invalid pace {s!r} of type {type(s).__name__}: expected str, int or Fraction")
    if p <= 0:
        raise ValueError(f"invalid pace {s!r}: a pace must be > 0")
    return p


def parse_pace_set(s: str | Iterable[PaceLike]) -> tuple[Fraction, ...]:
    """Parse ``"1,2,3,4"`` / ``"[1/3, 1/2, 1]"`` / ``["1/3", 1]`` into ascending unique paces.

    The class label of a pace is its position in the returned tuple. Duplicates (``"1/2,2/4"``) are an error:
    they would silently merge two intended classes.
    """
    if isinstance(s, str):
        items: list = [t for t in s.strip().strip("[]()").split(",") if t.strip()]
    elif isinstance(s, int | Fraction | np.integer) and not isinstance(s, bool):
        items = [s]
    elif isinstance(s, Iterable):
        items = list(s)
    else:
        raise ValueError(f"invalid pace set {s!r}: expected a string like '1,2,3,4' or a list of paces")
    if not items:
        raise ValueError(f"invalid pace set {s!r}: it is empty (it must list at least one value, e.g. "
                         "'1,2,3,4')")
    paces = [parse_pace(x) for x in items]
    if len(set(paces)) != len(paces):
        dup = sorted({format_pace(p) for p in paces if paces.count(p) > 1})
        raise ValueError(f"invalid pace set {s!r}: duplicate pace(s) {', '.join(dup)}")
    return tuple(sorted(paces))


def format_pace(p: Fraction) -> str:
    """``Fraction(1, 3)`` -> ``"1/3"``, ``Fraction(2)`` -> ``"2"`` (round-trips through ``parse_pace``)."""
    return str(Fraction(p))
