"""Faults injected from outside the training code: test-only wrappers of a `TrainSpec`'s functions.

Each is a small picklable object (Ray workers get it with the spec; the tests register this module for
pickling by value). None of it ships: the user's config has no fault knobs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def world_rank() -> int:
    import ray.train

    return ray.train.get_context().get_world_rank()


class HoldAtStep:
    """`forward_loss` that, in the first attempt only, holds rank 0 inside its `at`-th step: it writes its pid
    to `<gate>/held` and sleeps, so the test can SIGKILL that worker process at a step it knows."""

    def __init__(self, forward_loss: Any, at: int, gate: Path) -> None:
        self.inner, self.at, self.gate, self.calls = forward_loss, at, str(gate), 0

    def __call__(self, model, batch, generator, cfg):
        self.calls += 1
        held = Path(self.gate) / "held"
        if self.calls == self.at and world_rank() == 0 and not held.exists():
            tmp = held.with_suffix(".tmp")
            tmp.write_text(str(os.getpid()))
            tmp.replace(held)
            while True:  # until killed
                time.sleep(0.2)
        return self.inner(model, batch, generator, cfg)


def kill_held(gate: Path, runner_alive) -> int:
    """Wait for `HoldAtStep` to hold a worker (polling: the test's timeout bounds it), SIGKILL it; its pid."""
    import signal

    held = gate / "held"
    while not held.exists():
        assert runner_alive(), "the run ended before a worker was held"
        time.sleep(0.2)
    pid = int(held.read_text())
    os.kill(pid, signal.SIGKILL)
    return pid


class CountAttempts:
    """`build_model` that appends a line to `log` each time a worker starts an attempt."""

    def __init__(self, build_model: Any, log: Path) -> None:
        self.inner, self.log = build_model, str(log)

    def __call__(self, cfg):
        with open(self.log, "a") as f:
            f.write("attempt\n")
        return self.inner(cfg)
