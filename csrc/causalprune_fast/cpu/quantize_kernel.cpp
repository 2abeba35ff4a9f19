// CPU kernel of `quantize`: per-column [min, max] (NaN-propagating) and equal-width codes.
//
// Codes are written column-major ([C, S] storage), the layout the pairwise kernels read.
// Row-major input (the usual [samples, features] activations) is processed in blocks of
// columns, vectorised across the columns of a row, and transposed through a small buffer, so
// the input is never copied; column-major input is processed a column at a time.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../checks.h"
#include "../mi_math.h"

#if defined(__x86_64__) && !defined(__clang__)
// Cloned for AVX-512, AVX2 and baseline x86-64, so the float64 arithmetic vectorises on
// whatever CPU runs it.
#define CPF_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CPF_CLONES
#endif

namespace causalprune_fast {
namespace {

constexpr int64_t kBlockCols = 32;   // columns per block of a row-major input
constexpr int64_t kBlockRows = 256;  // samples per transposition buffer

// Running min / max / NaN count of `nc` columns over rows [0, S) of a row-major input.
template <typename T>
CPF_CLONES void min_max_rows(const T* __restrict x, int64_t S, int64_t ld, int64_t nc,
                             double* __restrict lo, double* __restrict hi,
                             int64_t* __restrict nan) {
  for (int64_t s = 0; s < S; ++s) {
    const T* __restrict row = x + s * ld;
    for (int64_t c = 0; c < nc; ++c) {
      const double v = static_cast<double>(row[c]);
      nan[c] += v != v;
      lo[c] = v < lo[c] ? v : lo[c];
      hi[c] = v > hi[c] ? v : hi[c];
    }
  }
}

// Codes of rows [0, n) of `nc` columns of a row-major input, into buf[s * kBlockCols + c].
template <typename T>
CPF_CLONES void quantize_rows(const T* __restrict x, int64_t n, int64_t ld, int64_t nc,
                              const double* __restrict lo, const double* __restrict hi, int bins,
                              uint8_t* __restrict buf) {
  for (int64_t s = 0; s < n; ++s) {
    const T* __restrict row = x + s * ld;
    for (int64_t c = 0; c < nc; ++c) {
      buf[s * kBlockCols + c] =
          static_cast<uint8_t>(quantize_value(static_cast<double>(row[c]), lo[c], hi[c], bins));
    }
  }
}

template <typename T>
CPF_CLONES void min_max_column(const T* col, int64_t n, double* lo, double* hi, bool* nan) {
  double mn = *lo, mx = *hi;
  bool bad = false;
  for (int64_t s = 0; s < n; ++s) {
    const double v = static_cast<double>(col[s]);
    bad |= v != v;
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
  }
  *lo = mn;
  *hi = mx;
  *nan |= bad;
}

template <typename T>
CPF_CLONES void quantize_column(const T* col, int64_t n, double lo, double hi, int bins,
                                uint8_t* out) {
  for (int64_t s = 0; s < n; ++s) {
    out[s] = static_cast<uint8_t>(quantize_value(static_cast<double>(col[s]), lo, hi, bins));
  }
}

template <typename T>
void quantize_impl(const T* x, int64_t S, int64_t C, int64_t row_stride, int64_t col_stride,
                   bool compute_ranges, double* ranges, int bins, uint8_t* codes) {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan_value = std::numeric_limits<double>::quiet_NaN();
  if (row_stride == 1) {  // column-major: one column at a time
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const T* col = x + c * col_stride;
        if (compute_ranges) {
          double lo = inf, hi = -inf;
          bool nan = false;
          min_max_column(col, S, &lo, &hi, &nan);
          ranges[2 * c] = nan ? nan_value : lo;
          ranges[2 * c + 1] = nan ? nan_value : hi;
        }
        quantize_column(col, S, ranges[2 * c], ranges[2 * c + 1], bins, codes + c * S);
      }
    });
    return;
  }
  // Row-major (col_stride == 1): blocks of kBlockCols columns.
  const int64_t nblocks = (C + kBlockCols - 1) / kBlockCols;
  if (compute_ranges) {
    at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t c0 = b * kBlockCols, nc = std::min(kBlockCols, C - c0);
        double lo[kBlockCols], hi[kBlockCols];
        int64_t nan[kBlockCols];
        std::fill(lo, lo + nc, inf);
        std::fill(hi, hi + nc, -inf);
        std::fill(nan, nan + nc, 0);
        min_max_rows(x + c0, S, row_stride, nc, lo, hi, nan);
        for (int64_t c = 0; c < nc; ++c) {
          ranges[2 * (c0 + c)] = nan[c] ? nan_value : lo[c];
          ranges[2 * (c0 + c) + 1] = nan[c] ? nan_value : hi[c];
        }
      }
    });
  }
  const int64_t nrows = (S + kBlockRows - 1) / kBlockRows;
  at::parallel_for(0, nblocks * nrows, 1, [&](int64_t i0, int64_t i1) {
    uint8_t buf[kBlockRows * kBlockCols];
    double lo[kBlockCols], hi[kBlockCols];
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t c0 = (item / nrows) * kBlockCols, nc = std::min(kBlockCols, C - c0);
      const int64_t s0 = (item % nrows) * kBlockRows, n = std::min(kBlockRows, S - s0);
      for (int64_t c = 0; c < nc; ++c) {
        lo[c] = ranges[2 * (c0 + c)];
        hi[c] = ranges[2 * (c0 + c) + 1];
      }
      quantize_rows(x + s0 * row_stride + c0, n, row_stride, nc, lo, hi, bins, buf);
      for (int64_t c = 0; c < nc; ++c) {  // transpose out of the buffer
        uint8_t* out = codes + (c0 + c) * S + s0;
        for (int64_t s = 0; s < n; ++s) out[s] = buf[s * kBlockCols + c];
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_cpu(const at::Tensor& x, int64_t bins,
                                                 const c10::optional<at::Tensor>& ranges) {
  check_quantize_args(x, bins, ranges);
  const int64_t S = x.size(0);
  const int64_t C = x.size(1);
  // Read in place when rows or columns are contiguous; copy only other layouts.
  const at::Tensor src =
      (x.stride(0) == 1 || x.stride(1) == 1) ? x : x.contiguous();
  // A fresh tensor even when ranges are given: op outputs must not alias their inputs.
  at::Tensor r = ranges.has_value() ? ranges->clone(at::MemoryFormat::Contiguous)
                                    : at::empty({C, 2}, x.options().dtype(at::kDouble));
  at::Tensor codes_t = at::empty({C, S}, x.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantize_cpu", [&] {
    // A single row or column has stride 1 both ways; treat it as row-major unless S > 1.
    const bool column_major = src.stride(0) == 1 && (S > 1 || src.stride(1) != 1);
    quantize_impl(src.data_ptr<scalar_t>(), S, C, column_major ? 1 : src.stride(0),
                  column_major ? src.stride(1) : 1, !ranges.has_value(), r.data_ptr<double>(),
                  static_cast<int>(bins), codes_t.data_ptr<uint8_t>());
  });
  return {codes_t.t(), r};
}

}  // namespace

TORCH_LIBRARY_IMPL(causalprune_fast, CPU, m) {
  m.impl("quantize", &quantize_cpu);
}

}  // namespace causalprune_fast
