// y = x Wᵀ for a float weight W (N, K) in float32, bfloat16 or float16 and activations x (M, K) in float32:
// the matrix-vector products of decoding, streamed at the memory's bandwidth.
//
// At batch 1 every projection reads each weight once for two FLOPs, so its speed is the rate at which the
// weights arrive. BLAS GEMV does not reach it on every CPU (MKL's fp32 GEMV reads ~11 GB/s on a 2-core AMD
// EPYC that streams ~27 GB/s); this loop does: rows go to threads in blocks of four (each activation load
// serves four rows), the weights a few blocks ahead are prefetched into L2, a 16-bit weight is widened to
// float32 in registers (F16C `vcvtph2ps` for float16, a 16-bit shift for bfloat16) and every product is
// accumulated in float32. 16-bit weights stream half the bytes of float32 ones: twice the tokens per second.
//
// A few rows (M < GEMM_ROWS: decoding a batch) reuse each loaded weight for up to MB activation rows. Each
// output is computed by the same instruction sequence whatever M is (one float32 accumulator per output,
// the same k order, the same tail), so a batch row's result equals the row's result alone.
// Many rows (a prompt's prefill) are a matrix product, where a GEMM reuses each weight from cache for many
// rows: float32 weights go to torch's GEMM as they are; 16-bit ones are widened to float32 a tile of rows at a
// time (one tile's copy, never the whole matrix) and multiplied by the same GEMM, float32 throughout.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define LLAMALAB_FLOAT_AVX2 1
#include <immintrin.h>
#endif

namespace {

constexpr int ROWS = 4;               // weight rows per register block
constexpr int64_t GEMM_ROWS = 32;     // from this many activation rows on, a GEMM (bench/float_kernel.py)
constexpr int64_t GEMM_TILE = 8 << 20;  // weights of a 16-bit matrix widened per GEMM call (32 MB of float32)
constexpr int64_t PREFETCH_ROWS = 16; // prefetch distance, in rows
#if defined(__AVX512VL__)
constexpr int MB = 4;  // activation rows per pass over a row block (32 vector registers)
#else
constexpr int MB = 2;  // (16 vector registers: 8 accumulators, 4 weights, 1 activation)
#endif

inline float widen(float w) { return w; }
inline float widen(c10::Half w) { return static_cast<float>(w); }
inline float widen(c10::BFloat16 w) { return static_cast<float>(w); }

#if defined(LLAMALAB_FLOAT_AVX2)

// 8 consecutive weights as float32
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load8(const c10::BFloat16* p) {  // bfloat16 is the high half of a float32
  const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// Y[m, n..n+R) for m in [m0, m0+B): R weight rows against B activation rows
template <typename T, int R, int B>
void tile(const T* W, const float* X, float* Y, int64_t n, int64_t m0, int64_t N, int64_t K, bool prefetch) {
  const T* w = W + n * K;
  const T* ahead = W + std::min(n + PREFETCH_ROWS, N - R) * K;
  const int64_t K8 = K / 8 * 8, line = 64 / sizeof(T);  // weights per cache line
  __m256 acc[R][B];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) acc[r][b] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K8; k += 8) {
    if (prefetch && k % line == 0)
      for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(ahead + r * K + k), _MM_HINT_T1);
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load8(w + r * K + k);
    for (int b = 0; b < B; ++b) {
      const __m256 xv = _mm256_loadu_ps(X + (m0 + b) * K + k);
      for (int r = 0; r < R; ++r) acc[r][b] = _mm256_fmadd_ps(wv[r], xv, acc[r][b]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) {
      float y = hsum(acc[r][b]);
      for (int64_t k = K8; k < K; ++k) y += widen(w[r * K + k]) * X[(m0 + b) * K + k];
      Y[(m0 + b) * N + n + r] = y;
    }
}

#else  // portable: the same sums in plain loops (8 partial sums per output, then their total, then the tail)

template <typename T, int R, int B>
void tile(const T* W, const float* X, float* Y, int64_t n, int64_t m0, int64_t N, int64_t K, bool) {
  const int64_t K8 = K / 8 * 8;
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) {
      const T* w = W + (n + r) * K;
      const float* x = X + (m0 + b) * K;
      float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t k = 0; k < K8; k += 8)
        for (int j = 0; j < 8; ++j) part[j] += widen(w[k + j]) * x[k + j];
      float y = ((part[0] + part[4]) + (part[2] + part[6])) + ((part[1] + part[5]) + (part[3] + part[7]));
      for (int64_t k = K8; k < K; ++k) y += widen(w[k]) * x[k];
      Y[(m0 + b) * N + n + r] = y;
    }
}

#endif

// rows n..n+R for every activation row, MB at a time (the weights are prefetched on the first pass only)
template <typename T, int R>
void rows(const T* W, const float* X, float* Y, int64_t n, int64_t M, int64_t N, int64_t K) {
  int64_t m = 0;
  for (; m + MB <= M; m += MB) tile<T, R, MB>(W, X, Y, n, m, N, K, m == 0);
  for (; m < M; ++m) tile<T, R, 1>(W, X, Y, n, m, N, K, m == 0);
}

template <typename T>
void gemv(const T* W, const float* X, float* Y, int64_t M, int64_t N, int64_t K) {
  const int64_t blocks = N / ROWS;
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) rows<T, ROWS>(W, X, Y, b * ROWS, M, N, K);
  });
  for (int64_t n = blocks * ROWS; n < N; ++n) rows<T, 1>(W, X, Y, n, M, N, K);
}

// many rows: torch's float32 GEMM, a 16-bit weight widened GEMM_TILE weights at a time into the output's columns
at::Tensor gemm(const at::Tensor& x, const at::Tensor& w) {
  if (w.scalar_type() == at::kFloat) return at::mm(x, w.t());
  const int64_t N = w.size(0);
  auto y = at::empty({x.size(0), N}, x.options());
  const int64_t rows = std::max<int64_t>(1, GEMM_TILE / w.size(1));
  for (int64_t n = 0; n < N; n += rows) {
    const int64_t t = std::min(rows, N - n);
    auto out = y.narrow(1, n, t);
    at::mm_out(out, x, w.narrow(0, n, t).to(at::kFloat).t());
  }
  return y;
}

at::Tensor float_linear(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 (M, K)");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.size(1) == x.size(1),
              "w: contiguous (N, K) with K = x's columns");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  if (M >= GEMM_ROWS) return gemm(x, w);
  auto y = at::empty({M, N}, x.options());
  const float* X = x.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  switch (w.scalar_type()) {
    case at::kFloat: gemv(w.data_ptr<float>(), X, Y, M, N, K); break;
    case at::kHalf: gemv(w.data_ptr<c10::Half>(), X, Y, M, N, K); break;
    case at::kBFloat16: gemv(w.data_ptr<c10::BFloat16>(), X, Y, M, N, K); break;
    default: TORCH_CHECK(false, "w: float32, bfloat16 or float16, got ", w.scalar_type());
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llamalab, m) { m.def("float_linear(Tensor x, Tensor w) -> Tensor"); }

TORCH_LIBRARY_IMPL(llamalab, CPU, m) { m.impl("float_linear", &float_linear); }
