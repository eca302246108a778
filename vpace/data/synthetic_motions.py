"""Motion classes, random appearance and the numpy renderer of the synthetic action set.

Why it looks like this:
- A class is a way of moving (``MOTIONS``), never a look: textures, colours, shapes, sizes, object count and
  the background are drawn from a generator that does not know the class, so only motion tells classes apart.
- Every motion is symmetric under a horizontal flip (vertical, radial, in-place or rotational with a random
  direction), because training flips clips.
- Every motion has ONE natural speed, jittered per video by ``speed_factor`` (a time warp of the trajectory):
  pace prediction is only learnable when a clip's natural speed is predictable.
- Speeds are in frame heights, so motion stays visible when the demo downsizes to ~32 px, and every periodic
  motion lasts >= 40 frames so pace 4 (10 samples a period) still looks like coherent, faster motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MOTIONS", "MotionClass", "RenderSpec", "render_video"]

TEX = 64  # side of an object's texture (texels across the object's diameter)


@dataclass(frozen=True)
class MotionClass:
    name: str
    speed: float  # natural speed, in `unit`
    unit: str
    doc: str


_V = 0.02  # rising/falling speed, frame heights per frame
_AMP = 0.15  # oscillation amplitude, frame heights
_HOP = 0.45  # bounce height, frame heights
_ORBIT = 0.2  # orbit radius, frame heights
_ZOOM = 0.04  # zoom rate, log-scale per frame
_PERIODS = {"Oscillate": 40.0, "Bounce": 44.0, "Orbit": 60.0, "Spin": 50.0, "Blink": 40.0, "Breathe": 40.0}

MOTIONS: tuple[MotionClass, ...] = (
    MotionClass("Rising", _V, "frame heights per frame", "objects move up and wrap around"),
    MotionClass("Falling", _V, "frame heights per frame", "objects move down and wrap around"),
    MotionClass("ZoomIn", _ZOOM, "log-scale per frame", "objects fly out of a centre, growing"),
    MotionClass("ZoomOut", _ZOOM, "log-scale per frame", "objects fly into a centre, shrinking"),
    MotionClass("Oscillate", _PERIODS["Oscillate"], "frames per period", "vertical sine oscillation"),
    MotionClass("Bounce", _PERIODS["Bounce"], "frames per period", "parabolic hops off the floor"),
    MotionClass("Orbit", _PERIODS["Orbit"], "frames per period", "circles, cw or ccw per video"),
    MotionClass("Spin", _PERIODS["Spin"], "frames per period", "rotation in place, cw or ccw per object"),
    MotionClass("Blink", _PERIODS["Blink"], "frames per period", "objects fade out and in"),
    MotionClass("Breathe", _PERIODS["Breathe"], "frames per period", "objects shrink and grow"),
)


@dataclass(frozen=True)
class RenderSpec:
    """Everything one video depends on (picklable, so a process pool can render it)."""

    label: int
    num_frames: int
    height: int
    width: int
    speed_factor: float
    video_seed: tuple[int, ...]  # objects and motion phases
    group_seed: tuple[int, ...]  # background, shared by the clips of a group (like a UCF101 "group")


# ----------------------------------------------------------------------------------------------- appearance
def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of a small [gh, gw, C] grid to [h, w, C] (smooth random fields)."""
    gh, gw = grid.shape[:2]
    y = np.linspace(0, gh - 1, h, dtype=np.float32)
    x = np.linspace(0, gw - 1, w, dtype=np.float32)
    y0, x0 = np.minimum(y.astype(int), gh - 2), np.minimum(x.astype(int), gw - 2)
    wy, wx = (y - y0)[:, None, None], (x - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
    bot = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bot * wy


def _pattern(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """A random mixing field in [0, 1] of shape [h, w, 1]: stripes, checker or smooth noise.

    ``scale`` is the size of the canvas in "object diameters" so pattern frequencies are comparable."""
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / max(h, w) * scale, xx / max(h, w) * scale
    phi = rng.uniform(0, math.pi)
    rot = xx * math.cos(phi) + yy * math.sin(phi)
    if kind == 0:  # soft stripes
        m = np.clip(3 * np.sin(2 * math.pi * rng.uniform(1.5, 4.0) * rot + rng.uniform(0, 6.3)), -1, 1)
        m = 0.5 + 0.5 * m
    elif kind == 1:  # rotated checker
        n = rng.uniform(2.0, 4.0)
        other = -xx * math.sin(phi) + yy * math.cos(phi)
        m = (np.floor(rot * n) + np.floor(other * n)) % 2
    else:  # smooth blobs
        g = int(rng.integers(4, 8))
        m = _upsample(rng.random((g, g, 1), dtype=np.float32), h, w)[..., 0]
        m = np.clip((m - m.mean()) * 4 + 0.5, 0, 1)
    return m.astype(np.float32)[..., None]


def _two_colours(rng: np.random.Generator, contrast: float) -> tuple[np.ndarray, np.ndarray]:
    c1 = rng.random(3, dtype=np.float32)
    c2 = rng.random(3, dtype=np.float32)
    if np.abs(c1 - c2).sum() < 0.6:  # too alike: push c2 to the other side of grey
        c2 = 1.0 - c1
    return c1, c1 + contrast * (c2 - c1)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    m = _pattern(rng, h, w, scale=rng.uniform(1.0, 2.0))
    c1, c2 = _two_colours(rng, contrast=rng.uniform(0.15, 0.5))
    return c1 * (1 - m) + c2 * m


@dataclass
class _Object:
    tex: np.ndarray  # [TEX, TEX, 3] float32 in [0, 1]
    sides: int  # 0 = ellipse, else a regular polygon
    aspect: float  # ellipse minor/major
    radius: float  # in frame heights (circumradius)
    angle0: float  # static orientation


def _objects(rng: np.random.Generator) -> list[_Object]:
    out = []
    for _ in range(int(rng.integers(2, 5))):
        m = _pattern(rng, TEX, TEX, scale=1.0)
        c1, c2 = _two_colours(rng, contrast=rng.uniform(0.6, 1.0))
        sides = int(rng.choice([0, 3, 4, 5, 6]))
        aspect = float(rng.uniform(0.55, 1.0)) if sides == 0 else 1.0
        out.append(_Object(c1 * (1 - m) + c2 * m, sides, aspect, float(rng.uniform(0.1, 0.2)),
                           float(rng.uniform(0, 2 * math.pi))))
    return out


def _sdf(obj: _Object, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance-like field in object radii (< 0 inside) of the object's shape."""
    if obj.sides == 0:
        return (np.sqrt(u * u + (v / obj.aspect) ** 2) - 1.0) * obj.aspect
    d = None
    for k in range(obj.sides):
        a = 2 * math.pi * k / obj.sides - math.pi / 2
        p = u * math.cos(a) + v * math.sin(a)
        d = p if d is None else np.maximum(d, p)
    return d - math.cos(math.pi / obj.sides)


# ------------------------------------------------------------------------------------------------- motion
def _trajectories(name: str, rng: np.random.Generator, tau: np.ndarray, objs: list[_Object], h: int, w: int):
    """Per-frame states [T, K]: centre x/y (px), scale, angle (rad), opacity; ``tau`` is warped time [T,1]."""
    k = len(objs)
    r = np.array([o.radius for o in objs]) * h
    shape = (tau.shape[0], k)
    cx = np.broadcast_to(rng.uniform(0, w, k), shape)
    cy = np.broadcast_to(rng.uniform(0.2 * h, 0.8 * h, k), shape)
    scale, alpha = np.ones(shape), np.ones(shape)
    angle = np.broadcast_to(np.array([o.angle0 for o in objs]), shape)
    phase = rng.uniform(0, 1, k)
    period = _PERIODS.get(name, 1.0)
    cyc = 2 * math.pi * (tau / period + phase)  # periodic classes: radians
    if name in ("Rising", "Falling"):
        span = h + 2 * r  # leave the frame completely before coming back on the other side
        sign = -1.0 if name == "Rising" else 1.0
        cy = np.mod(phase * span + sign * _V * h * tau, span) - r
    elif name == "Oscillate":
        cy = rng.uniform(_AMP * h, (1 - _AMP) * h, k) + _AMP * h * np.sin(cyc)
    elif name == "Bounce":
        u = np.mod(tau / period + phase, 1.0)
        cy = (h - r * 1.05) - _HOP * h * 4 * u * (1 - u)
    elif name == "Orbit":
        sign = rng.choice([-1.0, 1.0])
        ox, oy = rng.uniform(0.25 * w, 0.75 * w, k), rng.uniform(0.35 * h, 0.65 * h, k)
        cx, cy = ox + _ORBIT * h * np.cos(sign * cyc), oy + _ORBIT * h * np.sin(sign * cyc)
    elif name == "Spin":
        angle = angle + rng.choice([-1.0, 1.0], k) * cyc
    elif name == "Blink":
        alpha = 0.1 + 0.9 * (0.5 + 0.5 * np.cos(cyc))
    elif name == "Breathe":
        scale = 1.0 - 0.6 * (0.5 - 0.5 * np.cos(cyc))
    elif name in ("ZoomIn", "ZoomOut"):
        fx, fy = w / 2 + rng.normal(0, 0.08 * w), h / 2 + rng.normal(0, 0.08 * h)
        rmin, rmax = 0.04 * h, 0.65 * math.hypot(h, w)
        life = math.log(rmax / rmin) / _ZOOM  # frames from the centre to beyond the corners
        t = tau if name == "ZoomIn" else -tau
        age = t + (np.arange(k) + phase) / k * life  # staggered so the screen is never empty for long
        ray = rng.uniform(0, 2 * math.pi, k) + 2.39996 * np.floor(age / life)  # new direction each life
        dist = rmin * np.exp(_ZOOM * np.mod(age, life))
        cx, cy = fx + dist * np.cos(ray), fy + dist * np.sin(ray)
        scale = dist / (0.35 * h)
    else:
        raise ValueError(f"unknown motion class {name!r}; known: {[m.name for m in MOTIONS]}")
    return cx, cy, scale, angle, alpha


# ----------------------------------------------------------------------------------------------- renderer
def _draw(frame: np.ndarray, obj: _Object, cx: float, cy: float, rpx: float, ang: float, alpha: float):
    """Alpha-composite one textured shape (nearest texel, 1-px anti-aliased edge) into ``frame`` in place."""
    h, w = frame.shape[:2]
    if rpx < 0.3 or alpha <= 0.0:
        return
    half = rpx + 1.5
    x0, x1 = max(int(cx - half), 0), min(int(cx + half) + 2, w)
    y0, y1 = max(int(cy - half), 0), min(int(cy + half) + 2, h)
    if x0 >= x1 or y0 >= y1:
        return
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    c, s = np.float32(math.cos(ang) / rpx), np.float32(math.sin(ang) / rpx)
    u, v = c * dx + s * dy, c * dy - s * dx
    a = np.clip(0.5 - _sdf(obj, u, v) * np.float32(rpx), 0.0, 1.0) * np.float32(alpha)
    ix = np.clip(((u + 1) * (TEX / 2)).astype(np.int32), 0, TEX - 1)
    iy = np.clip(((v + 1) * (TEX / 2)).astype(np.int32), 0, TEX - 1)
    region = frame[y0:y1, x0:x1]
    region += a[..., None] * (obj.tex[iy, ix] - region)


def render_video(spec: RenderSpec) -> np.ndarray:
    """Render one video as uint8 RGB frames [T, H, W, 3]; a pure function of ``spec``."""
    h, w = spec.height, spec.width
    bg = _background(np.random.default_rng(spec.group_seed), h, w).astype(np.float32)
    app_rng, mot_rng = np.random.default_rng(spec.video_seed).spawn(2)  # appearance never sees the class
    objs = _objects(app_rng)
    tau = (np.arange(spec.num_frames, dtype=np.float64) * spec.speed_factor)[:, None]
    cx, cy, scale, angle, alpha = _trajectories(MOTIONS[spec.label].name, mot_rng, tau, objs, h, w)
    out = np.empty((spec.num_frames, h, w, 3), np.uint8)
    frame = np.empty_like(bg)
    for t in range(spec.num_frames):
        frame[:] = bg
        for j, obj in enumerate(objs):
            _draw(frame, obj, cx[t, j], cy[t, j], obj.radius * h * scale[t, j], angle[t, j], alpha[t, j])
        np.multiply(frame, 255.0, out=frame)
        frame += 0.5
        out[t] = np.clip(frame, 0, 255)
    return out
