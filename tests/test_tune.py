"""Ray Tune search (`vpace.tune`): search-file validation, then the shipped smoke search end to end.

The end-to-end test runs the real thing in a driver subprocess (real Ray, real Train V2 runs on real
synthetic mp4 files, ASHA, the retrieval proxy), kills the driver once ASHA has stopped a trial, re-runs the
same command and checks that the experiment resumed without redoing the finished trials. Nothing is mocked.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from conftest import own_session, ray_env

from vpace.config import ConfigError, load_config, parse_fraction_list
from vpace.tune import SearchSpaceError, load_spec, tune
from vpace.tune.run import max_concurrent

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tune_configs"
SMOKE = CONFIGS / "smoke.yaml"


def write_search(tmp_path: Path, space: dict, **sections) -> Path:
    """A search file over the smoke config with `space` (and optional other sections)."""
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"base": "smoke", "set": {"run.storage": str(tmp_path / "runs")},
                                    "space": space, **sections}))
    return path


# ------------------------------------------------------------------------------------------ validation


def test_shipped_search_files_validate_and_pace_range_is_table_1():
    for path in sorted(CONFIGS.glob("*.yaml")):
        spec = load_spec(path)
        assert spec.param_space(), path
        for d in spec.dims:  # every categorical value makes a valid pre-training config
            for v in d.values if d.categorical else ():
                spec.trial_config({d.key: v})
    table1 = [parse_fraction_list(p, "p") for p in load_spec(CONFIGS / "pace_range.yaml").dims[0].values]
    expected = [tuple(Fraction(i) for i in range(1, hi + 1)) for hi in (3, 4, 5, 6)]
    expected.append((Fraction(1, 3), Fraction(1, 2), Fraction(1), Fraction(2), Fraction(3)))
    assert table1 == expected  # p = [1,3], [1,4], [1,5], [1,6] and {1/3, 1/2, 1, 2, 3}
    assert load_spec(CONFIGS / "pace_range.yaml").base_config().method == "pace"  # Table 1: no contrast
    dims = {d.key: d for d in load_spec(CONFIGS / "loss_weights.yaml").dims}
    assert set(dims["pace.ctr_mode"].values) == {"none", "same_context", "same_pace"}
    assert dims["pace.lambda_ctr"].kind == "loguniform"
    assert set(dims["pace.proj_head"].values) == {"linear", "mlp"}


@pytest.mark.parametrize(
    "key, entry, words",
    [
        ("pace.pacez", {"choice": ["1,2,3"]}, ["unknown key", "pacez"]),
        ("optim", {"choice": [1]}, ["unknown key", "section"]),
        ("pace.paces", {"choice": []}, ["empty choice"]),
        ("pace.paces", {"grid": ["1,2,3", "1,x,3"]}, ["'x'", "1,x,3"]),
        ("pace.paces", {"choice": ["1,2,3", "1/0,2"]}, ["1/0"]),
        ("pace.lambda_ctr", {"loguniform": [0.0, 1.0]}, ["loguniform", "0 < low"]),
        ("optim.lr", {"uniform": [0.1, 0.01]}, ["low < high"]),
        ("pace.lambda_ctr", {"choice": [0.1, -1.0]}, ["must be >= 0"]),
        ("scale.max_workers", {"choice": [1, 2]}, ["cannot be searched"]),
        ("optim.lr", {"normal": [0.1, 0.01]}, ["one mapping"]),
    ],
)
def test_bad_search_entry_fails_before_any_trial_starts(no_ray, tmp_path, key, entry, words):
    import ray

    path = write_search(tmp_path, {"optim.lr": {"loguniform": [0.001, 0.01]}, key: entry})
    with pytest.raises(SearchSpaceError) as err:
        tune(path)
    assert err.value.field_name == f"space.{key}"
    msg = str(err.value)
    assert f"space.{key}" in msg and str(path) in msg and all(w in msg for w in words), msg
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()  # no Ray, no experiment dir


def test_values_valid_alone_but_not_together_are_caught(tmp_path):
    path = write_search(tmp_path, {"data.clips_per_video": {"choice": [2, 3]},
                                   "pace.paces": {"choice": ["1,2", "1,2,3"]}})
    with pytest.raises(SearchSpaceError) as err:  # 3 clips at distinct paces need 3 paces
        load_spec(path)
    assert "space.data.clips_per_video+space.pace.paces" in str(err.value) and "'1,2'" in str(err.value)


def test_bad_tune_section_and_unknown_top_level_key_are_named(tmp_path):
    space = {"optim.lr": {"loguniform": [0.001, 0.01]}}
    for sections, field in [({"tune": {"metric": "loss"}}, "tune.metric"),
                            ({"tune": {"max_t": 99}}, "tune.max_t"),
                            ({"tune": {"sheduler": "asha"}}, "tune.sheduler"),
                            ({"spaces": {}}, "spaces"),
                            ({"tune": {"search": "grid"}}, "space.optim.lr")]:  # grid needs lists
        with pytest.raises(ConfigError) as err:
            load_spec(write_search(tmp_path, space, **sections))
        assert err.value.field_name == field, (sections, str(err.value))


def test_missing_data_fails_before_ray_starts(no_ray, tmp_path):
    import ray

    path = write_search(tmp_path, {"optim.lr": {"loguniform": [0.001, 0.01]}})
    with pytest.raises(ConfigError) as err:
        tune(path, overrides=[f"data.index={tmp_path / 'nowhere'}"])
    assert err.value.field_name == "data.index"
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()


def test_concurrency_lets_every_trial_start_all_its_workers(tmp_path):
    spec = load_spec(write_search(tmp_path, {"optim.lr": {"loguniform": [0.001, 0.01]}},
                                  tune={"workers_per_trial": 2}))
    cfg = spec.base_config()
    assert (cfg.scale.min_workers, cfg.scale.max_workers) == (2, 2)  # trials are fixed-size
    assert max_concurrent(spec, {"CPU": 5.0}) == 2  # floor(5 CPUs / (2 workers x 1 CPU))
    with pytest.raises(ConfigError, match="one trial needs"):
        max_concurrent(spec, {"CPU": 1.0})


# ------------------------------------------------------------------------------------------ end to end

# One CPU: the shipped search then runs one trial at a time (`max_concurrent`), so ASHA sees the results in
# trial order and its decisions do not depend on which of two concurrent trials reported first (with two at a
# time, whether any trial got stopped varied from run to run). A stopped trial whose Train run kept its CPU
# would also stall the search here instead of passing unnoticed.
DRIVER = """
import json, sys
import ray
from vpace.tune import tune
ray.init(num_cpus=1, include_dashboard=False)
out = tune(sys.argv[1], overrides=sys.argv[2:])
print("OUTCOME " + json.dumps({"dir": out.experiment_dir, "resumed": out.resumed, "best": out.best_config}))
"""


def _trial_states(exp: Path) -> dict[str, str]:
    """Trial id -> status as Tune last saved it (the state a restore starts from)."""
    states = sorted(exp.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # being rewritten
        return {}
    return {t["trial_id"]: t["status"] for t in (json.loads(td[0]) for td in data["trial_data"])}


def _footprint(exp: Path, trial: str) -> tuple[int, list[str]]:
    """(Tune results of a trial, its Train run's checkpoints): unchanged if the trial was not run again."""
    results = (exp / f"trial_{trial}" / "result.json").read_text().splitlines()
    return len(results), sorted(p.name for p in (exp / "train" / trial).glob("checkpoint_*"))


@pytest.mark.slow
def test_smoke_search_asha_best_config_and_resume_after_killed_driver(no_ray, tmp_path, ray_tmpdir):
    from vpace.data.synthetic import make_synthetic

    data, storage = tmp_path / "data", tmp_path / "runs"
    # 30 videos (21 train / 9 test: the proxy's gallery and queries), 32 per epoch, each decoded once for all
    # trials: what a trial costs is then mostly its start (Tune actor + Train run), not its data
    make_synthetic(data, num_videos=30, seed=0, height=48, width=64, min_seconds=2, max_seconds=3,
                   progress=False)
    env = {**ray_env(ray_tmpdir), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", DRIVER, str(SMOKE), f"data.index={data}", f"run.storage={storage}",
           "data.epoch_size=32", f"data.cache_dir={tmp_path / 'frames'}"]
    settings = load_spec(SMOKE).tune
    exp, metric, n, max_t = storage / "tune" / "smoke", settings.metric, settings.num_samples, settings.max_t
    t0 = time.perf_counter()

    # 1) start the search; kill the driver (SIGKILL, no cleanup) once Tune has saved a trial that ASHA stopped
    done: dict[str, tuple] = {}  # trial -> footprint, of the trials finished (completed or stopped) by then
    with own_session(cmd, env, tmp_path / "run1.log") as proc:
        while proc.poll() is None and not any(results < max_t for results, _ in done.values()):
            time.sleep(0.5)
            done = {t: _footprint(exp, t) for t, s in _trial_states(exp).items() if s == "TERMINATED"}
    killed_at = time.perf_counter() - t0
    assert any(results < max_t for results, _ in done.values()), \
        f"the search ended before ASHA stopped a trial: {done}; log: {tmp_path / 'run1.log'}"
    assert list(_trial_states(exp).values()).count("TERMINATED") < n  # the kill interrupted the search

    # 2) the same command again: continues the experiment
    with own_session(cmd, env, tmp_path / "run2.log") as proc:
        returncode = proc.wait()
    log2 = (tmp_path / "run2.log").read_text()
    assert returncode == 0, log2[-3000:]
    outcome = json.loads(log2.split("OUTCOME ", 1)[1].splitlines()[0])
    assert outcome["resumed"] and Path(outcome["dir"]) == exp
    total = time.perf_counter() - t0

    for trial, footprint in done.items():  # finished before the kill: not run again
        assert _footprint(exp, trial) == footprint, trial

    with open(exp / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and {r["trial"] for r in rows} == set(_trial_states(exp))
    assert all(r["status"] in ("completed", "stopped early") for r in rows), rows
    assert any(r["status"] == "stopped early" and int(r["epochs"]) < 3 for r in rows), rows  # ASHA cut one
    assert all(0.0 <= float(r[metric]) <= 1.0 for r in rows)
    for r in rows:  # the proxy is reported with the Train checkpoint of the epoch it measured
        history = json.loads(max((exp / "train" / r["trial"]).glob("checkpoint_*/history.json")).read_text())
        measured = [e[metric] for e in history["epochs"] if metric in e]
        epochs = int(r["epochs"])
        assert len(measured) >= epochs and math.isclose(measured[epochs - 1], float(r[metric]))

    best = load_config(outcome["best"])  # a ready pre-training config
    full = [r for r in rows if r["status"] == "completed"]  # best = best final proxy among full-budget trials
    top = max(float(r[metric]) for r in full)
    assert any(best.pace.paces == r["pace.paces"] and math.isclose(best.optim.lr, float(r["optim.lr"]))
               for r in full if float(r[metric]) == top)
    assert best.data.index == str(data) and best.run.name == "smoke-best" and best.optim.epochs == 3
    assert (exp / "results.md").read_text().count("\n| ") == 1 + n  # header + one row per trial
    assert (exp / "metric_vs_params.png").stat().st_size > 0

    with pytest.raises(ConfigError, match="exists"):  # a fresh start never overwrites an experiment
        tune(SMOKE, resume=False, overrides=cmd[4:])
    with pytest.raises(ConfigError, match="different search"):  # nor does resuming another search into it
        tune(SMOKE, overrides=[*cmd[4:], "optim.lr_gamma=0.5"])
    print(f"smoke search: killed after {killed_at:.0f}s, total {total:.0f}s")
