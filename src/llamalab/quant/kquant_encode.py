"""K-quant block encoders (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): the bytes llama.cpp's reference quantizers write.

A port of ggml's `quantize_row_q{2,3,4,5,6}_K_ref` and their helpers (`nearest_int`, `make_qx_quants`,
`make_q3_quants`, `make_qkx2_quants`; ggml-quants.c, llama.cpp, MIT licence) to numpy, vectorized over
blocks: every float32 operation is the one the C code performs, in the same order (sums run element by
element, as `np.cumsum` does), so the blocks come out byte for byte. No importance matrix: these are the
reference (imatrix-free) quantizers that `llama-quantize` uses when it is given none.

`encode(rows, kind)` takes a float32 (n, k) array, k a multiple of 256, and returns (n, k // 256 * size)
uint8 blocks in GGUF's layout (`gguf.quants.dequantize` reads them back).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..threads import worker_count

QK_K = 256
SIZES = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
CHUNK = 512  # super-blocks per numpy pass: arrays of 512 KB, which stay in cache
F32 = np.float32


def nearest_int(f: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: the float trick (round half to even for |f| < 2**22, its own bits beyond)."""
    bits = (np.asarray(f, F32) + F32(12582912.0)).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def _sum(a: np.ndarray) -> np.ndarray:
    """Sum over the first axis one element after another, in float32 (C's `s += a[i]` loop)."""
    s = a[0].copy()
    for row in a[1:]:
        s += row
    return s


def _abs_argmax(x: np.ndarray, axis: int = 0):
    """The first element of largest magnitude (C's `if (ax > amax)` scan from amax = 0)."""
    i = np.expand_dims(np.argmax(np.abs(x), axis=axis), axis)
    v = np.take_along_axis(x, i, axis=axis).squeeze(axis)
    return v, np.abs(v)


# The helpers below take sub-blocks as columns: x is (values per sub-block, sub-blocks), so a per-sub-block
# quantity is a row vector that broadcasts, and a sum over a sub-block adds contiguous rows.

def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None = None):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw) per column of x: (scale, L); weights x² when qw is None."""
    mx, amax = _abs_argmax(x)
    zero = amax < F32(1e-15)
    mx = np.where(zero, F32(1), mx)
    w = x * x if qw is None else qw
    wx = w * x

    def trial(iscale):
        l = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
        lf = l.astype(F32)
        return l, _sum(wx * lf), _sum(w * lf * lf)

    l, sumlx, suml2 = trial(F32(-nmax) / mx)
    L = l + nmax
    scale = np.where(suml2 != 0, sumlx / np.where(suml2 != 0, suml2, F32(1)), F32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        l, sumlx, suml2 = trial(-(F32(nmax) + F32(0.1) * F32(step)) / mx)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(better, l + nmax, L)
        scale = np.where(better, sumlx / np.where(suml2 > 0, suml2, F32(1)), scale)
        best = np.where(better, scale * sumlx, best)
    return np.where(zero, F32(0), scale), np.where(zero, 0, L)


def make_q3_quants(x: np.ndarray, nmax: int):
    """make_q3_quants(n, nmax, x, L, do_rmse=true) per column of x: (scale, L)."""
    mx, amax = _abs_argmax(x)
    zero = amax < F32(1e-15)
    mx = np.where(zero, F32(1), mx)
    L = np.clip(nearest_int((F32(-nmax) / mx) * x), -nmax, nmax - 1)
    w = x * x
    lf = L.astype(F32)
    sumlx, suml2 = _sum(w * x * lf), _sum(w * lf * lf)
    # up to 5 passes of coordinate descent; a pass that changes nothing leaves the state as it was, so
    # running all 5 for every column equals C's early break
    for _ in range(5):
        for i in range(x.shape[0]):
            wi, xi, li = w[i], x[i], L[i].astype(F32)
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            new = np.clip(nearest_int(xi * sl2 / np.where(slx > 0, slx, F32(1))), -nmax, nmax - 1)
            nf = new.astype(F32)
            slx2, sl22 = slx + wi * xi * nf, sl2 + wi * nf * nf
            take = (slx > 0) & (new != L[i]) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            L[i] = np.where(take, new, L[i])
            sumlx, suml2 = np.where(take, slx2, sumlx), np.where(take, sl22, suml2)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, F32(1)), F32(0))
    return np.where(zero, F32(0), scale), np.where(zero, 0, L + nmax)


def make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool, capped: bool = False):
    """make_qkx2_quants per column of x with weights w: (scale, the_min, L). capped: make_qkx3_quants (the
    importance-matrix paths), whose search levels are `v > 0 ? nearest_int(min(v, nmax)) : 0`."""
    lo = np.minimum(x.min(axis=0), F32(0))
    hi = x.max(axis=0)
    sum_w, sum_x = _sum(w), _sum(w * x)
    flat = hi == lo

    def error(scale, lo, L):
        diff = scale * L.astype(F32) + lo - x
        return _sum(w * (np.abs(diff) if use_mad else diff * diff))

    def levels(iscale, lo):
        return np.clip(nearest_int(iscale * (x - lo)), 0, nmax)

    iscale = F32(nmax) / np.where(flat, F32(1), hi - lo)
    scale = F32(1) / iscale
    L = levels(iscale, lo)
    best = error(scale, lo, L)
    for step in range(nstep + 1):
        iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / np.where(flat, F32(1), hi - lo)
        if capped:
            v = iscale * (x - lo)
            Laux = np.where(v > 0, nearest_int(np.minimum(v, F32(nmax))), 0)
        else:
            Laux = levels(iscale, lo)
        lf = Laux.astype(F32)
        wl = w * lf
        sum_l, sum_l2, sum_xl = _sum(wl), _sum(wl * lf), _sum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = (D > 0) & ~flat
        Ds = np.where(ok, D, F32(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        pos = this_min > 0
        this_min = np.where(pos, F32(0), this_min)
        this_scale = np.where(pos, sum_xl / np.where(ok, sum_l2, F32(1)), this_scale)
        cur = error(this_scale, this_min, Laux)
        better = ok & (cur < best)
        L = np.where(better, Laux, L)
        best = np.where(better, cur, best)
        scale, lo = np.where(better, this_scale, scale), np.where(better, this_min, lo)
    return np.where(flat, F32(0), scale), -lo, np.where(flat, 0, L)


def _columns(x: np.ndarray, k: int) -> np.ndarray:
    """(n, 256) super-blocks → (k, n * 256 // k): one sub-block of k values per column."""
    return np.ascontiguousarray(x.reshape(-1, k).T)


def _rows(L: np.ndarray, n: int) -> np.ndarray:
    """The inverse of `_columns` for levels: (k, n * 256 // k) → (n, 256 // k, k)."""
    return L.T.reshape(n, -1, L.shape[0])


def _requantize(x, d, m, L, lo, hi):
    """L = clamp(nearest_int((x + m) / d)) where d != 0; L kept where d == 0 (C's `if (!d) continue`)."""
    live = d != 0
    q = np.clip(nearest_int((x + m[..., None]) / np.where(live, d, F32(1))[..., None]), lo, hi)
    return np.where(live[..., None], q, L)


def _pack2(L: np.ndarray) -> np.ndarray:
    """(n, 256) 2-bit values → (n, 64): qs[j/4 + l] = L[j+l] | L[j+l+32] << 2 | L[j+l+64] << 4 | L[j+l+96] << 6."""
    q = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (q[:, :, 0] | q[:, :, 1] << 2 | q[:, :, 2] << 4 | q[:, :, 3] << 6).reshape(-1, 64)


def _scale_max(v: np.ndarray) -> np.ndarray:
    """C's running `if (v > m) m = v` from m = 0."""
    return np.maximum(v.max(axis=1), F32(0))


def _u8(v: np.ndarray) -> np.ndarray:
    return (v & 0xFF).astype(np.uint8)


def _q2_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    sub = _columns(x, 16)
    scales, mins, L = make_qkx2_quants(sub, np.abs(sub), 3, -0.5, 0.1, 15, True)
    scales, mins, L = scales.reshape(n, 16), mins.reshape(n, 16), _rows(L, n)
    ms, mm = _scale_max(scales), _scale_max(mins)
    sc = np.where(ms[:, None] > 0, nearest_int((F32(15) / np.where(ms > 0, ms, F32(1)))[:, None] * scales), 0)
    sc = _u8(sc).astype(np.int32)
    d = np.where(ms > 0, ms / F32(15), F32(0)).astype(np.float16)
    lm = nearest_int((F32(15) / np.where(mm > 0, mm, F32(1)))[:, None] * mins) << 4
    sc = _u8(np.where(mm[:, None] > 0, sc | lm, sc)).astype(np.int32)
    dmin = np.where(mm > 0, mm / F32(15), F32(0)).astype(np.float16)
    return q2_pack(x, sc, d, dmin, L)


def q2_pack(x, sc, d, dmin, L):
    """Q2_K's block from its scale bytes (scale | min << 4), d, dmin (float16) and the levels (n, 16, 16)."""
    n = x.shape[0]
    dd = d.astype(F32)[:, None] * (sc & 0xF).astype(F32)
    dm = dmin.astype(F32)[:, None] * (sc >> 4).astype(F32)
    L = _requantize(x.reshape(n, 16, 16), dd, dm, L, 0, 3).reshape(n, 256)
    return np.concatenate([sc.astype(np.uint8), _pack2(L), d.reshape(n, 1).view(np.uint8),
                           dmin.reshape(n, 1).view(np.uint8)], axis=1)


def _q3_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    scales, L = make_q3_quants(_columns(x, 16), 4)
    scales, L = scales.reshape(n, 16), _rows(L, n)
    max_scale, _ = _abs_argmax(scales, axis=1)
    live = max_scale != 0
    iscale = F32(-32) / np.where(live, max_scale, F32(1))
    l = nearest_int(iscale[:, None] * scales)
    l = np.clip(((l + 128) & 0xFF) - 128, -32, 31) + 32  # int8_t l = nearest_int(...)
    l = np.where(live[:, None], l, 0)
    d = np.where(live, F32(1) / iscale, F32(0)).astype(np.float16)
    return q3_pack(x, l, d, L)


def q3_pack(x, l, d, L):
    """Q3_K's block from its 6-bit scale codes l (n, 16; scale l - 32), d (float16) and levels (n, 16, 16)."""
    n = x.shape[0]
    packed = np.zeros((n, 12), np.int32)
    packed[:, :8] = (l[:, :8] & 0xF) | (l[:, 8:] & 0xF) << 4
    hi = l >> 4
    for j in range(16):
        packed[:, 8 + j % 4] |= hi[:, j] << (2 * (j // 4))
    dd = d.astype(F32)[:, None] * (l - 32).astype(F32)
    L = _requantize(x.reshape(n, 16, 16), dd, np.zeros_like(dd), L - 4, -4, 3) + 4
    L = L.reshape(n, 256)
    high = L > 3
    hmask = (high.reshape(n, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(
        axis=1, dtype=np.uint8)
    return np.concatenate([hmask, _pack2(np.where(high, L - 4, L)), _u8(packed),
                           d.reshape(n, 1).view(np.uint8)], axis=1)


def _k_scales(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Q4_K / Q5_K: 8 sub-blocks of 32 with a scale and a min each, 6-bit codes of both, the levels."""
    n = x.shape[0]
    sub = _columns(x, 32)
    av_x = np.sqrt(_sum(sub * sub) / F32(32))
    scales, mins, L = make_qkx2_quants(sub, av_x + np.abs(sub), nmax, rmin, 0.1, nstep, False)
    scales, mins = scales.reshape(n, 8), mins.reshape(n, 8)
    ms, mm = _scale_max(scales), _scale_max(mins)
    inv_s = np.where(ms > 0, F32(63) / np.where(ms > 0, ms, F32(1)), F32(0))
    inv_m = np.where(mm > 0, F32(63) / np.where(mm > 0, mm, F32(1)), F32(0))
    ls = np.minimum(63, _u8(nearest_int(inv_s[:, None] * scales)).astype(np.int32))
    lm = np.minimum(63, _u8(nearest_int(inv_m[:, None] * mins)).astype(np.int32))
    d, dmin = (ms / F32(63)).astype(np.float16), (mm / F32(63)).astype(np.float16)
    return k_head(x, ls, lm, d, dmin, _rows(L, n), nmax)


def k_head(x, ls, lm, d, dmin, L, nmax):
    """Q4_K / Q5_K: the 12 scale bytes, d and dmin of 6-bit codes ls, lm (n, 8) and float16 d, dmin, and the
    levels requantized on them (n, 256) from the sub-blocks' own levels L (n, 8, 32)."""
    n = x.shape[0]
    packed = np.zeros((n, 12), np.int32)
    packed[:, :4] = ls[:, :4] | (ls[:, 4:] >> 4) << 6
    packed[:, 4:8] = lm[:, :4] | (lm[:, 4:] >> 4) << 6
    packed[:, 8:] = (ls[:, 4:] & 0xF) | (lm[:, 4:] & 0xF) << 4
    dd = d.astype(F32)[:, None] * ls.astype(F32)
    dm = dmin.astype(F32)[:, None] * lm.astype(F32)
    L = _requantize(x.reshape(n, 8, 32), dd, dm, L, 0, nmax).reshape(n, 256)
    head = np.concatenate([d.reshape(n, 1).view(np.uint8), dmin.reshape(n, 1).view(np.uint8), _u8(packed)], 1)
    return head, L


def _q4_k(x: np.ndarray) -> np.ndarray:
    return q4_pack(*_k_scales(x, 15, -1.0, 20))


def q4_pack(head, L):
    q = L.reshape(-1, 4, 2, 32).astype(np.uint8)
    return np.concatenate([head, (q[:, :, 0] | q[:, :, 1] << 4).reshape(-1, 128)], axis=1)


def _q5_k(x: np.ndarray) -> np.ndarray:
    return q5_pack(*_k_scales(x, 31, -0.5, 15))


def q5_pack(head, L):
    q = L.reshape(-1, 4, 2, 32).astype(np.uint8)  # [n, pair k, half, 32]
    shift = 2 * np.arange(4, dtype=np.uint8)[None, :, None, None] + np.arange(2, dtype=np.uint8)[None, None, :, None]
    bits = (q >> 4) << shift  # the fifth bit of pair k, half h at bit 2k + h
    qh = bits.reshape(-1, 8, 32).sum(axis=1, dtype=np.uint8)
    ql = ((q[:, :, 0] & 0xF) | (q[:, :, 1] & 0xF) << 4).reshape(-1, 128)
    return np.concatenate([head, qh, ql], axis=1)


def _q6_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Q6_K; qw: the importance matrix's values for x's columns (quantize_row_q6_K_impl weighs by them as they are)."""
    n = x.shape[0]
    scales, L = make_qx_quants(_columns(x, 16), 32, None if qw is None else _columns(qw, 16))
    scales, L = scales.reshape(n, 16), _rows(L, n)
    max_scale, max_abs = _abs_argmax(scales, axis=1)
    live = max_abs >= F32(1e-15)
    iscale = F32(-128) / np.where(live, max_scale, F32(1))
    d = np.where(live, F32(1) / iscale, F32(0)).astype(np.float16)
    sc = np.minimum(127, nearest_int(iscale[:, None] * scales))
    sc = (((sc + 128) & 0xFF) - 128).astype(np.int8)
    dd = d.astype(F32)[:, None] * sc.astype(F32)
    L = (_requantize(x.reshape(n, 16, 16), dd, np.zeros_like(dd), L - 32, -32, 31) + 32).reshape(n, 2, 4, 32)
    L = L.astype(np.uint8)
    ql = np.concatenate([L[:, :, 0] & 0xF | (L[:, :, 2] & 0xF) << 4, L[:, :, 1] & 0xF | (L[:, :, 3] & 0xF) << 4],
                        axis=2).reshape(n, 128)
    qh = (L[:, :, 0] >> 4 | (L[:, :, 1] >> 4) << 2 | (L[:, :, 2] >> 4) << 4 | (L[:, :, 3] >> 4) << 6).reshape(n, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d.reshape(n, 1).view(np.uint8)], axis=1)
    out[~live] = 0  # memset(&y[i], 0, ...)
    return out


ENCODERS = {"Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def encode(rows: np.ndarray, kind: str) -> np.ndarray:
    """(n, k) float32 rows, k a multiple of 256 → (n, k // 256 * SIZES[kind]) uint8 blocks."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    if rows.ndim != 2 or rows.shape[1] % QK_K:
        raise ValueError(f"{kind} needs rows of a multiple of {QK_K} values, got shape {rows.shape}")
    return in_chunks(ENCODERS[kind], SIZES[kind], rows.reshape(-1, QK_K)).reshape(rows.shape[0], -1)


def in_chunks(fn, size: int, *arrays: np.ndarray) -> np.ndarray:
    """fn over CHUNK rows of the arrays at a time (in threads): (rows, size) uint8."""
    out = np.empty((arrays[0].shape[0], size), np.uint8)

    def chunk(start):
        with np.errstate(all="ignore"):  # masked lanes divide by zero or overflow, as the C code never does
            out[start:start + CHUNK] = fn(*(a[start:start + CHUNK] for a in arrays))

    starts = range(0, out.shape[0], CHUNK)
    workers = min(worker_count(), len(starts))
    if workers > 1:  # numpy lets go of the GIL inside its loops
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(chunk, starts))
    else:
        for start in starts:
            chunk(start)
    return out
