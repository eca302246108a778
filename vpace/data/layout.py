"""Where `vpace prepare` writes each copy, and the index files of the copy.

The copy mirrors the source: every video and annotation file keeps its path relative to the source's base
(the deepest folder that holds the index and all its videos), so the copy is read the way the source is
(``data.index=OUT`` when the index given was that folder). Copies are ``.mp4`` (``copy_name``): UCF101 and
HMDB51 list lines are rewritten to those names; the lines (Kinetics rows) of videos that are missing or could
not be prepared are left out. Labels and splits stay: classInd.txt and HMDB51's split files are kept whole
(less the lines left out), every class folder of a folder tree is created even when none of its videos could
be copied, and a JSON index keeps its classes. One limit: a Kinetics class whose every video failed leaves
the CSV, and the classes after it move up one number. Every split of UCF101 / HMDB51 is read, so a video that
only another split uses is copied too.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from vpace.errors import UserError

from .index import (
    HMDB_SPLIT_RE,
    INDEX_FILE,
    UCF_LIST_RE,
    VIDEO_EXTENSIONS,
    VideoEntry,
    VideoIndex,
    load_index,
    save_index,
)
from .manifest import write_text_atomic
from .verify import MISSING_REASON

__all__ = ["COPY_SUFFIX", "Layout", "copy_name", "load_every_split", "plan_layout", "prepared_name",
           "write_index"]

COPY_SUFFIX = ".mp4"
_FIRST_TOKEN = re.compile(r"^(\s*)(\S+)(.*)$", re.S)


def copy_name(name: str) -> str:
    """File name of the copy of a video called ``name``: its video extension becomes ``.mp4``."""
    stem, ext = os.path.splitext(name)
    return (stem if ext.lower() in VIDEO_EXTENSIONS else name) + COPY_SUFFIX


def prepared_name(spec: str | Path, height: int, width: int) -> str:
    """The folder name suggested for the copy of the index at ``spec`` at one size."""
    return f"{Path(spec).expanduser().resolve().stem}-prepared-{height}x{width}"


def _split_ids(index: VideoIndex) -> list[int]:
    """The split numbers of a UCF101 / HMDB51 index's annotation folder (none for other formats)."""
    if index.kind not in ("ucf101", "hmdb51") or not index.annotations:
        return []
    pattern = UCF_LIST_RE if index.kind == "ucf101" else HMDB_SPLIT_RE
    folder = Path(index.annotations[0]).parent
    return sorted({int(m["n"]) for f in folder.iterdir() if (m := pattern.match(f.name))})


def load_every_split(spec: str | Path) -> VideoIndex:
    """``load_index(spec)``, for UCF101 / HMDB51 merged over every split number: each video once (first
    split's label and split), every annotation file and line. Only the first load warns of missing files."""
    index = load_index(spec)
    for sid in _split_ids(index):
        if sid == 1:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            more = load_index(spec, split_id=sid)
        seen = {e.path for e in index.entries}
        index.entries += [e for e in more.entries if e.path not in seen]
        index.missing += [m for m in more.missing if m not in index.missing]
        index.unusable += [u for u in more.unusable if u not in index.unusable]
        index.annotations += [a for a in more.annotations if a not in index.annotations]
        index.lines += more.lines
    return index


@dataclass
class Layout:
    """The plan of one prepare: the source index, the copy's base folders and one output per source."""

    index: VideoIndex
    spec: Path  # the index as given, resolved
    base: Path  # mirrored into `out`
    out: Path
    copies: dict[str, str] = field(default_factory=dict)  # source path -> output path, in index order
    problems: list[tuple[str, str]] = field(default_factory=list)  # (source, reason): no copy can be made

    def mirror(self, path: str | Path) -> Path:
        return self.out / Path(path).relative_to(self.base)

    @property
    def out_spec(self) -> Path:
        """What to pass as ``data.index`` to read the copy."""
        return self.out if self.index.kind == "json" else self.mirror(self.spec)


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def plan_layout(spec: str | Path, out: str | Path) -> Layout:
    """Read the index at ``spec`` (every split) and decide where each copy goes under ``out``."""
    index = load_every_split(spec)
    spec, out = Path(spec).expanduser().resolve(), Path(out).expanduser().resolve()
    sources = list(dict.fromkeys(e.path for e in index.entries))
    if index.kind == "folder":
        base = Path(index.root)
    else:
        held = [str(Path(p).parent) for p in sources]  # a JSON index is written anew: only its videos
        if index.kind != "json":
            held += [str(Path(p).parent) for p in index.annotations]
            held.append(str(spec if spec.is_dir() else spec.parent))
        base = Path(os.path.commonpath(held))
    if _inside(out, base) or _inside(base, out):
        raise UserError(f"prepare: the copy {out} and the source {base} (the folder that holds the index and "
                        "its videos, which the copy mirrors) must not hold one another; choose another OUT")
    layout = Layout(index, spec, base, out)
    layout.problems += [(p, MISSING_REASON) for p in index.missing] + list(index.unusable)
    taken: dict[Path, str] = {}
    for src in sources:
        dst = layout.mirror(src).with_name(copy_name(Path(src).name))
        if dst in taken:
            layout.problems.append((src, f"its copy {dst} would replace that of {taken[dst]}; rename one"))
            continue
        taken[dst] = src
        layout.copies[src] = str(dst)
    return layout


def _rewrite_token(line: str) -> str:
    """A list line with its first token (a video path) renamed to the copy's name."""
    m = _FIRST_TOKEN.match(line)
    if not m:
        return line
    lead, token, rest = m.groups()
    cut = max(token.rfind("/"), token.rfind("\\")) + 1
    return f"{lead}{token[:cut]}{copy_name(token[cut:])}{rest}"


def _rewrite_annotation(layout: Layout, path: str, gone: Collection[str]) -> None:
    """Copy one annotation file: lines of videos without a copy left out, video names renamed."""
    resolved = {n: video for f, n, video in layout.index.lines if f == path}
    rename = layout.index.kind in ("ucf101", "hmdb51") and Path(path).name != "classInd.txt"
    kept = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if n in resolved and (resolved[n] is None or resolved[n] in gone or resolved[n] not in layout.copies):
            continue
        kept.append(_rewrite_token(line) if rename and line.strip() else line)
    target = layout.mirror(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, "".join(f"{x}\n" for x in kept))


def _folders(d: Path) -> list[Path]:
    """Sub-folders a folder index reads as splits or classes (one named like a video is not a class)."""
    return [c for c in d.iterdir() if c.is_dir() and c.suffix.lower() not in VIDEO_EXTENSIONS]


def write_index(layout: Layout, failed: Collection[str]) -> Path:
    """Write the copy's index, leaving out the sources in ``failed`` (and the missing ones); returns the
    path to read it from (``Layout.out_spec``)."""
    gone = set(failed)
    index = layout.index
    if index.kind == "folder":  # the folder is the index: create every class folder, so labels keep numbers
        for top in _folders(layout.base):
            layout.mirror(top).mkdir(parents=True, exist_ok=True)
            for sub in _folders(top):
                layout.mirror(sub).mkdir(exist_ok=True)
    elif index.kind == "json":
        entries = [VideoEntry(layout.copies[e.path], e.label, e.split) for e in index.entries
                   if e.path in layout.copies and e.path not in gone]
        save_index(VideoIndex(entries, list(index.classes), str(layout.out)), layout.out / INDEX_FILE)
    else:
        for path in index.annotations:
            _rewrite_annotation(layout, path, gone)
    return layout.out_spec
