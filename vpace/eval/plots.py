"""Matplotlib helpers shared by attention, speed and report (Agg backend: no display here or on clusters)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CELL_PX = 160  # one grid cell, in pixels
DPI = 100


def image_grid(
    images: Sequence[Sequence[np.ndarray]],
    out: str | Path,
    *,
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    cell_px: int = CELL_PX,
) -> tuple[Path, int]:
    """Write a rows x cols grid of uint8 [H, W, 3] images to a PNG of exactly (rows*cell_px, cols*cell_px)
    pixels; labels are drawn inside the cells so the size stays predictable. Returns (path, subplot count)."""
    rows = len(images)
    cols = max((len(r) for r in images), default=0)
    if rows == 0 or cols == 0:
        raise ValueError("image_grid needs at least one image")
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell_px / DPI, rows * cell_px / DPI), dpi=DPI,
                             squeeze=False)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1, wspace=0.02, hspace=0.02)
    box = {"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0}
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(images[r]):
                ax.imshow(images[r][c])
            if r == 0 and c < len(col_labels):
                ax.text(0.98, 0.97, col_labels[c], transform=ax.transAxes, ha="right", va="top",
                        color="white", fontsize=8, bbox=box)
            if c == 0 and r < len(row_labels):
                ax.text(0.02, 0.03, row_labels[r], transform=ax.transAxes, ha="left", va="bottom",
                        color="white", fontsize=7, bbox=box)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = len(fig.axes)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out, n


def overlay_heatmap(frame: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] heat map (jet colormap) over a uint8 [H, W, 3] frame -> uint8 [H, W, 3]."""
    if frame.shape[:2] != heat.shape:
        raise ValueError(f"heat map {heat.shape} does not match the frame {frame.shape[:2]}")
    colored = matplotlib.colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    out = (1.0 - alpha) * frame.astype(np.float32) + alpha * colored
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def line_plot(
    x: Sequence[float] | np.ndarray,
    series: dict[str, Sequence[float] | np.ndarray],
    out: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    step: bool = False,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One axes, one line per series; written as PNG."""
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=DPI)
    for name, y in series.items():
        (ax.step if step else ax.plot)(x, y, label=name, **({"where": "post"} if step else {}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
