"""Faults end in a clean resume or one clear line: half-written, corrupt or hostile checkpoints, a
SIGKILLed driver's Ray processes, `--set` values that are not YAML. Real files, real Ray runs, the real CLI in
subprocesses; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import n_train, tiny

from vpace.eval.loading import file_digest
from vpace.models import build_backbone
from vpace.objectives.heads import PaceModel
from vpace.train.checkpoint import CheckpointError, SkippedCheckpointWarning, save_checkpoint
from vpace.train.export import export_backbone, module_prefix

SMOKE_SETS = ["data.epoch_size=null", "data.clip_len=8", "data.height=48", "data.width=64", "augment.crop=32",
              "scale.min_workers=1", "scale.max_workers=1"]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpace.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _pace_model(seed: int) -> PaceModel:
    torch.manual_seed(seed)
    return PaceModel(build_backbone("r21d_tiny"), num_paces=4, proj_head="linear")


def _save(run: Path, step: int, model: PaceModel, config: dict) -> Path:
    """A checkpoint in the training loop's format, written by vpace's own save function."""
    return save_checkpoint(run / f"checkpoint_{step:08d}", {"model": model.state_dict(), "config": config},
                           {"step": step, "epoch": 0, "task": "pretrain", "backbone": "r21d_tiny",
                            "backbone_prefix": module_prefix(model, model.backbone)})


class _Payload:
    """Unpickling this runs `Path(marker).touch()`: what a hostile checkpoint would do to its reader."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _write_hostile(state_pt: Path, marker: Path) -> None:
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _Payload(marker)}, state_pt)


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# ------------------------------------------------------------------------------------- --set (real CLI)


@pytest.mark.parametrize("assignment, says", [
    ("pace.paces=,", "not valid YAML"),
    ("optim.lr=[1", "not valid YAML"),
    ("pace.paces=", "no value after"),  # `--set pace.paces=""`: the shell ate the quotes
])
def test_set_value_that_is_not_yaml_is_one_line_naming_the_field(assignment, says):
    proc = _cli("pretrain", "--config", "smoke", "--set", assignment, timeout=600)
    field = assignment.split("=")[0]
    line = _one_line(proc.stderr)
    assert proc.returncode == 2 and line.startswith(f"vpace pretrain: error: config field '{field}': ")
    assert says in line


@pytest.mark.parametrize("storage, says", [
    ("/proc/vpace", "is not a writable folder"),  # a parent that cannot hold a new folder
    ("/proc/vpace/runs/deeper", "is not a writable folder"),  # missing parents that cannot be created
    ("hdfs://nohost:9000/runs", "refused a probe write"),  # a URI whose file system refuses the probe
])
def test_unusable_run_storage_is_one_line_before_ray_starts(storage, says, synth, tmp_path):
    """`run.storage` is probed with a real write before Ray starts: one line naming the field, exit 2, and no
    Ray session was ever created (Ray makes its session folder under $RAY_TMPDIR on start)."""
    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    proc = _cli("pretrain", "--config", "smoke", "--set", f"data.index={synth}", "--set",
                f"run.storage={storage}", env=env)
    line = _one_line(proc.stderr)
    assert proc.returncode == 2 and line.startswith("vpace pretrain: error: config field 'run.storage': ")
    assert storage in line and says in line
    assert not any(ray_tmp.iterdir())  # no Ray process ever started
    assert not Path("/proc/vpace").exists()


def test_cli_user_error_is_one_line_and_debug_shows_its_traceback(tmp_path, capsys):
    from vpace.cli import main

    args = ["export", str(tmp_path / "no-run"), "--out", str(tmp_path / "bb.safetensors")]
    assert main(args) == 2
    assert _one_line(capsys.readouterr().err) == f"vpace export: error: no run directory or checkpoint at " \
                                                 f"{tmp_path / 'no-run'}"
    assert main(["--debug", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "FileNotFoundError: no run directory" in err


def test_coordinator_timeout_keeps_its_warning_line_but_not_its_traceback():
    """The filter `quiet_ray_noise` puts on Train's autoscaling-coordinator logger: a timed-out call (retried
    20 s later by Ray) loses its traceback; any other exception keeps it."""
    import io
    import logging

    from ray.exceptions import GetTimeoutError

    from vpace.train.ray_session import TimeoutWithoutTraceback

    log, out = logging.getLogger("vpace.test.coordinator"), io.StringIO()
    handler = logging.StreamHandler(out)
    log.addHandler(handler)
    log.addFilter(TimeoutWithoutTraceback())
    log.propagate = False
    for exc in (GetTimeoutError("get timed out"), RuntimeError("a real failure")):
        try:
            raise exc
        except Exception:
            log.warning("Failed to send resource request", exc_info=True)
    log.removeHandler(handler)
    text = out.getvalue()
    assert text.startswith("Failed to send resource request (timed out; retried)\nFailed to send")
    assert text.count("Traceback") == 1 and "RuntimeError: a real failure" in text
    assert "GetTimeoutError" not in text


# ------------------------------------------------------------------------- the latest good checkpoint


def test_truncated_newest_checkpoint_export_and_retrieve_use_the_previous_one(synth, tmp_path):
    """Ray copies a checkpoint into the run non-atomically: a kill mid-copy leaves a newest `checkpoint_N`
    with a complete meta.json and a partial state.pt. Readers skip it, say so in one line, use the older."""
    from safetensors.torch import load_file

    from vpace.eval.retrieval import retrieve

    run, cfg = tmp_path / "run", tiny(synth, tmp_path, "run", "scale.min_workers=1", "scale.max_workers=1")
    good, newer = _pace_model(0), _pace_model(1)
    _save(run, 4, good, cfg.to_dict())
    half = _save(run, 8, newer, cfg.to_dict()) / "state.pt"
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 3])

    proc = _cli("export", str(run), "--out", str(tmp_path / "bb.safetensors"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    warning = _one_line(proc.stderr)
    assert warning.startswith(f"vpace: warning: skipping checkpoint {run / 'checkpoint_00000008'}: ")
    assert "truncated" in warning and "checkpoint_00000004" in warning
    exported = load_file(tmp_path / "bb.safetensors")
    reference = good.backbone.state_dict()
    assert exported.keys() == reference.keys()
    assert all(torch.equal(exported[k], reference[k]) for k in reference)

    with pytest.warns(SkippedCheckpointWarning, match="checkpoint_00000008: state.pt is truncated"):
        res = retrieve(str(run), layers=("p5",), modes=("video",), num_clips=2, num_workers=0,
                       cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "eval"), progress=False)
    assert res["models"]["pretrained"]["digest"] == file_digest(run / "checkpoint_00000004" / "state.pt")
    # counts are of the videos that took part: synth's train list holds one broken file
    assert [s["path"].endswith("v_Broken_g99_c01.mp4") for s in res["skipped"]["train"]] == [True]
    assert (res["num_train"], res["num_skipped_train"]) == (n_train(synth) - 1, 1)
    assert (res["num_skipped_test"], res["rows"][0]["queries"]) == (0, res["num_test"])


@pytest.mark.parametrize("damage, says", [
    ("truncate", "state.pt is truncated or corrupt"),
    ("garbage_meta", "meta.json is not valid UTF-8 JSON"),
    ("foreign_meta", "meta.json is not a vpace checkpoint record"),
    ("no_state", "no state.pt"),
])
def test_each_broken_file_is_one_error_naming_the_checkpoint(tmp_path, damage, says):
    ckpt = _save(tmp_path / "run", 3, _pace_model(0), {})
    if damage == "truncate":
        (ckpt / "state.pt").write_bytes((ckpt / "state.pt").read_bytes()[:5000])
    elif damage == "garbage_meta":
        (ckpt / "meta.json").write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "foreign_meta":
        (ckpt / "meta.json").write_text(json.dumps([1, 2]))
    else:
        (ckpt / "state.pt").unlink()
    for source in (ckpt, tmp_path / "run"):  # given directly, or the run's only checkpoint
        with pytest.raises(CheckpointError) as err:
            export_backbone(source, tmp_path / "out.safetensors")
        msg = str(err.value)
        assert msg.startswith(f"checkpoint {ckpt}: ") and says in msg and "\n" not in msg


def test_hostile_checkpoint_is_refused_in_one_line_and_its_payload_never_runs(tmp_path):
    from vpace.eval.loading import load_model

    marker, probe = tmp_path / "PAYLOAD_RAN", tmp_path / "PROBE_RAN"
    ckpt = _save(tmp_path / "run", 4, _pace_model(0), {})
    _write_hostile(ckpt / "state.pt", marker)
    _write_hostile(tmp_path / "probe.pt", probe)  # the payload is real: a plain unpickle runs it
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()

    proc = _cli("export", str(tmp_path / "run"), "--out", str(tmp_path / "bb.safetensors"), timeout=300)
    line = _one_line(proc.stderr)
    assert proc.returncode == 2
    assert line.startswith(f"vpace export: error: checkpoint {ckpt}: state.pt refused")
    assert "weights_only" not in proc.stderr + proc.stdout
    for source in (ckpt, tmp_path / "run"):
        with pytest.raises(CheckpointError, match="refused"):
            load_model(source)
    assert not marker.exists() and not (tmp_path / "bb.safetensors").exists()


# ----------------------------------------------------------------------------------- resume (real Ray)


def _snapshot(run: Path) -> dict:
    return json.loads((run / "checkpoint_manager_snapshot.json").read_text())


@pytest.mark.slow
def test_resume_skips_a_broken_latest_checkpoint_and_refuses_a_hostile_only_one(local_ray, synth, tmp_path):
    import dataclasses

    import fault_gates
    from ray import cloudpickle
    from ray.train import ControllerError

    from vpace.paths import resolve_paths
    from vpace.train import pretrain
    from vpace.train.launch import build_trainer
    from vpace.train.pretraining import PRETRAIN

    cloudpickle.register_pickle_by_value(fault_gates)  # workers cannot import the tests' modules
    # (1) two registered checkpoints, the latest broken after the fact -> resume from the older one
    sets = ["scale.min_workers=1", "scale.max_workers=1", "scale.checkpoint_every=2", "optim.epochs=100",
            "data.epoch_size=64", "data.num_workers=0"]  # 8 steps per epoch: checkpoints at even steps only
    cfg = tiny(synth, tmp_path, "fallback", *sets, "optim.max_steps=4")
    pretrain(cfg)
    run = tmp_path / "fallback"
    assert [r["checkpoint_dir_name"] for r in _snapshot(run)["checkpoint_results"]] == [
        "checkpoint_00000002", "checkpoint_00000004"]
    state = run / "checkpoint_00000004" / "state.pt"
    state.write_bytes(state.read_bytes()[:4096])
    cfg.optim.max_steps = 6
    with pytest.warns(SkippedCheckpointWarning, match="checkpoint_00000004: state.pt is truncated"):
        res = pretrain(cfg)
    assert res.history["attempts"][-1]["start_step"] == 2 and res.metrics["step"] == 6
    names = [r["checkpoint_dir_name"] for r in _snapshot(run)["checkpoint_results"]]
    assert names[-2:] == ["checkpoint_00000004_1", "checkpoint_00000006"]  # the broken one's name not reused
    export_backbone(run, tmp_path / "after.safetensors")  # the run's latest checkpoint loads

    # (2) a hostile pickle in the only checkpoint: one clear error before any worker starts, payload not run
    marker, attempts = tmp_path / "PAYLOAD_RAN", tmp_path / "attempts.log"
    cfg = tiny(synth, tmp_path, "hostile", *sets, "optim.max_steps=2", "scale.num_to_keep=1",
               "scale.max_failures=2")
    pretrain(cfg)
    run = tmp_path / "hostile"
    _write_hostile(run / "checkpoint_00000002" / "state.pt", marker)
    before = (run / "checkpoint_manager_snapshot.json").read_bytes()
    cfg.optim.max_steps = 4
    counting = dataclasses.replace(PRETRAIN,
                                   build_model=fault_gates.CountAttempts(PRETRAIN.build_model, attempts))
    with pytest.raises(CheckpointError, match=r"checkpoint_00000002: state\.pt refused") as err:
        from vpace.train import run_task

        run_task(counting, cfg)
    assert "weights_only" not in str(err.value) and not attempts.exists()  # no worker ever started

    # (3) the same run handed to Ray Train directly (as after a checkpoint broken mid-run, or on remote
    # storage the driver does not pre-check): the worker's CheckpointError ends the run, no retry
    with pytest.raises(ControllerError) as err:
        build_trainer(counting, resolve_paths(cfg)).fit()
    assert isinstance(err.value.controller_failure, CheckpointError)
    assert attempts.read_text().splitlines() == ["attempt"]  # max_failures=2, yet one attempt only
    assert not marker.exists() and (run / "checkpoint_manager_snapshot.json").read_bytes() == before
    assert sorted(p.name for p in run.glob("checkpoint_*") if p.is_dir()) == ["checkpoint_00000002"]


# ------------------------------------------------------------------------------- orphans (real CLI)


def _session_processes(marker: str) -> list[tuple[int, str]]:
    """Live processes whose command line or environment holds `marker` (zombies have neither)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes()
            env = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd or marker.encode() in env:
            out.append((int(name), cmd.replace(b"\0", b" ").decode(errors="replace")[:80]))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc (Linux)")
def test_sigkilled_driver_leaves_no_process_of_its_ray_session(local_ray, synth, tmp_path):
    """`local_ray` is a second Ray instance on the machine while the CLI's own runs (see the log check)."""
    ray_tmp = tempfile.mkdtemp(prefix="vpk")  # this driver's Ray session lives under it: the marker
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    sets = [f"data.index={synth}", f"run.storage={tmp_path}", "run.name=killed", *SMOKE_SETS,
            "optim.epochs=1000", "scale.checkpoint_every=1"]
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "vpace.cli", "pretrain", "--config", "smoke",
                             *[a for s in sets for a in ("--set", s)]],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while not list((tmp_path / "killed").glob("checkpoint_*")):  # training has started (the test's
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()  # timeout bounds the wait)
            time.sleep(0.5)
        assert _session_processes(ray_tmp)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: no cleanup code of its runs
        proc.wait()
        # Without the reaper a dead driver's GCS and raylet live on for good; with it they end within seconds.
        # Poll (no duration is asserted); 600 s is a safety net far above the few seconds of an idle machine.
        killed_at = time.monotonic()
        while (left := _session_processes(ray_tmp)) and time.monotonic() - killed_at < 600:
            time.sleep(0.5)
        assert not left, f"alive {time.monotonic() - killed_at:.0f}s after the kill: {left}"
        output = (tmp_path / "driver.log").read_text()  # Ray's known-harmless tracebacks are quiet
        assert "Found multiple active Ray instances" not in output and "GetTimeoutError" not in output
    finally:
        log.close()
        if proc.poll() is None:
            proc.kill()
        for pid, _ in _session_processes(ray_tmp):  # only if the test failed: do not leak them
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
