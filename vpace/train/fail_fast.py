"""A Train V2 controller callback: a checkpoint that cannot be loaded ends the run instead of being retried.

Its own module because it subclasses a Ray class: `vpace.train` imports Ray only when a run starts.
"""

from __future__ import annotations

from typing import Any

from ray.train import UserCallback

from vpace.train.checkpoint import CheckpointError


class FailFastOnCheckpointError(UserCallback):
    """In the Train controller: a worker that cannot load its checkpoint fails the same way on every retry,
    so end the run instead of spending `max_failures` attempts on it. Raising here makes the controller fail
    with a `ControllerError` of this kind, which Train V2's failure policy does not retry (a worker group
    error always is); `run_task` unwraps it. The driver's `plan_resume` catches the usual case before any
    worker starts; this covers remote storage and a checkpoint broken while the run is going."""

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        for err in worker_exceptions.values():
            cause = getattr(err, "_base_exc", err)  # Train wraps a worker's exception with its traceback text
            if isinstance(cause, CheckpointError):
                raise cause
