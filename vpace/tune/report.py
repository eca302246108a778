"""What a finished search leaves, all from one ranking (`vpace.tune.ranking`): results.md (one row per
configuration, and whether the proxy's noise separates the first two), results.csv (one row per trial), the
first configuration as a pre-training YAML, and the proxy against each searched parameter at each rung."""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpace.eval.results import markdown_table
from vpace.tune.ranking import Entry, noisy_stops, overlap, pick_best, point_at, rank, reached, status_label
from vpace.tune.space import INTERVAL_LEVEL, INTERVAL_RESAMPLES, SearchSpec

PCT = f"{INTERVAL_LEVEL:.0%}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _label(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _epochs(n: int | None) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _interval_text(iv: tuple[float, float] | None) -> str:
    return f"{iv[0]:.4g} - {iv[1]:.4g}" if iv else "-"


def queries_used(rows: list[dict[str, Any]]) -> str:
    """The proxy's query count as the trials reported it ("?" if none did)."""
    counts = sorted({int(r["queries"]) for r in rows if r.get("queries")})
    return "?" if not counts else str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def noise_lines(entries: list[Entry], rows: list[dict[str, Any]], spec: SearchSpec) -> list[str]:
    """Whether the best configuration's interval overlaps the runner-up's, and how many of ASHA's stops were
    within the proxy's noise, in words."""
    best, m, queries = pick_best(entries), spec.tune.metric, queries_used(rows)
    if best is None:
        return ["No configuration was measured at any rung: no best."]
    lines = [f"Best: {best.name}, {m} {best.value:.4g} ({PCT} interval {_interval_text(best.interval)}) "
             f"after {_epochs(best.rung)}."]
    runner = entries[1] if len(entries) > 1 and entries[1].value is not None else None
    if runner is not None:
        budget = "" if runner.rung == best.rung else " (fewer epochs: not an equal-budget comparison)"
        lines.append(f"Runner-up: {runner.name}, {m} {runner.value:.4g} ({PCT} interval "
                     f"{_interval_text(runner.interval)}) after {_epochs(runner.rung)}{budget}.")
        both = overlap(best.interval, runner.interval)
        if both:
            lines.append(f"**The intervals overlap**: on {queries} query videos the proxy does not separate "
                         "the two, so their order may be a draw of the queries. More query videos "
                         "(`proxy.max_videos`, a larger test split) or seeds (`tune.repeats`) would tell "
                         "whether it holds.")
        elif both is not None:
            lines.append("The intervals do not overlap: the gap is larger than the noise of drawing "
                         f"{queries} query videos" + ("." if spec.tune.repeats > 1 else
                                           " (another seed may still move it: `tune.repeats`)."))
        if len(best.points) > 1 and len(runner.points) > 1:
            seeds = "overlap" if overlap(best.spread, runner.spread) else "do not overlap"
            lines.append(f"Across seeds: best {_interval_text(best.spread)}, runner-up "
                         f"{_interval_text(runner.spread)}: they {seeds}.")
    stopped, noisy = noisy_stops(rows, spec)
    if stopped:
        lines.append(f"ASHA stopped {stopped} trial(s); {noisy} of them had an interval at that rung "
                     "overlapping one of a trial it kept, so those stops were within the proxy's noise.")
    return lines


def write_table(entries: list[Entry], spec: SearchSpec, out: Path) -> tuple[Path, Path]:
    """results.md (one row per configuration, ranked, with the noise paragraph) + results.csv (one row per
    trial, in ranking order, params as columns)."""
    metric, keys, ref = spec.tune.metric, [d.key for d in spec.dims], spec.reference
    rep = spec.tune.repeats > 1
    rows = [t for e in entries for t in e.trials]
    cols = ["rank", "trials" if rep else "trial", "status", "epochs", f"{metric}{' (mean)' if rep else ''}",
            f"{PCT} interval", *(["per seed", "sd"] if rep else []), *keys, *([ref.metric] if ref else [])]
    table = []
    for e in entries:
        per_seed = [", ".join(f"{p['value']:.4g}" for p in e.points) or "-", _fmt(e.sd)] if rep else []
        table.append([e.rank, e.name, status_label(e, spec), ", ".join(str(t["epochs"]) for t in e.trials),
                      _fmt(e.value), _interval_text(e.interval), *per_seed,
                      *[_fmt(e.params.get(k)) for k in keys], *([_fmt(ref.lookup(e.params))] if ref else [])])
    early_rungs = [r for r in reversed(spec.rungs()) if r < spec.budget]
    early = (f"; then trials stopped early, by {metric} at the highest ASHA rung they reached (epochs "
             f"{', '.join(map(str, early_rungs))}; later rungs first)") if early_rungs else ""
    rule = (f"Ranking: trials that ran the full budget ({spec.budget} epochs) first, by {metric} after "
            f"{spec.budget} epochs{early}; unmeasured trials last.")
    if rep:
        rule += (f" A row is one configuration run with the seeds run.seed + 0 .. {spec.tune.repeats - 1}, "
                 "ranked by the mean over its seeds (at the same rung, those with a failed seed last).")
    intervals = (f"Intervals: {PCT} bootstrap over the {queries_used(rows)} query videos of the proxy "
                 f"({INTERVAL_RESAMPLES} resamples)"
                 + ("; with seeds, their intervals' ends averaged (the seeds' own spread: per seed, sd)."
                    if rep else "."))
    if ref:
        intervals += (f" Last column: {ref.metric}, from {ref.source}; shown beside the proxy, not ranked "
                      "(a different metric: compare the orders, not the values).")
    errors = [f"- {r['trial']}: {r['error']}" for r in rows if r.get("error")]
    md = out / "results.md"
    md.write_text("\n\n".join([
        f"# Search {spec.name}: {metric} ({spec.tune.mode}), {spec.tune.search} search, "
        f"{spec.tune.scheduler} scheduler" + (f", {spec.tune.repeats} seeds a configuration" if rep else ""),
        f"base: {spec.path}\n\ntrial runs: {out / 'train'}/<trial>", rule, intervals,
        markdown_table(cols, table), *noise_lines(entries, rows, spec),
        *(["Errors:\n" + "\n".join(errors)] if errors else [])]) + "\n")
    path = out / "results.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "trial", "status", "epochs", "ranked_at_epoch", metric, f"{metric}_lo",
                    f"{metric}_hi", f"config_{metric}", "seed", *keys, *(["reference"] if ref else []),
                    "run_dir", "error"])
        for e in entries:
            for t in e.trials:
                p = point_at(t, e.rung) if e.rung is not None else None
                w.writerow([e.rank, t["trial"], t["status"], t["epochs"], e.rung if p else None,
                            *((p["value"], p["lo"], p["hi"]) if p else (None, None, None)), e.value,
                            t["seed"], *[t["params"].get(k) for k in keys],
                            *([ref.lookup(e.params)] if ref else []), t["run_dir"], t.get("error") or ""])
    return md, path


def write_best_config(best: Entry, spec: SearchSpec, out: Path) -> Path:
    """The first configuration's pre-training config (full schedule, its own run name, the base seed),
    loadable by load_config."""
    cfg = spec.trial_config(best.params)
    cfg.run.name = f"{spec.name}-best"
    path = out / "best_config.yaml"
    searched = ", ".join(f"{k}={v!r}" for k, v in best.params.items())
    seeds = f" (mean of {len(best.points)} seeds)" if len(best.trials) > 1 else ""
    header = (f"# Rank 1 of search '{spec.name}' ({spec.path}): trial {best.name}\n"
              f"# {spec.tune.metric}={best.value:.4f}{seeds} after {best.rung} epoch(s); {searched}\n"
              f"# Train it: vpace pretrain --config {path}\n")
    path.write_text(header + cfg.to_yaml())
    return path


def plot_points(entries: list[Entry], spec: SearchSpec) -> dict[int, list[tuple[Entry, dict, dict, bool]]]:
    """What each rung's panels show: {rung: [(configuration, trial, its point at that rung, ASHA stopped it
    there)]} for every trial that reached the rung; rungs no trial reached are left out."""
    every, out = spec.rungs(), {}
    for rung in every:
        here = [(e, t, point_at(t, rung), reached(t, every) == rung < spec.budget)
                for e in entries for t in e.trials if (reached(t, every) or 0) >= rung]
        if here:
            out[rung] = here
    return out


def plot_params(entries: list[Entry], spec: SearchSpec, out: Path) -> Path | None:
    """metric_vs_params.png: a row of panels per rung (every trial that reached it, at that rung, with its
    interval), a column per searched parameter; x = ASHA stopped it there, o = it went on; #k = the
    configuration's rank, at the rung it is ranked at; with seeds, _ = the configuration's mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = plot_points(entries, spec)
    if not panels:
        return None
    n = len(spec.dims)
    fig, axes = plt.subplots(len(panels), n, figsize=(4.2 * n, 3.2 * len(panels)), squeeze=False)
    for row, (rung, points) in zip(axes, panels.items(), strict=True):
        for ax, d in zip(row, spec.dims, strict=True):
            labels = [_label(v) for v in d.values] if d.categorical else []
            for e in entries:
                here = [(t, p, stopped) for e2, t, p, stopped in points if e2 is e]
                x0 = labels.index(_label(e.params[d.key])) if d.categorical else e.params[d.key]
                for i, (_, p, stopped) in enumerate(here):
                    x = x0 + (i - (len(here) - 1) / 2) * 0.08 if d.categorical else x0
                    err = [[p["value"] - p["lo"]], [p["hi"] - p["value"]]] if p["lo"] is not None else None
                    ax.errorbar([x], [p["value"]], yerr=err, fmt="x" if stopped else "o", capsize=2,
                                color="tab:red" if stopped else "tab:blue", alpha=0.8)
                if here and e.rung == rung:
                    ax.annotate(f"#{e.rank}", (x0, e.value), textcoords="offset points", xytext=(5, 3),
                                fontsize=7)
                if spec.tune.repeats > 1 and here:
                    ax.scatter([x0], [statistics.fmean(p["value"] for _, p, _ in here)], marker="_", s=300,
                               color="black", zorder=3)
            if d.categorical:
                ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
            elif d.kind == "loguniform":
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"epoch {rung}" + (" (full budget)" if rung >= spec.budget else " (ASHA rung)"),
                         fontsize=9)
            ax.set_xlabel(d.key)
            ax.set_ylabel(spec.tune.metric)
            ax.grid(alpha=0.3)
    fig.suptitle(f"{spec.name}: {spec.tune.metric} per rung ({PCT} intervals over the queries; x = stopped "
                 "at this rung, #k = rank)")
    fig.tight_layout()
    path = out / "metric_vs_params.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@dataclass
class Outputs:
    ranking: list[Entry]
    best: Entry | None
    results_md: str
    results_csv: str
    best_config: str | None
    plot: str | None


def write_outputs(rows: list[dict[str, Any]], spec: SearchSpec, out: Path) -> Outputs:
    """Rank the trials once and write every output from that ranking."""
    ranking = rank(rows, spec)
    md, csv_path = write_table(ranking, spec, out)
    best = pick_best(ranking)
    best_cfg = write_best_config(best, spec, out) if best is not None else None
    png = plot_params(ranking, spec, out)
    return Outputs(ranking, best, str(md), str(csv_path), str(best_cfg) if best_cfg else None,
                   str(png) if png else None)
