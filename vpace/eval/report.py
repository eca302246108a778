"""``vpace report RUN``: one markdown page per run from what the run and its evaluations left on disk.

Sections: the config, loss/accuracy curves (PNG), the last epochs' metrics, retrieval / fine-tune / probe
tables (pretrained vs random init, as written by the eval commands into ``<run>/eval``), the attention grid
if present, and the benchmark rows that apply to this run (same machine and device, this backbone, newest
measurement of each row). Sections with no data say how to produce it instead of disappearing.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import yaml

from vpace.bench_rows import CPU_DEVICE, source_checkout
from vpace.bench_rows import machine as bench_machine
from vpace.eval.results import TITLES, markdown_table, pct, read_result
from vpace.eval.retrieval import format_table
from vpace.eval.speed_segments import HELDOUT, heldout_table
from vpace.train.checkpoint import load_latest
from vpace.train.metrics import STARVED_FRAC, STARVED_HINT

BENCH_KEY = ("kernel", "provider", "shape", "metric")


def default_bench_dir() -> Path:
    """``benchmarks/results`` of the working directory, else of the source checkout vpace runs from."""
    here, checkout = Path("benchmarks/results"), source_checkout()
    return here if here.is_dir() or checkout is None else checkout / "benchmarks" / "results"


def applicable_benchmarks(bench_dir: Path, *, backbone: str, gpu: bool, machine: str | None) -> list[dict]:
    """Rows measured on this machine and kind of device (a GPU row's device is the GPU's name, a CPU row's
    `CPU_DEVICE`); rows naming a backbone only if it is this run's; newest date wins per (file, kernel,
    provider, shape, metric)."""
    from vpace.config import BACKBONES, base_backbone

    backbone = base_backbone(backbone)  # residual input: the same network, the same benchmark rows
    others = [b for b in BACKBONES if b != backbone]
    latest: dict[tuple, dict] = {}
    for path in sorted(Path(bench_dir).glob("*.csv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if machine is not None and row.get("machine") not in (None, "", machine):
                    continue
                device = row.get("device") or ""
                if device and (device != CPU_DEVICE) != gpu:
                    continue
                text = " ".join(str(row.get(k, "")) for k in BENCH_KEY)
                names = set(text.replace(",", " ").replace("/", " ").split())
                if names & set(others) and backbone not in names:
                    continue
                key = (path.stem, *(row.get(k, "") for k in BENCH_KEY))
                if key not in latest or row.get("date", "") >= latest[key].get("date", ""):
                    latest[key] = {"area": path.stem, **row}
    return list(latest.values())


def _history_table(epochs: list[dict[str, Any]], last: int = 10) -> str:
    from vpace.objectives import TALLY_GROUPS

    if not epochs:
        return "_no epoch finished yet_"
    shown_per_pace = set(TALLY_GROUPS) - {"pace_acc"}  # in `_pace_section`; the bare pace_acc is the loss's
    keys = [k for k in epochs[-1] if k != "world_size" and "/" not in k and k not in shown_per_pace]
    fmt = (lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
    return markdown_table(keys, [[fmt(r.get(k, "")) for k in keys] for r in epochs[-last:]])


def data_wait_lines(cfg: dict[str, Any], history: dict[str, Any]) -> list[str]:
    """The share of time the workers waited for data (`data_wait_frac`, both loaders) per epoch, or per log
    window before an epoch ends, and whether the run was starved (> `STARVED_FRAC` of the time)."""
    head = [f"### Data wait (`data.loader: {cfg.get('data', {}).get('loader', 'torch')}`)", ""]
    rows = [r for r in history.get("epochs", []) if "data_wait_frac" in r]
    what = "epoch"
    if not rows:  # no epoch finished: the log windows but the first (it pays for the loader's start-up)
        rows, what = [r for r in history.get("steps", []) if "data_wait_frac" in r][1:], "log window"
    if not rows:
        return [*head, "_not recorded (no epoch or log window yet, or a run from before the metric)_", ""]
    fracs = [r["data_wait_frac"] for r in rows]
    starved = sum(f > STARVED_FRAC for f in fracs)
    out = [*head, f"- waiting for data: {pct(fracs[-1])}% of the last {what}'s time; {pct(min(fracs))}-"
                  f"{pct(max(fracs))}% over {len(fracs)} {what}s"]
    if starved:
        out.append(f"- **starved**: more than {pct(STARVED_FRAC)}% of the time in {starved} of {len(fracs)} "
                   f"{what}s: {STARVED_HINT}")
    else:
        out.append(f"- not starved: at most {pct(STARVED_FRAC)}% of the time in every {what}")
    return [*out, ""]


def _pace_section(cfg: dict[str, Any], epochs: list[dict[str, Any]], heldout: dict[str, Any] | None,
                  run: Path) -> list[str]:
    """Pace accuracy per pace: last epoch's training clips split by wrapped / not wrapped, then held out."""
    from vpace.data.pace import format_pace, pace_metric_name, parse_pace_set

    rspnet = cfg.get("method") == "rspnet"
    section, field = ("rspnet", "speeds") if rspnet else ("pace", "paces")
    paces = parse_pace_set(str(cfg.get(section, {}).get(field) or "1,2,3,4"))
    start = cfg.get("data", {}).get("start", "wrap")  # runs from before the field wrapped
    out = ["## Pace prediction per pace", "", f"### Training clips, last epoch (`data.start: {start}`)", ""]
    row = epochs[-1] if epochs else {}
    if "wrap_frac" not in row:
        out += ["_not recorded (no finished epoch, or a run from before the per-pace metrics)_", ""]
    else:
        head = ["pace", "clips wrapped %"] + ([] if rspnet else ["accuracy %", "accuracy, not wrapped %",
                                                                 "accuracy, wrapped %"])
        names = [(format_pace(p), f"/{pace_metric_name(p)}") for p in paces] + [("all", "")]
        groups = ("wrap_frac",) if rspnet else ("wrap_frac", "pace_acc", "pace_acc_nowrap", "pace_acc_wrap")
        rows = [[label, *[pct(row.get(g + sfx)) for g in groups]] for label, sfx in names]
        out += [markdown_table(head, rows), ""]
    out += ["### Held out: whole videos, clips that do not wrap", ""]
    if heldout is None:
        return out + [f"_not run yet: `vpace speed --checkpoint {run}`_", ""]
    return out + [f"{heldout.get('protocol', '')}; {heldout.get('num_videos')} videos, chance "
                  f"{pct(heldout.get('chance'))}%", "", heldout_table(heldout), ""]


def _acc_section(res: dict[str, Any] | None, title: str, how: str, cols: tuple[str, ...]) -> list[str]:
    out = [f"## {title}", ""]
    if res is None:
        return out + [f"_not run yet: `{how}`_", ""]
    rows = [[r["model"], *[pct(r.get(c)) for c in cols]] for r in res["rows"]]
    return out + [markdown_table(["model", *cols], rows), ""]


def write_report(run_dir: str, *, bench_dir: str | None = None, out: str | None = None) -> Path:
    """Write ``<run>/report.md`` (or ``out``) and return its path."""
    run = Path(run_dir)
    ckpt, state, meta = load_latest(run)
    cfg: dict[str, Any] = state.get("config") or {}
    history = (state.get("loop") or {}).get("history") or {}
    report = Path(out) if out else run / "report.md"
    rel = (lambda p: os.path.relpath(p, report.parent))
    ev = run / "eval"

    lines = [f"# Run report: {run.name}", "",
             f"- checkpoint: `{ckpt}` (step {meta.get('step')}, epoch {meta.get('epoch')}, "
             f"task {meta.get('task')})",
             f"- method: {cfg.get('method')}, backbone: {meta.get('backbone')}, "
             f"paces: {cfg.get('pace', {}).get('paces')}", "",
             "## Config", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```", ""]

    curves = run / "curves.png"
    if not curves.is_file() and history:
        from vpace.train.progress import plot_curves

        plot_curves(history, curves)
    lines += ["## Training curves", ""]
    lines += [f"![loss and accuracy]({rel(curves)})" if curves.is_file() else "_no metrics logged_", ""]
    lines += ["### Last epochs", "", _history_table(history.get("epochs", [])), ""]
    lines += data_wait_lines(cfg, history)
    lines += _pace_section(cfg, history.get("epochs", []), read_result(ev, HELDOUT), run)

    ret = read_result(ev, "retrieval")
    lines += ["## Retrieval (top-k %)", ""]
    if ret is None:
        lines += [f"_not run yet: `vpace retrieve {run} --baseline random`_", ""]
    else:
        lines += [f"{ret.get('protocol', '')}; {ret.get('num_test')} test queries, "
                  f"{ret.get('num_train')} train videos", "", format_table(ret["rows"], ret["ks"]), ""]
    lines += _acc_section(read_result(ev, "finetune"), TITLES["finetune"],
                          f"vpace finetune {run} --baseline random", ("video_acc", "clip_acc"))
    lines += _acc_section(read_result(ev, "linear_probe"), TITLES["linear_probe"],
                          f"vpace finetune {run} --linear-probe --baseline random", ("video_acc", "clip_acc"))
    lines += _acc_section(read_result(ev, "knn"), TITLES["knn"],
                          f"vpace finetune {run} --knn --baseline random", ("video_acc", "clip_acc"))
    if (ev / "attention.png").is_file():
        lines += ["## Attention (conv5, last frame; rows = videos, columns = paces)", "",
                  f"![attention]({rel(ev / 'attention.png')})", ""]

    bdir = Path(bench_dir) if bench_dir else default_bench_dir()
    gpu = bool(cfg.get("scale", {}).get("use_gpu"))
    rows = applicable_benchmarks(bdir, backbone=str(meta.get("backbone")), gpu=gpu,
                                 machine=bench_machine()) if bdir.is_dir() else []
    lines += ["## Benchmarks (this machine and device)", ""]
    if rows:
        head = ["area", "kernel", "provider", "shape", "metric", "value", "date"]
        lines += [markdown_table(head, [[r.get(k, "") for k in head] for r in rows]), ""]
    else:
        lines += [f"_no applicable rows in {bdir} (run `make bench`)_", ""]

    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines))
    print(f"wrote {report}")
    return report
