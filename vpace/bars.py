"""The one home of vpace's progress bars: live on a terminal, one plain line about every 30 s elsewhere.

Why: tqdm redraws ~10 times a second with carriage returns. Written to a file or a pipe
(`vpace retrieve > log`, `ray job logs`) that is hundreds of `\\r` updates a minute in one endless line.
Off a terminal a bar made here prints whole ASCII lines (count, rate, ETA), at most one per
`LINE_INTERVAL_S`. A bar inside a Ray worker (`forwarded=True`) always prints whole lines, because Ray
forwards worker output line by line; it prints every `FORWARDED_LIVE_S` when the driver's terminal is
watched live (`vpace` calls `mark_terminal` before its verbs start a local Ray), else every
`LINE_INTERVAL_S`.
Imports nothing of vpace (lowest layer).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

__all__ = ["DRIVER_TTY_ENV", "INTERVAL_ENV", "LINE_INTERVAL_S", "line_interval", "mark_terminal",
           "progress_bar"]

LINE_INTERVAL_S = 30.0  # seconds between the plain lines of a bar that writes to a file or a pipe
FORWARDED_LIVE_S = 5.0  # seconds between the lines of a Ray worker's bar when the driver is on a terminal
INTERVAL_ENV = "VPACE_PROGRESS_INTERVAL_S"  # overrides LINE_INTERVAL_S (a quieter log, or a quick test)
DRIVER_TTY_ENV = "VPACE_DRIVER_TTY"  # "1": the driver's stderr is a terminal (inherited by a local Ray)


def line_interval() -> float:
    """Seconds between plain lines: `LINE_INTERVAL_S`, or `$VPACE_PROGRESS_INTERVAL_S` when set."""
    text = os.environ.get(INTERVAL_ENV, "")
    try:
        return max(0.0, float(text)) if text else LINE_INTERVAL_S
    except ValueError:
        return LINE_INTERVAL_S


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def mark_terminal(stream: TextIO | None = None) -> None:
    """Record, for the processes this one starts (a local Ray's workers inherit the environment), whether
    this driver's stderr is a terminal: their forwarded bars then print more often."""
    os.environ[DRIVER_TTY_ENV] = "1" if _is_terminal(stream if stream is not None else sys.stderr) else "0"


class _Lines:
    """A tqdm target that turns each refresh into a whole line (no carriage return)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, s: str) -> None:
        s = s.replace("\r", "").strip()
        if s:
            self.stream.write(s + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable | None = None, *, desc: str, unit: str, total: int | None = None,
                 initial: int = 0, enabled: bool = True, forwarded: bool = False,
                 stream: TextIO | None = None) -> Any:
    """A tqdm bar over `iterable` (or updated by hand) with count, rate and ETA; see the module docstring.

    `forwarded`: the bar runs in a Ray worker whose output the driver relays line by line."""
    from tqdm import tqdm

    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    stream = stream if stream is not None else sys.stderr
    common = dict(total=total, initial=initial, desc=desc, unit=unit)
    if not forwarded and _is_terminal(stream):
        return tqdm(iterable, file=stream, dynamic_ncols=True, **common)
    live = forwarded and os.environ.get(DRIVER_TTY_ENV) == "1"
    every = FORWARDED_LIVE_S if live else line_interval()
    # maxinterval = mininterval: tqdm's monitor thread may force a refresh only after that long without one
    return tqdm(iterable, file=_Lines(stream), mininterval=every, maxinterval=max(every, 0.1), ascii=True,
                **common)
