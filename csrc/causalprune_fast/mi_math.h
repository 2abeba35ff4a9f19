// Arithmetic shared by every C++ and CUDA kernel of causalprune_fast.
//
// These helpers are the single definition of METHOD.md sections 4 (binning) and 5 (mutual
// information). They are `__host__ __device__` so that the CPU kernels (and so the CPU tests)
// exercise exactly the code the CUDA kernels run.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define CPF_HD __host__ __device__ __forceinline__
#else
#define CPF_HD inline
#endif

namespace causalprune_fast {

constexpr int kMinBins = 2;
constexpr int kMaxBins = 256;
constexpr double kLn2 = 0.693147180559945309417232121458176568;

// Equal-width bin of one value on the column range [lo, hi] (METHOD.md section 4):
//   code = min(floor((v - lo) / (hi - lo) * bins), bins - 1), clamped below at 0.
// The arithmetic is done in float64 in exactly this order by every backend (the PyTorch
// reference, C++, CUDA and Triton), so all of them produce identical codes.
// Degenerate range (hi <= lo, e.g. a constant column): bin 0, or bins - 1 for values above hi.
// NaN maps to bin 0; callers reject non-finite inputs before binning.
// Finite ranges wider than the largest double (e.g. [-1.7e308, 1.7e308]) overflow hi - lo to
// inf; there every operand is halved first (exact for normal numbers, so the ratio is the
// same), which keeps the codes of every ordinary range bit-identical (h == 1 is exact).
CPF_HD int quantize_value(double v, double lo, double hi, int bins) {
  const double last = static_cast<double>(bins - 1);
  const double span = hi - lo;
  const double h = span - span == 0.0 ? 1.0 : 0.5;  // 0.5 when hi - lo is inf (or NaN)
  const double t = (v * h - lo * h) / (hi * h - lo * h) * static_cast<double>(bins);
  // t < 1 (negatives clamp to 0) and NaN give 0; t >= bins - 1 gives bins - 1; otherwise
  // truncation of t in [1, bins - 1) is floor. A degenerate range discards t (which may be
  // inf or NaN there). Written as selects, without branches, so that loops vectorise.
  const double inner = t >= 1.0 ? (t >= last ? last : t) : 0.0;
  const double degenerate = v > hi ? last : 0.0;
  return static_cast<int>(hi > lo ? inner : degenerate);
}

// n ln n with 0 ln 0 = 0, for an exact integer count n.
CPF_HD double xlogx(double n) {
  return n > 0.0 ? n * log(n) : 0.0;
}

// Plug-in mutual information in bits (METHOD.md section 5) from
//   joint    = sum_ab n_ab ln n_ab,
//   marg_x   = sum_a n_a ln n_a,
//   marg_y   = sum_b n_b ln n_b,
// over `samples` samples. With `miller_madow`, adds (m_x + m_y - m_xy - 1) / (2 S ln 2), where
// m counts non-empty bins. The result is clamped at 0: the plug-in value is non-negative
// exactly, so the clamp only removes rounding noise, and it is the documented clamp of the
// Miller-Madow variant. A variable with a single non-empty bin (a constant column) carries
// exactly zero information under both estimators, and 0 is returned without rounding noise.
CPF_HD double mi_bits(double joint, double marg_x, double marg_y, double samples,
                      bool miller_madow, int nonempty_x, int nonempty_y, int nonempty_xy) {
  if (nonempty_x <= 1 || nonempty_y <= 1) {
    return 0.0;
  }
  double mi = (joint - marg_x - marg_y + xlogx(samples)) / (samples * kLn2);
  if (miller_madow) {
    mi += static_cast<double>(nonempty_x + nonempty_y - nonempty_xy - 1) /
          (2.0 * samples * kLn2);
  }
  return mi > 0.0 ? mi : 0.0;
}

// Entropy-like sum and non-empty bin count of one histogram of `bins` int64 counts.
struct HistogramTerms {
  double xlogx_sum;
  int nonempty;
};

template <typename Count>
CPF_HD HistogramTerms histogram_terms(const Count* counts, int bins) {
  HistogramTerms t{0.0, 0};
  for (int b = 0; b < bins; ++b) {
    const Count n = counts[b];
    if (n > 0) {
      t.xlogx_sum += xlogx(static_cast<double>(n));
      t.nonempty += 1;
    }
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// Helpers added for the CUDA kernels (cuda/*.cu). Each is the same arithmetic the CPU kernels
// inline; keeping it here lets one definition serve every backend.

// Sum of two partial HistogramTerms: both the xlogx sum and the non-empty count are additive
// over disjoint sets of cells (used to combine the cells of one joint histogram that several
// threads, warps or sub-tiles reduced separately).
CPF_HD HistogramTerms merge_terms(HistogramTerms a, HistogramTerms b) {
  return HistogramTerms{a.xlogx_sum + b.xlogx_sum, a.nonempty + b.nonempty};
}

// NaN-propagating [min, max] of a set of values (METHOD.md section 4: each column is binned on
// its own range). Same result as the CPU quantize kernel's column_min_max: the minimum and
// maximum of the values, or lo = hi = NaN as soon as one value is NaN; the empty set is
// (+inf, -inf), the identity of minmax_merge.
struct MinMax {
  double lo;
  double hi;
};

CPF_HD MinMax minmax_empty() {
  return MinMax{std::numeric_limits<double>::infinity(),
                -std::numeric_limits<double>::infinity()};
}

CPF_HD MinMax minmax_include(MinMax r, double v) {
  if (v != v) {  // NaN: sticky, since every comparison with a NaN bound below is false
    return MinMax{v, v};
  }
  return MinMax{v < r.lo ? v : r.lo, v > r.hi ? v : r.hi};
}

CPF_HD MinMax minmax_merge(MinMax a, MinMax b) {
  if (a.lo != a.lo) return a;  // NaN
  if (b.lo != b.lo) return b;
  return MinMax{b.lo < a.lo ? b.lo : a.lo, b.hi > a.hi ? b.hi : a.hi};
}

}  // namespace causalprune_fast
