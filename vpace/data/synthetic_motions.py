"""Motion classes, random appearance and the numpy renderer of the synthetic action set.

Why it looks like this:
- A class is a way of moving (``MOTIONS``), never a look: textures, colours, shapes, sizes, object count and
  the background are drawn from a generator that does not know the class, so only motion tells classes apart.
- Every motion is symmetric under a horizontal flip (vertical, radial, in-place or rotational with a random
  direction), because training flips clips.
- Every motion has ONE natural speed, jittered per video by ``speed_factor`` (a time warp of the trajectory):
  pace prediction is only learnable when a clip's natural speed is predictable.
- Speeds are in frame heights (~0.01-0.04 per frame), so motion stays visible when the demo downsizes to
  ~32 px, and every periodic motion lasts >= 40 frames so pace 4 (10 samples a period) still looks like
  coherent, faster motion.
- Most classes also move the camera (background) with the class motion: with objects alone too few pixels
  move for pace to be learnt quickly.
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
    MotionClass("Rising", _V, "frame heights per frame", "the scene scrolls up, objects wrap around"),
    MotionClass("Falling", _V, "frame heights per frame", "the scene scrolls down, objects wrap around"),
    MotionClass("ZoomIn", _ZOOM, "log-scale per frame", "objects fly out of a centre; endless zoom in"),
    MotionClass("ZoomOut", _ZOOM, "log-scale per frame", "objects fly into a centre; endless zoom out"),
    MotionClass("Oscillate", _PERIODS["Oscillate"], "frames per period", "vertical sine; camera too"),
    MotionClass("Bounce", _PERIODS["Bounce"], "frames per period", "parabolic hops off the floor"),
    MotionClass("Orbit", _PERIODS["Orbit"], "frames per period", "circles, cw or ccw per video; camera too"),
    MotionClass("Spin", _PERIODS["Spin"], "frames per period", "rotation in place, cw/ccw; camera rocks"),
    MotionClass("Blink", _PERIODS["Blink"], "frames per period", "objects fade out and in"),
    MotionClass("Breathe", _PERIODS["Breathe"], "frames per period", "objects shrink and grow; camera zooms"),
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
@dataclass(frozen=True)
class _Pattern:
    """A random analytic mixing field m(x, y) in [0, 1] (x, y in pattern units): stripes, checker or blobs.

    Analytic, so a moving camera samples it at any sub-pixel position or zoom without a texture's borders."""

    kind: int  # 0 stripes, 1 checker, 2 blobs
    waves: np.ndarray  # [n, 3] float32: kx, ky (radians per unit), phase

    @staticmethod
    def random(rng: np.random.Generator, freq: float = 1.0) -> _Pattern:
        kind = int(rng.integers(3))
        n, lo, hi = ((1, 1.5, 3.0), (2, 1.0, 2.0), (4, 0.6, 1.6))[kind]
        ang = rng.uniform(0, math.pi) + np.arange(n) * (math.pi / 2 if kind == 1 else math.pi / n)
        k = 2 * math.pi * freq * (rng.uniform(lo, hi) if kind == 1 else rng.uniform(lo, hi, n))
        k = np.broadcast_to(k, (n,))
        waves = np.stack([k * np.cos(ang), k * np.sin(ang), rng.uniform(0, 2 * math.pi, n)], 1)
        return _Pattern(kind, waves.astype(np.float32))

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        s = [np.sin(kx * x + ky * y + ph) for kx, ky, ph in self.waves]
        if self.kind == 0:
            m = 3 * s[0]
        elif self.kind == 1:
            m = 4 * s[0] * s[1]
        else:
            m = 0.75 * sum(s)
        return 0.5 + 0.5 * np.clip(m, -1, 1)


def _two_colours(rng: np.random.Generator, contrast: float) -> tuple[np.ndarray, np.ndarray]:
    c1 = rng.random(3, dtype=np.float32)
    c2 = rng.random(3, dtype=np.float32)
    if np.abs(c1 - c2).sum() < 0.6:  # too alike: push c2 to the other side of grey
        c2 = 1.0 - c1
    return c1, c1 + contrast * (c2 - c1)


@dataclass(frozen=True)
class _Background:
    pattern: _Pattern  # in units of frame heights / freq
    freq: float
    c1: np.ndarray
    c2: np.ndarray

    @staticmethod
    def random(rng: np.random.Generator) -> _Background:
        freq = float(rng.uniform(0.8, 1.5))
        return _Background(_Pattern.random(rng), freq, *_two_colours(rng, contrast=rng.uniform(0.2, 0.5)))


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
        yy, xx = (np.mgrid[0:TEX, 0:TEX].astype(np.float32) + 0.5) / TEX  # one unit = the object's diameter
        m = _Pattern.random(rng)(xx, yy)[..., None]
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
@dataclass
class _Camera:
    """Per-frame view of the background [T]: content zoomed by 2**log2s and rotated by theta about (fx, fy)
    (px), then shifted by (tx, ty) px. ``shepard``: endless zoom by cross-fading two octaves."""

    fx: float
    fy: float
    log2s: np.ndarray
    theta: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    shepard: bool = False


def _trajectories(name: str, rng: np.random.Generator, tau: np.ndarray, objs: list[_Object], h: int, w: int):
    """Objects' per-frame states [T, K] (centre x/y px, scale, angle rad, opacity) and camera (None: still).

    ``tau`` [T, 1] is time warped by the video's speed factor. The camera follows the class motion at half the
    objects' amplitude (parallax), except Rising/Falling where all scrolls together; Bounce and Blink keep a
    still background."""
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
    t1, zero = tau[:, 0], np.zeros(tau.shape[0])
    bg_cyc = 2 * math.pi * (t1 / period + rng.uniform(0, 1))
    cam = _Camera(w / 2 + rng.normal(0, 0.08 * w), h / 2 + rng.normal(0, 0.08 * h), zero, zero, zero, zero)
    if name in ("Rising", "Falling"):
        span = h + 2 * r  # leave the frame completely before coming back on the other side
        sign = -1.0 if name == "Rising" else 1.0
        cy = np.mod(phase * span + sign * _V * h * tau, span) - r
        cam.ty = sign * _V * h * t1  # the whole scene scrolls: one speed in every pixel
    elif name == "Oscillate":
        cy = rng.uniform(_AMP * h, (1 - _AMP) * h, k) + _AMP * h * np.sin(cyc)
        cam.ty = 0.5 * _AMP * h * np.sin(bg_cyc)
    elif name == "Bounce":
        u = np.mod(tau / period + phase, 1.0)
        cy = (h - r * 1.05) - _HOP * h * 4 * u * (1 - u)
        cam = None
    elif name == "Orbit":
        sign = rng.choice([-1.0, 1.0])
        ox, oy = rng.uniform(0.25 * w, 0.75 * w, k), rng.uniform(0.35 * h, 0.65 * h, k)
        cx, cy = ox + _ORBIT * h * np.cos(sign * cyc), oy + _ORBIT * h * np.sin(sign * cyc)
        cam.tx, cam.ty = 0.5 * _ORBIT * h * np.cos(sign * bg_cyc), 0.5 * _ORBIT * h * np.sin(sign * bg_cyc)
    elif name == "Spin":
        angle = angle + rng.choice([-1.0, 1.0], k) * cyc
        cam.theta = 0.3 * np.sin(bg_cyc)  # the camera rocks (+-17 deg) with the spin's period
    elif name == "Blink":
        alpha = 0.1 + 0.9 * (0.5 + 0.5 * np.cos(cyc))
        cam = None  # a flickering background is what per-frame colour jitter already does
    elif name == "Breathe":
        scale = 1.0 - 0.6 * (0.5 - 0.5 * np.cos(cyc))
        cam.log2s = np.log2(1.0 + 0.15 * (0.5 - 0.5 * np.cos(bg_cyc)))
    elif name in ("ZoomIn", "ZoomOut"):
        fx, fy = cam.fx, cam.fy
        rmin, rmax = 0.04 * h, 0.65 * math.hypot(h, w)
        life = math.log(rmax / rmin) / _ZOOM  # frames from the centre to beyond the corners
        t = tau if name == "ZoomIn" else -tau
        age = t + (np.arange(k) + phase) / k * life  # staggered so the screen is never empty for long
        ray = rng.uniform(0, 2 * math.pi, k) + 2.39996 * np.floor(age / life)  # new direction each life
        dist = rmin * np.exp(_ZOOM * np.mod(age, life))
        cx, cy = fx + dist * np.cos(ray), fy + dist * np.sin(ray)
        scale = dist / (0.35 * h)
        cam.log2s, cam.shepard = 0.5 * _ZOOM * t[:, 0] / math.log(2) + rng.uniform(0, 1), True
    else:
        raise ValueError(f"unknown motion class {name!r}; known: {[m.name for m in MOTIONS]}")
    return (cx, cy, scale, angle, alpha), cam


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


def _background_frame(bg: _Background, cam: _Camera | None, t: int, yy: np.ndarray, xx: np.ndarray):
    """The background seen by ``cam`` at frame ``t`` as float32 [H, W, 3] (pixel grids ``yy``, ``xx``)."""
    unit = np.float32(bg.freq / yy.shape[0])  # pattern units per pixel
    if cam is None:
        m = bg.pattern(xx * unit, yy * unit)
    else:
        dx, dy = xx - np.float32(cam.fx), yy - np.float32(cam.fy)
        c, s = np.float32(math.cos(cam.theta[t])), np.float32(math.sin(cam.theta[t]))
        rx, ry = c * dx + s * dy, c * dy - s * dx
        e = float(cam.log2s[t])
        # endless zoom: two octaves cross-fade so the pattern at scale 2**e looks the same as at 2**(e+1)
        layers = [(e % 1.0, 1.0 - e % 1.0), (e % 1.0 - 1.0, e % 1.0)] if cam.shepard else [(e, 1.0)]
        m = 0
        for log2s, weight in layers:
            inv = np.float32(unit * 2.0**-log2s)
            px = rx * inv + np.float32((cam.fx - cam.tx[t]) * unit)
            py = ry * inv + np.float32((cam.fy - cam.ty[t]) * unit)
            m = m + np.float32(weight) * bg.pattern(px, py)
    return bg.c1 + (bg.c2 - bg.c1) * m[..., None]


def render_video(spec: RenderSpec) -> np.ndarray:
    """Render one video as uint8 RGB frames [T, H, W, 3]; a pure function of ``spec``."""
    h, w = spec.height, spec.width
    bg = _Background.random(np.random.default_rng(spec.group_seed))
    app_rng, mot_rng = np.random.default_rng(spec.video_seed).spawn(2)  # appearance never sees the class
    objs = _objects(app_rng)
    tau = (np.arange(spec.num_frames, dtype=np.float64) * spec.speed_factor)[:, None]
    (cx, cy, scale, angle, alpha), cam = _trajectories(MOTIONS[spec.label].name, mot_rng, tau, objs, h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    still = _background_frame(bg, None, 0, yy, xx) if cam is None else None
    out = np.empty((spec.num_frames, h, w, 3), np.uint8)
    for t in range(spec.num_frames):
        frame = still.copy() if cam is None else _background_frame(bg, cam, t, yy, xx)
        for j, obj in enumerate(objs):
            _draw(frame, obj, cx[t, j], cy[t, j], obj.radius * h * scale[t, j], angle[t, j], alpha[t, j])
        frame *= 255.0
        frame += 0.5
        out[t] = np.clip(frame, 0, 255)
    return out
