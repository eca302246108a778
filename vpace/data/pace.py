"""Pace sampling (paper §3.1): which source frames make up a clip played at pace ``p``.

Frame ``i`` of a clip is ``(start + floor(i * p)) mod num_frames``: ``p > 1`` strides (fast motion),
``p < 1`` repeats the preceding frame (slow motion, p=1/2 -> s, s, s+1, s+1, ...), and a clip that runs past
the last frame loops over the video (it *wraps*). Paces are exact ``Fraction`` s so 1/3 never drifts through
float rounding; ``floor(i * p)`` is computed as the integer ``i * num // den``.

Where a training clip may start is the start policy (``data.start``), one rule for the pace and the RSPNet
samplers. A wrapped clip holds a cut from the last frame back to the first, and the faster the pace the more
clips wrap if starts are drawn over the whole video: a net can then tell pace by spotting the cut, the
shortcut §3.1 warns about. ``fit`` (default, the paper's text) therefore starts a clip only where it fits and
loops only when the video is shorter than the clip's span; ``wrap`` starts anywhere (the official code).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from vpace.config import START_POLICIES, PaceLike, format_pace, parse_pace, parse_pace_set

__all__ = [
    "PaceLike",
    "check_start_policy",
    "clip_span",
    "draw_distinct_paces",
    "draw_start",
    "format_pace",
    "pace_label",
    "pace_metric_name",
    "parse_pace",
    "parse_pace_set",
    "sample_indices",
    "start_candidates",
    "unique_with_map",
    "wraps",
]


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


def pace_metric_name(p: Fraction) -> str:
    """``p2``, ``p1_3``: a pace as a metric-name part (``/`` would nest the name in TensorBoard and Ray)."""
    return "p" + format_pace(p).replace("/", "_")


def clip_span(clip_len: int, pace: PaceLike) -> int:
    """Source frames a clip covers from its start: the last offset ``floor((clip_len - 1) * p)`` + 1."""
    p = parse_pace(pace)
    return (int(clip_len) - 1) * p.numerator // p.denominator + 1


def wraps(num_frames: int, clip_len: int, pace: PaceLike, start: int) -> bool:
    """Whether the clip runs past the last frame and loops back to the first (the cut a net could learn)."""
    return int(start) + clip_span(clip_len, pace) > int(num_frames)


def check_start_policy(policy: str) -> str:
    if policy not in START_POLICIES:
        raise ValueError(f"start policy must be one of {START_POLICIES}, got {policy!r}")
    return policy


def start_candidates(num_frames: int, span: int, policy: str) -> int:
    """How many starts ``0 .. k-1`` the policy allows for a clip spanning ``span`` frames.

    ``fit``: the starts whose clip ends inside the video (all starts when none does: the clip must loop);
    ``wrap``: every frame of the video.
    """
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    fitting = int(num_frames) - int(span) + 1
    return fitting if check_start_policy(policy) == "fit" and fitting >= 1 else int(num_frames)


def draw_start(num_frames: int, clip_len: int, pace: PaceLike, policy: str, rng: np.random.Generator,
               taken: Sequence[int] = ()) -> int:
    """A start uniform over the policy's candidates, distinct from ``taken`` (RSPNet's clips of one video
    start at different frames); when every candidate is taken, any free frame (that clip then wraps)."""
    k = start_candidates(num_frames, clip_span(clip_len, pace), policy)
    if not taken:
        return int(rng.integers(0, k))
    for pool in (np.arange(k), np.arange(int(num_frames))):
        free = np.setdiff1d(pool, np.asarray(taken, dtype=np.int64))
        if len(free):
            return int(rng.choice(free))
    raise ValueError(f"cannot pick {len(taken) + 1} distinct starts in a video of {num_frames} frames")


def draw_distinct_paces(num_paces: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct pace labels out of ``num_paces`` (same-context contrast: one video, different paces)."""
    if n < 1:
        raise ValueError(f"clips per video must be >= 1, got {n}")
    if n > num_paces:
        raise ValueError(
            f"cannot draw {n} distinct paces from a set of {num_paces} paces (need n <= {num_paces})"
        )
    return rng.choice(num_paces, size=n, replace=False).astype(np.int64)
