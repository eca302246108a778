"""Video data: index formats, decord reader, pace sampling, clip datasets, verification and contact sheets.

Names are imported on first use: a process that only transcodes or reads an index (a `vpace prepare` task,
a CLI verb) does not pay for importing torch and matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "write_contact_sheet": "contact_sheet",
    "EvalClipDataset": "dataset",
    "PaceClipDataset": "dataset",
    "collate_clips": "dataset",
    "IndexFormatError": "index",
    "VideoEntry": "index",
    "VideoIndex": "index",
    "from_folder": "index",
    "from_hmdb51": "index",
    "from_kinetics_csv": "index",
    "from_ucf101": "index",
    "load_index": "index",
    "save_index": "index",
    "clip_span": "pace",
    "format_pace": "pace",
    "pace_label": "pace",
    "parse_pace": "pace",
    "parse_pace_set": "pace",
    "sample_indices": "pace",
    "wraps": "pace",
    "BrokenVideoError": "reader",
    "CachedVideoReader": "reader",
    "VideoReader": "reader",
    "open_video": "reader",
    "VerifyReport": "verify",
    "verify_index": "verify",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value
