"""Video indexes: which files make up a data set, their class labels and splits.

Four on-disk formats are understood (``load_index`` detects which): (a) a folder tree
``root/<class>/<video>`` (or ``root/<split>/<class>/<video>``), (b) UCF101 ``classInd.txt`` +
``trainlist0N.txt`` / ``testlist0N.txt``, (c) HMDB51 ``<class>_test_split<N>.txt`` (1=train, 2=test,
0=unused) and (d) a Kinetics CSV ``label,youtube_id,time_start,time_end,split``. Listed-but-missing files are
collected in ``VideoIndex.missing``, and names that exist but are not files (a dangling symbolic link, a
folder called ``x.mp4``) in ``VideoIndex.unusable`` with the reason; both are reported once (count + first
paths) instead of failing deep inside a data loader, or being left out silently. An index in which nothing
exists is an error. ``save_index`` / ``load_index("x.json")`` freeze an index so a run can be reproduced;
a folder holding ``vpace-index.json`` loads that file. An index also records its format, the annotation
files it read and which video each annotation line resolved to (``kind``, ``annotations``, ``lines``):
``vpace prepare`` rewrites those files for its copy.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vpace.errors import UserError

__all__ = ["INDEX_FILE", "VIDEO_EXTENSIONS", "IndexFormatError", "VideoEntry", "VideoIndex", "from_folder",
           "from_hmdb51", "from_kinetics_csv", "from_ucf101", "load_index", "save_index"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")
SPLITS = ("train", "test", "val", "all")
_SPLIT_ALIASES = {
    "validate": "val",
    "validation": "val",
    "valid": "val",
    "training": "train",
    "testing": "test",
}
HMDB_SPLIT_RE = re.compile(r"^(?P<cls>.+)_test_split(?P<n>\d+)\.txt$")
UCF_LIST_RE = re.compile(r"^(train|test)list(?P<n>\d+)\.txt$")
_JSON_FORMAT = "vpace-index"
INDEX_FILE = "vpace-index.json"  # a folder holding this saved index is that index (a prepared JSON index)
_MAX_SHOWN = 5


class IndexFormatError(UserError):
    """An annotation file is malformed; the message names the file (and line)."""


@dataclass(frozen=True)
class VideoEntry:
    path: str
    label: int = -1  # -1 when unlabeled
    split: str = "all"


@dataclass
class VideoIndex:
    entries: list[VideoEntry]
    classes: list[str]
    root: str
    missing: list[str] = field(default_factory=list)
    unusable: list[tuple[str, str]] = field(default_factory=list)  # (path, why): there, but not a file
    # where the index came from (not its content: two indexes of the same videos compare equal)
    kind: str = field(default="folder", compare=False)  # folder | ucf101 | hmdb51 | kinetics | json
    annotations: list[str] = field(default_factory=list, compare=False)  # files the index was read from
    # (file, line number, the video it resolved to or None): the lines that listed a video
    lines: list[tuple[str, int, str | None]] = field(default_factory=list, compare=False)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[VideoEntry]:
        return iter(self.entries)

    def __getitem__(self, i: int) -> VideoEntry:
        return self.entries[i]

    @property
    def splits(self) -> list[str]:
        return sorted({e.split for e in self.entries})

    def split(self, name: str) -> VideoIndex:
        """The sub-index of one split (``"all"`` = everything); an unknown split is an error, not empty."""
        name = _SPLIT_ALIASES.get(name, name)
        entries = list(self.entries) if name == "all" else [e for e in self.entries if e.split == name]
        if not entries:
            raise UserError(f"index of {self.root} has no {name!r} videos; its splits are {self.splits}")
        return VideoIndex(entries, list(self.classes), self.root, list(self.missing), list(self.unusable),
                          self.kind, list(self.annotations))


# ---------------------------------------------------------------------------------------------------- helpers


def _video_name(p: Path) -> bool:
    return p.suffix.lower() in VIDEO_EXTENSIONS


def _not_a_file(p: Path) -> str | None:
    """Why a path that exists (as a name) cannot be read as a video file; None if it is a file or absent."""
    if p.is_file():
        return None
    if p.is_symlink() and not p.exists():
        return f"dangling symbolic link (-> {os.readlink(p)})"
    if p.is_dir():
        return "a folder, not a video file"
    if p.exists():
        return "not a regular file (a device, socket or pipe)"
    return None


def _norm_split(s: str) -> str:
    s = s.strip().lower()
    return _SPLIT_ALIASES.get(s, s) or "all"


class _Found:
    """Where listed videos ended up: found files, missing names, and names that are there but unusable."""

    def __init__(self) -> None:
        self.entries: list[VideoEntry] = []
        self.missing: list[str] = []
        self.unusable: list[tuple[str, str]] = []
        self.lines: list[tuple[str, int, str | None]] = []

    def add(self, candidates: list[Path], label: int, split: str, line: tuple[Path, int] | None = None
            ) -> None:
        """First candidate that is a file; else the first that is there but not a file; else missing.
        ``line``: the annotation file and line that listed it."""
        found = next((c for c in candidates if c.is_file()), None)
        if line is not None:
            self.lines.append((str(line[0]), line[1], None if found is None else str(found)))
        if found is not None:
            self.entries.append(VideoEntry(str(found), label, split))
            return
        bad = next(((c, why) for c in candidates if (why := _not_a_file(c))), None)
        if bad is not None:
            self.unusable.append((str(bad[0]), bad[1]))
        else:
            self.missing.append(str(candidates[0]))

    def finish(self, classes: list[str], root: Path, what: str, kind: str = "folder",
               annotations: list[Path] = ()) -> VideoIndex:
        """Build the index; warn once about missing/unusable files, fail if nothing usable exists at all."""
        problems = self.missing + [f"{p} ({why})" for p, why in self.unusable]
        if not self.entries:
            shown = "".join(f"\n  {m}" for m in problems[:_MAX_SHOWN])
            detail = f"; all {len(problems)} listed files are missing or not files, e.g.:{shown}"
            raise FileNotFoundError(f"no videos found for {what} (root {root}){detail if problems else ''}")
        if problems:
            shown = ", ".join(problems[:_MAX_SHOWN]) + (", ..." if len(problems) > _MAX_SHOWN else "")
            warnings.warn(
                f"{len(problems)} of {len(problems) + len(self.entries)} videos of {what} are missing or not "
                f"files (see index.missing / index.unusable): {shown}",
                stacklevel=3,
            )
        return VideoIndex(self.entries, classes, str(root), self.missing, self.unusable, kind,
                          [str(a) for a in annotations], self.lines)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty, stripped lines with their 1-based line numbers."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(n, s.strip()) for n, s in enumerate(text.splitlines(), 1) if s.strip()]


# ---------------------------------------------------------------------------------------------------- formats


def from_folder(root: str | Path) -> VideoIndex:
    """(a) ``root/<class>/<video>``, or ``root/<split>/<class>/<video>`` when the top folders are splits.

    Video files directly in ``root`` are added unlabeled (-1), for a flat folder of pre-training videos.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"video folder {root} does not exist")

    def folders(d: Path) -> list[Path]:  # a folder named like a video (x.mp4) is an unusable video, no class
        return sorted(c for c in d.iterdir() if c.is_dir() and not _video_name(c))

    tops = folders(root)
    split_dirs = [d for d in tops if _norm_split(d.name) in SPLITS]
    by_split = split_dirs and len(split_dirs) == len(tops)
    groups = [(d, _norm_split(d.name)) for d in split_dirs] if by_split else [(root, "all")]
    classes = sorted({c.name for g, _ in groups for c in folders(g)})
    lookup = {c: i for i, c in enumerate(classes)}
    found = _Found()
    for g, split in groups:
        for c in folders(g):
            for v in sorted(c.iterdir()):
                if _video_name(v):
                    found.add([v], lookup[c.name], split)
    for v in sorted(root.iterdir()):  # videos directly in root: unlabeled
        if _video_name(v):
            found.add([v], -1, "all")
    return found.finish(classes, root, f"folder tree {root}")


def _find_annotation_dir(root: Path, pattern: str) -> Path | None:
    """``root`` itself or an immediate sub-folder (e.g. ``ucfTrainTestlist/``) holding ``pattern``."""
    for d in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if next(d.glob(pattern), None) is not None:
            return d
    return None


def from_ucf101(root: str | Path, split_id: int = 1, annotation_dir: str | Path | None = None) -> VideoIndex:
    """(b) UCF101: ``classInd.txt`` ("1 Cls") + ``trainlist0N.txt`` ("Cls/v.avi 1") + ``testlist0N.txt``.

    Video paths resolve against ``root``, the annotation folder, ``root/UCF-101``, ``root/videos`` (the
    synthetic set's layout) and the annotation folder's parent (the official layout keeps
    ``ucfTrainTestlist/`` next to ``UCF-101/``).
    """
    root = Path(root).resolve()
    adir = Path(annotation_dir).resolve() if annotation_dir else _find_annotation_dir(root, "classInd.txt")
    if adir is None or not (adir / "classInd.txt").is_file():
        raise FileNotFoundError(f"no classInd.txt in {root} or its sub-folders")
    class_file = adir / "classInd.txt"
    numbered = []
    for n, line in _read_lines(class_file):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise IndexFormatError(f"{class_file}:{n}: expected '<index> <class>', got {line!r}")
        numbered.append((int(parts[0]), parts[1]))
    classes = [c for _, c in sorted(numbered)]
    if [i for i, _ in sorted(numbered)] != list(range(1, len(classes) + 1)):
        raise IndexFormatError(f"{class_file}: class indices must be 1..{len(classes)} without gaps")
    lookup = {c: i for i, c in enumerate(classes)}
    bases = [root, adir, root / "UCF-101", root / "videos", adir.parent, adir / "videos"]
    lists = [(adir / f"{kind}list{split_id:02d}.txt", kind) for kind in ("train", "test")]
    if not any(f.is_file() for f, _ in lists):
        raise FileNotFoundError(f"split {split_id}: neither {lists[0][0]} nor {lists[1][0]} exists")
    found, read = _Found(), [class_file]
    for list_file, split in lists:
        if not list_file.is_file():
            continue
        read.append(list_file)
        for n, line in _read_lines(list_file):
            parts = line.split()
            rel = parts[0]
            cls = rel.replace("\\", "/").split("/")[0] if "/" in rel.replace("\\", "/") else None
            if len(parts) > 1:  # trainlist carries a 1-based label
                if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                    raise IndexFormatError(f"{list_file}:{n}: label {parts[1]!r} not in 1..{len(classes)}")
                label = int(parts[1]) - 1
                if cls in lookup and lookup[cls] != label:
                    raise IndexFormatError(f"{list_file}:{n}: label {parts[1]} is not the class of {cls!r}")
            elif cls in lookup:
                label = lookup[cls]
            else:
                raise IndexFormatError(f"{list_file}:{n}: class folder of {rel!r} is not in {class_file}")
            found.add([b / rel for b in bases], label, split, (list_file, n))
    return found.finish(classes, root, f"UCF101 split {split_id} ({adir})", "ucf101", read)


def from_hmdb51(root: str | Path, split_id: int = 1, annotation_dir: str | Path | None = None) -> VideoIndex:
    """(c) HMDB51: ``<class>_test_split<N>.txt`` lines ``<video> <0|1|2>`` (1=train, 2=test, 0=unused)."""
    root = Path(root).resolve()
    pattern = f"*_test_split{split_id}.txt"
    adir = Path(annotation_dir).resolve() if annotation_dir else _find_annotation_dir(root, pattern)
    files = sorted(adir.glob(pattern)) if adir else []
    if not files:
        raise FileNotFoundError(f"no HMDB51 split files {pattern} in {root} or its sub-folders")
    classes = sorted(HMDB_SPLIT_RE.match(f.name)["cls"] for f in files)
    found = _Found()
    for ci, cls in enumerate(classes):
        split_file = adir / f"{cls}_test_split{split_id}.txt"
        for n, line in _read_lines(split_file):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise IndexFormatError(f"{split_file}:{n}: expected '<video> <0|1|2>', got {line!r}")
            if parts[1] == "0":
                continue
            split = "train" if parts[1] == "1" else "test"
            found.add([root / cls / parts[0], adir.parent / cls / parts[0], root / parts[0]], ci, split,
                      (split_file, n))
    return found.finish(classes, root, f"HMDB51 split {split_id} ({adir})", "hmdb51", files)


def _kinetics_candidates(roots: list[Path], row: dict[str, str], split: str) -> list[Path]:
    label = (row.get("label") or "").strip()
    start, end = (int(float(row[k])) for k in ("time_start", "time_end"))
    stem = f"{row['youtube_id'].strip()}_{start:06d}_{end:06d}"
    raw_split = (row.get("split") or "").strip()
    label_dirs = list(dict.fromkeys(d for d in (label, label.replace(" ", "_")) if d))
    splits = list(dict.fromkeys(x for x in (raw_split, split) if x))
    dirs = []
    for root in roots:
        dirs += [root / s / lab for s in splits for lab in label_dirs]
        dirs += [root / lab for lab in label_dirs] + [root / s for s in splits] + [root]
    return [d / f"{stem}{ext}" for d in dirs for ext in (".mp4", ".webm", ".mkv")]


def from_kinetics_csv(csv_files: str | Path | list[str | Path], root: str | Path | None = None) -> VideoIndex:
    """(d) Kinetics CSV(s) ``label,youtube_id,time_start,time_end,split``; files ``<id>_<start>_<end>.mp4``.

    Start/end are zero-padded to 6 digits. Each file is looked for in ``root/<split>/<label>/``,
    ``root/<label>/``, ``root/<split>/`` and ``root/`` (root defaults to the CSV's folder, then its parent,
    for ``root/annotations/train.csv``). An empty label (Kinetics test set) gives -1.
    """
    files = [Path(f).resolve() for f in (csv_files if isinstance(csv_files, list) else [csv_files])]
    roots = [Path(root).resolve()] if root else [files[0].parent, files[0].parent.parent]
    root = roots[0]
    rows: list[tuple[Path, int, dict[str, str]]] = []
    for f in files:
        with f.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            need = {"youtube_id", "time_start", "time_end"} - set(reader.fieldnames or [])
            if need:
                raise IndexFormatError(f"{f}: missing column(s) {sorted(need)}; header: {reader.fieldnames}")
            rows += [(f, reader.line_num, row) for row in reader]  # the physical line: blank lines skipped
    classes = sorted({(r.get("label") or "").strip() for _, _, r in rows} - {""})
    lookup = {c: i for i, c in enumerate(classes)}
    found = _Found()
    for f, n, row in rows:
        label = (row.get("label") or "").strip()
        split = _norm_split(row.get("split") or "all")
        try:
            candidates = _kinetics_candidates(roots, row, split)
        except (TypeError, ValueError):
            raise IndexFormatError(f"{f}:{n}: bad time_start/time_end in {row}") from None
        found.add(candidates, lookup.get(label, -1), split, (f, n))
    return found.finish(classes, root, f"Kinetics CSV {', '.join(str(f) for f in files)}", "kinetics", files)


# ----------------------------------------------------------------------------------------------- JSON, auto


def save_index(index: VideoIndex, path: str | Path) -> Path:
    """Freeze an index (absolute paths) so a run reads exactly the same videos later."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": _JSON_FORMAT,
        "version": 1,
        "root": index.root,
        "classes": index.classes,
        "entries": [[e.path, e.label, e.split] for e in index.entries],
        "missing": index.missing,
        "unusable": [list(u) for u in index.unusable],
    }
    path.write_text(json.dumps(doc, indent=1))
    return path


def _from_json(path: Path) -> VideoIndex:
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != _JSON_FORMAT:
            raise IndexFormatError(f"{path}: not a vpace index (format={doc.get('format')!r})")
        entries = [VideoEntry(str(p), int(lab), str(s)) for p, lab, s in doc["entries"]]
        unusable = [(str(p), str(why)) for p, why in doc.get("unusable", [])]
        return VideoIndex(entries, list(doc["classes"]), str(doc["root"]), list(doc.get("missing", [])),
                          unusable, "json", [str(path.resolve())])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, IndexFormatError):
            raise
        raise IndexFormatError(f"{path}: malformed vpace index JSON ({e})") from None


def _is_kinetics_csv(path: Path) -> bool:
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    return {"youtube_id", "time_start", "time_end"} <= {h.strip() for h in header}


def load_index(spec: str | Path, *, split_id: int = 1) -> VideoIndex:
    """Detect the format of ``spec`` (a folder, an annotation file or a saved ``.json``) and load it."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"index {path} does not exist")
    if path.is_file():
        name = path.name
        if path.suffix.lower() == ".json":
            return _from_json(path)
        if path.suffix.lower() == ".csv":
            if not _is_kinetics_csv(path):
                raise IndexFormatError(
                    f"{path}: expected a Kinetics header label,youtube_id,time_start,time_end,split"
                )
            return from_kinetics_csv(path)
        if name == "classInd.txt" or UCF_LIST_RE.match(name):
            return from_ucf101(path.parent, split_id, annotation_dir=path.parent)
        if HMDB_SPLIT_RE.match(name):
            return from_hmdb51(path.parent, split_id, annotation_dir=path.parent)
        raise IndexFormatError(
            f"{path}: unknown index file (expected .json, Kinetics .csv, classInd.txt or an HMDB split file)"
        )
    if (path / INDEX_FILE).is_file():
        return _from_json(path / INDEX_FILE)
    if _find_annotation_dir(path, "classInd.txt"):
        return from_ucf101(path, split_id)
    if _find_annotation_dir(path, "*_test_split*.txt"):
        return from_hmdb51(path, split_id)
    adir = _find_annotation_dir(path, "*.csv")
    csvs = [f for f in sorted(adir.glob("*.csv")) if _is_kinetics_csv(f)] if adir else []
    if csvs:
        return from_kinetics_csv(csvs, root=path)
    return from_folder(path)
