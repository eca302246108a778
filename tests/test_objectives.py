"""Pace prediction + contrastive objectives (Eq. 1-4): exact loss vs the paper's formulas, switches, overfit,
and a pace head that learns pace on tiny in-memory scrolling-grating clips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vpace.config import PaceConfig, load_config
from vpace.data.pace import sample_indices
from vpace.models import build_backbone
from vpace.objectives import PaceModel, build_objective, metric_values, pace_objective

T, HW = 8, 32


def _cfg(method: str, **pace) -> object:
    n = 3 if method == "rspnet" else 2
    return load_config(data={"method": method, "pace": pace, "model": {"backbone": "r21d_tiny"},
                             "rspnet": {"queue_size": 32}, "data": {"clips_per_video": n}})


# -------------------------------------------------------------------------------------- Eq. 1-4 exactly


def _ce_eq1(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Eq. 1 with explicit exponentials, averaged over the batch."""
    total = 0.0
    for h, yi in zip(logits.tolist(), y.tolist(), strict=True):
        total -= math.log(math.exp(h[yi]) / sum(math.exp(v) for v in h))
    return total / len(y)


def _ctr_eq23(z: torch.Tensor, labels: torch.Tensor, tau: float) -> tuple[float, int]:
    """Eq. 2/3 as the SupCon form the kernel defines: cosine/tau, self excluded, mean over each row's
    positives, mean over rows that have one. Returns (loss, rows without a positive)."""
    zn = [v / math.sqrt(sum(x * x for x in v)) for v in (np.asarray(r, dtype=np.float64) for r in z.tolist())]
    lab = labels.tolist()
    rows, empty = [], 0
    for i in range(len(zn)):
        others = [j for j in range(len(zn)) if j != i]
        denom = sum(math.exp(float(zn[i] @ zn[j]) / tau) for j in others)
        pos = [j for j in others if lab[j] == lab[i]]
        if not pos:
            empty += 1
            continue
        rows.append(-sum(math.log(math.exp(float(zn[i] @ zn[j]) / tau) / denom) for j in pos) / len(pos))
    return (sum(rows) / len(rows) if rows else 0.0), empty


WEIGHTS = [(1.0, 0.1), (0.3, 2.0), (0.0, 1.0), (1.0, 0.0)]  # (lambda_cls, lambda_ctr)
CASES = [(m, c, t) for m in ("same_context", "same_pace", "none") for c, t in WEIGHTS
         if c > 0 or (m != "none" and t > 0)]  # all-off is an error: test_all_terms_off_is_an_error


@pytest.mark.parametrize("mode,lam_cls,lam_ctr", CASES)
def test_eq4_is_the_weighted_sum_of_eq1_and_eq2_3(mode, lam_cls, lam_ctr):
    g = torch.Generator().manual_seed(1)
    n_vid, n, m = 5, 2, 4
    logits = torch.randn(n_vid * n, m, generator=g, requires_grad=True)
    z = torch.randn(n_vid * n, 16, generator=g, requires_grad=True)
    video_id = torch.arange(n_vid).repeat_interleave(n)
    video_id[-1] = 99  # a clip without a same-video partner: no positive under same_context
    pace = torch.randint(0, m, (n_vid * n,), generator=g)
    cfg = PaceConfig(lambda_cls=lam_cls, lambda_ctr=lam_ctr, ctr_mode=mode, tau=0.2)
    loss, pairs = pace_objective({"logits": logits, "z": z, "feat": None}, pace, video_id, cfg)
    metrics = metric_values(pairs)  # per-step metrics: (value, 1)
    assert all(float(c) == 1 for _, c in pairs.values())
    ce = _ce_eq1(logits, pace)
    ctr_on = mode != "none" and lam_ctr > 0
    ctr, empty = _ctr_eq23(z, video_id if mode == "same_context" else pace, cfg.tau) if ctr_on else (0.0, 0)
    expected = lam_cls * ce + lam_ctr * ctr if ctr_on else lam_cls * ce
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["loss_cls"] == pytest.approx(ce if lam_cls > 0 else 0.0, rel=1e-5)
    assert metrics["loss_ctr"] == pytest.approx(ctr, rel=1e-5)
    assert metrics["rows_without_positive"] == empty
    if mode == "same_context" and ctr_on:
        assert empty == 2  # the lone clip and the partner it left behind
    assert "pace_acc" not in metrics  # counted once, per clip, by pace_tallies
    # gradients of Eq. 4 = the lambda-weighted gradients of the terms (eager float64 reference)
    loss.backward()
    lg, zg = logits.detach().double().requires_grad_(), z.detach().double().requires_grad_()
    ref = lam_cls * torch.nn.functional.cross_entropy(lg, pace) + 0 * zg.sum()
    if ctr_on:
        ref = ref + lam_ctr * _ctr_torch(zg, video_id if mode == "same_context" else pace, cfg.tau)
    ref.backward()
    for got, want, used in ((logits.grad, lg.grad, lam_cls > 0), (z.grad, zg.grad, ctr_on)):
        if used:
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
        else:  # a switched-off term is not computed at all
            assert got is None


def _ctr_torch(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Differentiable twin of `_ctr_eq23` (same formula, tensor ops) for the gradient check."""
    zn = torch.nn.functional.normalize(z, dim=1)
    s = zn @ zn.T / tau
    eye = torch.eye(len(z), dtype=torch.bool)
    logp = s - torch.logsumexp(s.masked_fill(eye, -math.inf), dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    cnt = pos.sum(1)
    rows = -(logp * pos).sum(1)[cnt > 0] / cnt[cnt > 0]
    return rows.mean()


def test_all_terms_off_is_an_error():
    out = {"logits": torch.zeros(4, 3), "z": torch.zeros(4, 8), "feat": None}
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="all loss terms are off"):
        pace_objective(out, y, y, PaceConfig(lambda_cls=0.0, ctr_mode="none"))
    with pytest.raises(ValueError, match="no pace classifier"):
        pace_objective({"logits": None, "z": out["z"]}, y, y, PaceConfig())
    with pytest.raises(ValueError, match="no projection head"):
        pace_objective({"logits": out["logits"], "z": None}, y, y, PaceConfig())
    with pytest.raises(ValueError, match="nothing to train"):
        PaceModel(build_backbone("r21d_tiny"), 0, None)


def test_switched_off_terms_build_no_head():
    bb = build_backbone("r21d_tiny")
    pace_only, _ = build_objective(_cfg("pace", ctr_mode="same_context"), bb)
    assert pace_only.proj is None and pace_only.pace_head.out_features == 4
    ctr_only, _ = build_objective(_cfg("pace_ctr", lambda_cls=0.0, proj_head="mlp"), bb)
    assert ctr_only.pace_head is None and isinstance(ctr_only.proj, torch.nn.Sequential)
    out = ctr_only(torch.randn(2, 3, T, HW, HW))
    assert out["logits"] is None and out["z"].shape == (2, 128) and out["feat"].shape == (2, bb.feature_dim)


# ------------------------------------------------------------------------------------------ interface


@pytest.mark.parametrize("method", ["pace", "pace_ctr", "rspnet"])
def test_objective_interface_and_state_dict_roundtrip(method):
    torch.manual_seed(0)
    cfg = _cfg(method)
    model, loss_fn = build_objective(cfg, build_backbone("r21d_tiny"))
    n = cfg.data.clips_per_video
    trained = model.encoder_q if method == "rspnet" else model  # what the optimizer gets
    assert model.backbone is trained.backbone  # export takes the backbone that is trained
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in trained.parameters()}
    clips = torch.randn(2 * n, 3, T, HW, HW)
    labels = [0, 0, 1] if method == "rspnet" else [0, 1]
    meta = {"pace_label": torch.tensor(labels * 2), "video_id": torch.tensor([3, 3, 3, 5, 5, 5][: 2 * n]
                                                                            if n == 3 else [3, 3, 5, 5])}
    loss, pairs = loss_fn(model(clips), meta)
    loss.backward()
    assert all(isinstance(s, torch.Tensor) and isinstance(c, torch.Tensor) for s, c in pairs.values())
    metrics = metric_values(pairs)
    assert metrics["loss"] == pytest.approx(loss.item())
    state = model.state_dict()
    if method == "rspnet":
        assert {"queue.keys", "queue.ptr"} <= set(state) and int(state["queue.ptr"]) == 2
        assert any(k.startswith("encoder_k.") for k in state)
    fresh, _ = build_objective(cfg, build_backbone("r21d_tiny"))
    fresh.load_state_dict(state)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(clips), fresh.backbone(clips))
    with pytest.raises(ValueError, match="missing 'video_id'"):
        loss_fn(model(clips), {"pace_label": meta["pace_label"]})


# ------------------------------------------------------------------------------------------- overfit


def overfit(model, loss_fn, clips: torch.Tensor, meta: dict, steps: int,
            after_step=None) -> list[dict[str, float]]:
    """The train-loop protocol on one fixed batch (Adam 1e-3); returns each step's metrics."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    hist = []
    for _ in range(steps):
        loss, metrics = loss_fn(model(clips), meta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        hist.append(metric_values(metrics))
    return hist


@pytest.mark.parametrize("method,pace", [
    ("pace", {}),
    ("pace_ctr", {"ctr_mode": "same_context", "lambda_ctr": 1.0}),
    ("pace_ctr", {"ctr_mode": "same_pace", "lambda_ctr": 1.0}),
    ("pace_ctr", {"ctr_mode": "same_context", "lambda_cls": 0.0, "lambda_ctr": 1.0, "proj_head": "mlp"}),
], ids=["pace", "same_context", "same_pace", "contrastive_only"])
def test_loss_drops_on_a_fixed_batch(method, pace):
    torch.manual_seed(0)
    model, loss_fn = build_objective(_cfg(method, **pace), build_backbone("r21d_tiny"))
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(6, 3, T, HW, HW, generator=g)
    meta = {"pace_label": torch.tensor([0, 1, 2, 3, 1, 2]), "video_id": torch.tensor([0, 0, 1, 1, 2, 2])}
    hist = overfit(model, loss_fn, clips, meta, steps=5)
    assert hist[-1]["loss"] < 0.7 * hist[0]["loss"], [h["loss"] for h in hist]
    for term in ("loss_cls", "loss_ctr"):
        if hist[0][term] > 0:
            assert hist[-1][term] < hist[0][term], term


# ------------------------------------------------------------------------------- pace is learnable


PACES = (1, 2, 3, 4)


def _grating_clips(rng: np.random.Generator, n_videos: int, frames: int = 40) -> tuple[torch.Tensor, dict]:
    """2 clips per video at distinct paces of a sine grating (wavelength 16 px) scrolling 1 px/frame with a
    random phase and direction: at pace p every pixel flickers p times faster, so pace is visible locally."""
    x = np.arange(HW)
    clips, labels = [], []
    for _ in range(n_videos):
        d, phase = rng.choice([-1, 1]), rng.uniform(0, 2 * np.pi)
        rows = [0.5 + 0.4 * np.sin(2 * np.pi * (x - d * t) / 16 + phase) for t in range(frames)]
        video = np.stack([np.broadcast_to(r, (3, HW, HW)) for r in rows])  # [F, 3, H, W]
        for lab in rng.choice(len(PACES), 2, replace=False):
            idx = sample_indices(frames, T, PACES[lab], int(rng.integers(frames)))
            clips.append(video[idx].transpose(1, 0, 2, 3))
            labels.append(lab)
    vid = torch.arange(n_videos).repeat_interleave(2)
    return torch.from_numpy(np.stack(clips)).float(), {"pace_label": torch.tensor(labels), "video_id": vid}


def test_pace_head_beats_twice_chance_on_synthetic_clips():
    torch.manual_seed(0)
    model, loss_fn = build_objective(_cfg("pace"), build_backbone("r21d_tiny"))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(18):
        clips, meta = _grating_clips(rng, 6)
        loss, _ = loss_fn(model(clips), meta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    clips, meta = _grating_clips(np.random.default_rng(123), 32)  # held-out videos
    with torch.no_grad():  # batch-statistics BN: after 18 steps the running averages still lag the weights
        acc = (model(clips)["logits"].argmax(1) == meta["pace_label"]).float().mean().item()
    assert acc > 2 / len(PACES), acc


# ------------------------------------------------------------------------ one step through the task


@pytest.mark.parametrize("method", ["pace_ctr", "rspnet"])
def test_pretrain_step_is_model_plus_loss_plus_tallies(method, coded_tree):
    """loop -> spec -> model + loss on a real decoded batch; the checkpoint keys are the model's own."""
    from vpace.data.pace import pace_metric_name, parse_pace_set
    from vpace.eval.loading import BACKBONE_PREFIXES
    from vpace.train.export import module_prefix
    from vpace.train.pretraining import PRETRAIN

    cfg = load_config(data={"method": method, "model": {"backbone": "r21d_tiny"}, "augment": {"crop": 32},
                            "data": {"index": str(coded_tree), "split": "all", "clip_len": T, "height": 48,
                                     "width": 64, "epoch_size": 6}, "rspnet": {"queue_size": 16}})
    torch.manual_seed(0)
    net = PRETRAIN.build_model(cfg).train()
    batch = PRETRAIN.collate([PRETRAIN.dataset(cfg)[i] for i in range(6)])  # a1 40, a2 9, b1 60 frames, twice
    loss, metrics = PRETRAIN.forward_loss(net, batch, torch.Generator().manual_seed(0), cfg)
    loss.backward()

    paces = parse_pace_set(cfg.rspnet.speeds if method == "rspnet" else cfg.pace.paces)
    labels, wrapped = batch["pace_label"].flatten(), batch["wrapped"].flatten()
    assert wrapped.any() and not wrapped.all()  # the 9-frame video loops, the others mostly fit
    for k, p in enumerate(paces):
        pair = metrics[f"wrap_frac/{pace_metric_name(p)}"]
        expected = [float((wrapped & (labels == k)).sum()), float((labels == k).sum())]
        assert [float(x) for x in pair] == expected
    assert [float(x) for x in metrics["wrap_frac"]] == [float(wrapped.sum()), float(len(labels))]
    assert [float(x) for x in metrics["loss"]] == [pytest.approx(loss.item()), 1.0]
    if method == "rspnet":  # no pace classifier: wrap counts only; the forward enqueued the 6 k_neg keys
        assert not any(k.startswith("pace_acc") for k in metrics) and int(net.queue.ptr) == 6
    else:
        hits = sum(float(metrics[f"pace_acc/{pace_metric_name(p)}"][0]) for p in paces)
        assert [float(x) for x in metrics["pace_acc"]] == [hits, float(len(labels))]  # exact, not a step mean
    prefix = module_prefix(net, net.backbone)
    assert prefix == ("encoder_q.backbone." if method == "rspnet" else "backbone.")
    assert prefix in BACKBONE_PREFIXES  # what evaluation looks for: checkpoints stay loadable
