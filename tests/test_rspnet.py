"""RSPNet: RSP sampler, key queue (incl. a real 2-process gloo DDP run), momentum encoder, losses, overfit."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import decode_indices
from test_objectives import overfit

from vpace.config import RSPNetConfig
from vpace.data.index import VideoEntry, VideoIndex
from vpace.data.pace import sample_indices
from vpace.data.rsp import RSPClipDataset, sample_rsp_clips
from vpace.models import build_backbone
from vpace.objectives import KeyQueue, build_rspnet, metric_values, rspnet_objective

T, HW = 8, 32


# ------------------------------------------------------------------------------------------------ sampler


@pytest.mark.parametrize("speeds", ["1,2", "1,2,4", "1/2,1,2"])
def test_sample_rsp_clips_roles_and_indices(speeds):
    speed_set = tuple(Fraction(s) for s in speeds.split(","))
    seen = set()
    for seed in range(60):
        num_frames = [5, 40, 200][seed % 3]  # 5: clips must loop, starts still distinct
        s = sample_rsp_clips(num_frames, 16, speeds, np.random.default_rng(seed))
        lab = s["speed_label"]
        assert lab[0] == lab[1] != lab[2]
        assert s["speeds"] == tuple(speed_set[i] for i in lab)
        assert len(set(s["start"].tolist())) == 3
        for k in range(3):
            ref = sample_indices(num_frames, 16, speed_set[lab[k]], int(s["start"][k]))
            np.testing.assert_array_equal(s["indices"][k], ref)
            if num_frames == 200:  # long video: no clip needs to loop
                assert s["start"][k] + (16 - 1) * speed_set[lab[k]] < num_frames
        seen.add((int(lab[0]), int(lab[2])))
    assert seen == {(a, b) for a in range(len(speed_set)) for b in range(len(speed_set)) if a != b}


def test_sample_rsp_clips_bad_input():
    with pytest.raises(ValueError, match="at least 2 speeds"):
        sample_rsp_clips(50, 8, "2", np.random.default_rng(0))
    with pytest.raises(ValueError, match="only 2 frame"):
        sample_rsp_clips(2, 8, "1,2", np.random.default_rng(0))


def test_rsp_dataset_decodes_the_sampled_frames(coded_videos):
    paths = [coded_videos["n50"], coded_videos["n100"]]
    index = VideoIndex([VideoEntry(str(p)) for p in paths], classes=[], root=str(paths[0].parent))
    ds = RSPClipDataset(index, speeds="1,2", clip_len=8, height=64, width=80, seed=3)
    for i in range(len(ds)):
        item = ds[i]
        s = sample_rsp_clips([50, 100][i], 8, "1,2", ds.rng(i))
        assert item["frames"].shape[:2] == (3, 8) and item["video_id"] == i
        np.testing.assert_array_equal(item["pace_label"].numpy(), s["speed_label"])
        for k in range(3):
            clip = item["frames"][k][item["index_map"][k]].numpy()
            assert decode_indices(clip) == s["indices"][k].tolist()


# -------------------------------------------------------------------------------------------------- queue


def _queue_reference(size: int, batches: list[torch.Tensor]) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Write keys one at a time into a python list ring (the obvious definition of a ring buffer)."""
    init = KeyQueue(size, batches[0].shape[1], generator=torch.Generator().manual_seed(0)).keys
    rows, ptr = list(init.clone()), 0
    for b in batches:
        for row in b:
            rows[ptr] = row
            ptr = (ptr + 1) % size
    return torch.stack(rows), ptr, init


def test_queue_rolls_with_wraparound_and_state_dict():
    batches = [torch.full((n, 2), float(i + 1)) + torch.arange(n)[:, None] / 10
               for i, n in enumerate([2, 2, 2, 7])]
    q = KeyQueue(5, 2, generator=torch.Generator().manual_seed(0))
    expected = [(0, 2), (2, 4), (4, 1), (1, 3)]  # (ptr before, ptr after): 3rd wraps, 4th (7 > 5) laps
    for i, b in enumerate(batches):
        assert int(q.ptr) == expected[i][0]
        q.enqueue(b)
        ref_keys, ref_ptr, _ = _queue_reference(5, batches[: i + 1])
        assert int(q.ptr) == ref_ptr == expected[i][1]
        torch.testing.assert_close(q.keys, ref_keys, rtol=0, atol=0)
    # 7 rows 4.0..4.6 written from ptr 1 land at 1,2,3,4,0,1,2: the last 5 survive
    torch.testing.assert_close(q.keys[:, 0], torch.tensor([4.4, 4.5, 4.6, 4.2, 4.3]))
    restored = KeyQueue(5, 2)
    restored.load_state_dict(q.state_dict())
    assert set(q.state_dict()) == {"keys", "ptr"}
    assert int(restored.ptr) == 3 and torch.equal(restored.keys, q.keys)
    with pytest.raises(ValueError, match=r"expected keys \[n, 2\]"):
        q.enqueue(torch.zeros(3, 4))


DDP_SIZES = [(2, 3), (1, 2), (2, 1), (1, 0)]  # keys per (rank 0, rank 1) at each step


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    # (a) the bare queue: uneven per-rank batch sizes (one empty), four steps so the ring wraps
    # once with the sizes gathered first, once padded to a capacity all ranks know (no read-back)
    q = KeyQueue(7, 3, generator=torch.Generator().manual_seed(0))
    q_fixed = KeyQueue(7, 3, generator=torch.Generator().manual_seed(0))
    for step, n in enumerate(DDP_SIZES):
        keys = 100 * rank + 10 * step + torch.arange(n[rank], dtype=torch.float32)[:, None].expand(-1, 3)
        q.enqueue(keys)
        q_fixed.enqueue(keys, capacity=3)
    # (b) a full RSPNet step with the query encoder in DDP; each rank feeds different videos
    torch.manual_seed(0)  # same init on both ranks, as DDP expects
    net, loss_fn = build_rspnet(build_backbone("r21d_tiny"), RSPNetConfig(queue_size=16, momentum=0.9),
                                batch_size=4)  # 2 videos per rank: keys gathered at a fixed 4 // 2 + 1
    ddp = torch.nn.parallel.DistributedDataParallel(net)  # the whole model, as the train loop wraps it
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    g = torch.Generator().manual_seed(1 + rank)
    clips = torch.randn(2 * 3, 3, T, HW, HW, generator=g)
    meta = {"pace_label": torch.tensor([0, 0, 1, 1, 1, 0]),
            "video_id": torch.tensor([0, 0, 0, 1, 1, 1]) + 2 * rank}
    loss, _ = loss_fn(ddp(clips), meta)  # the forward EMA-updates the key encoder and enqueues
    loss.backward()
    opt.step()
    # this rank's k_neg keys, recomputed independently (the key encoder changes only in the next forward)
    my_keys = net.keys(clips.view(2, 3, *clips.shape[1:])[:, 2])["a"]
    torch.save({"queue": q.state_dict(), "queue_fixed": q_fixed.state_dict(),
                "rsp_queue": net.queue.state_dict(), "my_keys": my_keys,
                "q_params": [p.detach().clone() for p in net.encoder_q.parameters()],
                "k_params": [p.detach().clone() for p in net.encoder_k.parameters()]},
               f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_queue_gathers_all_workers_keys(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    # (a) every rank holds the same queue: keys of rank 0 then rank 1, step by step, wrapped in a ring of 7
    batches = [100 * r + 10 * s + torch.arange(n[r], dtype=torch.float32)[:, None].expand(-1, 3)
               for s, n in enumerate(DDP_SIZES) for r in range(2)]
    ref_keys, ref_ptr, _ = _queue_reference(7, batches)
    for r in (r0, r1):
        for name in ("queue", "queue_fixed"):
            assert int(r[name]["ptr"]) == ref_ptr == (5 + 3 + 3 + 1) % 7
            torch.testing.assert_close(r[name]["keys"], ref_keys, rtol=0, atol=0)
    # (b) RSPNet: identical queues holding [rank 0's k_neg keys, rank 1's], identical (synced) encoders
    assert torch.equal(r0["rsp_queue"]["keys"], r1["rsp_queue"]["keys"])
    assert int(r0["rsp_queue"]["ptr"]) == int(r1["rsp_queue"]["ptr"]) == 4
    torch.testing.assert_close(r0["rsp_queue"]["keys"][:4], torch.cat([r0["my_keys"], r1["my_keys"]]))
    assert not torch.allclose(r0["my_keys"], r1["my_keys"])
    for a, b in zip(r0["q_params"] + r0["k_params"], r1["q_params"] + r1["k_params"], strict=True):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------ momentum encoder


def _videos(n: int, frames: int, seed: int) -> torch.Tensor:
    """n videos [n, F, 3, H, W]: a per-video random texture scrolling 1 px/frame (appearance + motion)."""
    g = torch.Generator().manual_seed(seed)
    tex = torch.rand(n, 3, HW, HW, generator=g)
    return torch.stack([torch.roll(tex, shifts=t, dims=3) for t in range(frames)], dim=1)


def _rsp_batch(videos: torch.Tensor, speeds: str, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """[B*3, 3, T, H, W] in (q, k_pos, k_neg) order per video + meta, as the RSP dataset + augment yield."""
    rng = np.random.default_rng(seed)
    clips, labels = [], []
    for v in videos:
        s = sample_rsp_clips(v.shape[0], T, speeds, rng)
        clips += [v[torch.from_numpy(idx)].transpose(0, 1) for idx in s["indices"]]
        labels += s["speed_label"].tolist()
    vid = torch.arange(len(videos)).repeat_interleave(3)
    return torch.stack(clips), {"pace_label": torch.tensor(labels), "video_id": vid}


def test_momentum_encoder_is_never_touched_by_the_optimizer():
    torch.manual_seed(0)
    m = 0.9
    net, loss_fn = build_rspnet(build_backbone("r21d_tiny"), RSPNetConfig(queue_size=32, momentum=m))
    enc_q, enc_k = net.encoder_q, net.encoder_k
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5, momentum=0.9,
                          weight_decay=1e-2)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in enc_q.parameters()}
    assert not in_opt & {id(p) for p in enc_k.parameters()}
    assert all(not p.requires_grad for p in enc_k.parameters())
    pairs = zip(enc_q.parameters(), enc_k.parameters(), strict=True)
    assert all(a.data_ptr() != b.data_ptr() for a, b in pairs)  # a deep copy, not shared storage
    clips, meta = _rsp_batch(_videos(4, 40, 0), "1,2", 0)
    for step in range(3):
        k_before = [p.detach().clone() for p in enc_k.parameters()]
        q_before = [p.detach().clone() for p in enc_q.parameters()]
        out = net(clips)  # a training forward first EMA-updates the key encoder (moco's order)
        changed = 0
        for pk, pq, b in zip(enc_k.parameters(), q_before, k_before, strict=True):
            assert torch.equal(pk, m * b + (1 - m) * pq)  # exactly the EMA of the last step's weights
            changed += not torch.equal(pk, b)
        assert changed > 0 or step == 0  # (at step 0 both encoders still hold the same weights)
        k_after = [p.detach().clone() for p in enc_k.parameters()]
        loss, _ = loss_fn(out, meta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert all(p.grad is None for p in enc_k.parameters())
        for p, b in zip(enc_k.parameters(), k_after, strict=True):
            assert torch.equal(p, b)  # the optimizer step left the key encoder alone


def test_rspnet_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    b, dim, k = 6, 16, 10
    raw = {n: torch.randn(b, dim, generator=g, dtype=torch.float64) for n in
           ("qa", "qm", "pa", "pm", "na", "nm")}
    unit = {n: v / v.norm(dim=1, keepdim=True) for n, v in raw.items()}
    queue = torch.nn.functional.normalize(torch.randn(k, dim, generator=g, dtype=torch.float64), dim=1)
    cfg = RSPNetConfig(margin=0.3, weight_a=0.7, weight_m=1.9, tau=0.2)
    loss, metrics = rspnet_objective({"a": unit["qa"], "m": unit["qm"]}, {"a": unit["pa"], "m": unit["pm"]},
                                     {"a": unit["na"], "m": unit["nm"]}, queue, cfg)
    rsp, avid = 0.0, 0.0
    for i in range(b):
        cos = torch.nn.functional.cosine_similarity
        s_pos = cos(raw["qm"][i], raw["pm"][i], dim=0)
        s_neg = cos(raw["qm"][i], raw["nm"][i], dim=0)
        rsp += max(0.0, cfg.margin - float(s_pos - s_neg)) / b
        negs = sum(math.exp(float(unit["qa"][i] @ u) / cfg.tau) for u in queue)
        for key in ("pa", "na"):
            pos = math.exp(float(unit["qa"][i] @ unit[key][i]) / cfg.tau)
            avid -= math.log(pos / (pos + negs)) / b
    metrics = metric_values(metrics)
    assert metrics["loss_rsp"] == pytest.approx(rsp, rel=1e-9)
    assert metrics["loss_avid"] == pytest.approx(avid, rel=1e-9)
    assert float(loss) == pytest.approx(cfg.weight_a * avid + cfg.weight_m * rsp, rel=1e-9)


def test_rspnet_rejects_a_batch_in_the_wrong_order():
    torch.manual_seed(0)
    net, loss_fn = build_rspnet(build_backbone("r21d_tiny"), RSPNetConfig(queue_size=8))
    clips, meta = _rsp_batch(_videos(2, 30, 0), "1,2", 0)
    bad = dict(meta, pace_label=meta["pace_label"].view(2, 3).flip(1).reshape(-1))
    with pytest.raises(ValueError, match="q == k_pos != k_neg"):
        loss_fn(net(clips), bad)
    with pytest.raises(ValueError, match="multiple of clips_per_video=3"):
        net(clips[:4])


def test_rspnet_overfits_a_fixed_batch():
    """The loss of a fixed batch drops within a few steps (queue = other videos' keys, restored each step)."""
    torch.manual_seed(0)
    net, loss_fn = build_rspnet(build_backbone("r21d_tiny"), RSPNetConfig(queue_size=24, momentum=0.99))
    clips, meta = _rsp_batch(_videos(4, 40, 0), "1,2", 0)
    other, _ = _rsp_batch(_videos(8, 40, 1), "1,2", 1)
    net.queue.enqueue(net.keys(other)["a"])  # 24 keys of 8 other videos fill the ring
    snapshot = net.queue.state_dict()
    hist = overfit(net, loss_fn, clips, meta, steps=6, after_step=lambda: net.queue.load_state_dict(snapshot))
    first, last = hist[0], hist[-1]
    assert last["loss"] < 0.6 * first["loss"], [h["loss"] for h in hist]
    assert last["loss_avid"] < first["loss_avid"] and last["loss_rsp"] <= first["loss_rsp"]
