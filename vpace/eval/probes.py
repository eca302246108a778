"""Cheap classifiers on frozen, cached features: a linear probe and a weighted kNN.

Why: full fine-tuning takes hours per backbone on UCF101; these reuse the retrieval feature cache, so after
``vpace retrieve`` they cost seconds and rank checkpoints the same way in practice.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vpace.eval.features import DEFAULT_CACHE, FeatureSet, extract_features, setup_eval
from vpace.eval.loading import describe, eval_dir
from vpace.eval.metrics import clip_and_video_accuracy, knn_predict
from vpace.eval.results import TITLES, markdown_table, pct, write_result


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, weight_decay: float = 1e-4,
               steps: int = 100) -> torch.nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS on standardized features (deterministic)."""
    torch.manual_seed(0)
    fc = torch.nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.LBFGS(fc.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(fc(x), y) + weight_decay * fc.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return fc


def linear_probe_scores(train: FeatureSet, test: FeatureSet, num_classes: int, **kw: Any) -> dict[str, Any]:
    """Fit on every train clip, test with the §4.1 protocol (softmax averaged over a video's clips)."""
    xtr, ytr = train.clip_level()
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    fc = fit_linear(torch.from_numpy((xtr - mu) / sd), torch.from_numpy(ytr), num_classes, **kw)
    n, c, d = test.feats.shape
    with torch.no_grad():
        probs = torch.softmax(fc(torch.from_numpy((test.feats.reshape(n * c, d) - mu) / sd)), 1)
    return clip_and_video_accuracy(probs.reshape(n, c, -1), test.labels)


def knn_scores(train: FeatureSet, test: FeatureSet, num_classes: int, *, k: int = 20,
               temperature: float = 0.07) -> dict[str, Any]:
    """Video-level kNN (mean clip features) -> video_acc; clip-level kNN -> clip_acc."""
    gv, gl = train.video_level()
    qv, ql = test.video_level()
    video = knn_predict(gv, gl, qv, num_classes, k=k, temperature=temperature)
    gc, gcl = train.clip_level()
    qc, _ = test.clip_level()
    clip = knn_predict(gc, gcl, qc, num_classes, k=k, temperature=temperature)
    n, c = test.feats.shape[:2]
    clip = clip / clip.sum(1, keepdim=True)
    acc = clip_and_video_accuracy(clip.reshape(n, c, -1), ql)
    return {"video_acc": int((video.argmax(1) == torch.from_numpy(ql)).sum()) / len(ql),
            "clip_acc": acc["clip_acc"], "num_videos": int(n)}


def run_probe(kind: str, checkpoint: str | None, settings: dict[str, Any], *, data: str | None = None,
              split_id: int = 1, backbone: str | None = None, layer: str = "p5", baseline: str | None = None,
              out_dir: str | None = None, cache_dir: str | None = DEFAULT_CACHE, batch_size: int = 4,
              num_workers: int = 2, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Shared body of the two probes: ``kind`` "linear_probe" or "knn", ``settings`` the probe's own keywords
    (recorded in the JSON); the rest says which features (as ``vpace retrieve``: the same cache)."""
    if kind not in ("linear_probe", "knn"):
        raise ValueError(f"probe kind must be 'linear_probe' or 'knn', got {kind!r}")
    ev = setup_eval(checkpoint, backbone=backbone, baseline=baseline, seed=seed, data=data, split_id=split_id)
    num_classes = len(ev.train.classes)
    fn = linear_probe_scores if kind == "linear_probe" else knn_scores
    rows, skipped = [], []
    for label, m in ev.models.items():
        fs = {}
        for split, ix in (("train", ev.train), ("test", ev.test)):
            fs[split] = extract_features(m, ix, layers=(layer,), spec=ev.spec, batch_size=batch_size,
                                         num_workers=num_workers, cache_dir=cache_dir, progress=progress,
                                         desc=f"{split} {m.backbone_name}")[layer]
        skipped = fs["train"].skipped + fs["test"].skipped
        rows.append({"model": label, "layer": layer, **fn(fs["train"], fs["test"], num_classes, **settings)})
    result = {"data": ev.data, "layer": layer, "settings": settings, "rows": rows, "skipped": skipped,
              "models": {k: describe(m) for k, m in ev.models.items()}}
    cols = ("video_acc", "clip_acc")
    table = markdown_table(["model", "layer", *cols], [[r["model"], r["layer"], *[pct(r[c]) for c in cols]]
                                                       for r in rows])
    title = f"{TITLES[kind]}, {', '.join(f'{k}={v}' for k, v in settings.items())}"  # e.g. kNN's k
    write_result(eval_dir(checkpoint, out_dir), kind, title, result, table, skipped)
    return result


def linear_probe(checkpoint: str | None, *, weight_decay: float = 1e-4, steps: int = 100,
                 **options: Any) -> dict[str, Any]:
    """``vpace finetune --linear-probe``: logistic regression on frozen (cached) clip features.

    ``options``: the data, features and output keywords of :func:`run_probe`."""
    return run_probe("linear_probe", checkpoint, {"weight_decay": weight_decay, "steps": steps}, **options)


def knn_classify(checkpoint: str | None, *, k: int = 20, temperature: float = 0.07,
                 **options: Any) -> dict[str, Any]:
    """``vpace finetune --knn``: weighted kNN on cached features (no training).

    ``options``: the data, features and output keywords of :func:`run_probe`."""
    return run_probe("knn", checkpoint, {"k": k, "temperature": temperature}, **options)
