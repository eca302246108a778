"""CPU path of the fused pace/jitter op (``pace_jitter_spec`` has the contract, ``pace_jitter`` the others).

``pace_jitter_cpu`` runs a small C kernel, built with the system C compiler on first use (~0.3 s, then
cached on disk; sizes are runtime arguments, so no shape ever recompiles) and called through ctypes, one
thread per chunk of output frames (ctypes releases the GIL). Per output frame it branches on the frame's own
flags and op order, so an un-jittered frame costs a load + normalize + store and a jittered one runs exactly
its four ops: pass 1 over tiles of ~1024 pixels (three float planes in L1) loads the uint8 crop and runs the
ops before contrast while summing the gray level contrast blends with; the tiles stay in a per-thread frame
buffer (L2) for pass 2, which runs the remaining ops, normalizes and stores. Hue uses the closed form of
torchvision's HSV round trip (within ~1e-6 of it). First-touch page faults of the fresh output cost about as
much as the colour ops, so on Linux the output asks for transparent huge pages (512x fewer faults).

Without a working C compiler it falls back, with a warning, to ``pace_jitter_eager`` (batched torch, about
as fast as the per-frame reference on one thread).

Measured (30 clips x 16 frames, 112x112 from 128x171, CPU time on one thread, 2-core Xeon shared with other
jobs; ``benchmarks/kernels_jitter.py``): 20.2x the per-frame torchvision reference for fp32 out (~24 ms vs
~0.48 s; about half of it is faulting in and writing the 72 MB output) and 27-31x for bf16. The previous
version of this path, a masked all-ops chain ``torch.compile``'d, was ~4x and compiled for 15-25 s.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from .pace_jitter_eager import pace_jitter_eager
from .pace_jitter_spec import BRIGHTNESS, CONTRAST, HUE, OUT_DTYPES, SATURATION, JitterParams

__all__ = ["pace_jitter_cpu", "native_library", "cache_dir"]

_KIND = {dt: i for i, dt in enumerate(OUT_DTYPES)}  # the C kernel's `kind`: 0 fp32, 1 bf16, 2 fp16
_DEFINES = "".join(f"#define {name} {code}\n" for name, code in (
    ("BRIGHTNESS", BRIGHTNESS), ("CONTRAST", CONTRAST), ("SATURATION", SATURATION), ("HUE", HUE)))

_C_SOURCE = _DEFINES + r"""
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#define TILE 1024

static inline float clamp01(float x) { x = x > 0.0f ? x : 0.0f; return x < 1.0f ? x : 1.0f; }
static inline float gray(float r, float g, float b) { return r * 0.2989f + g * 0.587f + b * 0.114f; }

static void deinterleave(const uint8_t *restrict p, int64_t w, float *restrict r, float *restrict g,
                         float *restrict b) {
    for (int64_t x = 0; x < w; x++) {
        r[x] = (float)p[3 * x] * (1.0f / 255.0f); g[x] = (float)p[3 * x + 1] * (1.0f / 255.0f);
        b[x] = (float)p[3 * x + 2] * (1.0f / 255.0f);
    }
}

static void reverse(const float *restrict src, int64_t w, float *restrict dst) {
    for (int64_t x = 0; x < w; x++) dst[x] = src[w - 1 - x];
}

/* rows x w pixels of the crop (row stride rs bytes, RGB interleaved) -> planes r, g, b (row stride w) */
static void load(const uint8_t *src, int64_t rs, int64_t rows, int64_t w, int flip, float *r, float *g,
                 float *b, float *tmp) {
    for (int64_t y = 0; y < rows; y++, src += rs, r += w, g += w, b += w) {
        if (!flip) { deinterleave(src, w, r, g, b); continue; }
        deinterleave(src, w, tmp, tmp + w, tmp + 2 * w);
        reverse(tmp, w, r); reverse(tmp + w, w, g); reverse(tmp + 2 * w, w, b);
    }
}

/* brightness (add = 0) and contrast (add = (1 - a) * gray mean): torchvision's clamp(x * a + add) */
static void op_affine(float *restrict r, float *restrict g, float *restrict b, int64_t n, float a,
                      float add) {
    for (int64_t i = 0; i < n; i++) {
        r[i] = clamp01(r[i] * a + add); g[i] = clamp01(g[i] * a + add); b[i] = clamp01(b[i] * a + add);
    }
}

static void op_saturation(float *restrict r, float *restrict g, float *restrict b, int64_t n, float a) {
    for (int64_t i = 0; i < n; i++) {
        const float l = gray(r[i], g[i], b[i]) * (1.0f - a);
        r[i] = clamp01(r[i] * a + l); g[i] = clamp01(g[i] * a + l); b[i] = clamp01(b[i] * a + l);
    }
}

/* channel n of HSV -> RGB in closed form: v - c * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6 */
static inline float hue_channel(float h6, float n, float v, float c) {
    float k = h6 + n;
    k = k >= 6.0f ? k - 6.0f : k;
    return v - c * clamp01(k < 4.0f - k ? k : 4.0f - k);
}

/* torchvision's RGB -> HSV -> shift -> RGB in sextants (h6 = 6h) with its zero-chroma guard */
static void op_hue(float *restrict r, float *restrict g, float *restrict b, int64_t n, float hue) {
    for (int64_t i = 0; i < n; i++) {
        const float R = r[i], G = g[i], B = b[i];
        float mx = R > G ? R : G, mn = R < G ? R : G;
        mx = mx > B ? mx : B; mn = mn < B ? mn : B;
        const float c = mx - mn, inv = 1.0f / (c == 0.0f ? 1.0f : c);
        float h6 = mx == R ? (G - B) * inv : mx == G ? 2.0f + (B - R) * inv : 4.0f + (R - G) * inv;
        h6 += hue * 6.0f;
        h6 -= 6.0f * floorf(h6 * (1.0f / 6.0f));  /* [0, 6]; 6 wraps to 0 in hue_channel */
        r[i] = hue_channel(h6, 5.0f, mx, c); g[i] = hue_channel(h6, 3.0f, mx, c);
        b[i] = hue_channel(h6, 1.0f, mx, c);
    }
}

static void apply_op(int op, float *r, float *g, float *b, int64_t n, float f, float mean) {
    if (op == BRIGHTNESS) op_affine(r, g, b, n, f, 0.0f);
    else if (op == CONTRAST) op_affine(r, g, b, n, f, mean * (1.0f - f));
    else if (op == SATURATION) op_saturation(r, g, b, n, f);
    else op_hue(r, g, b, n, f);
}

static double gray_sum(const float *restrict r, const float *restrict g, const float *restrict b, int64_t n) {
    float acc = 0.0f;
#pragma omp simd reduction(+:acc)
    for (int64_t i = 0; i < n; i++) acc += gray(r[i], g[i], b[i]);
    return (double)acc;
}

static inline uint16_t to_bf16(float x) {  /* round to nearest even, as torch (values are finite) */
    union { float f; uint32_t u; } v = {x};
    return (uint16_t)((v.u + 0x7FFFu + ((v.u >> 16) & 1u)) >> 16);
}

static inline uint16_t to_fp16(float x) {  /* round to nearest even, subnormals, overflow (F. Giesen) */
    union { float f; uint32_t u; } v = {x};
    const union { uint32_t u; float f; } magic = {((127u - 15u) + (23u - 10u) + 1u) << 23};
    const uint32_t sign = v.u & 0x80000000u;
    uint16_t o;
    v.u ^= sign;
    if (v.u >= (127u + 16u) << 23) {
        o = v.u > 255u << 23 ? 0x7E00 : 0x7C00;
    } else if (v.u < 113u << 23) {
        v.f += magic.f;
        o = (uint16_t)(v.u - magic.u);
    } else {
        v.u += ((uint32_t)(15 - 127) << 23) + 0xFFFu + ((v.u >> 13) & 1u);
        o = (uint16_t)(v.u >> 13);
    }
    return (uint16_t)(o | (sign >> 16));
}

/* (x - mean) / std of n pixels into out (kind 0 fp32, 1 bf16, 2 fp16) at element offset off */
static void store(const float *restrict x, int64_t n, float m, float is, void *out, int64_t off, int kind) {
    float *restrict o32 = (float *)out + off;
    uint16_t *restrict o16 = (uint16_t *)out + off;
    if (kind == 0) for (int64_t i = 0; i < n; i++) o32[i] = (x[i] - m) * is;
    else if (kind == 1) for (int64_t i = 0; i < n; i++) o16[i] = to_bf16((x[i] - m) * is);
    else for (int64_t i = 0; i < n; i++) o16[i] = to_fp16((x[i] - m) * is);
}

/* output frames n0 <= n < n1 (n = b * T + t) of out [B, 3, T, h, w]; frames [B, F, H, W, 3] contiguous */
int pace_jitter_frames(const uint8_t *frames, int64_t F, int64_t H, int64_t W, const int64_t *index_map,
                       int64_t T, const int32_t *crop_yx, const uint8_t *flip, const uint8_t *apply,
                       const float *factors, const int32_t *order, const float *mean, const float *std,
                       void *out, int kind, int64_t h, int64_t w, int64_t n0, int64_t n1) {
    const int64_t hw = h * w, rpt = w >= TILE ? 1 : TILE / w;
    float *buf = (float *)malloc(sizeof(float) * 3 * (hw + w));
    if (!buf) return 1;
    float *const plane[3] = {buf, buf + hw, buf + 2 * hw};
    const float is[3] = {1.0f / std[0], 1.0f / std[1], 1.0f / std[2]};
    for (int64_t n = n0; n < n1; n++) {
        const int64_t bi = n / T, t = n % T, y0 = crop_yx[2 * bi], x0 = crop_yx[2 * bi + 1];
        const uint8_t *src = frames + (((bi * F + index_map[n]) * H + y0) * W + x0) * 3;
        const int32_t *o = order + 4 * n;
        const float *fac = factors + 4 * n;
        const int jitter = apply[n] != 0;
        /* k: number of ops before contrast */
        const int k = !jitter ? 0 : o[0] == CONTRAST ? 0 : o[1] == CONTRAST ? 1 : o[2] == CONTRAST ? 2 : 3;
        float gm = 0.0f;
        if (jitter) {  /* pass 1: load, ops before contrast, gray sum */
            double sum = 0.0;
            for (int64_t y = 0; y < h; y += rpt) {
                const int64_t p = y * w, m = (y + rpt <= h ? rpt : h - y) * w;
                float *r = plane[0] + p, *g = plane[1] + p, *b = plane[2] + p;
                load(src + y * W * 3, W * 3, m / w, w, flip[bi], r, g, b, buf + 3 * hw);
                for (int j = 0; j < k; j++) apply_op(o[j], r, g, b, m, fac[o[j]], 0.0f);
                sum += gray_sum(r, g, b, m);
            }
            gm = (float)(sum / (double)hw);
        }
        for (int64_t y = 0; y < h; y += rpt) {  /* pass 2: the other ops (or the load), normalize, store */
            const int64_t p = y * w, m = (y + rpt <= h ? rpt : h - y) * w;
            float *r = plane[0] + p, *g = plane[1] + p, *b = plane[2] + p;
            if (!jitter) load(src + y * W * 3, W * 3, m / w, w, flip[bi], r, g, b, buf + 3 * hw);
            for (int j = k; jitter && j < 4; j++) apply_op(o[j], r, g, b, m, fac[o[j]], gm);
            for (int c = 0; c < 3; c++)
                store(plane[c] + p, m, mean[c], is[c], out, ((bi * 3 + c) * T + t) * hw + p, kind);
        }
    }
    free(buf);
    return 0;
}

/* Transparent huge pages for a fresh output (Linux): first-touch page faults cost more than the kernel. */
void advise_hugepages(void *p, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)1 << 21, a = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    const uintptr_t e = ((uintptr_t)p + (uintptr_t)nbytes) & ~(huge - 1);
    if (e > a) madvise((void *)a, e - a, MADV_HUGEPAGE);
#else
    (void)p; (void)nbytes;
#endif
}
"""

# ------------------------------------------------------------------------------------- build + load the C
_COMMON_FLAGS = ("-O3", "-std=gnu11", "-shared", "-fPIC", "-fopenmp-simd", "-fno-math-errno",
                 "-fno-trapping-math", "-ffinite-math-only", "-fno-signed-zeros")  # all values are finite
_LIB: dict = {}
_LOCK = threading.Lock()


def _flag_sets() -> list[tuple[str, ...]]:
    """Tuned for this CPU first (AVX-512 machines: 512-bit vectors measured faster), then portable -O3."""
    native = ("-march=native",) + (("-mprefer-vector-width=512",) if platform.machine() in ("x86_64", "AMD64")
                                   else ())
    return [_COMMON_FLAGS + native, _COMMON_FLAGS]


def cache_dir() -> Path:
    """Where built kernels live: ``$VPACE_KERNEL_CACHE``, else ``~/.cache/vpace-kernels``, else a temp dir."""
    env = os.environ.get("VPACE_KERNEL_CACHE")
    tmp = Path(tempfile.gettempdir()) / f"vpace-kernels-{getattr(os, 'getuid', int)()}"
    for d in ([Path(env)] if env else []) + [Path.home() / ".cache" / "vpace-kernels", tmp]:
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise RuntimeError("no writable directory for the compiled CPU kernel (set VPACE_KERNEL_CACHE)")


def _machine_id() -> str:
    """-march=native code must not be loaded on another CPU: the cache key includes the CPU's flags."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _compile(cc: str, flags: tuple[str, ...], path: Path) -> str | None:
    """Compile the kernel to ``path`` (atomically: processes may race); returns the error or None."""
    src, tmp = path.with_suffix(f".{os.getpid()}.c"), path.with_suffix(f".{os.getpid()}.tmp")
    src.write_text(_C_SOURCE)
    try:
        res = subprocess.run([cc, *flags, "-o", str(tmp), str(src), "-lm"], capture_output=True, text=True)
        if res.returncode != 0:
            return res.stderr.strip()[-2000:] or f"{cc} exited with {res.returncode}"
        os.replace(tmp, path)
        return None
    finally:
        src.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler found (set CC)")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    except OSError as e:
        raise RuntimeError(f"C compiler {cc!r} cannot run: {e}") from e
    errors = []
    for flags in _flag_sets():
        key = "\0".join([_C_SOURCE, cc, version, *flags, _machine_id()])
        path = cache_dir() / f"pace_jitter_{hashlib.sha256(key.encode()).hexdigest()[:20]}.so"
        err = None if path.exists() else _compile(cc, flags, path)
        if err is None:
            lib = ctypes.CDLL(str(path))
            p, i64 = ctypes.c_void_p, ctypes.c_int64
            lib.pace_jitter_frames.argtypes = [p, i64, i64, i64, p, i64, p, p, p, p, p, p, p, p, ctypes.c_int,
                                               i64, i64, i64, i64]
            lib.pace_jitter_frames.restype = ctypes.c_int
            lib.advise_hugepages.argtypes = [p, i64]
            lib.advise_hugepages.restype = None
            return lib
        errors.append(f"{' '.join(flags)}: {err}")
    raise RuntimeError("building the CPU kernel failed:\n" + "\n".join(errors))


def native_library() -> ctypes.CDLL | None:
    """The built kernel (built once per process, loaded from the disk cache when possible), or None with a
    warning when it cannot be built."""
    with _LOCK:
        if "lib" not in _LIB:
            try:
                _LIB["lib"] = _build()
            except (RuntimeError, OSError) as e:
                warnings.warn(f"pace_jitter: the CPU kernel is unavailable ({e}); using the eager torch "
                              "path, which is much slower", RuntimeWarning, stacklevel=3)
                _LIB["lib"] = None
        return _LIB["lib"]


def _native(lib, frames, index_map, params: JitterParams, mean_t, std_t, out_dtype) -> torch.Tensor:
    B, F, H, W, _ = frames.shape
    T = index_map.shape[1]
    h, w = params.crop_hw
    out = torch.empty(B, 3, T, h, w, dtype=out_dtype)
    if out.numel() == 0:
        return out
    lib.advise_hugepages(out.data_ptr(), out.numel() * out.element_size())
    p = params
    keep = [t.contiguous() for t in (frames, index_map.long(), p.crop_yx.int(), p.flip, p.apply,
                                     p.factors.float(), p.order.int(), mean_t.float(), std_t.float())]
    ptrs = [t.data_ptr() for t in keep]
    args = ptrs[:1] + [F, H, W] + ptrs[1:2] + [T] + ptrs[2:] + [out.data_ptr(), _KIND[out_dtype], h, w]
    n = B * T
    threads = max(1, min(torch.get_num_threads(), n // 4))  # a thread per >= 4 frames
    bounds = [n * i // threads for i in range(threads + 1)]
    status: list[int | None] = [None] * threads  # None: the thread died before the kernel returned

    def run(i: int) -> None:
        status[i] = lib.pace_jitter_frames(*args, bounds[i], bounds[i + 1])  # releases the GIL

    workers = [threading.Thread(target=run, args=(i,)) for i in range(1, threads)]
    for t in workers:
        t.start()
    try:
        run(0)
    finally:
        for t in workers:
            t.join()
    if None in status:
        raise RuntimeError("pace_jitter: a CPU kernel thread failed (see the exception printed above)")
    if any(status):
        raise MemoryError(f"pace_jitter: the CPU kernel could not allocate {3 * (h + 1) * w * 4} bytes")
    return out


def pace_jitter_cpu(frames: torch.Tensor, index_map: torch.Tensor, params: JitterParams, mean_t: torch.Tensor,
                    std_t: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Fast CPU path on arguments ``validate`` accepted: the C kernel, or ``pace_jitter_eager`` when it cannot
    be built (warned once)."""
    lib = native_library()
    if lib is not None:
        return _native(lib, frames, index_map, params, mean_t, std_t, out_dtype)
    return pace_jitter_eager(frames, index_map, params, mean_t, std_t, out_dtype)
