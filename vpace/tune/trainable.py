"""The Tune trainable: one trial = one pre-training `TorchTrainer` run (Train V2: Train inside a trainable).

How the proxy reaches ASHA: rank 0 measures it at epoch ends (`PROXY_PRETRAIN.epoch_metrics`, called by the
training loop) and reports it with that epoch's checkpoint through `ray.train.report`.
`ProxyReportCallback`, a Train V2 user callback running in the Train controller, hands exactly those reports
(rank 0's, plus the checkpoint path) to the trial, whose `step()` returns them to Tune one by one. Mid-epoch
checkpoint reports carry no proxy and are not forwarded: Tune rejects results without the metric, and ASHA
compares trials on the proxy only. ASHA's clock is `epoch` (epochs completed).

Why a class trainable and not a function + `TuneReportCallback`: when ASHA stops a trial, Tune terminates the
trial's actor. A Train V2 run whose controller dies that way keeps its workers' placement group (it lives as
long as the Tune driver's job) unless Train's PlacementGroupCleaner removes it, and that cleaner needs the
dashboard's state API and a single Ray instance per host - neither holds on a shared laptop/CI box. The leaked
CPUs then starve every later trial. `cleanup()` of a class trainable runs before the actor goes away, so a
stopped trial aborts its Train run gracefully (`TrainController.abort`: workers and placement group removed).

Resume: the trial's Train run is named after its trial id under `<experiment>/train/`, so a trial restarted
by `Tuner.restore` (or by Tune's `max_failures`) continues from its latest Train checkpoint; Tune-level
checkpoints would hold no extra state (Ray docs, "Hyperparameter Tuning with Ray Tune").
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.train import UserCallback
from ray.tune.result import DONE

from vpace.tune.space import SearchSpec

logger = logging.getLogger(__name__)
TRAIN_DIR = "train"  # <experiment dir>/train/<trial id>: the trials' Ray Train runs
# Safety nets, not schedules: a finished run is waited for until it has written its outputs (seconds when
# idle, minutes on a loaded machine); only a run that hangs for this long is aborted, with a warning.
ABORT_TIMEOUT_S = 600.0
FINISH_TIMEOUT_S = 1800.0


class ProxyReportCallback(UserCallback):
    """In the Train controller: put each report carrying `metric` (rank 0's) on the trial's queue, with the
    controller's own handle so the trial can abort the run gracefully."""

    def __init__(self, queue: Any, metric: str) -> None:
        self.queue, self.metric = queue, metric

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics and self.metric in metrics[0]:
            item = {**metrics[0], "checkpoint_path": checkpoint.path if checkpoint is not None else None}
            self.queue.put(("result", item, ray.get_runtime_context().current_actor))


def _last_measured(history: dict[str, list[dict[str, Any]]], metric: str) -> dict[str, Any]:
    """The last epoch row with the metric, as a result (`epoch` = epochs completed, like the live reports)."""
    rows = [r for r in history.get("epochs", []) if metric in r]
    return {**rows[-1], "epoch": rows[-1]["epoch"] + 1} if rows else {}


class PretrainTrial(tune.Trainable):
    """Runs the Train run in a thread; each `step()` returns the next proxy measurement."""

    def setup(self, config: dict[str, Any], *, spec: SearchSpec, runs_dir: str) -> None:
        from ray.util.queue import Queue

        self.cfg = spec.trial_config(config)  # config = this trial's sampled values, by dotted field
        self.cfg.run.name, self.cfg.run.storage = self.trial_id, runs_dir
        self.metric = spec.tune.metric
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.controller: Any = None
        self.last: dict[str, Any] = {}  # the last result returned to Tune
        self.finished = False  # the last result was the run's final measurement
        self.thread = threading.Thread(target=self._fit, name="vpace-train-run", daemon=True)
        self.thread.start()

    def _fit(self) -> None:
        from vpace.train import run_task
        from vpace.tune.proxy import PROXY_PRETRAIN

        try:
            callback = ProxyReportCallback(self.queue, self.metric)
            result = run_task(PROXY_PRETRAIN, self.cfg, callbacks=[callback])
            self.queue.put(("end", result.history, None))
        except BaseException:  # handed to step(), which raises it in Tune's thread (text: always picklable)
            self.queue.put(("error", traceback.format_exc(), None))

    def _is_final(self, result: dict[str, Any]) -> bool:
        o = self.cfg.optim
        return result.get("epoch", 0) >= o.epochs or (o.max_steps is not None
                                                      and result.get("step", 0) >= o.max_steps)

    def step(self) -> dict[str, Any]:
        kind, item, controller = self.queue.get()
        if kind == "error":
            raise RuntimeError(f"trial {self.trial_id}: the Train run failed:\n{item}")
        if kind == "end":  # finished without a final measurement this session (e.g. restored after it ended)
            self.finished = True
            return {**(_last_measured(item, self.metric) or self.last), DONE: True}
        self.controller, self.last = controller, item
        self.finished = self._is_final(item)
        return {**item, DONE: True} if self.finished else item

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """Tune's checkpoint of a trial: where its Train run is and its last result. The training state is in
        the Train run's own checkpoints (`last["checkpoint_path"]`); a restored trial resumes that run."""
        info = {"run_dir": f"{self.cfg.run.storage}/{self.cfg.run.name}", "last": self.last}
        (Path(checkpoint_dir) / "trial.json").write_text(json.dumps(info, indent=1, default=str))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.last = json.loads((Path(checkpoint_dir) / "trial.json").read_text())["last"]

    def cleanup(self) -> None:
        """Stopped by ASHA (or the experiment ends): abort the Train run so its workers' CPUs are released."""
        if self.thread.is_alive() and self.finished:
            self.thread.join(FINISH_TIMEOUT_S)  # the run is writing its last checkpoint: let it end cleanly
            if self.thread.is_alive():
                logger.warning("trial %s: its finished Train run did not end within %.0f s; aborting it",
                               self.trial_id, FINISH_TIMEOUT_S)
        if self.thread.is_alive() and self.controller is not None:
            try:
                ray.get(self.controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass  # abort() ends with the controller exiting: an actor error is the expected outcome
            self.thread.join(ABORT_TIMEOUT_S)
        ray.kill(self.queue.actor)
