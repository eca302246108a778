"""verify-data report over good, broken and missing videos; inspect-clip contact sheet."""

from __future__ import annotations

import re

import matplotlib.image
import pytest
from conftest import write_broken_videos, write_coded_video

from vpace.data import VideoEntry, VideoIndex, from_folder, verify_index, write_contact_sheet
from vpace.data.verify import MISSING_REASON


def test_verify_reports_each_broken_video_with_reason(coded_tree, tmp_path):
    good = from_folder(coded_tree)
    broken = write_broken_videos(tmp_path)
    entries = list(good.entries) + [VideoEntry(str(p), -1, "all") for p in broken.values()]
    missing = str(tmp_path / "gone.mp4")
    report = verify_index(VideoIndex(entries, good.classes, str(tmp_path), [missing]), progress=False)
    assert (report.total, report.ok, report.num_broken) == (9, 3, 6)
    assert report.frames == 40 + 9 + 60
    reasons = dict(report.broken)
    assert reasons[missing] == MISSING_REASON
    assert "zero frames" in reasons[str(broken["zero_frames"])]
    assert "empty" in reasons[str(broken["empty"])]
    assert "not a video" in reasons[str(broken["not_a_video"])]
    assert "truncated" in reasons[str(broken["truncated"])]
    assert "truncated" in reasons[str(broken["truncated_stream"])]
    text = report.format()
    assert text.splitlines()[0] == "9 videos: 3 ok (109 frames), 6 broken"
    assert all(f"BROKEN {p}: " in text for p in reasons)


def test_verify_clean_index(coded_tree):
    report = verify_index(from_folder(coded_tree), progress=True)
    assert (report.ok, report.broken) == (3, [])
    assert "0 broken" in report.format()


@pytest.mark.parametrize("pace,clip_len", [("1/2", 8), ("3", 5)])
def test_contact_sheet(tmp_path, pace, clip_len):
    video = write_coded_video(tmp_path / "v.mp4", 30)
    out = write_contact_sheet(video, pace, tmp_path / "sheet" / "c.png", clip_len=clip_len, start=26)
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 200


def test_verify_lists_dangling_links_and_folders_with_their_reason(coded_tree, tmp_path):
    import shutil

    root = tmp_path / "tree"
    shutil.copytree(coded_tree, root)
    (root / "a" / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (root / "b" / "x.mp4").mkdir()
    with pytest.warns(UserWarning, match="not files"):
        index = from_folder(root)
    report = verify_index(index, progress=False)
    assert (report.total, report.ok, report.num_broken) == (5, 3, 2)
    reasons = dict(report.broken)
    assert reasons[str(root / "a" / "gone.mp4")].startswith("dangling symbolic link")
    assert reasons[str(root / "b" / "x.mp4")] == "a folder, not a video file"
    assert f"BROKEN {root / 'b' / 'x.mp4'}: a folder, not a video file" in report.format()


def test_decord_log_lines_stay_off_stderr(broken_videos, capfd):
    """decord prints `[hh:mm:ss] .../video_reader.cc:86: ERROR opening: ...` straight to fd 2 for a file it
    cannot open; verify-data's own BROKEN line names the file and reason, so that line must not show too."""
    index = VideoIndex([VideoEntry(str(p)) for p in broken_videos.values()], [], "")
    report = verify_index(index, progress=False)
    assert report.num_broken == len(broken_videos)
    err = capfd.readouterr().err
    assert not re.search(r"\[\d\d:\d\d:\d\d\] \S+\.(cc|h|cpp):\d+", err), err
