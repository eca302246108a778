"""What a finished search leaves: results table (markdown + CSV), the best config as a pre-training YAML, and
a plot of the proxy metric against each searched parameter."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from vpace.eval.results import markdown_table
from vpace.tune.space import SearchSpec

COMPLETED, STOPPED, ERROR, NO_RESULT = "completed", "stopped early", "error", "no result"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _label(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def pick_best(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """Best final metric among trials that ran the full budget; among all measured trials if none did
    (a trial ASHA stopped early was measured after fewer epochs, so it is not compared on equal terms)."""
    measured = [r for r in rows if isinstance(r.get("metric"), float) and math.isfinite(r["metric"])]
    pool = [r for r in measured if r["status"] == COMPLETED] or measured
    if not pool:
        return None
    return (max if mode == "max" else min)(pool, key=lambda r: r["metric"])


def write_table(rows: list[dict[str, Any]], spec: SearchSpec, out: Path) -> tuple[Path, Path]:
    """results.md (sorted by metric, best first) + results.csv (one row per trial, params as columns)."""
    metric, keys = spec.tune.metric, [d.key for d in spec.dims]
    sign = -1 if spec.tune.mode == "max" else 1
    rows = sorted(rows, key=lambda r: (r.get("metric") is None, sign * (r.get("metric") or 0.0), r["trial"]))
    cols = ["trial", "status", "epochs", metric, f"best {metric}", *keys, "run_dir"]
    md = out / "results.md"
    body = markdown_table(cols, [[r["trial"], r["status"], r["epochs"], _fmt(r.get("metric")),
                                  _fmt(r.get("best_metric")), *[_fmt(r["params"].get(k)) for k in keys],
                                  r["run_dir"]] for r in rows])
    errors = [f"- {r['trial']}: {r['error']}" for r in rows if r.get("error")]
    title = (f"# Search {spec.name}: {metric} ({spec.tune.mode}), {spec.tune.search} search, "
             f"{spec.tune.scheduler} scheduler\n\nbase: {spec.path}\n\n")
    md.write_text(title + body + ("\n\nErrors:\n" + "\n".join(errors) if errors else "") + "\n")
    path = out / "results.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "status", "epochs", metric, f"best_{metric}", *keys, "run_dir", "error"])
        for r in rows:
            w.writerow([r["trial"], r["status"], r["epochs"], r.get("metric"), r.get("best_metric"),
                        *[r["params"].get(k) for k in keys], r["run_dir"], r.get("error") or ""])
    return md, path


def write_best_config(best: dict[str, Any], spec: SearchSpec, out: Path) -> Path:
    """The best trial's pre-training config (full schedule, its own run name), loadable by load_config."""
    cfg = spec.trial_config(best["params"])
    cfg.run.name = f"{spec.name}-best"
    path = out / "best_config.yaml"
    searched = ", ".join(f"{k}={v!r}" for k, v in best["params"].items())
    header = (f"# Best trial {best['trial']} of search '{spec.name}' ({spec.path}):\n"
              f"# {spec.tune.metric}={best['metric']:.4f} after {best['epochs']} epoch(s); {searched}\n"
              f"# Train it: vpace pretrain --config {path}\n")
    path.write_text(header + cfg.to_yaml())
    return path


def plot_params(rows: list[dict[str, Any]], spec: SearchSpec, out: Path) -> Path | None:
    """metric_vs_params.png: one panel per searched parameter; marker = completed vs stopped early."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    measured = [r for r in rows if isinstance(r.get("metric"), float)]
    if not measured:
        return None
    n = len(spec.dims)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, d in zip(axes[0], spec.dims, strict=True):
        for status, marker in ((COMPLETED, "o"), (STOPPED, "x")):
            pts = [r for r in measured if r["status"] == status]
            if d.categorical:
                labels = [_label(v) for v in d.values]
                xs = [labels.index(_label(r["params"][d.key])) for r in pts]
                ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
            else:
                xs = [r["params"][d.key] for r in pts]
                if d.kind == "loguniform":
                    ax.set_xscale("log")
                    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.scatter(xs, [r["metric"] for r in pts], marker=marker, label=status)
        ax.set_xlabel(d.key)
        ax.set_ylabel(spec.tune.metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{spec.name}: {spec.tune.metric} at each trial's last measurement")
    fig.tight_layout()
    path = out / "metric_vs_params.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
