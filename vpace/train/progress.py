"""What a user watches: a progress bar on rank 0, metrics CSVs + TensorBoard under the run dir, a PNG curve.

The metric history lives in the checkpoint (not only in files), so a restarted or resized run rewrites the
CSVs from the state it resumed from: rows of steps that were redone never appear twice.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Any

from vpace.paths import is_remote, local_path

EPOCHS_CSV = "metrics.csv"
STEPS_CSV = "steps.csv"
CURVES_PNG = "curves.png"
TB_DIR = "tensorboard"


def acc_keys(row: dict[str, Any]) -> list[str]:
    return sorted(k for k in row if k.endswith("acc"))


def _bar_text(m: dict[str, float]) -> str:
    parts = [f"loss {m['loss']:.4f}"] if "loss" in m else []
    parts += [f"{k} {m[k]:.3f}" for k in acc_keys(m)]
    if "clips_per_s" in m:
        parts.append(f"{m['clips_per_s']:.1f} clips/s")
    if "data_wait_frac" in m:
        parts.append(f"data wait {100 * m['data_wait_frac']:.0f}%")
    return " ".join(parts)


class Progress:
    """Rank-0 progress: bar + TensorBoard while training; CSVs rewritten from history at each epoch end."""

    def __init__(self, out_dir: Path | None, total_steps: int, initial_step: int, enabled: bool,
                 desc: str = "train") -> None:
        self.enabled, self.out_dir = enabled, out_dir
        self.bar: Any = None
        self.tb: Any = None
        if not enabled:
            return
        self.bar = _make_bar(total_steps, initial_step, desc)
        if out_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            out_dir.mkdir(parents=True, exist_ok=True)
            # purge_step drops events of steps that are being redone after a restart
            self.tb = SummaryWriter(str(out_dir / TB_DIR), purge_step=initial_step or None)

    def step(self, step: int, metrics: dict[str, float] | None) -> None:
        if not self.enabled:
            return
        self.bar.update(1)
        if metrics:
            self.bar.set_postfix_str(_bar_text(metrics), refresh=False)
            if self.tb is not None:
                for k, v in metrics.items():
                    self.tb.add_scalar(f"step/{k}", v, step)

    def epoch_end(self, history: dict[str, list[dict[str, Any]]]) -> None:
        if not self.enabled or self.out_dir is None:
            return
        row = history["epochs"][-1]
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"epoch/{k}", v, row["epoch"])
            self.tb.flush()
        write_csvs(history, self.out_dir)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def _make_bar(total: int, initial: int, desc: str) -> Any:
    """The rank-0 bar: whole lines, as Ray forwards worker output line by line (`vpace.bars`)."""
    from vpace.bars import progress_bar

    return progress_bar(total=total, initial=initial, unit="step", desc=desc, forwarded=True)


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def write_csvs(history: dict[str, list[dict[str, Any]]], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if history.get("epochs"):
        _write_csv(history["epochs"], out_dir / EPOCHS_CSV)
    if history.get("steps"):
        _write_csv(history["steps"], out_dir / STEPS_CSV)


def plot_curves(history: dict[str, list[dict[str, Any]]], png: Path) -> Path | None:
    """Loss (left) and accuracies (right) against the global step: the logged windows plus epoch means."""
    steps, epochs = history.get("steps", []), history.get("epochs", [])
    if not steps and not epochs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for rows, style, tag in ((steps, "-", "steps"), (epochs, "o", "epoch mean")):
        xs = [r["step"] for r in rows if "loss" in r]
        if xs:
            ax_l.plot(xs, [r["loss"] for r in rows if "loss" in r], style, label=f"loss ({tag})")
        for k in acc_keys(rows[0]) if rows else []:
            pts = [(r["step"], r[k]) for r in rows if k in r]
            ax_a.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{k} ({tag})")
    ax_l.set_xlabel("step")
    ax_l.set_title("loss")
    ax_a.set_xlabel("step")
    ax_a.set_title("accuracy")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png


def write_run_outputs(history: dict[str, list[dict[str, Any]]], run_dir: str) -> None:
    """CSVs + PNG into the run dir (a local path, or uploaded to a remote URI such as s3://)."""
    if not is_remote(run_dir):
        out = local_path(run_dir)
        write_csvs(history, out)
        plot_curves(history, out / CURVES_PNG)
        return
    import pyarrow.fs

    with tempfile.TemporaryDirectory() as tmp:
        write_csvs(history, Path(tmp))
        plot_curves(history, Path(tmp) / CURVES_PNG)
        fs, path = pyarrow.fs.FileSystem.from_uri(run_dir)
        pyarrow.fs.copy_files(tmp, path, destination_filesystem=fs)
