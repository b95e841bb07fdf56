// y = x Wᵀ for W held as GGUF blocks, unchanged: the K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and the
// 32-wide fallbacks Q5_0 / Q5_1, with llama.cpp's arithmetic.
//
// The block layouts, the activation rounding (quantize_row_q8_K_ref, quantize_row_q8_0_ref / q8_1_ref) and
// the integer dot products (ggml_vec_dot_qX_K_q8_K, ggml_vec_dot_q5_0_q8_0, ggml_vec_dot_q5_1_q8_1) follow
// llama.cpp's ggml (ggml-quants.c, ggml-cpu/quants.c, ggml-cpu/arch/x86/quants.c), Copyright (c) 2023-2024
// The ggml authors, MIT License (https://github.com/ggml-org/llama.cpp/blob/master/LICENSE).
//
//   K-quants: a row is super-blocks of 256; each holds sub-block integer scales sc (and mins mn) and
//   float16 d (dmin):  w = d · sc · v − dmin · mn.  The activations are rounded per block of 256 to int8
//   (q8_K: float32 d, int16 sums of each 16), so a super-block's contribution is
//       d_x · d_w · Σ_j sc_j Σ_{16 or 32} v · q  −  d_x · dmin_w · Σ_j mn_j · bsum_j      (integer inner sums)
//   Q5_0: w = d · (v − 16), v 5 bits; activations q8_0 (blocks of 32, d as float16): d_w d_x Σ (v−16) q
//   Q5_1: w = d · v + m; activations q8_1 (adds s = d_x Σ q): d_w d_x Σ v q + m · s
//
// The scalar code (always compiled) is the reference: each block is unpacked into int8 values and integer
// scales, then plain integer loops. AVX2 builds take llama.cpp's SIMD formulation for Q4_K, Q6_K (the two
// types of a Q4_K_M file), Q5_0 and Q5_1 (the fallbacks of rows that are not whole super-blocks); Q2_K, Q3_K
// and Q5_K unpack each block once for all M activation rows and sum with AVX2 (the same exact integer sums).
// Rows are spread over threads (at::parallel_for); each weight row is read once for all M activation rows, so
// a prompt batch (prefill) quantizes its activations once and streams the weights once. NaN or ±inf in an
// activation block makes its d NaN: the outputs it reaches are NaN, as a float product's would be.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int QK = 256;  // K-quant super-block
constexpr int Q32 = 32;  // Q5_0 / Q5_1 / q8_0 block

// ggml type ids (gguf.GGMLQuantizationType)
enum Type : int64_t { Q5_0 = 6, Q5_1 = 7, Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

struct Q8K { float d; int8_t qs[QK]; int16_t bsums[QK / 16]; };
struct Q8 { float d; float s; int8_t qs[Q32]; };  // q8_0 (s unused) / q8_1

inline float half(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}
inline float to_half(float v) { return static_cast<float>(c10::Half(v)); }

inline int nearest_int(float f) {  // llama.cpp's: round half to even through the float mantissa
  float val = f + 12582912.f;
  int i;
  std::memcpy(&i, &val, sizeof(int));
  return (i & 0x007fffff) - 0x00400000;
}

int64_t block_bytes(int64_t type) {
  switch (type) {
    case Q5_0: return 22;
    case Q5_1: return 24;
    case Q2_K: return 84;
    case Q3_K: return 110;
    case Q4_K: return 144;
    case Q5_K: return 176;
    case Q6_K: return 210;
    default: return 0;
  }
}
int64_t block_width(int64_t type) { return type == Q5_0 || type == Q5_1 ? Q32 : QK; }

// ------------------------------------------------------------------------------- activation rounding

void quantize_q8_K(const float* x, Q8K* y, int64_t nb) {  // quantize_row_q8_K_ref
  for (int64_t i = 0; i < nb; ++i, x += QK) {
    float max = 0.f, amax = 0.f;
    bool finite = true;
    for (int j = 0; j < QK; ++j) {
      const float ax = std::fabs(x[j]);
      finite = finite && std::isfinite(x[j]);
      if (ax > amax) { amax = ax; max = x[j]; }
    }
    if (!finite || amax == 0.f) {  // all zero: d = 0; NaN or ±inf: d = NaN, so the outputs it reaches are NaN
      y[i].d = finite ? 0.f : NAN;
      std::memset(y[i].qs, 0, QK);
      std::memset(y[i].bsums, 0, sizeof(y[i].bsums));
      continue;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < QK; ++j) y[i].qs[j] = static_cast<int8_t>(std::min(127, nearest_int(iscale * x[j])));
    for (int j = 0; j < QK / 16; ++j) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += y[i].qs[16 * j + l];
      y[i].bsums[j] = static_cast<int16_t>(sum);
    }
    y[i].d = 1.f / iscale;
  }
}

// quantize_row_q8_0 / quantize_row_q8_1 as llama.cpp's x86 build runs them (arch/x86/quants.c): d = max|x| / 127
// kept as float16, x · (127 / max|x|) rounded half to even; q8_1 adds s = d · Σ q (float16). (The portable
// reference, quantize_row_q8_0_ref, multiplies by 1 / d and rounds half away from zero: a few codes differ.)
void quantize_q8(const float* x, Q8* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += Q32) {
    float amax = 0.f;
    bool finite = true;
    for (int j = 0; j < Q32; ++j) {
      finite = finite && std::isfinite(x[j]);
      amax = std::max(amax, std::fabs(x[j]));
    }
    const float d = amax / 127.f, id = finite && amax > 0.f ? 127.f / amax : 0.f;
    int sum = 0;
    for (int j = 0; j < Q32; ++j) {
      y[i].qs[j] = static_cast<int8_t>(std::nearbyint(x[j] * id));
      sum += y[i].qs[j];
    }
    y[i].d = finite ? to_half(d) : NAN;
    y[i].s = finite ? to_half(d * static_cast<float>(sum)) : NAN;
  }
}

// ------------------------------------------------------------------------------- unpacking (reference)

// One super-block as int8 values v[256] and integer scales / mins per 16: w = d · sc[e/16] · v[e] − dmin · mn[e/16]
struct Unpacked { int8_t v[QK]; int16_t sc[QK / 16]; int16_t mn[QK / 16]; float d; float dmin; };

inline void scale_min_k4(int j, const uint8_t* q, int& d, int& m) {  // get_scale_min_k4
  if (j < 4) {
    d = q[j] & 63; m = q[j + 4] & 63;
  } else {
    d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

void unpack_q2_K(const uint8_t* b, Unpacked& u) {  // scales[16] qs[64] d dmin
  const uint8_t *scales = b, *qs = b + 16;
  u.d = half(b + 80); u.dmin = half(b + 82);
  for (int j = 0; j < 16; ++j) { u.sc[j] = scales[j] & 0xF; u.mn[j] = scales[j] >> 4; }
  for (int n = 0; n < 2; ++n)
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 32; ++l) u.v[128 * n + 32 * j + l] = static_cast<int8_t>((qs[32 * n + l] >> (2 * j)) & 3);
}

void unpack_q3_K(const uint8_t* b, Unpacked& u) {  // hmask[32] qs[64] scales[12] d
  const uint8_t *hmask = b, *qs = b + 32;
  u.d = half(b + 108); u.dmin = 0.f;
  uint32_t aux[4];
  std::memcpy(aux, b + 96, 12);
  const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f, tmp = aux[2];
  aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
  aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
  aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
  aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
  const int8_t* sc = reinterpret_cast<const int8_t*>(aux);
  for (int j = 0; j < 16; ++j) { u.sc[j] = sc[j] - 32; u.mn[j] = 0; }
  for (int n = 0; n < 2; ++n)
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 32; ++l)
        u.v[128 * n + 32 * j + l] = static_cast<int8_t>(((qs[32 * n + l] >> (2 * j)) & 3) -
                                                         4 * (1 - ((hmask[l] >> (4 * n + j)) & 1)));
}

void unpack_q45_K(const uint8_t* b, Unpacked& u, bool five) {  // d dmin scales[12] (qh[32]) qs[128]
  u.d = half(b); u.dmin = half(b + 2);
  const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + (five ? 48 : 16);
  for (int j = 0; j < 8; ++j) {
    int d, m;
    scale_min_k4(j, scales, d, m);
    u.sc[2 * j] = u.sc[2 * j + 1] = d;
    u.mn[2 * j] = u.mn[2 * j + 1] = m;
  }
  for (int c = 0; c < 4; ++c)
    for (int h = 0; h < 2; ++h)
      for (int l = 0; l < 32; ++l)
        u.v[64 * c + 32 * h + l] = static_cast<int8_t>(((qs[32 * c + l] >> (4 * h)) & 0xF) |
                                                        (five ? ((qh[l] >> (2 * c + h)) & 1) << 4 : 0));
}

void unpack_q6_K(const uint8_t* b, Unpacked& u) {  // ql[128] qh[64] scales[16] d
  const uint8_t *ql = b, *qh = b + 128;
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
  u.d = half(b + 208); u.dmin = 0.f;
  for (int j = 0; j < 16; ++j) { u.sc[j] = scales[j]; u.mn[j] = 0; }
  for (int n = 0; n < 2; ++n)
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 32; ++l)
        u.v[128 * n + 32 * k + l] = static_cast<int8_t>((((ql[64 * n + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0xF) |
                                                          (((qh[32 * n + l] >> (2 * k)) & 3) << 4)) - 32);
}

void unpack(int64_t type, const uint8_t* b, Unpacked& u) {
  switch (type) {
    case Q2_K: unpack_q2_K(b, u); break;
    case Q3_K: unpack_q3_K(b, u); break;
    case Q4_K: unpack_q45_K(b, u, false); break;
    case Q5_K: unpack_q45_K(b, u, true); break;
    default: unpack_q6_K(b, u); break;
  }
}

// 5-bit blocks of 32: values v (0..31), w = d · (v − 16) (Q5_0) or d · v + m (Q5_1)
inline void unpack_q5(const uint8_t* qh4, const uint8_t* qs, int8_t* v) {
  uint32_t qh;
  std::memcpy(&qh, qh4, 4);
  for (int j = 0; j < 16; ++j) {
    v[j] = static_cast<int8_t>((qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10));
    v[j + 16] = static_cast<int8_t>((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10));
  }
}

// ------------------------------------------------------------------------------- dot products

inline float block_dot(const Unpacked& u, const Q8K& x) {  // one super-block against one activation block
  int32_t isum = 0, msum = 0;
  for (int j = 0; j < QK / 16; ++j) {
    int32_t s = 0;
    for (int l = 0; l < 16; ++l) s += u.v[16 * j + l] * x.qs[16 * j + l];
    isum += u.sc[j] * s;
    msum += u.mn[j] * x.bsums[j];
  }
  return x.d * u.d * isum - x.d * u.dmin * msum;
}

#if defined(__AVX2__)
// block_dot with AVX2: the same integer sums (exact), so the same result
inline float block_dot_simd(const Unpacked& u, const Q8K& x) {
  __m256i sumi = _mm256_setzero_si256();
  for (int c = 0; c < QK / 32; ++c) {  // |v| <= 32, |q| <= 127: a pair of products fits int16
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u.v + 32 * c));
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 32 * c));
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(q, v));
    const __m256i s = _mm256_set_m128i(_mm_set1_epi16(u.sc[2 * c + 1]), _mm_set1_epi16(u.sc[2 * c]));
    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s));
  }
  __m128i t = _mm_add_epi32(_mm256_castsi256_si128(sumi), _mm256_extracti128_si256(sumi, 1));
  t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
  t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
  const int32_t isum = _mm_cvtsi128_si32(t);
  int32_t msum = 0;
  for (int j = 0; j < QK / 16; ++j) msum += u.mn[j] * x.bsums[j];
  return x.d * u.d * isum - x.d * u.dmin * msum;
}
#endif

// y[m] = row · x[m] for every activation row m: each super-block unpacked once for all of them
void row_k_ref(int64_t type, const uint8_t* row, const Q8K* x, int64_t nb, int64_t M, float* y, int64_t ystride,
               bool reference) {
  const int64_t bytes = block_bytes(type);
  std::vector<float> acc(M, 0.f);
  Unpacked u;
  for (int64_t i = 0; i < nb; ++i) {
    unpack(type, row + i * bytes, u);
#if defined(__AVX2__)
    if (!reference) {
      for (int64_t m = 0; m < M; ++m) acc[m] += block_dot_simd(u, x[m * nb + i]);
      continue;
    }
#endif
    for (int64_t m = 0; m < M; ++m) acc[m] += block_dot(u, x[m * nb + i]);
  }
  for (int64_t m = 0; m < M; ++m) y[m * ystride] = acc[m];
}

void row_q5_ref(int64_t type, const uint8_t* row, const Q8* x, int64_t nb, int64_t M, float* y, int64_t ystride) {
  const bool one = type == Q5_1;
  const int64_t bytes = block_bytes(type);
  std::vector<float> acc(M, 0.f);
  int8_t v[Q32];
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* b = row + i * bytes;
    unpack_q5(b + (one ? 4 : 2), b + (one ? 8 : 6), v);
    if (!one)
      for (int j = 0; j < Q32; ++j) v[j] -= 16;
    const float d = half(b), m = one ? half(b + 2) : 0.f;
    for (int64_t r = 0; r < M; ++r) {
      const Q8& xb = x[r * nb + i];
      int32_t s = 0;
      for (int j = 0; j < Q32; ++j) s += v[j] * xb.qs[j];
      acc[r] += d * xb.d * s + m * xb.s;
    }
  }
  for (int64_t r = 0; r < M; ++r) y[r * ystride] = acc[r];
}

#if defined(__AVX2__)

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline __m256i load(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// 128 Q6_K values (64 bytes of low nibbles `ql`, 32 bytes of high bit pairs `qh`) as four vectors of 32 unsigned
// 6-bit codes, in llama.cpp's order: the decode dot product and the prefill dequantization share it.
inline void q6k_unpack(const uint8_t* ql, const uint8_t* qh, __m256i q[4]) {
  const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3);
  const __m256i h = load(qh), l1 = load(ql), l2 = load(ql + 32);
  q[0] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(h, m2), 4));
  q[1] = _mm256_or_si256(_mm256_and_si256(l2, m4), _mm256_slli_epi16(_mm256_and_si256(h, _mm256_slli_epi16(m2, 2)), 2));
  q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(h, _mm256_slli_epi16(m2, 4)));
  q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), m4),
                         _mm256_srli_epi16(_mm256_and_si256(h, _mm256_slli_epi16(m2, 6)), 2));
}

// ggml_vec_dot_q4_K_q8_K, AVX2: 64 values per step (low nibbles × the first 32 activations, high × the next)
float dot_q4_K(const uint8_t* row, const Q8K* x, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0xF);
  __m256 acc = _mm256_setzero_ps();
  float mins = 0.f;
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* b = row + i * 144;
    int sc[8], mn[8], msum = 0;
    for (int j = 0; j < 8; ++j) {
      scale_min_k4(j, b + 4, sc[j], mn[j]);
      msum += mn[j] * (x[i].bsums[2 * j] + x[i].bsums[2 * j + 1]);
    }
    mins += x[i].d * half(b + 2) * msum;
    const uint8_t* q4 = b + 16;
    const int8_t* q8 = x[i].qs;
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j, q4 += 32, q8 += 64) {
      const __m256i bits = load(q4);
      const __m256i lo = _mm256_maddubs_epi16(_mm256_and_si256(bits, m4), load(q8));
      const __m256i hi = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), load(q8 + 32));
      sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_set1_epi16(sc[2 * j]), lo));
      sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_set1_epi16(sc[2 * j + 1]), hi));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(x[i].d * half(b)), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum(acc) - mins;
}

// ggml_vec_dot_q6_K_q8_K, AVX2: 128 values per step; v + 32 (0..63) against q8, minus 32 · q8
float dot_q6_K(const uint8_t* row, const Q8K* x, int64_t nb) {
  const __m256i k32 = _mm256_set1_epi8(32);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t *b = row + i * 210, *ql = b, *qh = b + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    const int8_t* q8 = x[i].qs;
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < 2; ++j, ql += 64, qh += 32, sc += 8, q8 += 128) {
      __m256i q[4];
      q6k_unpack(ql, qh, q);
      for (int k = 0; k < 4; ++k) {
        const __m256i a = load(q8 + 32 * k);
        const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q[k], a), _mm256_maddubs_epi16(k32, a));
        const __m256i s = _mm256_set_m128i(_mm_set1_epi16(sc[2 * k + 1]), _mm_set1_epi16(sc[2 * k]));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s, p));
      }
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(x[i].d * half(b + 208)), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum(acc);
}

// ggml_vec_dot_q5_0_q8_0 / ggml_vec_dot_q5_1_q8_1, AVX2: the fifth bits expanded to bytes, one block of 32 a step
inline __m256i bytes_from_bits_32(const uint8_t* p) {
  uint32_t x32;
  std::memcpy(&x32, p, 4);
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  const __m256i bytes = _mm256_or_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(x32), shuf),
                                        _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}
inline __m256i bytes_from_nibbles_32(const uint8_t* p) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_and_si256(_mm256_set1_epi8(0xF), _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1));
}

float dot_q5(int64_t type, const uint8_t* row, const Q8* x, int64_t nb) {
  const bool one = type == Q5_1;
  const int64_t bytes = block_bytes(type);
  __m256 acc = _mm256_setzero_ps();
  float mins = 0.f;
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* b = row + i * bytes;
    __m256i q = bytes_from_nibbles_32(b + (one ? 8 : 6));
    const __m256i high = bytes_from_bits_32(b + (one ? 4 : 2));
    const __m256i y = load(x[i].qs);
    __m256i p;
    if (one) {  // 0..31 (unsigned) against q8
      q = _mm256_or_si256(q, _mm256_and_si256(high, _mm256_set1_epi8(0x10)));
      p = _mm256_maddubs_epi16(q, y);
      mins += half(b + 2) * x[i].s;
    } else {  // v − 16 (signed): |v − 16| against q8 carrying its sign
      q = _mm256_or_si256(q, _mm256_andnot_si256(high, _mm256_set1_epi8(static_cast<char>(0xF0))));
      p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q));
    }
    const __m256 s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half(b) * x[i].d), s, acc);
  }
  return hsum(acc) + mins;
}

#endif

// the types with a SIMD dot product in this build (reference: the scalar code whatever the build)
bool simd(int64_t type, bool reference) {
#if defined(__AVX2__)
  return !reference && (type == Q4_K || type == Q6_K || type == Q5_0 || type == Q5_1);
#else
  (void)type; (void)reference;
  return false;
#endif
}

float dot_k(int64_t type, const uint8_t* row, const Q8K* x, int64_t nb) {
#if defined(__AVX2__)
  return type == Q4_K ? dot_q4_K(row, x, nb) : dot_q6_K(row, x, nb);
#else
  (void)type; (void)row; (void)x; (void)nb;
  return 0.f;
#endif
}

float dot_q5_simd(int64_t type, const uint8_t* row, const Q8* x, int64_t nb) {
#if defined(__AVX2__)
  return dot_q5(type, row, x, nb);
#else
  (void)type; (void)row; (void)x; (void)nb;
  return 0.f;
#endif
}

// ------------------------------------------------------------------------------- the op

void check(const at::Tensor& x, const at::Tensor& w, int64_t type) {
  TORCH_CHECK(block_bytes(type) > 0, "ggml_linear: unsupported ggml type ", type);
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 (M, K)");
  TORCH_CHECK(x.size(1) % block_width(type) == 0, "the row width is not whole blocks");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous() &&
              w.size(1) == x.size(1) / block_width(type) * block_bytes(type),
              "blocks: contiguous uint8 (N, K / block · bytes per block)");
}

// reference: the scalar code whatever the build (the tests compare the SIMD paths with it)
at::Tensor ggml_linear(const at::Tensor& x, const at::Tensor& w, int64_t type, bool reference) {
  check(x, w, type);
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0), nb = K / block_width(type), rb = w.size(1);
  const bool k_quant = block_width(type) == QK;
  std::vector<Q8K> xk(k_quant ? M * nb : 0);
  std::vector<Q8> x8(k_quant ? 0 : M * nb);
  if (k_quant) quantize_q8_K(x.data_ptr<float>(), xk.data(), M * nb);
  else quantize_q8(x.data_ptr<float>(), x8.data(), M * nb);
  auto y = at::empty({M, N}, x.options());
  float* Y = y.data_ptr<float>();
  const uint8_t* W = w.data_ptr<uint8_t>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* row = W + n * rb;
      if (simd(type, reference)) {  // the weight row stays in L1 while every activation row meets it
        for (int64_t m = 0; m < M; ++m)
          Y[m * N + n] = k_quant ? dot_k(type, row, xk.data() + m * nb, nb) : dot_q5_simd(type, row, x8.data() + m * nb, nb);
      } else if (k_quant) {
        row_k_ref(type, row, xk.data(), nb, M, Y + n, N, reference);
      } else {
        row_q5_ref(type, row, x8.data(), nb, M, Y + n, N);
      }
    }
  });
  return y;
}

#if defined(__AVX2__)
// float32 → bfloat16, round to nearest even (c10::BFloat16's rounding for finite values), 16 values
inline __m256i to_bf16(__m256 f0, __m256 f1) {
  auto rne = [](__m256 f) {
    const __m256i b = _mm256_castps_si256(f);
    const __m256i r = _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1)),
                                       _mm256_set1_epi32(0x7FFF));
    return _mm256_srli_epi32(_mm256_add_epi32(b, r), 16);
  };
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(rne(f0), rne(f1)), 0xD8);
}

// 32 unsigned codes q → bfloat16 a · q + b, (a0, b0) for the first 16 and (a1, b1) for the next 16
inline void store32_bf16(__m256i q, float a0, float b0, float a1, float b1, c10::BFloat16* out) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  __m256 f[4];
  for (int i = 0; i < 4; ++i) {
    const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[i]));
    f[i] = _mm256_fmadd_ps(v, _mm256_set1_ps(i < 2 ? a0 : a1), _mm256_set1_ps(i < 2 ? b0 : b1));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), to_bf16(f[0], f[1]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16), to_bf16(f[2], f[3]));
}

// one row of Q4_K / Q6_K blocks → bfloat16 (the two types of a Q4_K_M file); false: another type
bool dequantize_row_bf16(int64_t type, const uint8_t* row, int64_t nb, c10::BFloat16* out) {
  if (type == Q4_K) {
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int64_t i = 0; i < nb; ++i, out += QK) {
      const uint8_t* b = row + i * 144;
      const float d = half(b), dmin = half(b + 2);
      for (int j = 0; j < 4; ++j) {
        int sc0, mn0, sc1, mn1;
        scale_min_k4(2 * j, b + 4, sc0, mn0);
        scale_min_k4(2 * j + 1, b + 4, sc1, mn1);
        const __m256i bits = load(b + 16 + 32 * j);
        const float a0 = d * sc0, b0 = -dmin * mn0, a1 = d * sc1, b1 = -dmin * mn1;
        store32_bf16(_mm256_and_si256(bits, m4), a0, b0, a0, b0, out + 64 * j);
        store32_bf16(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), a1, b1, a1, b1, out + 64 * j + 32);
      }
    }
    return true;
  }
  if (type == Q6_K) {
    for (int64_t i = 0; i < nb; ++i, out += QK) {
      const uint8_t *b = row + i * 210, *ql = b, *qh = b + 128;
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
      const float d = half(b + 208);
      for (int j = 0; j < 2; ++j, ql += 64, qh += 32, sc += 8) {
        __m256i q[4];
        q6k_unpack(ql, qh, q);
        for (int k = 0; k < 4; ++k) {  // w = d · sc · (q − 32)
          const float a0 = d * sc[2 * k], a1 = d * sc[2 * k + 1];
          store32_bf16(q[k], a0, -32.f * a0, a1, -32.f * a1, out + 128 * j + 32 * k);
        }
      }
    }
    return true;
  }
  return false;
}
#endif

// R weight rows of `rb` bytes from W dequantized into Y (R, K): float32 (the gguf package's values) or
// bfloat16 (those values rounded to nearest even), the rows spread over the threads
template <typename T>
void dequantize_into(const uint8_t* W, int64_t type, int64_t R, int64_t K, int64_t rb, T* Y) {
  const int64_t nb = K / block_width(type), bytes = block_bytes(type);
  at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
    Unpacked u;
    int8_t v[Q32];
    float f[QK];
    for (int64_t r = r0; r < r1; ++r) {
#if defined(__AVX2__)
      if constexpr (std::is_same_v<T, c10::BFloat16>)
        if (dequantize_row_bf16(type, W + r * rb, nb, Y + r * K)) continue;
#endif
      for (int64_t i = 0; i < nb; ++i) {
        const uint8_t* b = W + r * rb + i * bytes;
        T* out = Y + r * K + i * block_width(type);
        if (type == Q5_0 || type == Q5_1) {
          const bool one = type == Q5_1;
          unpack_q5(b + (one ? 4 : 2), b + (one ? 8 : 6), v);
          const float d = half(b), m = one ? half(b + 2) : -16.f * d;
          for (int j = 0; j < Q32; ++j) f[j] = v[j] * d + m;
          for (int j = 0; j < Q32; ++j) out[j] = static_cast<T>(f[j]);
          continue;
        }
        unpack(type, b, u);
        for (int e = 0; e < QK; ++e) f[e] = u.d * u.sc[e / 16] * u.v[e] - u.dmin * u.mn[e / 16];
        for (int e = 0; e < QK; ++e) out[e] = static_cast<T>(f[e]);
      }
    }
  });
}

// rows of the weight dequantized (an embedding lookup): blocks (R, bytes) → (R, K) float32
at::Tensor ggml_dequantize(const at::Tensor& w, int64_t type, int64_t K) {
  TORCH_CHECK(block_bytes(type) > 0, "ggml_dequantize: unsupported ggml type ", type);
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous() && K % block_width(type) == 0 &&
              w.size(1) == K / block_width(type) * block_bytes(type), "blocks: contiguous uint8 (R, row bytes)");
  auto y = at::empty({w.size(0), K}, w.options().dtype(at::kFloat));
  dequantize_into(w.data_ptr<uint8_t>(), type, w.size(0), K, w.size(1), y.data_ptr<float>());
  return y;
}

// Prefill (many activation rows): a matrix product, where the integer dot products above would unpack every
// weight block once per activation row. Here a tile of weight rows is dequantized once into bfloat16 and
// multiplied by torch's bfloat16 GEMM (oneDNN: AVX512-BF16 / AMX where the CPU has them) against the
// activations rounded once to bfloat16; a tile at a time (GEMM_TILE bytes), never the whole matrix. The
// activations are rounded to bfloat16 instead of q8_K / q8_0 (a relative error of 2^-9 per value, about
// what q8's rounding costs; the outputs are bfloat16 products widened to float32).
constexpr int64_t GEMM_TILE = 8 << 20;

at::Tensor ggml_gemm(const at::Tensor& x, const at::Tensor& w, int64_t type) {
  check(x, w, type);
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0), rb = w.size(1);
  const int64_t rows = std::min(N, std::max<int64_t>(16, GEMM_TILE / (2 * K) / 16 * 16));
  const auto xb = x.to(at::kBFloat16);
  auto y = at::empty({M, N}, x.options());
  auto tile = at::empty({rows, K}, x.options().dtype(at::kBFloat16));
  for (int64_t n = 0; n < N; n += rows) {
    const int64_t t = std::min(rows, N - n);
    auto part = tile.narrow(0, 0, t);
    dequantize_into(w.data_ptr<uint8_t>() + n * rb, type, t, K, rb, part.data_ptr<at::BFloat16>());
    y.narrow(1, n, t).copy_(at::mm(xb, part.t()));
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llamalab, m) {
  m.def("ggml_linear(Tensor x, Tensor w, int type, bool reference=False) -> Tensor");
  m.def("ggml_dequantize(Tensor w, int type, int K) -> Tensor");
  m.def("ggml_gemm(Tensor x, Tensor w, int type) -> Tensor");
}

TORCH_LIBRARY_IMPL(llamalab, CPU, m) {
  m.impl("ggml_linear", &ggml_linear);
  m.impl("ggml_dequantize", &ggml_dequantize);
  m.impl("ggml_gemm", &ggml_gemm);
}
