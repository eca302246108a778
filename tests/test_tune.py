"""Ray Tune search (`vpace.tune`): search-file validation, the configurations every search algorithm hands
out, then real searches end to end (the ranking rule on hand-made trials: test_tune_ranking.py).

The smoke search runs the real thing in a driver subprocess (real Ray, real Train V2 runs on real synthetic
mp4 files, ASHA, the retrieval proxy), kills the driver once ASHA has stopped a trial, re-runs the same
command and checks that the experiment resumed without redoing the finished trials, and that every output
shows the one ranking. A second search runs Optuna with two seeds per configuration. Nothing is mocked."""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import own_session, ray_env

from vpace.config import ConfigError, load_config, pace_set_field
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


def md_rows(path: Path) -> list[dict[str, str]]:
    """The table of a results.md as dicts by column name."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in lines[1:]]


# ------------------------------------------------------------------------------------------ validation


def test_shipped_search_files_validate_and_pace_range_is_table_1():
    for path in sorted(CONFIGS.glob("*.yaml")):
        spec = load_spec(path)
        assert spec.param_space(), path
        for d in spec.dims:  # every categorical value makes a valid pre-training config
            for v in d.values if d.categorical else ():
                spec.trial_config({d.key: v})
    spec = load_spec(CONFIGS / "pace_range.yaml")
    dims = {d.key: d for d in spec.dims}
    table1 = [pace_set_field(p, "p") for p in dims["pace.paces"].values]
    expected = [tuple(Fraction(i) for i in range(1, hi + 1)) for hi in (3, 4, 5, 6)]
    expected.append((Fraction(1, 3), Fraction(1, 2), Fraction(1), Fraction(2), Fraction(3)))
    assert table1 == expected  # p = [1,3], [1,4], [1,5], [1,6] and {1/3, 1/2, 1, 2, 3}
    assert dims["augment.jitter_p"].values == (0.0, 0.8)  # colour jitter off / on
    base = spec.base_config()
    assert base.method == "pace" and base.pace.lambda_ctr == 0.0  # Table 1: no contrast
    assert (base.optim.epochs, base.optim.lr_step_epochs, base.data.epoch_size) == (18, 6, 90000)  # §4.1
    assert spec.tune.scheduler == "fifo" and spec.rungs() == [18]  # every row at the full schedule
    # the paper's numbers (Table 1, UCF101) beside the configurations they belong to; the rest have none
    paper = {("1,2,3", 0.0): 71.4, ("1,2,3,4", 0.0): 72.0, ("1,2,3,4,5", 0.0): 72.0,
             ("1,2,3,4,5,6", 0.0): 71.1, ("1,2,3,4", 0.8): 73.9, ("1/3,1/2,1,2,3", 0.8): 73.9}
    for paces in dims["pace.paces"].values:
        for jitter in dims["augment.jitter_p"].values:
            got = spec.reference.lookup({"pace.paces": paces, "augment.jitter_p": jitter})
            assert got == paper.get((paces, jitter)), (paces, jitter)
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
                            ({"tune": {"search": "grid"}}, "space.optim.lr"),  # grid needs lists
                            ({"tune": {"repeats": 2}}, "tune.repeats"),  # ASHA would split the seeds
                            ({"tune": {"repeats": 0, "scheduler": "fifo"}}, "tune.repeats"),
                            ({"reference": {"source": "x", "metric": "y", "rows": [{"value": 1.0}]}},
                             "reference.rows[0]"),  # names no searched field
                            ({"reference": {"source": "x", "metric": "y", "rows": "none"}},
                             "reference.rows")]:
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


def test_reference_rows_and_repeated_seeds_are_checked_against_the_space(tmp_path):
    space = {"pace.paces": {"choice": ["1,2,3", "1,2,3,4"]}}
    ref = {"source": "paper", "metric": "acc", "rows": [{"pace.paces": "1,2", "value": 70.0}]}
    with pytest.raises(SearchSpaceError) as err:
        load_spec(write_search(tmp_path, space, reference=ref))
    assert err.value.field_name == "reference.rows[0].pace.paces" and "'1,2'" in str(err.value)
    ref["rows"] = [{"pace.paces": "1,2,3", "value": 70.0}, {"pace.paces": "1,2,3", "value": 71.0}]
    with pytest.raises(SearchSpaceError, match="a second row"):
        load_spec(write_search(tmp_path, space, reference=ref))
    with pytest.raises(SearchSpaceError) as err:  # the repeats own the seed
        load_spec(write_search(tmp_path, {**space, "run.seed": {"choice": [1, 2]}},
                               tune={"repeats": 2, "scheduler": "fifo"}))
    assert err.value.field_name == "space.run.seed"


@pytest.mark.parametrize("grace, factor, max_t", [(1, 2, 3), (1, 2, 4), (6, 2, 18), (1, 3, 10), (2, 2, 2)])
def test_rungs_are_the_milestones_asha_compares_at(tmp_path, grace, factor, max_t):
    from ray.tune.schedulers import ASHAScheduler

    spec = load_spec(write_search(tmp_path, {"optim.lr": {"loguniform": [0.001, 0.01]}},
                                  set={"optim.epochs": max_t},
                                  tune={"grace_period": grace, "reduction_factor": factor}))
    asha = ASHAScheduler(time_attr="epoch", max_t=spec.budget, grace_period=grace, reduction_factor=factor)
    milestones = {m for m, _ in asha._brackets[0]._rungs}  # the scheduler's own rungs (one bracket)
    assert spec.rungs() == sorted(milestones | {max_t})


# ------------------------------------------------------------------------------------------ search algorithms

def _generated(spec) -> tuple[list[dict], Any]:
    """The trial configs the search algorithm of `spec` hands out, drawn from the real Tune searcher (no
    trial runs: each one is marked complete with a score that depends on its seed index)."""
    from ray.tune.experiment import Experiment
    from ray.tune.search import Searcher, SearchGenerator

    from vpace.tune.run import search_algorithm, trial_samples
    from vpace.tune.space import REPEAT_KEY

    alg = search_algorithm(spec, concurrency=64)
    if isinstance(alg, Searcher):  # as Tune runs a Searcher
        alg = SearchGenerator(alg)
    alg.set_search_properties(spec.tune.metric, spec.tune.mode, spec.param_space())
    alg.add_configurations([Experiment("x", lambda config: None, config=spec.param_space(),
                                       num_samples=trial_samples(spec))])
    out = []
    while (trial := alg.next_trial()) is not None:
        out.append(trial.config)
        result = {spec.tune.metric: 0.1 + trial.config.get(REPEAT_KEY, 0), "training_iteration": 1}
        alg.on_trial_complete(trial.trial_id, result=result)
    return out, alg


@pytest.mark.parametrize("search", ["random", "grid", "optuna"])
def test_each_search_algorithm_hands_out_every_configuration_once_per_seed(tmp_path, search):
    if search == "optuna":
        pytest.importorskip("optuna", reason="tune.search: optuna needs the optuna extra (pip install "
                                             "'vpace[optuna]'), absent here")
    from vpace.tune.space import REPEAT_KEY

    space = {"pace.paces": {"choice": ["1,2,3", "1,2,3,4", "1/3,1/2,1,2,3"]}}
    if search != "grid":
        space["optim.lr"] = {"loguniform": [0.001, 0.01]}
    settings = {"search": search, "scheduler": "fifo", "repeats": 2, "seed": 0,
                **({} if search == "grid" else {"num_samples": 3})}
    spec = load_spec(write_search(tmp_path, space, tune=settings, set={"run.seed": 5}))
    configs, alg = _generated(spec)
    groups: dict[str, list[int]] = {}
    for c in configs:
        params = {k: v for k, v in c.items() if k != REPEAT_KEY}
        groups.setdefault(json.dumps(params, sort_keys=True), []).append(c[REPEAT_KEY])
        assert spec.trial_config(c).run.seed == 5 + c[REPEAT_KEY]  # seed index i runs with run.seed + i
    assert len(configs) == 6 and all(sorted(seeds) == [0, 1] for seeds in groups.values()), configs
    if search == "grid":  # every value of the grid, each with both seeds
        assert {json.loads(k)["pace.paces"] for k in groups} == set(space["pace.paces"]["choice"])
    if search == "optuna":  # Optuna learns from each configuration once, by the mean over its seeds
        values = [t.value for t in alg.searcher.searcher._ot_study.trials]
        assert values == pytest.approx([0.6] * 3)  # seed 0 scored 0.1, seed 1 scored 1.1
    one, _ = _generated(load_spec(write_search(tmp_path, space, tune={**settings, "repeats": 1})))
    assert len(one) == 3 and all(REPEAT_KEY not in c for c in one)


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


def _footprint(exp: Path, trial: str) -> tuple[int, list[dict]]:
    """(Tune results of a trial, the attempts its Train run has made): unchanged if the trial was not run
    again. Attempts, not checkpoint folders: a trial ASHA stopped may still write one last checkpoint while
    its Train run is being aborted, within the same attempt."""
    results = (exp / f"trial_{trial}" / "result.json").read_text().splitlines()
    for ckpt in sorted((exp / "train" / trial).glob("checkpoint_*"), reverse=True):
        try:  # (a checkpoint Ray is still copying into place is skipped)
            return len(results), json.loads((ckpt / "history.json").read_text())["attempts"]
        except (OSError, ValueError, KeyError):
            continue
    return len(results), []


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
    assert all(0.0 <= float(r[f"{metric}_lo"]) <= float(r[metric]) <= float(r[f"{metric}_hi"]) <= 1.0
               for r in rows)  # every ranked value has its interval over the queries, around it
    assert any(float(r[f"{metric}_lo"]) < float(r[f"{metric}_hi"]) for r in rows)
    for r in rows:  # ranked at the last rung reached (rungs 1, 2, 3: every epoch), by its value there
        history = json.loads(max((exp / "train" / r["trial"]).glob("checkpoint_*/history.json")).read_text())
        measured = [e[metric] for e in history["epochs"] if metric in e]
        epochs = int(r["epochs"])
        assert int(r["ranked_at_epoch"]) == epochs and math.isclose(measured[epochs - 1], float(r[metric]))
    queries = int(history["epochs"][-1]["proxy_queries"])
    # one ranking: full-budget trials first by their final value, then by rung (later first), then value
    keys = [(r["status"] != "completed", -int(r["ranked_at_epoch"]), -float(r[metric])) for r in rows]
    assert keys == sorted(keys) and [int(r["rank"]) for r in rows] == list(range(1, n + 1))
    table = md_rows(exp / "results.md")
    assert [t["trial"] for t in table] == [r["trial"] for r in rows]  # the table is the CSV's order
    for t, r in zip(table, rows, strict=True):
        e = int(r["epochs"])
        label = "completed" if e == max_t else f"stopped early: ranked at rung {e} of 3 (epoch {e})"
        assert t["status"] == label
    md = (exp / "results.md").read_text()
    assert f"bootstrap over the {queries} query videos" in md and f"Best: {rows[0]['trial']}," in md

    best = load_config(outcome["best"])  # a ready pre-training config: the table's first row
    first = rows[0]
    assert first["status"] == "completed" and f"trial {first['trial']}" in Path(outcome["best"]).read_text()
    assert best.pace.paces == first["pace.paces"] and math.isclose(best.optim.lr, float(first["optim.lr"]))
    assert best.data.index == str(data) and best.run.name == "smoke-best" and best.optim.epochs == 3
    assert (exp / "metric_vs_params.png").stat().st_size > 0

    with pytest.raises(ConfigError, match="exists"):  # a fresh start never overwrites an experiment
        tune(SMOKE, resume=False, overrides=cmd[4:])
    with pytest.raises(ConfigError, match="different search"):  # nor does resuming another search into it
        tune(SMOKE, overrides=[*cmd[4:], "optim.lr_gamma=0.5"])
    print(f"smoke search: killed after {killed_at:.0f}s, total {total:.0f}s")


@pytest.mark.slow
def test_optuna_search_with_two_seeds_ranks_each_configuration_by_its_mean(local_ray, synth, tmp_path):
    pytest.importorskip("optuna", reason="tune.search: optuna needs the optuna extra (pip install "
                                         "'vpace[optuna]'), absent here")
    from vpace.train.checkpoint import find_latest, load_state

    raw = yaml.safe_load(SMOKE.read_text())  # the shipped smoke search, one epoch of 8 items a trial
    raw["set"].update({"data.index": str(synth), "data.cache_dir": str(synth.parent / f"{synth.name}_frames"),
                       "run.storage": str(tmp_path / "runs"), "run.seed": 11, "optim.epochs": 1,
                       "data.epoch_size": 8})
    raw["proxy"].update(num_clips=1, max_videos=12)
    raw["tune"] = {"metric": "proxy_map", "mode": "max", "num_samples": 2, "search": "optuna",
                   "scheduler": "fifo", "repeats": 2, "seed": 0}
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tune(path)

    assert len(out.rows) == 4 and {r["status"] for r in out.rows} == {"completed"}
    assert len(out.ranking) == 2  # two configurations drawn by Optuna, each run with two seeds
    for entry in out.ranking:
        assert sorted(t["seed_index"] for t in entry.trials) == [0, 1]
        assert len({json.dumps(t["params"], sort_keys=True) for t in entry.trials}) == 1
        for t in entry.trials:  # the seed each Train run actually trained with
            state = load_state(find_latest(t["run_dir"]))
            assert state["config"]["run"]["seed"] == 11 + t["seed_index"]
            assert t["history"][-1]["lo"] <= t["metric"] <= t["history"][-1]["hi"]
        assert entry.value == pytest.approx(np.mean([t["metric"] for t in entry.trials]))  # ranked: the mean
    assert out.ranking[0].value >= out.ranking[1].value
    assert out.ranking[0].params != out.ranking[1].params

    table = md_rows(Path(out.results_md))
    assert [t["trials"] for t in table] == [e.name for e in out.ranking]
    for t, e in zip(table, out.ranking, strict=True):
        assert t["proxy_map (mean)"] == f"{e.value:.4g}" and t["status"] == "completed"
        assert t["per seed"] == ", ".join(f"{p['value']:.4g}" for p in e.points)
    with open(out.results_csv) as f:
        per_trial = list(csv.DictReader(f))
    assert sorted(int(r["seed"]) for r in per_trial) == [11, 11, 12, 12]
    best = load_config(out.best_config)
    assert best.run.seed == 11 and math.isclose(best.optim.lr, out.ranking[0].params["optim.lr"])
