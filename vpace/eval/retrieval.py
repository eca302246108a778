"""Nearest-neighbour video retrieval (pace paper §4.4, the VCOP/VCP protocol).

Each test video (video mode: its 10 clip features averaged; clip mode: every clip on its own) queries the
train split by cosine similarity; a query is a top-k hit if any of its k nearest train items shares its class,
k in {1, 5, 10, 20, 50}. Features come from p5 (last pooling) and/or p4 (second last). Results go to stdout,
``retrieval.md`` and ``retrieval.json``; ``baseline="random"`` adds a random-init backbone side by side.
"""

from __future__ import annotations

from collections.abc import Sequence

from vpace.eval.features import DEFAULT_CACHE, FeatureSet, extract_features, setup_eval
from vpace.eval.loading import LoadedModel, describe, eval_dir
from vpace.eval.metrics import KS, topk_retrieval
from vpace.eval.results import markdown_table, pct, split_counts, write_result

MODES = ("video", "clip")


def retrieval_rows(
    train: dict[str, FeatureSet],
    test: dict[str, FeatureSet],
    *,
    model: str,
    modes: Sequence[str] = MODES,
    ks: Sequence[int] = KS,
) -> list[dict]:
    """One row per (layer, mode): {"model", "layer", "mode", "top1", "top5", ...} (fractions in [0, 1])."""
    rows = []
    for layer in train:
        for mode in modes:
            if mode not in MODES:
                raise ValueError(f"unknown retrieval mode {mode!r}; valid: {MODES}")
            pick = (lambda fs: fs.video_level()) if mode == "video" else (lambda fs: fs.clip_level())
            (g, gl), (q, ql) = pick(train[layer]), pick(test[layer])
            acc = topk_retrieval(q, ql, g, gl, ks)
            rows.append({"model": model, "layer": layer, "mode": mode, "queries": int(len(ql)),
                         **{f"top{k}": v for k, v in acc.items()}})
    return rows


def format_table(rows: list[dict], ks: Sequence[int] = KS) -> str:
    """Markdown table, rows grouped by (layer, mode) so the models sit side by side; values in %."""
    rows = sorted(rows, key=lambda r: (r["layer"] != "p5", r["layer"], r["mode"] != "video",
                                       r["model"] != "pretrained"))
    return markdown_table(["model", "layer", "mode", *[f"top{k}" for k in ks]],
                          [[r["model"], r["layer"], r["mode"], *[pct(r[f"top{k}"]) for k in ks]]
                           for r in rows])


def _features(model: LoadedModel, index, layers, spec, *, what, **kw) -> dict[str, FeatureSet]:
    desc = f"{what} {model.backbone_name}"
    return extract_features(model, index, layers=layers, spec=spec, desc=desc, **kw)


def retrieve(
    checkpoint: str | None = None,
    *,
    data: str | None = None,
    split_id: int = 1,
    layers: Sequence[str] = ("p5", "p4"),
    modes: Sequence[str] = MODES,
    ks: Sequence[int] = KS,
    baseline: str | None = None,
    backbone: str | None = None,
    out_dir: str | None = None,
    cache_dir: str | None = DEFAULT_CACHE,
    num_clips: int = 10,
    batch_size: int = 4,
    num_workers: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Run the retrieval protocol; returns the JSON written to ``<out>/retrieval.json``.

    ``checkpoint`` None with ``backbone`` evaluates only a random init; ``baseline="random"`` adds the
    random-init backbone of the same architecture next to the checkpoint.
    """
    ev = setup_eval(checkpoint, backbone=backbone, baseline=baseline, seed=seed, data=data, split_id=split_id,
                    num_clips=num_clips)
    spec = ev.spec
    kw = {"batch_size": batch_size, "num_workers": num_workers, "cache_dir": cache_dir, "progress": progress}

    rows, skipped = [], {}
    for label, m in ev.models.items():
        tr = _features(m, ev.train, layers, spec, what="train", **kw)
        te = _features(m, ev.test, layers, spec, what="test", **kw)
        skipped = {"train": tr[layers[0]].skipped, "test": te[layers[0]].skipped}
        rows += retrieval_rows(tr, te, model=label, modes=modes, ks=ks)

    result = {
        "protocol": f"{spec.num_clips} clips x {spec.clip_len} frames, center crop {spec.crop}, cosine, "
                    f"query=test split, gallery=train split",
        "data": ev.data, "split_id": split_id, "ks": list(ks),
        **split_counts({"train": len(ev.train), "test": len(ev.test)}, skipped),
        "models": {k: describe(m) for k, m in ev.models.items()},
        "skipped": skipped, "rows": rows,
    }
    out = eval_dir(checkpoint, out_dir)
    title = f"Retrieval (top-k %, {result['protocol']})"
    write_result(out, "retrieval", title, result, format_table(rows, ks),
                 [s for v in skipped.values() for s in v])
    return result
