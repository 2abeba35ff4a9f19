// AND + popcount matrix product and bin-mask construction; see popcount_gemm.h.
#include "popcount_gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>
#include <utility>

#if defined(__x86_64__) || defined(_M_X64)
// GCC 12 warns about an uninitialised variable inside its own _mm512_setzero_si512.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define CPF_X86 1
#define CPF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vpopcntdq")))
#define CPF_POPCNT __attribute__((target("popcnt")))
#else
#define CPF_X86 0
#define CPF_AVX512
#define CPF_POPCNT
#endif

namespace causalprune_fast {
namespace cpu {

Isa detect_isa() {
#if CPF_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vpopcntdq")) {
    return Isa::kAvx512;
  }
#endif
  return Isa::kPortable;
}

const char* isa_name(Isa isa) {
  return isa == Isa::kAvx512 ? "avx512_vpopcntdq" : "portable";
}

namespace {

// Register tile of the micro-kernels: MR rows of A against NR rows of B, MR * NR accumulators.
constexpr int kMR = 4;
constexpr int kNR = 6;
// Words of the shared dimension per cache block: 2 KiB per mask row, so a 4-row A panel stays
// in L1 while the B panel streams from L2.
constexpr int64_t kBlockWords = 256;

// ---------------------------------------------------------------- portable path
template <int MR, int NR>
__attribute__((always_inline)) inline void micro_portable_body(const uint64_t* A,
                                                               const uint64_t* B, int64_t ld,
                                                               int64_t w0, int64_t nw,
                                                               int32_t* C, int64_t ldc) {
  uint64_t acc[MR][NR] = {};
  for (int64_t w = w0; w < w0 + nw; ++w) {
    uint64_t b[NR];
    for (int n = 0; n < NR; ++n) b[n] = B[n * ld + w];
    for (int m = 0; m < MR; ++m) {
      const uint64_t a = A[m * ld + w];
      for (int n = 0; n < NR; ++n) acc[m][n] += __builtin_popcountll(a & b[n]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) C[m * ldc + n] += static_cast<int32_t>(acc[m][n]);
}

#if CPF_X86
// The same body, inlined into a function compiled with the POPCNT instruction (every x86-64
// CPU of the last 15 years).
template <int MR, int NR>
CPF_POPCNT void micro_popcnt(const uint64_t* A, const uint64_t* B, int64_t ld, int64_t w0,
                             int64_t nw, int32_t* C, int64_t ldc) {
  micro_portable_body<MR, NR>(A, B, ld, w0, nw, C, ldc);
}

// ---------------------------------------------------------------- AVX-512 path
template <int MR, int NR>
CPF_AVX512 void micro_avx512(const uint64_t* A, const uint64_t* B, int64_t ld, int64_t w0,
                             int64_t nw, int32_t* C, int64_t ldc) {
  __m512i acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_si512();
  for (int64_t w = w0; w < w0 + nw; w += kWordsPerBlock) {
    __m512i b[NR];
    for (int n = 0; n < NR; ++n) b[n] = _mm512_loadu_si512(B + n * ld + w);
    for (int m = 0; m < MR; ++m) {
      const __m512i a = _mm512_loadu_si512(A + m * ld + w);
      for (int n = 0; n < NR; ++n)
        acc[m][n] = _mm512_add_epi64(acc[m][n], _mm512_popcnt_epi64(_mm512_and_si512(a, b[n])));
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n)
      C[m * ldc + n] += static_cast<int32_t>(_mm512_reduce_add_epi64(acc[m][n]));
}
#endif

using MicroFn = void (*)(const uint64_t*, const uint64_t*, int64_t, int64_t, int64_t, int32_t*,
                         int64_t);

template <int MR, int NR>
void micro_portable(const uint64_t* A, const uint64_t* B, int64_t ld, int64_t w0, int64_t nw,
                    int32_t* C, int64_t ldc) {
  micro_portable_body<MR, NR>(A, B, ld, w0, nw, C, ldc);
}

// Tables of micro-kernels for every edge shape (mr, nr) in [1, kMR] x [1, kNR]:
// table[mr - 1][nr - 1] = Kernel<mr, nr>.
template <template <int, int> class Kernel>
struct KernelTable {
  MicroFn fn[kMR][kNR];
  KernelTable() { fill_rows(std::make_integer_sequence<int, kMR>{}); }

 private:
  template <int... M>
  void fill_rows(std::integer_sequence<int, M...>) {
    (fill_row<M>(std::make_integer_sequence<int, kNR>{}), ...);
  }
  template <int M, int... N>
  void fill_row(std::integer_sequence<int, N...>) {
    ((fn[M][N] = &Kernel<M + 1, N + 1>::run), ...);
  }
};

template <int MR, int NR>
struct PortableKernel {
  static void run(const uint64_t* A, const uint64_t* B, int64_t ld, int64_t w0, int64_t nw,
                  int32_t* C, int64_t ldc) {
    micro_portable<MR, NR>(A, B, ld, w0, nw, C, ldc);
  }
};
#if CPF_X86
template <int MR, int NR>
struct PopcntKernel {
  static void run(const uint64_t* A, const uint64_t* B, int64_t ld, int64_t w0, int64_t nw,
                  int32_t* C, int64_t ldc) {
    micro_popcnt<MR, NR>(A, B, ld, w0, nw, C, ldc);
  }
};
template <int MR, int NR>
struct Avx512Kernel {
  static void run(const uint64_t* A, const uint64_t* B, int64_t ld, int64_t w0, int64_t nw,
                  int32_t* C, int64_t ldc) {
    micro_avx512<MR, NR>(A, B, ld, w0, nw, C, ldc);
  }
};
#endif

const MicroFn (*kernel_table(Isa isa))[kNR] {
#if CPF_X86
  static const KernelTable<Avx512Kernel> avx512;
  static const KernelTable<PopcntKernel> popcnt;
  if (isa == Isa::kAvx512) return avx512.fn;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("popcnt")) return popcnt.fn;
#else
  (void)isa;
#endif
  static const KernelTable<PortableKernel> portable;
  return portable.fn;
}

// ---------------------------------------------------------------- bin masks
void build_masks_portable(const uint8_t* codes, int64_t samples, int bins, uint64_t* masks,
                          int64_t words) {
  const int rows = bins - 1;
  uint64_t acc[256];
  for (int64_t w = 0; w * 64 < samples; ++w) {
    std::memset(acc, 0, sizeof(uint64_t) * rows);
    const int64_t s0 = w * 64;
    const int64_t n = std::min<int64_t>(64, samples - s0);
    for (int64_t k = 0; k < n; ++k) {
      const int c = codes[s0 + k];
      if (c < rows) acc[c] |= uint64_t(1) << k;
    }
    for (int b = 0; b < rows; ++b) masks[b * words + w] = acc[b];
  }
}

#if CPF_X86
CPF_AVX512 void build_masks_avx512(const uint8_t* codes, int64_t samples, int bins,
                                   uint64_t* masks, int64_t words) {
  const int rows = bins - 1;
  for (int64_t w = 0; w * 64 < samples; ++w) {
    const int64_t s0 = w * 64;
    const int64_t n = std::min<int64_t>(64, samples - s0);
    const __mmask64 valid = n == 64 ? ~__mmask64(0) : ((__mmask64(1) << n) - 1);
    const __m512i v = _mm512_maskz_loadu_epi8(valid, codes + s0);
    for (int b = 0; b < rows; ++b) {
      masks[b * words + w] =
          _mm512_mask_cmpeq_epi8_mask(valid, v, _mm512_set1_epi8(static_cast<char>(b)));
    }
  }
}
#endif

}  // namespace

void build_bin_masks(Isa isa, const uint8_t* codes, int64_t samples, int64_t cols, int bins,
                     uint64_t* masks, int64_t words) {
  const int rows = bins - 1;
  for (int64_t c = 0; c < cols; ++c) {
    uint64_t* m = masks + c * rows * words;
    std::memset(m, 0, sizeof(uint64_t) * rows * words);
    const uint8_t* col = codes + c * samples;
#if CPF_X86
    if (isa == Isa::kAvx512) {
      build_masks_avx512(col, samples, bins, m, words);
      continue;
    }
#else
    (void)isa;
#endif
    build_masks_portable(col, samples, bins, m, words);
  }
}

void popcount_gemm(Isa isa, const uint64_t* A, int64_t rows, const uint64_t* B, int64_t cols,
                   int64_t ld, int64_t w0, int64_t nw, int32_t* C, int64_t ldc) {
  const MicroFn(*table)[kNR] = kernel_table(isa);
  for (int64_t k0 = w0; k0 < w0 + nw; k0 += kBlockWords) {
    const int64_t kn = std::min<int64_t>(kBlockWords, w0 + nw - k0);
    for (int64_t r = 0; r < rows; r += kMR) {
      const int mr = static_cast<int>(std::min<int64_t>(kMR, rows - r));
      for (int64_t c = 0; c < cols; c += kNR) {
        const int nr = static_cast<int>(std::min<int64_t>(kNR, cols - c));
        table[mr - 1][nr - 1](A + r * ld, B + c * ld, ld, k0, kn, C + r * ldc + c, ldc);
      }
    }
  }
}

double popcount_ceiling(Isa isa, double seconds) {
  // One full micro-tile (kMR rows x kNR rows of kBlockWords words: 12 KiB, in L1) per thread,
  // repeated; the product is the same code path as popcount_gemm's inner loop.
  const MicroFn fn = kernel_table(isa)[kMR - 1][kNR - 1];
  const int threads = std::max(1, at::get_num_threads());
  std::vector<double> bits(threads, 0.0);
  const auto start = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      std::vector<uint64_t> a(kMR * kBlockWords), b(kNR * kBlockWords);
      for (size_t i = 0; i < a.size(); ++i) a[i] = 0x9E3779B97F4A7C15ull * (i + 1 + t);
      for (size_t i = 0; i < b.size(); ++i) b[i] = 0xBF58476D1CE4E5B9ull * (i + 7 + t);
      int32_t c[kMR * kNR] = {};
      int64_t reps = 0;
      while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <
             seconds) {
        for (int r = 0; r < 64; ++r) fn(a.data(), b.data(), kBlockWords, 0, kBlockWords, c, kNR);
        reps += 64;
      }
      volatile int32_t sink = c[0];
      (void)sink;
      bits[t] = static_cast<double>(reps) * kMR * kNR * kBlockWords * 64;
    }
  });
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double total = 0.0;
  for (double v : bits) total += v;
  return total / elapsed;
}

}  // namespace cpu
}  // namespace causalprune_fast
