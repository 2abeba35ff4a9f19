// CPU kernel of `quantize`: per-column [min, max] (NaN-propagating) and equal-width codes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../checks.h"
#include "../mi_math.h"

namespace causalprune_fast {
namespace {

// Min and max of one contiguous column; NaN if the column holds a NaN (so callers can reject
// it from the ranges alone), +-inf if it holds an infinity.
template <typename T>
void column_min_max(const T* col, int64_t n, double* lo, double* hi) {
  double mn = std::numeric_limits<double>::infinity();
  double mx = -std::numeric_limits<double>::infinity();
  bool nan = false;
  for (int64_t s = 0; s < n; ++s) {
    const double v = static_cast<double>(col[s]);
    nan |= std::isnan(v);
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
  }
  if (nan) {
    mn = mx = std::numeric_limits<double>::quiet_NaN();
  }
  *lo = mn;
  *hi = mx;
}

std::tuple<at::Tensor, at::Tensor> quantize_cpu(const at::Tensor& x, int64_t bins,
                                                 const c10::optional<at::Tensor>& ranges) {
  check_quantize_args(x, bins, ranges);
  const int64_t S = x.size(0);
  const int64_t C = x.size(1);
  // Column-major working copy: every column is read contiguously.
  const at::Tensor xt = x.t().contiguous();
  at::Tensor r = ranges.has_value() ? ranges->contiguous()
                                    : at::empty({C, 2}, x.options().dtype(at::kDouble));
  at::Tensor codes_t = at::empty({C, S}, x.options().dtype(at::kByte));
  const bool compute_ranges = !ranges.has_value();
  const int b = static_cast<int>(bins);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantize_cpu", [&] {
    const scalar_t* src = xt.data_ptr<scalar_t>();
    double* rp = r.data_ptr<double>();
    uint8_t* dst = codes_t.data_ptr<uint8_t>();
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const scalar_t* col = src + c * S;
        if (compute_ranges) {
          column_min_max(col, S, rp + 2 * c, rp + 2 * c + 1);
        }
        const double lo = rp[2 * c];
        const double hi = rp[2 * c + 1];
        uint8_t* out = dst + c * S;
        for (int64_t s = 0; s < S; ++s) {
          out[s] = static_cast<uint8_t>(quantize_value(static_cast<double>(col[s]), lo, hi, b));
        }
      }
    });
  });
  return {codes_t.t(), r};
}

}  // namespace

TORCH_LIBRARY_IMPL(causalprune_fast, CPU, m) {
  m.impl("quantize", &quantize_cpu);
}

}  // namespace causalprune_fast
