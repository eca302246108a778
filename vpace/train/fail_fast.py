"""A Train V2 controller callback: a checkpoint that cannot be loaded ends the run instead of being retried.

Its own module because it subclasses a Ray class: `vpace.train` imports Ray only when a run starts.
"""

from __future__ import annotations

from typing import Any

from ray.train import UserCallback

from vpace.train.checkpoint import CheckpointError


def find_error(err: BaseException, kind: type[BaseException], depth: int = 4) -> BaseException | None:
    """`err` or the first exception of type `kind` it carries in its standard `args`, `__cause__` or
    `__context__`. Train V2 hands `after_exception` a wrapper that keeps the worker's own exception (with its
    traceback text) as its first argument; its public API has no accessor for it, so look where every Python
    exception keeps what it was built from, never at a Ray attribute."""
    if isinstance(err, kind):
        return err
    if depth == 0:
        return None
    inner = [a for a in err.args if isinstance(a, BaseException)] + [err.__cause__, err.__context__]
    return next((f for e in inner if e is not None and (f := find_error(e, kind, depth - 1))), None)


class FailFastOnCheckpointError(UserCallback):
    """In the Train controller: a worker that cannot load its checkpoint fails the same way on every retry,
    so end the run instead of spending `max_failures` attempts on it. Raising here makes the controller fail
    with a `ControllerError` of this kind, which Train V2's failure policy does not retry (a worker group
    error always is); `run_task` unwraps it. The driver's check catches the usual case before any worker
    starts; this covers remote storage and a checkpoint broken while the run is going."""

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        for err in worker_exceptions.values():
            if (found := find_error(err, CheckpointError)) is not None:
                raise found
