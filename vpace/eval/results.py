"""Result files of the evaluation commands: the same JSON + markdown pair for every protocol.

`vpace report` reads the JSON back, so every command writes ``<out>/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The heading of each protocol's result, in its own .md file and in `vpace report`.
TITLES = {"finetune": "Fine-tuning (accuracy %)",
          "linear_probe": "Linear probe, frozen backbone (accuracy %)",
          "knn": "Weighted kNN on frozen features (accuracy %)"}


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def pct(v: Any) -> str:
    """A fraction as a percentage cell; '-' when missing."""
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def split_counts(listed: dict[str, int], skipped: dict[str, Sequence[Any]]) -> dict[str, int]:
    """``num_<split>`` = videos that took part (listed minus skipped), ``num_skipped_<split>`` = unreadable
    ones: a count never includes a video the protocol could not use."""
    out: dict[str, int] = {}
    for split, n in listed.items():
        bad = len(skipped.get(split, ()))
        out[f"num_{split}"], out[f"num_skipped_{split}"] = n - bad, bad
    return out


def skipped_note(skipped: Sequence[dict[str, str] | str]) -> str:
    if not skipped:
        return ""
    items = [f"{s['path']} ({s['reason']})" if isinstance(s, dict) else str(s) for s in skipped]
    return f"\n\n{len(items)} unreadable video(s) skipped: " + ", ".join(items)


def write_result(out: Path, name: str, title: str, result: dict[str, Any], table: str,
                 skipped: Sequence[dict[str, str] | str] = ()) -> None:
    """Write ``<out>/<name>.json`` + ``<name>.md`` and print the table (stdout is the CLI's output)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    note = skipped_note(skipped)
    (out / f"{name}.md").write_text(f"# {title}\n\n{table}{note}\n")
    print(table + note)
    print(f"wrote {out / (name + '.md')} and {out / (name + '.json')}")


def read_result(out: Path, name: str) -> dict[str, Any] | None:
    p = Path(out) / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None
