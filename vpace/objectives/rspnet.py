"""RSPNet (Chen et al., AAAI 2021): relative speed perception (RSP) + appearance-focused video instance
discrimination (A-VID), following the official code (PeihaoChen/RSPNet, `MoCoDiffLossTwoFc` + `Loss`).

Per video: query q and positive key k_pos at the same speed, k_neg at a different speed (distinct starts).
- RSP on the motion head: `max(0, margin - (s(q, k_pos) - s(q, k_neg)))`, s = cosine similarity of the
  L2-normalised motion embeddings, margin `rspnet.margin` (default 0.15). The official code feeds `cos / tau`
  to `MarginRankingLoss(margin=2.0)`: the same ranking with margin 2.0 * 0.07 = 0.14 in cosine units and a
  1/tau (~14x) larger loss and gradient, which `weight_m` can absorb. (The seed text is the abstract only.)
- A-VID on the appearance head: InfoNCE with the momentum key encoder's keys; both k_pos and k_neg (same
  video, either speed) are positives, each in its own softmax against the queue negatives; the two
  cross-entropies are summed (official `ce1 + ce2`).
- Keys (both heads) come from the momentum encoder, a deep copy of backbone + both heads that the optimizer
  never sees. As in moco's forward, a training forward first EMA-updates it from the query encoder (whose
  weights are those of the last optimizer step), computes the keys, snapshots the queue as this step's
  negatives and then enqueues the k_neg appearance keys of all workers (official:
  `_dequeue_and_enqueue(k_neg_A)`).
Loss = weight_a * L_avid + weight_m * L_rsp.

As in moco's builder, `RSPNet` (query encoder, momentum encoder, queue) returns embeddings and the loss
(`RSPNetLoss`) lives outside it. DDP wraps the whole module; only the query encoder's parameters need
gradients, so only they are all-reduced.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vpace.config import RSPNetConfig
from vpace.objectives.base import Metrics, Outputs, check_meta, per_step
from vpace.objectives.heads import TwoHeadEncoder
from vpace.objectives.queue import KeyQueue


def rsp_loss(q_m: Tensor, kpos_m: Tensor, kneg_m: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """Margin ranking on cosine similarities of unit vectors; returns (loss, fraction ranked correctly)."""
    s_pos = (q_m * kpos_m).sum(1)
    s_neg = (q_m * kneg_m).sum(1)
    return F.relu(margin - (s_pos - s_neg)).mean(), (s_pos > s_neg).float().mean()


def avid_loss(q_a: Tensor, kpos_a: Tensor, kneg_a: Tensor, queue: Tensor,
              tau: float) -> tuple[Tensor, Tensor]:
    """Sum over the two positives of InfoNCE [pos | queue negatives] / tau; returns (loss, top-1 accuracy)."""
    l_neg = q_a @ queue.t()
    loss, acc = q_a.new_zeros(()), q_a.new_zeros(())
    for k in (kpos_a, kneg_a):
        logits = torch.cat([(q_a * k).sum(1, keepdim=True), l_neg], dim=1) / tau
        loss = loss + F.cross_entropy(logits, logits.new_zeros(logits.shape[0], dtype=torch.long))
        acc = acc + (logits.argmax(1) == 0).float().mean() / 2
    return loss, acc


class RSPNet(nn.Module):
    """Query encoder (trainable), momentum key encoder (frozen copy) and the key queue.

    forward(clips [B*3, 3, T, H, W], per video in the order q, k_pos, k_neg) -> {"q", "k_pos", "k_neg": the
    encoders' {"a", "m", "feat"}, "queue": the negatives of this step}. A training forward (moco's order)
    EMA-updates the key encoder, computes the keys, snapshots the queue and enqueues the k_neg appearance keys
    of all workers: a collective under DDP, so every worker runs one forward per step. `batch_size` (the
    configured global batch in videos) bounds the keys any worker holds, so the gather has a fixed size and
    never reads a count back to the host.
    """

    clips_per_video = 3

    def __init__(self, backbone: nn.Module, dim: int = 128, queue_size: int = 16384, momentum: float = 0.999,
                 head: str = "linear", batch_size: int | None = None) -> None:
        super().__init__()
        self.momentum, self.batch_size = momentum, batch_size
        self.encoder_q = TwoHeadEncoder(backbone, dim, head)
        self.encoder_k = copy.deepcopy(self.encoder_q).requires_grad_(False)
        self.queue = KeyQueue(queue_size, dim)

    @property
    def backbone(self) -> nn.Module:
        """The query encoder's backbone (what export and evaluation use)."""
        return self.encoder_q.backbone

    def forward(self, clips: Tensor) -> dict[str, Tensor | dict[str, Tensor]]:
        if clips.shape[0] % 3:
            raise ValueError(f"rspnet: clips has {clips.shape[0]} rows, not a multiple of clips_per_video=3")
        groups = clips.view(clips.shape[0] // 3, 3, *clips.shape[1:])
        training = self.training and torch.is_grad_enabled()  # evaluation forwards leave keys and queue alone
        if training:
            self.momentum_update()
        q = self.encoder_q(groups[:, 0])
        k_pos, k_neg = self.keys(groups[:, 1]), self.keys(groups[:, 2])  # separate BN batches
        out = {"q": q, "k_pos": k_pos, "k_neg": k_neg, "queue": self.queue.negatives()}
        if training:
            self.queue.enqueue(k_neg["a"], capacity=self.keys_per_worker())
        return out

    def keys_per_worker(self) -> int | None:
        """The most videos (= keys) one worker holds in a step of the train loop, whose sampler gives each of
        W workers at most batch // W + 1 of them (a merged tail); None without a configured batch."""
        if self.batch_size is None:
            return None
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        return self.batch_size // world + 1

    @torch.no_grad()
    def keys(self, clips: Tensor) -> dict[str, Tensor]:
        return self.encoder_k(clips)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q on parameters (BN statistics stay the key encoder's)."""
        ks = list(self.encoder_k.parameters())
        qs = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_mul_(ks, self.momentum)
        torch._foreach_add_(ks, torch._foreach_mul(qs, 1.0 - self.momentum))  # no fma: bit-exact formula


def rspnet_objective(q: dict[str, Tensor], k_pos: dict[str, Tensor], k_neg: dict[str, Tensor], queue: Tensor,
                     cfg: RSPNetConfig) -> tuple[Tensor, Metrics]:
    """A * L_avid + M * L_rsp on normalised embeddings {"a", "m"}; per-step metrics loss, loss_avid,
    loss_rsp and the batch accuracies avid_acc, rsp_acc."""
    # a switched-off term still touches its head (times 0) so DDP sees a gradient for every parameter
    off_m, off_a = q["m"].sum() * 0.0, q["a"].sum() * 0.0
    loss_rsp, rsp_acc = (rsp_loss(q["m"], k_pos["m"], k_neg["m"], cfg.margin) if cfg.weight_m > 0
                         else (off_m, off_m.detach()))
    loss_avid, avid_acc = (avid_loss(q["a"], k_pos["a"], k_neg["a"], queue, cfg.tau) if cfg.weight_a > 0
                           else (off_a, off_a.detach()))
    loss = cfg.weight_a * loss_avid + cfg.weight_m * loss_rsp
    return loss, per_step({"loss": loss, "loss_avid": loss_avid, "loss_rsp": loss_rsp, "avid_acc": avid_acc,
                           "rsp_acc": rsp_acc})


class RSPNetLoss:
    """`rspnet_objective` on an `RSPNet` output, with the batch contract and the triple order checked."""

    def __init__(self, cfg: RSPNetConfig) -> None:
        self.cfg = cfg

    def __call__(self, out: Outputs, meta: dict[str, Tensor]) -> tuple[Tensor, Metrics]:
        b = check_meta(meta, 3 * out["q"]["a"].shape[0], 3, "rspnet")
        vid, speed = meta["video_id"].view(b, 3), meta["pace_label"].view(b, 3)
        same_video = (vid == vid[:, :1]).all()
        triple_order = ((speed[:, 0] == speed[:, 1]) & (speed[:, 0] != speed[:, 2])).all()
        if vid.device.type == "cpu":  # a GPU checks on the device: a host read would stall every step
            if not bool(same_video):
                raise ValueError("rspnet: meta['video_id'] must be equal within each (q, k_pos, k_neg) "
                                 "triple")
            if not bool(triple_order):
                raise ValueError("rspnet: meta['pace_label'] (speed) must satisfy q == k_pos != k_neg per "
                                 "triple")
        else:
            torch._assert_async(same_video & triple_order, "rspnet: batch triples not in (q, k_pos, k_neg) "
                                "order")
        return rspnet_objective(out["q"], out["k_pos"], out["k_neg"], out["queue"], self.cfg)


def build_rspnet(backbone: nn.Module, cfg: RSPNetConfig, head: str = "linear", batch_size: int | None = None
                 ) -> tuple[RSPNet, RSPNetLoss]:
    """Method `rspnet`: the model (query + momentum encoder + queue around `backbone`) and its loss;
    `batch_size`: the train loop's global batch (fixed-size key gather, see `RSPNet`)."""
    return RSPNet(backbone, cfg.dim, cfg.queue_size, cfg.momentum, head, batch_size), RSPNetLoss(cfg)
