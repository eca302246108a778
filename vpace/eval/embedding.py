"""``vpace.embed(videos, checkpoint) -> np.ndarray``: learned video features for downstream use.

Same clips as the evaluation protocol (10 x 16 frames uniformly spaced, center crop), averaged per video
(``mode="video"``, [N, D]) or kept per clip (``mode="clip"``, [N, clips, D]). Rows follow the input order;
an unreadable video gets a NaN row and is reported, so row i is always video i.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vpace.data import VideoIndex, load_index
from vpace.data.index import VIDEO_EXTENSIONS, VideoEntry
from vpace.errors import UserError
from vpace.eval.features import ClipSpec, FeatureSet, extract_features
from vpace.eval.loading import LoadedModel, load_model


def _as_index(videos: Sequence[str | Path] | str | Path) -> VideoIndex:
    """A list of files, one video file, or an index spec (folder / split dir / CSV / JSON)."""
    if isinstance(videos, (str, Path)):
        p = Path(videos)
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
            videos = [p]
        else:
            return load_index(p).split("all")
    if not videos:
        raise UserError("embed: no videos given")
    return VideoIndex([VideoEntry(str(v), -1, "all") for v in videos], [], "")


def embed_with_report(
    videos: Sequence[str | Path] | str | Path,
    checkpoint: str | Path | LoadedModel | None,
    *,
    layer: str = "p5",
    mode: str = "video",
    backbone: str | None = None,
    num_clips: int = 10,
    batch_size: int = 4,
    num_workers: int = 0,
    cache_dir: str | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
    """-> (features, paths in row order, skipped [{"path", "reason"}])."""
    if mode not in ("video", "clip"):
        raise ValueError(f"mode must be 'video' or 'clip', got {mode!r}")
    model = checkpoint if isinstance(checkpoint, LoadedModel) else load_model(checkpoint, backbone=backbone)
    index = _as_index(videos)
    spec = ClipSpec.from_config(model.config, num_clips=num_clips)
    fs: FeatureSet = extract_features(model, index, layers=(layer,), spec=spec, batch_size=batch_size,
                                      num_workers=num_workers, cache_dir=cache_dir, progress=progress,
                                      desc="embed")[layer]
    if not len(fs.feats):
        raise UserError(f"embed: none of the {len(index)} video(s) could be read: {fs.skipped}")
    dim = fs.feats.shape[-1]
    shape = (len(index), dim) if mode == "video" else (len(index), spec.num_clips, dim)
    out = np.full(shape, np.nan, np.float32)
    out[fs.video_ids] = fs.video_level()[0] if mode == "video" else fs.feats
    return out, [e.path for e in index.entries], fs.skipped


def embed(
    videos: Sequence[str | Path] | str | Path,
    checkpoint: str | Path | LoadedModel | None,
    **kw,
) -> np.ndarray:
    """Features of ``videos`` (row i = video i; NaN rows for unreadable ones, which are logged)."""
    return embed_with_report(videos, checkpoint, **kw)[0]


def embed_to_file(
    videos: Sequence[str] | str,
    checkpoint: str | None,
    *,
    out: str = "embeddings.npy",
    layer: str = "p5",
    mode: str = "video",
    backbone: str | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
) -> dict:
    """CLI form: writes ``out`` (.npy) and a .json beside it (row order, skipped videos); returns it."""
    feats, paths, skipped = embed_with_report(videos, checkpoint, layer=layer, mode=mode, backbone=backbone,
                                              batch_size=batch_size, num_workers=num_workers, progress=True)
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    np.save(out_p, feats)
    info = {"features": str(out_p), "shape": list(feats.shape), "layer": layer, "mode": mode,
            "checkpoint": str(checkpoint), "paths": paths, "skipped": skipped}
    out_p.with_suffix(".json").write_text(json.dumps(info, indent=2))
    print(f"wrote {out_p} {tuple(feats.shape)}" + (f"; {len(skipped)} unreadable video(s) are NaN rows: "
          + ", ".join(s["path"] for s in skipped) if skipped else ""))
    return info
