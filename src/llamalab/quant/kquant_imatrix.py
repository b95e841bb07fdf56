"""Block encoders weighted by an importance matrix: the bytes llama.cpp writes with `--imatrix`.

A port of ggml's `quantize_row_{q2,q3,q4,q5,q6}_K_impl` and `quantize_row_{q4_0,q4_1,q5_0,q5_1}_impl` and the
helpers they add (`make_qkx3_quants`, `make_qp_quants`, `make_qx_quants` with weights; ggml-quants.c,
llama.cpp, MIT licence) to numpy, in the manner of `kquant_encode` (sub-blocks as columns, float32 operations
in the C code's order), so the blocks come out byte for byte those of `ggml_quantize_chunk(type, ..., imatrix)`.

The importance matrix gives one value per input column of the weight (the mean square of the activations
that column multiplies, `imatrix.py`); each weight's error is weighted by `qw[j] * sqrt(sigma2 + x[j]²)`
(Q2_K..Q5_K and the 32-wide types; sigma2 the block's or row's mean square) or by `qw[j]` (Q6_K) when the
scales and levels are searched. Q8_0 ignores it, as llama.cpp's does.

`encode(rows, kind, imatrix)`: float32 (n, k) rows and the (k,) importance values → (n, blocks × size) uint8.
"""

from __future__ import annotations

import numpy as np

from .kquant_encode import (F32, QK_K, SIZES, _columns, _rows, _sum, _u8, in_chunks, k_head, make_qkx2_quants,
                            make_qx_quants, nearest_int, q2_pack, q3_pack, q4_pack, q5_pack, _q6_k)

LEGACY = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24}  # the 32-wide types whose quantizers take weights


def make_qkx3_quants(x, w, nmax: int):
    """make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, -0.9f, 0.05f, 36, false) per column of x."""
    return make_qkx2_quants(x, w, nmax, -0.9, 0.05, 36, False, capped=True)


def make_qp_quants(x: np.ndarray, nmax: int, w: np.ndarray):
    """make_qp_quants(n, nmax, x, L, quant_weights) per column of x (non-negative values): (scale, L)."""
    mx = np.maximum(x.max(axis=0), F32(0))
    zero = mx < F32(1e-15)
    mx = np.where(zero, F32(1), mx)
    iscale = F32(nmax) / mx
    L = _u8(nearest_int(iscale * x)).astype(np.int32)  # uint8_t L[i] = nearest_int(...)
    scale = F32(1) / iscale
    diff = x - scale * L.astype(F32)
    best = _sum(w * diff * diff)
    for step in (-4, -3, -2, -1, 1, 2, 3, 4):
        iscale_is = (F32(0.1) * F32(step) + F32(nmax)) / mx
        l = np.minimum(nmax, nearest_int(iscale_is * x))
        diff = x - (F32(1) / iscale_is) * l.astype(F32)
        mse = _sum(w * diff * diff)
        better = mse < best
        best, iscale = np.where(better, mse, best), np.where(better, iscale_is, iscale)
    l = np.minimum(nmax, nearest_int(iscale * x))
    L = _u8(l).astype(np.int32)
    lf = l.astype(F32)
    sumlx, suml2 = _sum(w * x * lf), _sum(w * lf * lf)
    for _ in range(5):  # a pass that changes nothing leaves the state as it was (C's early break)
        for i in range(x.shape[0]):
            wi, xi, li = w[i], x[i], L[i].astype(F32)
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            ok = (slx > 0) & (sl2 > 0)
            new = np.minimum(nmax, nearest_int(xi * sl2 / np.where(ok, slx, F32(1))))
            nf = new.astype(F32)
            slx2, sl22 = slx + wi * xi * nf, sl2 + wi * nf * nf
            take = ok & (new != L[i]) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            L[i] = np.where(take, _u8(new), L[i])
            sumlx, suml2 = np.where(take, slx2, sumlx), np.where(take, sl22, suml2)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, F32(1)), F32(0))
    return np.where(zero, F32(0), scale), np.where(zero, 0, L)


def _weights(x: np.ndarray, qw: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """qw[j] * sqrtf(sigma2 + x[j]*x[j]); sigma2 broadcasts over x's first axis."""
    return qw * np.sqrt(sigma2 + x * x)


def _sigma2(x: np.ndarray, factor: int) -> np.ndarray:
    """factor * (sum of x² over each row, element by element) / the row's length, as a row vector."""
    return F32(factor) * _sum(np.ascontiguousarray((x * x).T)) / F32(x.shape[1])


def _q2_k(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    sub = _columns(x, 16)
    w = _weights(sub, _columns(qw, 16), np.repeat(_sigma2(x, 1), 16))
    sw = _sum(w)
    scales, mins, L = make_qkx3_quants(sub, w, 3)
    sw = sw.reshape(n, 16).T
    dm, ls = make_qp_quants(scales.reshape(n, 16).T, 15, sw)
    mm, lm = make_qp_quants(mins.reshape(n, 16).T, 15, sw)
    sc = ls.T | lm.T << 4
    return q2_pack(x, sc, dm.astype(np.float16), mm.astype(np.float16), _rows(L, n))


def _q3_k(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    sub = _columns(x, 16)
    w = _weights(sub, _columns(qw, 16), np.repeat(_sigma2(x, 2), 16))
    sw = _sum(w)
    scales, L = make_qx_quants(sub, 4, w)
    d, ls = make_qx_quants(scales.reshape(n, 16).T, 32, sw.reshape(n, 16).T)
    return q3_pack(x, ls.T, d.astype(np.float16), _rows(L, n))


def _k_scales(x: np.ndarray, qw: np.ndarray, nmax: int):
    """quantize_row_q4_K_impl / q5_K_impl up to the packing: (head, levels)."""
    n = x.shape[0]
    sub = _columns(x, 32)
    w = _weights(sub, _columns(qw, 32), np.repeat(_sigma2(x, 2), 8))
    sw = _sum(w).reshape(n, 8).T
    scales, mins, L = make_qkx3_quants(sub, w, nmax)
    d, ls = make_qp_quants(scales.reshape(n, 8).T, 63, sw)
    dmin, lm = make_qp_quants(mins.reshape(n, 8).T, 63, sw)
    return k_head(x, np.minimum(63, ls.T), np.minimum(63, lm.T), d.astype(np.float16), dmin.astype(np.float16),
                  _rows(L, n), nmax)


def _q4_k(x, qw):
    return q4_pack(*_k_scales(x, qw, 15))


def _q5_k(x, qw):
    return q5_pack(*_k_scales(x, qw, 31))


def _nibbles(L: np.ndarray) -> np.ndarray:
    """(blocks, 32) levels → qs[j] = L[j] & 0xF | (L[j+16] & 0xF) << 4 (16 bytes)."""
    return ((L[:, :16] & 0xF) | (L[:, 16:] & 0xF) << 4).astype(np.uint8)


def _fifth_bits(L: np.ndarray) -> np.ndarray:
    """(blocks, 32) 5-bit levels → qh, bit j the fifth bit of L[j] (4 little-endian bytes)."""
    bits = ((L >> 4) & 1).astype(np.uint32) << np.arange(32, dtype=np.uint32)
    return bits.sum(axis=1, dtype=np.uint32).astype("<u4").view(np.uint8).reshape(-1, 4)


def _legacy(x: np.ndarray, qw: np.ndarray, sigma2: np.ndarray, kind: str) -> np.ndarray:
    """quantize_row_{q4_0,q4_1,q5_0,q5_1}_impl on 32-wide blocks (columns of x), sigma2 per block."""
    xb = np.ascontiguousarray(x.T)
    w = _weights(xb, np.ascontiguousarray(qw.T), sigma2)
    if kind in ("Q4_0", "Q5_0"):
        d, L = make_qx_quants(xb, 8 if kind == "Q4_0" else 16, w)
        head = [d.astype(np.float16).reshape(-1, 1).view(np.uint8)]
    else:
        d, the_min, L = make_qkx3_quants(xb, w, 15 if kind == "Q4_1" else 31)
        head = [d.astype(np.float16).reshape(-1, 1).view(np.uint8),
                (-the_min).astype(np.float16).reshape(-1, 1).view(np.uint8)]
    L = L.T.astype(np.int32)
    qh = [_fifth_bits(L)] if kind in ("Q5_0", "Q5_1") else []
    return np.concatenate(head + qh + [_nibbles(L)], axis=1)


WEIGHTED = {"Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def encode(rows: np.ndarray, kind: str, imatrix: np.ndarray) -> np.ndarray:
    """(n, k) float32 rows quantized to `kind` weighted by the (k,) importance values, as
    `ggml_quantize_chunk(kind, rows, ..., imatrix)` writes them: (n, k // block * size) uint8."""
    rows = np.ascontiguousarray(rows, dtype=F32)
    imatrix = np.ascontiguousarray(imatrix, dtype=F32).reshape(-1)
    n, k = rows.shape
    if imatrix.shape[0] != k:
        raise ValueError(f"an importance matrix of {imatrix.shape[0]} values for rows of {k}")
    if kind in WEIGHTED:
        if k % QK_K:
            raise ValueError(f"{kind} needs rows of a multiple of {QK_K} values, got shape {rows.shape}")
        qw = np.broadcast_to(imatrix.reshape(1, -1), (n, k)).reshape(-1, QK_K)
        return in_chunks(WEIGHTED[kind], SIZES[kind], rows.reshape(-1, QK_K), qw).reshape(n, -1)
    if kind not in LEGACY or k % 32:
        raise ValueError(f"no importance-matrix quantizer for {kind} rows of {k} values")
    sigma2 = np.repeat(_sigma2(rows, 1), k // 32)  # the whole row's mean square, per block
    qw = np.broadcast_to(imatrix.reshape(1, -1), (n, k)).reshape(-1, 32)

    def blocks(x, q, s):
        return _legacy(x, q, s, kind)

    return in_chunks(blocks, LEGACY[kind], rows.reshape(-1, 32), qw, sigma2).reshape(n, -1)
