"""`vpace prepare`: frame-exact copies (luma-coded frame numbers, read back by vpace's own reader), the four
index formats + JSON through prepare, resume after a SIGKILL of the real CLI, broken sources listed with the
reasons `verify-data` gives, the `pretrain` advice, the progress bar's plain lines.

Videos are tiny (64x48, <= 260 frames) so the file stays well under a minute on 2 cores.
"""

from __future__ import annotations

import io
import os
import re
import signal
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import decode_indices, encode_frame, own_session, ray_env, write_coded_video

from vpace.bars import INTERVAL_ENV, progress_bar
from vpace.config import DataConfig
from vpace.data import VideoEntry, VideoIndex, load_index
from vpace.data.decode_cost import advise_prepare, keyframe_interval
from vpace.data.index import from_folder
from vpace.data.layout import copy_name, plan_layout
from vpace.data.manifest import read_manifest
from vpace.data.reader import VideoReader
from vpace.data.transcode import PART_SUFFIX, TranscodeSettings, current_manifest, transcode_video
from vpace.data.verify import verify_index
from vpace.errors import UserError

H, W = 48, 64
SMALL = TranscodeSettings(short_side=32)  # 64x48 -> decoded at 32x43, stored at 32x44 (cropped back)
CC_LOG = re.compile(r"\[\d\d:\d\d:\d\d\] \S+\.(cc|h|cpp):\d+")  # decord's own C++ log lines


def write_numbered(path: Path, n: int, options: dict[str, str] | None = None, vfr: bool = False) -> Path:
    """x264 (B-frames) whose frame i carries i; ``options`` for the encoder; ``vfr``: each frame lasts 20, 40
    or 100 ms at random (a variable frame rate)."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25, options=options or {})
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(encode_frame(i, H, W), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            t += int(rng.choice([20, 40, 100])) if vfr else 40
            out.mux(s.encode(frame))
        out.mux(s.encode())
    return path


def write_audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(s.encode(frame))
        out.mux(s.encode())
    return path


KINDS = {  # name -> writer of a coded video whose frame i carries i
    # every coded frame differs from the last: without scenecut=0 x264 would add keyframes
    "bframes_long_gop": lambda p: write_numbered(p.with_suffix(".mp4"), 260, {"x264-params": "scenecut=0"}),
    "mpeg4_avi_long_gop": lambda p: write_coded_video(p.with_suffix(".avi"), 120, height=H, width=W, gop=250,
                                                      codec="mpeg4"),
    "vfr": lambda p: write_numbered(p.with_suffix(".mp4"), 60, vfr=True),
    "ten_frames": lambda p: write_coded_video(p.with_suffix(".mp4"), 10, height=H, width=W),
}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("kinds")
    return {name: write(d / name) for name, write in KINDS.items()}


def index_of(*paths: Path) -> VideoIndex:
    return VideoIndex([VideoEntry(str(p)) for p in paths], [], "")


def read_all(path: Path, height: int | None, width: int | None) -> tuple[np.ndarray, float, bool]:
    with VideoReader(path, height=height, width=width) as vr:
        return vr.get_frames(np.arange(vr.num_frames))[0], vr.fps, vr.crops


def assert_frame_exact(source: Path, copy: Path, size: tuple[int, int] = (32, 43)) -> None:
    """Every frame of the copy carries the number of the source frame vpace reads at that index, the fps
    is the same, and the copy is read at the training size by a crop, close to the source decoded there."""
    want, fps, _ = read_all(source, *size)
    got, copy_fps, crops = read_all(copy, *size)
    assert crops and got.shape == want.shape
    assert decode_indices(got) == decode_indices(want) == list(range(len(want)))
    assert copy_fps == pytest.approx(fps, rel=1e-6)
    assert np.abs(got.astype(np.float32) - want).mean() < 6  # lossy, but no shift or rescale


# ------------------------------------------------------------------------------------------ one video, no Ray


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_copy_holds_every_frame_of_the_source(kinds, kind, tmp_path):
    source = kinds[kind]
    out = tmp_path / "copy.mp4"
    outcome = transcode_video(str(source), str(out), SMALL)
    assert outcome.reason is None and outcome.frames == len(decode_indices(read_all(source, 32, 43)[0]))
    assert_frame_exact(source, out)
    if outcome.frames > SMALL.gop:
        assert keyframe_interval(out) == SMALL.gop
    doc = read_manifest(out)
    st = source.stat()
    assert doc["source"] == {"path": str(source), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    assert (doc["frames"], doc["output"]) == (outcome.frames, {"bytes": out.stat().st_size, "height": 32,
                                                                "width": 44})
    assert doc["settings"]["gop"] == 16 and doc["settings"]["short_side"] == 32
    assert current_manifest(str(source), str(out), SMALL) == doc
    assert current_manifest(str(source), str(out), TranscodeSettings(short_side=32, gop=8)) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.mp4", "copy.mp4.vpace.json"]  # no temporaries


def test_size_option_is_the_decode_size(kinds, tmp_path):
    out = tmp_path / "c.mp4"
    assert transcode_video(str(kinds["vfr"]), str(out), TranscodeSettings(size=(40, 53))).reason is None
    assert read_manifest(out)["output"] | {"bytes": 0} == {"bytes": 0, "height": 40, "width": 54}
    assert_frame_exact(kinds["vfr"], out, (40, 53))


def test_broken_source_gives_the_verify_reason_and_removes_an_old_copy(broken_videos, kinds, tmp_path):
    out = tmp_path / "x.mp4"
    assert transcode_video(str(kinds["ten_frames"]), str(out), SMALL).reason is None
    (tmp_path / "src.mp4").write_bytes(broken_videos["truncated"].read_bytes())
    want = dict(verify_index(index_of(tmp_path / "src.mp4"), progress=False).broken)
    outcome = transcode_video(str(tmp_path / "src.mp4"), str(out), SMALL)
    assert outcome.reason == want[str(tmp_path / "src.mp4")]
    assert not out.exists() and read_manifest(out) is None


def test_settings_and_layout_refuse_bad_input_naming_it(tmp_path, coded_tree):
    for bad, match in ((dict(size=(1, 5)), "size"), (dict(gop=0), "gop"), (dict(crf=60), "crf")):
        with pytest.raises(UserError, match=match):
            TranscodeSettings(**bad)
    with pytest.raises(UserError, match="must not hold one another"):
        plan_layout(coded_tree, coded_tree / "prepared")
    (tmp_path / "a").mkdir()
    write_coded_video(tmp_path / "a" / "v.avi", 5, height=H, width=W, codec="mpeg4")
    write_coded_video(tmp_path / "a" / "v.mp4", 5, height=H, width=W)
    layout = plan_layout(tmp_path, tmp_path.parent / f"{tmp_path.name}-out")
    assert list(layout.copies.values()) == [str(layout.out / "a" / "v.mp4")]  # one of the two gets the name
    ((clash, why),) = layout.problems
    assert clash == str(tmp_path / "a" / "v.mp4") and "rename one" in why
    assert [copy_name(n) for n in ("x.AVI", "y.mp4", "z.webm", "clip.001")] == [
        "x.mp4", "y.mp4", "z.mp4", "clip.001.mp4"]


def test_cli_usage_errors_are_one_line(tmp_path, capsys):
    from vpace.cli import main

    with pytest.raises(SystemExit):
        main(["prepare", str(tmp_path), str(tmp_path / "o"), "--size", "128"])
    assert "HEIGHTxWIDTH" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path), str(tmp_path / "o"), "--crf", "60"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "vpace prepare: error: prepare crf 60: x264 takes 0 (lossless) .. 51"


# --------------------------------------------------------------------------------------- the pretrain advice


def test_pretrain_advice_names_the_command_once_and_only_when_it_pays(kinds, tmp_path):
    raw = index_of(kinds["bframes_long_gop"])  # a keyframe every 250 frames
    data = DataConfig(index=str(tmp_path / "ucf"), height=H, width=W)
    with pytest.warns(UserWarning, match=r"have a keyframe every 250 frames;") as seen:
        advice = advise_prepare(raw, data)
    command = f"vpace prepare {tmp_path / 'ucf'} {tmp_path / f'ucf-prepared-{H}x{W}'} --size {H}x{W}"
    assert len(seen) == 1 and command in advice and str(seen[0].message) == advice
    big = DataConfig(index=str(tmp_path / "ucf"), height=16, width=21)  # 64x48 is 9x the decoded pixels
    with pytest.warns(UserWarning, match="64x48 frames decoded at 21x16"):
        advise_prepare(index_of(kinds["ten_frames"]), big)
    copy = tmp_path / "c.mp4"
    transcode_video(str(kinds["bframes_long_gop"]), str(copy), SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert advise_prepare(index_of(copy), data) is None  # prepared already
        cached = DataConfig(index="x", height=H, width=W, cache_dir="c")
        assert advise_prepare(raw, cached) is None  # decoded once into the frame cache
        assert advise_prepare(index_of(kinds["ten_frames"]), data) is None  # short, at the decode size


def test_pretrain_checks_warn_once_with_the_command(kinds, tmp_path):
    from vpace.config import load_config
    from vpace.train.pretraining import PRETRAIN

    (tmp_path / "raw" / "a").mkdir(parents=True)
    (tmp_path / "raw" / "a" / "v.mp4").write_bytes(kinds["bframes_long_gop"].read_bytes())
    cfg = load_config("smoke", overrides=[f"data.index={tmp_path / 'raw'}", "data.split=all",
                                          "data.cache_dir=null", f"data.height={H}", f"data.width={W}",
                                          "augment.crop=32"])
    with pytest.warns(UserWarning, match=f"vpace prepare {tmp_path / 'raw'} ") as seen:
        PRETRAIN.check(cfg)
    assert len([w for w in seen if "vpace prepare" in str(w.message)]) == 1


def test_progress_bar_off_a_terminal_prints_plain_lines_with_rate_and_eta(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setenv(INTERVAL_ENV, "0")
    with progress_bar(total=5, desc="prepare", unit="video", stream=stream) as bar:
        for _ in range(5):
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) >= 5
    assert re.search(r"prepare: .*3/5 \[.*<.*video/s", stream.getvalue())  # count, elapsed<ETA, rate
    monkeypatch.delenv(INTERVAL_ENV)
    quiet = io.StringIO()
    for _ in progress_bar(range(1000), desc="x", unit="video", stream=quiet):
        pass
    assert len(quiet.getvalue().splitlines()) <= 3  # every ~30 s: the first line and the last


# ------------------------------------------------------------------------------------ prepare on a local Ray


def test_prepare_copies_every_kind_and_lists_broken_sources(local_ray, kinds, broken_videos, tmp_path):
    from vpace.prepare import REPORT_NAME, prepare

    src = tmp_path / "src"
    for i, path in enumerate(sorted(kinds.values())):
        (src / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        (src / f"class{i % 2}" / path.name).write_bytes(path.read_bytes())
    broken = {k: src / "class2" / f"broken_{k}.mp4" for k in ("empty", "truncated", "not_a_video")}
    for k, p in broken.items():
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(broken_videos[k].read_bytes())
    broken["audio_only"] = write_audio_only(src / "class2" / "broken_audio_only.mp4")
    want_reasons = {p: why for p, why in verify_index(from_folder(src), progress=False).broken}
    assert len(want_reasons) == 4

    report = prepare(src, tmp_path / "out", SMALL, progress=False)
    assert dict(report.failed) == want_reasons == {str(p): want_reasons[str(p)] for p in broken.values()}
    assert (len(report.made), report.current) == (4, 0)
    copy = from_folder(tmp_path / "out")
    source = from_folder(src)
    assert copy.classes == source.classes == ["class0", "class1", "class2"]  # class2: all broken, label kept
    assert sorted((Path(e.path).name, e.label) for e in copy) == sorted(
        (copy_name(Path(e.path).name), e.label) for e in source if e.path not in want_reasons)
    for p in (Path(e.path) for e in source if e.path not in want_reasons):
        assert_frame_exact(p, tmp_path / "out" / p.relative_to(src).with_name(copy_name(p.name)))
    text = (tmp_path / "out" / REPORT_NAME).read_text()
    assert "8 videos: 4 ok" in text and "4 broken (left out of the index)" in text
    assert all(f"BROKEN {p}: {why}" in text for p, why in want_reasons.items())

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.mp4")}
    again = prepare(src, tmp_path / "out", SMALL, progress=False)
    assert (len(again.made), again.current, dict(again.failed)) == (0, 4, want_reasons)
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.mp4")}  # kept
    edited = src / "class0" / kinds["bframes_long_gop"].name
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
    third = prepare(src, tmp_path / "out", SMALL, progress=False)
    assert [o.source for o in third.made] == [str(edited)] and third.current == 3  # a changed source: redone


def write_texts(folder: Path, texts: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text)


def ucf_layout(root: Path) -> Path:
    for cls in ("A", "B"):
        for g in (1, 2):
            write_coded_video(root / "UCF-101" / cls / f"v_{cls}_g0{g}.avi", 10, height=H, width=W,
                              codec="mpeg4")
    (root / "UCF-101" / "B" / "v_B_g02.avi").write_text("not a video\n")
    write_texts(root / "ucfTrainTestlist", {  # v_A_g09: listed, missing; split 2 lists fewer videos
        "classInd.txt": "1 A\n2 B\n", "testlist01.txt": "A/v_A_g02.avi\n",
        "trainlist01.txt": "A/v_A_g01.avi 1\nB/v_B_g01.avi 2\nB/v_B_g02.avi 2\nA/v_A_g09.avi 1\n",
        "trainlist02.txt": "A/v_A_g02.avi 1\n", "testlist02.txt": "A/v_A_g01.avi\nB/v_B_g01.avi\n"})
    return root


def hmdb_layout(root: Path) -> Path:
    for cls, vids in (("brush", ("b1", "b2", "b3")), ("wave", ("w1", "w2"))):
        for v in vids:
            write_coded_video(root / cls / f"{v}.avi", 10, height=H, width=W, codec="mpeg4")
    (root / "wave" / "w2.avi").write_bytes(b"")
    write_texts(root / "splits", {  # b3 is used in split 2 only
        "brush_test_split1.txt": "b1.avi 1 \nb2.avi 2 \nb3.avi 0 \n",
        "wave_test_split1.txt": "w1.avi 1\nw2.avi 2",
        "brush_test_split2.txt": "b1.avi 2\nb2.avi 0\nb3.avi 1", "wave_test_split2.txt": "w1.avi 2\nw2.avi 1",
    })
    return root


def kinetics_layout(root: Path) -> Path:
    write_texts(root / "annotations", {"train.csv": "label,youtube_id,time_start,time_end,split\n"
                                       "abseiling,aaa,10,20,train\n\nair drumming,bbb,0,10,train\n"
                                       "abseiling,ccc,5,15,val\nair drumming,ddd,1,11,train\n"
                                       ",eee,3,13,test\n"})
    write_coded_video(root / "train" / "abseiling" / "aaa_000010_000020.mp4", 10, height=H, width=W)
    write_coded_video(root / "air_drumming" / "bbb_000000_000010.mp4", 10, height=H, width=W)
    write_coded_video(root / "ccc_000005_000015.mp4", 10, height=H, width=W)
    (root / "test" / "eee_000003_000013.mp4").parent.mkdir()
    (root / "test" / "eee_000003_000013.mp4").write_text("truncated")
    return root


def folder_layout(root: Path) -> Path:
    for split, cls, n in (("train", "a", 2), ("train", "b", 1), ("test", "a", 1), ("test", "c", 1)):
        for i in range(n):
            write_coded_video(root / split / cls / f"{cls}{i}.mkv", 10, height=H, width=W)
    (root / "test" / "c" / "c0.mkv").write_bytes(b"\0" * 100)
    return root


def json_layout(root: Path) -> Path:
    from vpace.data import save_index

    return save_index(load_index(ucf_layout(root / "data")), root / "frozen" / "index.json")


# format -> (writer, split numbers, the folder the copy mirrors, relative to src)
FORMATS = {"folder_splits": (folder_layout, 1, "."), "ucf101": (ucf_layout, 2, "."),
           "hmdb51": (hmdb_layout, 2, "."), "kinetics": (kinetics_layout, 1, "."),
           "json": (json_layout, 1, "data/UCF-101")}


def rows(index, root: Path, skip=(), rename=lambda name: name) -> list[tuple[str, int, str]]:
    """(path relative to ``root``, its name through ``rename``; label; split) of each video not in skip."""
    return sorted(((Path(e.path).relative_to(root).parent / rename(Path(e.path).name)).as_posix(), e.label,
                   e.split) for e in index if e.path not in skip)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_index_formats_keep_layout_splits_and_labels(local_ray, fmt, tmp_path):
    from vpace.prepare import prepare

    make, splits, mirrored = FORMATS[fmt]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the listed-but-missing videos
        spec = make(tmp_path / "src")
        report = prepare(spec, tmp_path / "out", SMALL, progress=False)
    failed = {p for p, _ in report.failed}
    assert len(failed) in (1, 2) and report.made  # the broken (and missing) ones, and the others copied
    assert report.out_index == str(tmp_path / "out")
    for sid in range(1, splits + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = load_index(spec, split_id=sid)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the copy's index lists no missing video
            copy = load_index(report.out_index, split_id=sid)
        assert copy.classes == source.classes
        assert rows(copy, tmp_path / "out") == rows(source, tmp_path / "src" / mirrored, failed, copy_name)
        for e in copy:
            assert read_manifest(e.path) is not None and decode_indices(read_all(Path(e.path), 32, 43)[0]) \
                == list(range(10))


# ------------------------------------------------------------------------- the real CLI, killed and re-run


@pytest.mark.slow  # two runs of the real CLI, each starting its own local Ray
def test_killed_prepare_resumes_and_keeps_no_half_written_copy(tmp_path, ray_tmpdir, broken_videos):
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(12):
        write_coded_video(src / "c" / f"v{i:02d}.mp4", 200, height=H, width=W, gop=250)
    (src / "c" / "v99.mp4").write_bytes(broken_videos["truncated"].read_bytes())
    cmd = [sys.executable, "-m", "vpace.cli", "prepare", str(src), str(out), "--short-side", "32"]
    env = {**ray_env(ray_tmpdir), INTERVAL_ENV: "0"}
    with own_session(cmd, env, tmp_path / "kill.out") as proc:
        deadline = time.monotonic() + 600  # a hang guard only
        while not list(out.rglob("*.vpace.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, (tmp_path / "kill.out").read_text()[-3000:]  # still copying
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its local Ray and the tasks, mid-copy
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "kill.out").read_text()[-3000:]
    done = {p.with_name(p.name[: -len(".vpace.json")]) for p in out.rglob("*.vpace.json")}
    assert 0 < len(done) < 12
    for copy in done:  # whatever looks complete is complete and current
        assert current_manifest(str(src / "c" / copy.name), str(copy), TranscodeSettings(short_side=32))
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done}
    half = out / "c" / f".v00.mp4.123-deadbeef{PART_SUFFIX}"  # what a kill mid-write leaves
    half.write_bytes(b"\0" * 1000)
    planted = out / "c" / sorted({f"v{i:02d}.mp4" for i in range(12)} - {p.name for p in done})[0]
    planted.write_bytes(b"\0" * 1000)  # a copy without a manifest: not complete, must be redone

    with own_session(cmd, env, tmp_path / "rerun.out", tmp_path / "rerun.err") as proc:
        assert proc.wait(timeout=600) == 1  # the truncated source failed; all else copied
    stdout, stderr = (tmp_path / "rerun.out").read_text(), (tmp_path / "rerun.err").read_text()
    assert "13 videos: 12 ok" in stdout
    assert f"BROKEN {src / 'c' / 'v99.mp4'}: truncated" in stdout
    assert f"{12 - len(done)} copied now, {len(done)} already current" in stdout
    assert not CC_LOG.search(stderr) and "\r" not in stderr, stderr[-3000:]
    assert re.search(r"prepare: 100%.*video/s", stderr)  # the bar: plain lines with the rate
    assert not list(out.rglob(f"*{PART_SUFFIX}"))
    assert kept == {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done}  # complete copies kept
    for i in range(12):
        assert_frame_exact(src / "c" / f"v{i:02d}.mp4", out / "c" / f"v{i:02d}.mp4")
    assert not (out / "c" / "v99.mp4").exists()
    assert verify_index(load_index(out), progress=False).format().startswith("12 videos: 12 ok (2400 frames)")
