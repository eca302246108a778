"""Video data: index formats, decord reader, pace sampling, clip datasets, verification and contact sheets."""

from .contact_sheet import write_contact_sheet
from .dataset import EvalClipDataset, PaceClipDataset, collate_clips, eval_starts, pack_clips
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
from .pace import (
    draw_distinct_paces,
    format_pace,
    pace_label,
    parse_pace,
    parse_pace_set,
    random_start,
    sample_indices,
    unique_with_map,
)
from .reader import BrokenVideoError, CachedVideoReader, VideoReader, diagnose_video, open_video
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
    "collate_clips",
    "diagnose_video",
    "draw_distinct_paces",
    "eval_starts",
    "format_pace",
    "from_folder",
    "from_hmdb51",
    "from_kinetics_csv",
    "from_ucf101",
    "load_index",
    "open_video",
    "pace_label",
    "pack_clips",
    "parse_pace",
    "parse_pace_set",
    "random_start",
    "sample_indices",
    "save_index",
    "unique_with_map",
    "verify_index",
    "write_contact_sheet",
]
