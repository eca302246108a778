"""Pace sampling (paper §3.1): which source frames make up a clip played at pace ``p``.

Frame ``i`` of a clip is ``(start + floor(i * p)) mod num_frames``: ``p > 1`` strides (fast motion),
``p < 1`` repeats the preceding frame (slow motion, p=1/2 -> s, s, s+1, s+1, ...), and a clip longer than the
video loops over it. Paces are exact ``Fraction`` s so 1/3 never drifts through float rounding;
``floor(i * p)`` is computed as the integer ``i * num // den``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np

PaceLike = str | int | Fraction

__all__ = [
    "PaceLike",
    "draw_distinct_paces",
    "format_pace",
    "pace_label",
    "parse_pace",
    "parse_pace_set",
    "random_start",
    "sample_indices",
    "unique_with_map",
]


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
        raise ValueError(f"invalid pace set {s!r}: it is empty")
    paces = [parse_pace(x) for x in items]
    if len(set(paces)) != len(paces):
        dup = sorted({format_pace(p) for p in paces if paces.count(p) > 1})
        raise ValueError(f"invalid pace set {s!r}: duplicate pace(s) {', '.join(dup)}")
    return tuple(sorted(paces))


def format_pace(p: Fraction) -> str:
    """``Fraction(1, 3)`` -> ``"1/3"``, ``Fraction(2)`` -> ``"2"`` (round-trips through ``parse_pace``)."""
    return str(Fraction(p))


def pace_label(pace_set: Sequence[Fraction], pace: PaceLike) -> int:
    """Class label of ``pace`` = its position in the (ascending) pace set."""
    p = parse_pace(pace)
    try:
        return list(pace_set).index(p)
    except ValueError:
        names = ", ".join(format_pace(x) for x in pace_set)
        raise ValueError(f"pace {format_pace(p)} is not in the pace set [{names}]") from None


def sample_indices(num_frames: int, clip_len: int, pace: PaceLike, start: int) -> np.ndarray:
    """Source frame indices ``(start + floor(i * pace)) mod num_frames`` for ``i`` in ``0..clip_len-1``."""
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    if int(clip_len) != clip_len or clip_len < 1:
        raise ValueError(f"clip_len must be an integer >= 1, got {clip_len!r}")
    if int(start) != start:
        raise ValueError(f"start must be an integer, got {start!r}")
    p = parse_pace(pace)
    i = np.arange(int(clip_len), dtype=object)  # python ints: exact for any size
    offsets = (i * p.numerator) // p.denominator
    return ((int(start) + offsets) % int(num_frames)).astype(np.int64)


def unique_with_map(indices: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(unique_sorted, index_map)`` with ``unique_sorted[index_map] == indices``: decode each frame once."""
    arr = np.asarray(indices, dtype=np.int64).reshape(-1)
    unique, index_map = np.unique(arr, return_inverse=True)
    return unique.astype(np.int64), index_map.reshape(-1).astype(np.int64)


def random_start(num_frames: int, rng: np.random.Generator) -> int:
    """A start frame uniform over the whole video (the clip loops if it runs past the end)."""
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    return int(rng.integers(0, int(num_frames)))


def draw_distinct_paces(num_paces: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct pace labels out of ``num_paces`` (same-context contrast: one video, different paces)."""
    if n < 1:
        raise ValueError(f"clips per video must be >= 1, got {n}")
    if n > num_paces:
        raise ValueError(
            f"cannot draw {n} distinct paces from a set of {num_paces} paces (need n <= {num_paces})"
        )
    return rng.choice(num_paces, size=n, replace=False).astype(np.int64)
