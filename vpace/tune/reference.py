"""Published numbers beside a search's own: the optional `reference:` section of a search file.

Why: a search that re-runs a paper's ablation (tune_configs/pace_range.yaml is Table 1 of the pace paper)
should put the paper's number next to each configuration's proxy in results.md, so the user reads the two
orderings side by side instead of copying a table by hand. The values are shown, never ranked: a paper's
metric (fine-tuned accuracy after a full schedule) is not the search's proxy.

Format::

    reference:
      source: Wang et al., ECCV 2020, Table 1
      metric: UCF101 fine-tuned top-1 (%)
      rows:
        - {pace.paces: "1,2,3", augment.jitter_p: 0.0, value: 71.4}

Each row names a value for every searched field (one of that field's choice/grid values) and the number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reference:
    source: str
    metric: str
    rows: tuple[tuple[str, float], ...]  # (configuration key, value)

    def lookup(self, params: dict[str, Any]) -> float | None:
        """The published value of a configuration (its searched params), or None if the source has none."""
        key = config_key(params)
        return next((v for k, v in self.rows if k == key), None)


def config_key(params: dict[str, Any]) -> str:
    """Identity of a configuration's searched values (order of the fields ignored)."""
    return json.dumps(params, sort_keys=True, default=str)


def parse_reference(raw: Any, dims: list[Any], error: Any) -> Reference:
    """Validate a `reference:` mapping against the search's dimensions; `error(entry, msg)` builds the
    exception (the caller's `SearchSpaceError` with the file named)."""
    if not isinstance(raw, dict) or set(raw) - {"source", "metric", "rows"}:
        raise error("reference", f"must be a mapping with source, metric and rows, got {raw!r}")
    source, metric, rows = raw.get("source"), raw.get("metric"), raw.get("rows")
    for name, value in (("source", source), ("metric", metric)):
        if not isinstance(value, str) or not value.strip():
            raise error(f"reference.{name}", f"must be a non-empty string, got {value!r}")
    if not isinstance(rows, list) or not rows:
        raise error("reference.rows", f"must be a non-empty list, got {rows!r}")
    by_key = {d.key: d for d in dims}
    out: dict[str, float] = {}
    for i, row in enumerate(rows):
        entry = f"reference.rows[{i}]"
        if not isinstance(row, dict) or set(row) != {*by_key, "value"}:
            raise error(entry, f"must give value and exactly the searched fields {sorted(by_key)}, "
                        f"got {row!r}")
        value = row["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{entry}.value", f"must be a number, got {value!r}")
        params = {}
        for key, d in by_key.items():
            if not d.categorical:
                raise error(entry, f"space.{key} is a {d.kind} range: a reference needs choice/grid fields")
            match = [v for v in d.values if v == row[key] or str(v) == str(row[key])]
            if not match:
                raise error(f"{entry}.{key}", f"{row[key]!r} is not one of space.{key}'s values "
                            f"{list(d.values)}")
            params[key] = match[0]
        key = config_key(params)
        if key in out:
            raise error(entry, f"a second row for {params}")
        out[key] = float(value)
    return Reference(source.strip(), metric.strip(), tuple(out.items()))
