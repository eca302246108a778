"""Watcher of one local Ray session; run as a script by `vpace.train.ray_session` (stdlib only, so it starts
in milliseconds and imports nothing of vpace, torch or Ray).

Usage: python -I session_reaper.py ENV_NAME MARKER, with stdin = a pipe whose write end only the driver
holds. End of input means the driver is gone (exited, crashed or SIGKILLed) or has shut its Ray down; then
every process whose environment has ENV_NAME=MARKER gets SIGTERM, and SIGKILL after a grace period (Ray's
agents can be stuck in a C++ call that keeps their SIGTERM handler from running).
"""

from __future__ import annotations

import os
import signal
import sys
import time

GRACE_S = 3.0  # SIGTERM first; SIGKILL whatever is left after this
GIVE_UP_S = 30.0


def session_pids(needle: bytes) -> list[int]:
    """Live processes (zombies have an empty environment) whose environment holds `needle`."""
    me, out = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    out.append(int(name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return out


def sweep(needle: bytes) -> None:
    start = time.monotonic()
    while (pids := session_pids(needle)) and time.monotonic() - start < GIVE_UP_S:
        sig = signal.SIGTERM if time.monotonic() - start < GRACE_S else signal.SIGKILL
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        time.sleep(0.25)


def main() -> None:
    env_name, marker = sys.argv[1], sys.argv[2]
    try:
        sys.stdin.buffer.read()  # blocks until the driver's end of the pipe is closed
    except (OSError, KeyboardInterrupt):
        pass
    if os.path.isdir("/proc"):
        sweep(f"{env_name}={marker}".encode())


if __name__ == "__main__":
    main()
