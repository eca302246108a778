"""The one way vpace starts or joins Ray (`vpace pretrain`, `finetune`, `tune`, and their Python APIs).

Join: `address`, or $RAY_ADDRESS as inside `ray job submit`. Otherwise start a local Ray on this machine's
CPUs, without the dashboard (2-core machines), and with two additions:

* A reaper. A local Ray's head processes die with the driver (Ray gives them PR_SET_PDEATHSIG), but the
  raylet's agents (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`) do not: they see the raylet die at once,
  then try to publish "raylet died" to the GCS - which died too - and block up to 60 s (longer on a loaded
  machine) with their main thread inside that C++ call, so they even ignore SIGTERM. After a SIGKILLed driver
  they linger with parent 1. So every process of the session carries a marker in its environment
  (`VPACE_RAY_SESSION`, inherited from the driver by everything Ray starts), and a small watcher process
  (`session_reaper.py`, stdlib only) waits for the driver to go away - the end of a pipe only the driver
  holds - then terminates, and if need be kills, every process with that marker. Linux only (reads /proc).
* `quiet_ray_noise`, run in every Ray worker process of the session, for two known-harmless start-up
  tracebacks (see there); real failures still show.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

SESSION_ENV = "VPACE_RAY_SESSION"
_REAPER = Path(__file__).with_name("session_reaper.py")
_reaper_pipes: list[int] = []  # write ends held by this driver; closing one lets its reaper sweep

# Train V2's PlacementGroupCleaner polls the dashboard's state API; a local Ray runs without a dashboard, so
# the cleaner would log a "Failed to query" warning every second of every run.
_PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
# Train's autoscaling-coordinator client logs a warning *with a traceback* when its 5 s call times out - on a
# busy machine at every start - and simply retries 20 s later.
_COORDINATOR_LOGGER = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"


class TimeoutWithoutTraceback(logging.Filter):
    """Keep the warning line of a coordinator call that timed out, drop its traceback; any other exception
    keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        import ray.exceptions

        if record.exc_info and isinstance(record.exc_info[1], ray.exceptions.GetTimeoutError):
            record.exc_info, record.exc_text = None, None
            record.msg = f"{record.msg} (timed out; retried)"
        return True


def _quiet_report_echo() -> None:
    """Train V2 logs every `ray.train.report` of every rank at INFO, metrics dict and all (two long lines per
    report); vpace's progress bar and metric files already say it. That logger is named by its file path."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: keep its logging as it is
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def quiet_ray_noise() -> None:
    """Worker setup hook of vpace's local Ray: (1) the PlacementGroupCleaner's warnings off (errors still
    show) and the per-report INFO echo off, (2) the coordinator's timeout traceback off, (3) $RAY_ADDRESS =
    this cluster, so the cleaner's state-API lookup does not crash with "Found multiple active Ray instances"
    when another Ray runs on the machine (it resolves an unset address by scanning the machine's
    processes)."""
    import ray

    logging.getLogger(_PG_CLEANER_LOGGER).setLevel(logging.ERROR)
    _quiet_report_echo()
    coordinator = logging.getLogger(_COORDINATOR_LOGGER)
    if not any(isinstance(f, TimeoutWithoutTraceback) for f in coordinator.filters):
        coordinator.addFilter(TimeoutWithoutTraceback())
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def _start_reaper(marker: str) -> int:
    """Start the watcher of this driver's session; returns the pipe end the driver keeps (never written)."""
    read_end, write_end = os.pipe()  # non-inheritable: only this process holds the write end
    try:
        subprocess.Popen([sys.executable, "-I", str(_REAPER), SESSION_ENV, marker], stdin=read_end,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    finally:
        os.close(read_end)
    _reaper_pipes.append(write_end)
    return write_end


def _release_reapers() -> None:
    while _reaper_pipes:
        os.close(_reaper_pipes.pop())


def start_ray(address: str | None = None, *, check_local: Callable[[dict[str, float]], None] | None = None
              ) -> bool:
    """Join `address` / $RAY_ADDRESS, else start a local Ray (see the module docstring). `check_local` gets a
    local Ray's `cluster_resources()` and may raise (Ray is stopped again). Returns True if this call
    connected, so the caller ends with `stop_ray()`; False if Ray was already initialized."""
    import ray

    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)  # a cluster may autoscale: no resource check here
        return True
    marker = uuid.uuid4().hex
    _start_reaper(marker)
    os.environ[SESSION_ENV] = marker  # inherited by every process the local Ray starts
    try:
        ray.init(include_dashboard=False,
                 runtime_env={"worker_process_setup_hook": f"{__name__}.quiet_ray_noise"})
    except BaseException:
        _release_reapers()
        raise
    finally:
        os.environ.pop(SESSION_ENV, None)
    if check_local is not None:
        try:
            check_local(ray.cluster_resources())
        except BaseException:
            stop_ray()
            raise
    return True


def stop_ray() -> None:
    """Disconnect (a joined cluster) or shut down (a local Ray, whose reaper then sweeps any straggler)."""
    import ray

    ray.shutdown()
    _release_reapers()
