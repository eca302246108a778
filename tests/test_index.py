"""Index formats (a) folder tree, (b) UCF101, (c) HMDB51, (d) Kinetics CSV; missing files; JSON freeze.

An index only lists files, so placeholder files are enough here (reading them is test_reader's job).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from vpace.data.index import (
    INDEX_FILE,
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


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\0")


def load_quiet(spec, **kw) -> VideoIndex:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete index must not warn
        return load_index(spec, **kw)


def names(index: VideoIndex) -> list[tuple[str, int, str]]:
    return sorted((Path(e.path).name, e.label, e.split) for e in index)


# ---------------------------------------------------------------------------------------------- (a) folder


def test_folder_tree(tmp_path):
    touch(tmp_path, "walk/w1.mp4", "walk/w2.AVI", "run/r1.mkv", "run/notes.txt", "jump/.keep")
    index = load_quiet(tmp_path)
    assert index.classes == ["jump", "run", "walk"]
    assert names(index) == [("r1.mkv", 1, "all"), ("w1.mp4", 2, "all"), ("w2.AVI", 2, "all")]
    assert len(index) == 3 and all(Path(e.path).is_absolute() for e in index)
    assert len(index.split("all")) == 3
    with pytest.raises(ValueError, match="no 'train' videos.*'all'"):
        index.split("train")


def test_folder_tree_with_split_folders_and_flat_videos(tmp_path):
    touch(tmp_path, "train/a/1.mp4", "train/b/2.mp4", "val/a/3.mp4")
    index = from_folder(tmp_path)
    assert index.classes == ["a", "b"]
    assert names(index) == [("1.mp4", 0, "train"), ("2.mp4", 1, "train"), ("3.mp4", 0, "val")]
    assert len(index.split("val")) == 1 and len(index.split("validation")) == 1
    flat = tmp_path / "flat"
    touch(flat, "x.mp4", "y.webm")
    assert names(from_folder(flat)) == [("x.mp4", -1, "all"), ("y.webm", -1, "all")]


def test_empty_or_absent_folder_is_an_error(tmp_path):
    touch(tmp_path, "a/readme.txt")
    with pytest.raises(FileNotFoundError, match="no videos found"):
        load_index(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_index(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------- (b) UCF101


def make_ucf(root: Path, annot: str = "ucfTrainTestlist", videos: str = "") -> Path:
    a = root / annot
    a.mkdir(parents=True, exist_ok=True)
    (a / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Biking\n\n")
    (a / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_A_g08_c01.avi 1\nBiking/v_B_g08_c01.avi 2\nBiking/v_B_g09_c01.avi 2\n"
    )
    (a / "testlist01.txt").write_text("ApplyEyeMakeup/v_A_g01_c01.avi\r\nBiking/v_B_g01_c01.avi\r\n")
    (a / "trainlist02.txt").write_text("Biking/v_B_g01_c01.avi 2\n")
    (a / "testlist02.txt").write_text("Biking/v_B_g08_c01.avi\n")
    base = root / videos if videos else root
    touch(base, "ApplyEyeMakeup/v_A_g08_c01.avi", "Biking/v_B_g08_c01.avi", "Biking/v_B_g09_c01.avi")
    touch(base, "ApplyEyeMakeup/v_A_g01_c01.avi", "Biking/v_B_g01_c01.avi")
    return a


def test_ucf101_split_files(tmp_path):
    annot = make_ucf(tmp_path)
    index = load_quiet(tmp_path)
    assert index.classes == ["ApplyEyeMakeup", "Biking"]
    assert names(index) == [
        ("v_A_g01_c01.avi", 0, "test"),  # testlist: label from the class folder via classInd
        ("v_A_g08_c01.avi", 0, "train"),  # trainlist: trailing 1-based label
        ("v_B_g01_c01.avi", 1, "test"),
        ("v_B_g08_c01.avi", 1, "train"),
        ("v_B_g09_c01.avi", 1, "train"),
    ]
    assert len(index.split("train")) == 3 and len(index.split("test")) == 2
    index2 = load_quiet(tmp_path, split_id=2)
    assert names(index2) == [("v_B_g01_c01.avi", 1, "train"), ("v_B_g08_c01.avi", 1, "test")]
    assert names(load_quiet(annot / "classInd.txt")) == names(index)  # the annotation file works too
    with pytest.raises(FileNotFoundError, match="trainlist03"):
        load_index(tmp_path, split_id=3)


def test_index_records_the_files_and_lines_it_read(tmp_path):
    """What `vpace prepare` rewrites for its copy: the format, the annotation files, each line's video."""
    annot = make_ucf(tmp_path.resolve())
    (annot.parent / "Biking" / "v_B_g09_c01.avi").unlink()
    with pytest.warns(UserWarning):
        index = load_index(tmp_path)
    train, test = str(annot / "trainlist01.txt"), str(annot / "testlist01.txt")
    assert (index.kind, index.annotations) == ("ucf101", [str(annot / "classInd.txt"), train, test])
    video = str(annot.parent / "{}").format
    assert index.lines == [(train, 1, video("ApplyEyeMakeup/v_A_g08_c01.avi")),
                           (train, 2, video("Biking/v_B_g08_c01.avi")), (train, 3, None),
                           (test, 1, video("ApplyEyeMakeup/v_A_g01_c01.avi")),
                           (test, 2, video("Biking/v_B_g01_c01.avi"))]


def test_a_folder_holding_a_saved_index_is_that_index(tmp_path):
    make_ucf(tmp_path / "data")
    index = load_quiet(tmp_path / "data")
    save_index(index, tmp_path / "frozen" / INDEX_FILE)
    assert load_quiet(tmp_path / "frozen") == index and load_quiet(tmp_path / "frozen").kind == "json"


def test_ucf101_official_layout(tmp_path):
    """ucfTrainTestlist/ next to UCF-101/<class>/ videos."""
    make_ucf(tmp_path, videos="UCF-101")
    assert len(load_quiet(tmp_path)) == 5
    assert len(from_ucf101(tmp_path / "UCF-101", annotation_dir=tmp_path / "ucfTrainTestlist")) == 5


def test_ucf101_missing_files_are_collected_and_warned(tmp_path):
    make_ucf(tmp_path)
    gone = tmp_path / "Biking" / "v_B_g09_c01.avi"
    gone.unlink()
    (tmp_path / "ApplyEyeMakeup" / "v_A_g01_c01.avi").unlink()
    with pytest.warns(UserWarning, match=r"2 of 5 videos .* missing.*v_B_g09_c01\.avi"):
        index = load_index(tmp_path)
    assert len(index) == 3
    assert sorted(Path(m).name for m in index.missing) == ["v_A_g01_c01.avi", "v_B_g09_c01.avi"]
    assert str(gone) in index.missing


def test_ucf101_nothing_found_is_an_error_naming_paths(tmp_path):
    make_ucf(tmp_path)
    for d in ("ApplyEyeMakeup", "Biking"):
        for f in (tmp_path / d).iterdir():
            f.unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)all 5 listed files are missing.*v_A_g08_c01\.avi"):
        load_index(tmp_path)


def test_ucf101_malformed_lines_name_file_and_line(tmp_path):
    annot = make_ucf(tmp_path)
    (annot / "trainlist01.txt").write_text("ApplyEyeMakeup/v_A_g08_c01.avi 1\nBiking/v_B_g08_c01.avi 7\n")
    with pytest.raises(IndexFormatError, match=r"trainlist01\.txt:2: label '7'"):
        load_index(tmp_path)
    (annot / "trainlist01.txt").write_text("Biking/v_B_g08_c01.avi 1\n")
    with pytest.raises(IndexFormatError, match=r"trainlist01\.txt:1: label 1 is not the class of 'Biking'"):
        load_index(tmp_path)
    (annot / "trainlist01.txt").write_text("Walking/v_W.avi\n")
    with pytest.raises(IndexFormatError, match=r"trainlist01\.txt:1: .*not in"):
        load_index(tmp_path)
    (annot / "classInd.txt").write_text("one ApplyEyeMakeup\n")
    with pytest.raises(IndexFormatError, match=r"classInd\.txt:1"):
        load_index(tmp_path)


# ---------------------------------------------------------------------------------------------- (c) HMDB51


def test_hmdb51_split_files(tmp_path):
    s = tmp_path / "testTrainMulti_7030_splits"
    s.mkdir()
    (s / "brush_hair_test_split1.txt").write_text("bh_a.avi 1 \nbh_b.avi 2 \nbh_c.avi 0 \n")
    (s / "cartwheel_test_split1.txt").write_text("cw_a.avi 2\ncw_b.avi 1\n")
    (s / "brush_hair_test_split2.txt").write_text("bh_a.avi 2\n")
    (s / "cartwheel_test_split2.txt").write_text("cw_a.avi 1\n")
    touch(tmp_path, "brush_hair/bh_a.avi", "brush_hair/bh_b.avi", "brush_hair/bh_c.avi", "cartwheel/cw_a.avi")
    with pytest.warns(UserWarning, match=r"1 of 4 .*cw_b\.avi"):
        index = load_index(tmp_path)
    assert index.classes == ["brush_hair", "cartwheel"]
    assert names(index) == [("bh_a.avi", 0, "train"), ("bh_b.avi", 0, "test"), ("cw_a.avi", 1, "test")]
    assert index.missing == [str(tmp_path / "cartwheel" / "cw_b.avi")]
    assert names(from_hmdb51(tmp_path, split_id=2)) == [("bh_a.avi", 0, "test"), ("cw_a.avi", 1, "train")]
    (s / "cartwheel_test_split1.txt").write_text("cw_a.avi 3\n")
    with pytest.raises(IndexFormatError, match=r"cartwheel_test_split1\.txt:1"):
        load_index(tmp_path)


# ---------------------------------------------------------------------------------------------- (d) Kinetics


def test_kinetics_csv_three_locations_and_missing(tmp_path):
    (tmp_path / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,aaa,10,20,train\n"  # root/<split>/<label>/
        "air drumming,bbb,0,10,train\n"  # root/<label>/ (spaces -> underscores accepted)
        "abseiling,ccc,5.0,15.0,validate\n"  # root/ ; float times; 'validate' -> val
        "air drumming,ddd,1,11,train\n"  # missing
        ",eee,3,13,test\n"  # unlabeled (Kinetics test set), in root/<split>/
    )
    touch(tmp_path, "train/abseiling/aaa_000010_000020.mp4", "air_drumming/bbb_000000_000010.mp4")
    touch(tmp_path, "ccc_000005_000015.mp4", "test/eee_000003_000013.mp4")
    with pytest.warns(UserWarning, match=r"1 of 5 .*ddd_000001_000011\.mp4"):
        index = load_index(tmp_path / "train.csv")
    assert index.classes == ["abseiling", "air drumming"]
    assert names(index) == [
        ("aaa_000010_000020.mp4", 0, "train"),
        ("bbb_000000_000010.mp4", 1, "train"),
        ("ccc_000005_000015.mp4", 0, "val"),
        ("eee_000003_000013.mp4", -1, "test"),
    ]
    assert len(index.missing) == 1 and index.missing[0].endswith("ddd_000001_000011.mp4")
    with pytest.warns(UserWarning):
        assert names(load_index(tmp_path)) == names(index)  # a folder holding the CSV


def test_kinetics_annotations_subfolder_and_bad_csv(tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "val.csv").write_text("label,youtube_id,time_start,time_end,split\nhopping,xyz,0,10,val\n")
    touch(tmp_path, "val/hopping/xyz_000000_000010.mp4")
    assert names(load_quiet(ann / "val.csv")) == [("xyz_000000_000010.mp4", 0, "val")]
    assert names(load_quiet(tmp_path)) == [("xyz_000000_000010.mp4", 0, "val")]
    (ann / "val.csv").write_text("label,youtube_id,time_start,time_end,split\nhopping,xyz,zero,10,val\n")
    with pytest.raises(IndexFormatError, match=r"val\.csv:2"):
        from_kinetics_csv(ann / "val.csv")
    (ann / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(IndexFormatError, match="Kinetics header"):
        load_index(ann / "bad.csv")


# ---------------------------------------------------------------------------------------------- JSON


def test_json_freeze_round_trip(tmp_path):
    make_ucf(tmp_path / "data")
    (tmp_path / "data" / "Biking" / "v_B_g09_c01.avi").unlink()
    with pytest.warns(UserWarning):
        index = load_index(tmp_path / "data")
    path = save_index(index, tmp_path / "run" / "index.json")
    again = load_quiet(path)
    assert again == index
    first = index.entries[0]
    assert again.entries[0] == VideoEntry(first.path, first.label, first.split)
    assert json.loads(path.read_text())["format"] == "vpace-index"
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(IndexFormatError, match="not a vpace index"):
        load_index(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{oops")
    with pytest.raises(IndexFormatError, match="malformed"):
        load_index(tmp_path / "broken.json")


# ------------------------------------------------------------------- names that exist but are not files


def test_dangling_links_and_folders_named_like_videos_are_listed_with_a_reason(tmp_path):
    root = tmp_path / "tree"
    touch(root, "a/ok.mp4", "b/ok2.avi", "a/notes.txt")
    (root / "a" / "gone.mp4").symlink_to(root / "a" / "nowhere.mp4")
    (root / "b" / "x.mp4").mkdir()  # a folder named like a video, inside a class folder
    (root / "y.mp4").mkdir()  # ... and at the top, where it must not become a class
    with pytest.warns(UserWarning, match=r"3 of 5 videos .* missing or not files"):
        index = from_folder(root)
    assert names(index) == [("ok.mp4", 0, "all"), ("ok2.avi", 1, "all")] and index.classes == ["a", "b"]
    why = dict(index.unusable)
    assert why[str(root / "a" / "gone.mp4")] == f"dangling symbolic link (-> {root / 'a' / 'nowhere.mp4'})"
    assert why[str(root / "b" / "x.mp4")] == why[str(root / "y.mp4")] == "a folder, not a video file"
    assert index.missing == [] and len(why) == 3

    frozen = load_quiet(save_index(index, tmp_path / "i.json"))  # kept through a JSON freeze
    assert frozen.unusable == index.unusable and frozen.split("all").unusable == index.unusable


def test_listed_video_that_is_a_dangling_link_is_unusable_not_missing(tmp_path):
    make_ucf(tmp_path)
    link = tmp_path / "Biking" / "v_B_g09_c01.avi"
    link.unlink()
    link.symlink_to(tmp_path / "elsewhere.avi")
    (tmp_path / "ApplyEyeMakeup" / "v_A_g01_c01.avi").unlink()
    with pytest.warns(UserWarning, match="2 of 5 videos"):
        index = load_index(tmp_path)
    assert index.unusable == [(str(link), f"dangling symbolic link (-> {tmp_path / 'elsewhere.avi'})")]
    assert [Path(m).name for m in index.missing] == ["v_A_g01_c01.avi"] and len(index) == 3
