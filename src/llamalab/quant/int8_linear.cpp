// y = x Wᵀ for a weight held as group-wise int8 codes: the matrix products of int8 (Q8_0) decoding.
//
//   w[n, k] = q[n, k] · scale[n, g]                 g = k / group_size, q in -127..127
//   x[m, k] ≈ xq[m, k] · dx[m, b]                   b = k / 32, xq in -127..127 (Q8_0's rounding)
//   y[m, n] = Σ_g scale[n, g] · Σ_{b in g} dx[m, b] · Σ_{k in b} q[n, k] · xq[m, k]   (exact integer dot products)
//
// This is llama.cpp's arithmetic for Q8_0 weights (ggml_vec_dot_q8_0_q8_0): the activations are rounded to
// 8 bits per block of 32 so that 32 products become one integer instruction (AVX-512 VNNI / AVX-VNNI
// `vpdpbusd`, else AVX2 `vpmaddubsw` + `vpmaddwd`; plain loops elsewhere).
// Decoding reads every weight once per token: the kernel is a stream of codes, and its work per byte has to
// stay below what the memory delivers (widening the codes to float32 instead took 2× the instructions and
// ran at half the bandwidth). Rows go to threads in blocks of four (each activation load serves four rows);
// the codes a few blocks ahead are prefetched. Each output is computed by the same instruction sequence
// whatever M is, so a batch row's result equals the row's result alone.
//
// The caller keeps codes of -128 away (the sign trick below cannot negate them; no Q8_0 writer emits them).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t BLOCK = 32;  // activation block, and the step of the inner loop
constexpr int ROWS = 4;        // rows per register block
constexpr int64_t PREFETCH_ROWS = 16;

// x (M, K) → xq (M, K) int8 and dx (M, K/32) as llama.cpp's quantize_row_q8_0_ref: per block d = max|x| / 127,
// xq = round(x · (1/d)) half away from zero, d kept as float16. A block holding NaN or ±inf gets d = NaN, so
// that the outputs it reaches are NaN, as a float product's would be.
void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* xq, float* dx) {
  for (int64_t b = 0; b < M * K / BLOCK; ++b) {
    const float* v = x + b * BLOCK;
    float amax = 0.f;
    bool finite = true;
    for (int j = 0; j < BLOCK; ++j) {
      finite = finite && std::isfinite(v[j]);
      amax = std::max(amax, std::fabs(v[j]));
    }
    const float d = amax / 127.f, inv = finite && d > 0.f ? 1.f / d : 0.f;
    dx[b] = finite ? static_cast<float>(c10::Half(d)) : NAN;  // a block_q8_0 holds d as float16
    for (int j = 0; j < BLOCK; ++j) xq[b * BLOCK + j] = finite ? static_cast<int8_t>(std::round(v[j] * inv)) : 0;
  }
}

#if defined(__AVX2__)

inline __m256i dot_u8s8(__m256i u, __m256i s) {  // 8 lanes, each the sum of 4 products u8 · s8
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else  // a pair of u8·s8 products fits int16 here (both ≤ 127 in magnitude): no saturation
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// Σ q·xq over one block of 32, as 8 partial sums: |q| (u8) against xq carrying q's sign (s8)
inline __m256i block_dot(const int8_t* codes, __m256i xq) {
  const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes));
  return dot_u8s8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xq, q));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

template <int R>
void row_block(const int8_t* Q, const float* S, const int8_t* XQ, const float* DX, float* Y,
               int64_t n, int64_t M, int64_t N, int64_t K, int64_t g) {
  const int64_t G = K / g;
  const int8_t* codes = Q + n * K;
  const int8_t* ahead = Q + std::min(n + PREFETCH_ROWS, N - R) * K;  // the rows a few blocks on
  for (int64_t m = 0; m < M; ++m) {
    const int8_t* xq = XQ + m * K;
    const float* dx = DX + m * (K / BLOCK);
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t gi = 0; gi < G; ++gi) {
      __m256 part[R];
      for (int r = 0; r < R; ++r) part[r] = _mm256_setzero_ps();
      for (int64_t k = gi * g; k < (gi + 1) * g; k += BLOCK) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + k));
        const __m256 d = _mm256_set1_ps(dx[k / BLOCK]);
        if (m == 0)  // into L2: the L1's few miss buffers would cap one core's stream at a third of this
          for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(ahead + r * K + k), _MM_HINT_T1);
        for (int r = 0; r < R; ++r)
          part[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_dot(codes + r * K + k, xv)), d, part[r]);
      }
      for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(part[r], _mm256_set1_ps(S[(n + r) * G + gi]), acc[r]);
    }
    for (int r = 0; r < R; ++r) Y[m * N + n + r] = hsum(acc[r]);
  }
}

#else  // portable: the same sums in plain loops

template <int R>
void row_block(const int8_t* Q, const float* S, const int8_t* XQ, const float* DX, float* Y,
               int64_t n, int64_t M, int64_t N, int64_t K, int64_t g) {
  const int64_t G = K / g;
  for (int64_t m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) {
      float y = 0.f;
      for (int64_t gi = 0; gi < G; ++gi) {
        float part = 0.f;
        for (int64_t k = gi * g; k < (gi + 1) * g; k += BLOCK) {
          int32_t dot = 0;
          for (int j = 0; j < BLOCK; ++j) dot += Q[(n + r) * K + k + j] * XQ[m * K + k + j];
          part += static_cast<float>(dot) * DX[m * (K / BLOCK) + k / BLOCK];
        }
        y += part * S[(n + r) * G + gi];
      }
      Y[m * N + n + r] = y;
    }
}

#endif

void run(const int8_t* Q, const float* S, const int8_t* XQ, const float* DX, float* Y,
         int64_t M, int64_t N, int64_t K, int64_t g) {
  const int64_t blocks = N / ROWS;
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) row_block<ROWS>(Q, S, XQ, DX, Y, b * ROWS, M, N, K, g);
  });
  for (int64_t n = blocks * ROWS; n < N; ++n) row_block<1>(Q, S, XQ, DX, Y, n, M, N, K, g);
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale, int64_t group_size) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 (M, K)");
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  TORCH_CHECK(group_size > 0 && group_size % BLOCK == 0 && K % group_size == 0,
              "group size must be a multiple of 32 dividing the row");
  TORCH_CHECK(q.dim() == 2 && q.is_contiguous() && q.size(1) == K && q.scalar_type() == at::kChar,
              "q: contiguous int8 codes (N, K)");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.dim() == 2 &&
              scale.size(0) == N && scale.size(1) == K / group_size, "scale: contiguous float32 (N, K / group_size)");
  std::vector<int8_t> xq(M * K);
  std::vector<float> dx(M * K / BLOCK);
  quantize_rows(x.data_ptr<float>(), M, K, xq.data(), dx.data());
  auto y = at::empty({M, N}, x.options());
  run(q.data_ptr<int8_t>(), scale.data_ptr<float>(), xq.data(), dx.data(), y.data_ptr<float>(), M, N, K, group_size);
  return y;
}

// Prefill (many activation rows): a tile of rows (GEMM_TILE bytes of bfloat16) dequantized once, q · scale in
// float32 rounded to bfloat16, and multiplied by torch's bfloat16 GEMM against the activations rounded once to
// bfloat16 (not to q8_0: a relative error of 2^-9 per value); the outputs bfloat16 products widened to float32.
constexpr int64_t GEMM_TILE = 8 << 20;

at::Tensor int8_gemm(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale, int64_t group_size) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x: float32 (M, K)");
  TORCH_CHECK(q.dim() == 2 && q.size(1) == x.size(1) && q.scalar_type() == at::kChar, "q: int8 codes (N, K)");
  TORCH_CHECK(group_size > 0 && x.size(1) % group_size == 0 && scale.dim() == 2 && scale.size(0) == q.size(0) &&
              scale.size(1) == x.size(1) / group_size, "scale: (N, K / group_size)");
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  const int64_t rows = std::min(N, std::max<int64_t>(16, GEMM_TILE / (2 * K) / 16 * 16));
  const auto xb = x.to(at::kBFloat16);
  const auto qc = q.contiguous();
  const auto sc = scale.to(at::kFloat).contiguous();
  auto y = at::empty({M, N}, x.options());
  auto tile = at::empty({rows, K}, x.options().dtype(at::kBFloat16));
  for (int64_t n = 0; n < N; n += rows) {
    const int64_t t = std::min(rows, N - n);
    const int8_t* Q = qc.data_ptr<int8_t>() + n * K;
    const float* S = sc.data_ptr<float>() + n * (K / group_size);
    c10::BFloat16* W = tile.data_ptr<c10::BFloat16>();
    at::parallel_for(0, t, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t k = 0; k < K; ++k)
          W[r * K + k] = static_cast<c10::BFloat16>(Q[r * K + k] * S[r * (K / group_size) + k / group_size]);
    });
    y.narrow(1, n, t).copy_(at::mm(xb, tile.narrow(0, 0, t).t()));
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llamalab, m) {
  m.def("int8_linear(Tensor x, Tensor q, Tensor scale, int group_size) -> Tensor");
  m.def("int8_gemm(Tensor x, Tensor q, Tensor scale, int group_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(llamalab, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("int8_gemm", &int8_gemm);
}
