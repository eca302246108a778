"""`vpace demo` (`make demo`): the whole job on one CPU machine, from no data to a report.

Steps (each reused on a second run: the data set is idempotent, the Ray Train run resumes by name, features
are cached by checkpoint + data digest):

1. write the synthetic motion action set, or, for ``--data DIR`` (your own videos in any index format),
   ``vpace prepare`` them into ``runs/data/<name>-prepared-HxW`` at the run's decode size: the workflow for
   real video (prepare -> pre-train); broken videos are listed and left out;
2. pre-train the tiny R(2+1)D with pace prediction + same-context contrast on an embedded local Ray;
3. held-out evaluation on the test split: retrieval (test queries the train split) of the pre-trained
   backbone vs. a random init, and pace prediction per pace on clips that do not wrap (`vpace speed`);
4. an attention-map grid (rows = test videos, columns = paces);
5. ``runs/demo/report.md`` with curves, tables and the grid, and a printed summary.

The run is ``demo`` (``demo-quick`` for ``--quick``), with ``-wrap`` appended under ``--set data.start=wrap``
(unless ``--set run.name=...``): a re-run resumes by name, so another sampling must be another run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpace.config import Config, DataConfig, load_config


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run; ``quick`` is the same code path, smaller (CI)."""

    videos: int
    retrieval_clips: int
    attention_videos: int = 4
    epochs: int | None = None  # None: the `demo` config's own training length (optim.epochs, data.epoch_size)
    epoch_size: int | None = None
    pace_clips: int = 5  # held-out pace prediction: clips per test video and pace


FULL = DemoPlan(videos=500, retrieval_clips=10)
QUICK = DemoPlan(videos=44, retrieval_clips=2, attention_videos=2, epochs=1, epoch_size=48, pace_clips=2)


def demo_config(data_index: str, runs: Path, plan: DemoPlan, overrides: list[str]) -> Config:
    """The named `demo` config, pointed at the data and sized by the plan."""
    sets = [f"data.index={data_index}", f"run.storage={runs}", f"data.cache_dir={runs / 'cache' / 'frames'}"]
    sets += [f"optim.epochs={plan.epochs}"] if plan.epochs is not None else []
    sets += [f"data.epoch_size={plan.epoch_size}"] if plan.epoch_size is not None else []
    return load_config("demo", overrides=sets + list(overrides))


def run_name(cfg: Config, quick: bool, overrides: list[str]) -> str:
    """The demo's run name: the config's, + ``-quick``, + ``-<start>`` for a non-default start policy; a
    ``run.name`` the user set is kept as it is."""
    if any(o.split("=", 1)[0].strip() == "run.name" for o in overrides):
        return cfg.run.name
    policy = "" if cfg.data.start == DataConfig.start else f"-{cfg.data.start}"
    return f"{cfg.run.name}{'-quick' if quick else ''}{policy}"


def _prepare_data(source: str, cfg: Config) -> str:
    """Your own videos go through `vpace prepare` first (the workflow for real video: a copy at the decode
    size with dense keyframes, see README "Data pipeline"); returns the copy's index."""
    from vpace.data.layout import prepared_name
    from vpace.data.transcode import TranscodeSettings
    from vpace.prepare import prepare

    h, w = cfg.data.height, cfg.data.width
    out = Path(cfg.run.storage) / "data" / prepared_name(source, h, w)
    print(f"           vpace prepare {source} {out} --size {h}x{w}", flush=True)
    report = prepare(source, out, TranscodeSettings(size=(h, w)))
    print("\n".join(f"           {line}" for line in report.format().splitlines()))
    return report.out_index


def _stage(n: int, title: str) -> float:
    print(f"\n[demo {n}/5] {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"           done in {time.perf_counter() - t0:.0f} s", flush=True)


def _top1(result: dict[str, Any], model: str, layer: str) -> float | None:
    for r in result["rows"]:
        if r.get("model") == model and r.get("layer") == layer and r.get("mode", "video") == "video":
            return 100.0 * float(r["top1"])  # rows hold fractions
    return None


def run_demo(*, data: str | None = None, runs: str = "runs", quick: bool = False,
             overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the five demo steps; returns a summary dict (also printed)."""
    from vpace.data.synthetic import make_synthetic
    from vpace.eval.attention_maps import attention
    from vpace.eval.report import write_report
    from vpace.eval.retrieval import retrieve
    from vpace.eval.speed_segments import pace_accuracy
    from vpace.objectives.pace import uses_cls
    from vpace.train import pretrain

    plan = QUICK if quick else FULL
    root = Path(runs).resolve()
    t_all = time.perf_counter()

    t0 = _stage(1, "data")
    if data is None:
        info = make_synthetic(root / "data" / ("synthetic-quick" if quick else "synthetic"),
                              num_videos=plan.videos, seed=0)
        print(f"           synthetic set {info.out_dir} ({info.num_train} train / {info.num_test} test, "
              f"{len(info.classes)} classes{', reused' if info.reused else ''})")
        data_index = str(info.out_dir)
    else:
        data_index = _prepare_data(str(Path(data).resolve()), demo_config(data, root, plan, overrides or []))
    _done(t0)

    cfg = demo_config(data_index, root, plan, overrides or [])
    cfg.run.name = run_name(cfg, quick, overrides or [])
    t0 = _stage(2, f"pre-train {cfg.model.backbone} ({cfg.method}, paces {cfg.pace.paces}) on local Ray, "
                   f"{cfg.scale.max_workers} workers, {cfg.optim.epochs} epochs")
    result = pretrain(cfg)
    run_dir = Path(result.run_dir)
    _done(t0)

    t0 = _stage(3, "held out (test split): retrieval, pre-trained vs random init (test queries train); "
                   "pace prediction on clips that do not wrap")
    ret = retrieve(result.checkpoint, data=data_index, baseline="random", layers=("p5", "p4"),
                   num_clips=plan.retrieval_clips, out_dir=str(run_dir / "eval"),
                   cache_dir=str(root / "cache" / "features"), num_workers=1)
    heldout = None
    if cfg.method != "rspnet" and uses_cls(cfg.pace):  # a pace head to ask
        heldout = pace_accuracy(result.checkpoint, data=data_index, split="test", num_clips=plan.pace_clips,
                                out_dir=str(run_dir / "eval"))
    _done(t0)

    t0 = _stage(4, "attention maps")
    from vpace.data import load_index

    test = load_index(data_index).split("test")
    step = max(1, len(test) // plan.attention_videos)
    picks = [e.path for e in test.entries[::step]][: plan.attention_videos]
    # conv5 of a net trained on 32 px crops is 1x1; look at it on ~112 px frames, as the paper's Fig. 5 does
    scale = max(1, round(112 / cfg.augment.crop))
    attention(result.checkpoint, picks, out=str(run_dir / "eval" / "attention.png"), scale=scale)
    _done(t0)

    t0 = _stage(5, "report")
    report = write_report(str(run_dir))
    _done(t0)

    last = result.history.get("epochs", [{}])[-1] if result.history.get("epochs") else result.metrics
    chance = 1.0 / len(cfg.pace.paces.split(","))
    summary = {
        "report": str(report),
        "start": cfg.data.start,
        "pace_acc": last.get("pace_acc"),
        "pace_chance": chance,
        "pace_heldout": None if heldout is None else {
            "acc": heldout["acc"], "per_pace": {r["pace"]: r["acc"] for r in heldout["rows"]},
            "clips": sum(r["clips"] for r in heldout["rows"]), "num_videos": heldout["num_videos"]},
        "top1": {layer: {"pretrained": _top1(ret, "pretrained", layer), "random": _top1(ret, "random", layer)}
                 for layer in ("p5", "p4")},
        "num_test": ret.get("num_test"),
        "minutes": (time.perf_counter() - t_all) / 60,
    }
    _print_summary(summary)
    (run_dir / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _print_summary(s: dict[str, Any]) -> None:
    acc = s["pace_acc"]
    print("\n================ vpace demo result ================")
    if acc is not None:
        print(f"pace accuracy (last epoch, train clips, data.start={s['start']}): {100 * acc:.1f}%  "
              f"(chance {100 * s['pace_chance']:.0f}%)")
    if (h := s["pace_heldout"]) is not None and h["acc"] is not None:
        per = ", ".join(f"{p}: {'-' if a is None else f'{100 * a:.1f}%'}" for p, a in h["per_pace"].items())
        print(f"pace accuracy, held out ({h['num_videos']} test videos, {h['clips']} clips that do not "
              f"wrap): {100 * h['acc']:.1f}%  (per pace {per})")
    for layer, v in s["top1"].items():
        if v["pretrained"] is None or v["random"] is None:
            continue
        print(f"retrieval top-1 {layer}: pre-trained {v['pretrained']:.1f}%  "
              f"vs random init {v['random']:.1f}%  ({v['pretrained'] - v['random']:+.1f} points, "
              f"{s['num_test']} test videos)")
    print(f"report: {s['report']}   ({s['minutes']:.1f} min)")
