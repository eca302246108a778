"""Video data: index formats, decord reader, pace sampling, clip datasets, verification and contact sheets."""

from .contact_sheet import write_contact_sheet
from .dataset import EvalClipDataset, PaceClipDataset, collate_clips
from .index import (
    IndexFormatError,
    VideoEntry,
    VideoIndex,
    from_folder,
    from_hmdb51,
    from_kinetics_csv,
    from_ucf101,
    load_index,
    save_index,
)
from .pace import clip_span, format_pace, pace_label, parse_pace, parse_pace_set, sample_indices, wraps
from .reader import BrokenVideoError, CachedVideoReader, VideoReader, open_video
from .verify import VerifyReport, verify_index

__all__ = [
    "BrokenVideoError",
    "CachedVideoReader",
    "EvalClipDataset",
    "IndexFormatError",
    "PaceClipDataset",
    "VerifyReport",
    "VideoEntry",
    "VideoIndex",
    "VideoReader",
    "clip_span",
    "collate_clips",
    "format_pace",
    "from_folder",
    "from_hmdb51",
    "from_kinetics_csv",
    "from_ucf101",
    "load_index",
    "open_video",
    "pace_label",
    "parse_pace",
    "parse_pace_set",
    "sample_indices",
    "save_index",
    "verify_index",
    "wraps",
    "write_contact_sheet",
]
