"""The record `vpace prepare` keeps beside each prepared video: ``<video>.vpace.json``.

It says where the copy came from (source path, size, mtime), what it holds (frames, fps, stored size) and how
it was made (the settings), so a re-run can tell a complete, current copy from one to redo. Why beside the
video: a folder index ignores it (not a video name), and the reader finds it with one ``open`` and learns the
stored frame size without probing the container (a probe costs as much as opening the video), which lets it
decode a copy at the training size without a rescale. Written after the video, atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["SUFFIX", "manifest_path", "read_manifest", "source_record", "stored_size", "write_manifest",
           "write_text_atomic"]

SUFFIX = ".vpace.json"
_FORMAT, _VERSION = "vpace-prepared-video", 1


def manifest_path(video: str | os.PathLike) -> Path:
    return Path(os.fspath(video) + SUFFIX)


def source_record(path: str | os.PathLike) -> dict[str, Any]:
    """The source as the manifest records it: an edit (size or mtime) makes the copy stale."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_manifest(video: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a prepared video, or None (no manifest, unreadable, another format)."""
    try:
        doc = json.loads(manifest_path(video).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or doc.get("version") != _VERSION:
        return None
    return doc


def write_manifest(video: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``record`` (+ format/version) as the manifest of ``video``: temporary name, then rename."""
    doc = {"format": _FORMAT, "version": _VERSION, **record}
    return write_text_atomic(manifest_path(video), json.dumps(doc, indent=1))


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` under a hidden temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def stored_size(video: str | os.PathLike) -> tuple[int, int] | None:
    """``(height, width)`` of a prepared video whose manifest matches the file's size, else None."""
    doc = read_manifest(video)
    try:
        out = doc["output"] if doc else None
        if out is None or os.stat(video).st_size != out["bytes"]:
            return None
        return int(out["height"]), int(out["width"])
    except (OSError, KeyError, TypeError, ValueError):
        return None
