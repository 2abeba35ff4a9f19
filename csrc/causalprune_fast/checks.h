// Argument checks shared by the CPU and CUDA implementations of the ops. They raise
// c10::ValueError, which Python sees as ValueError, and name the offending argument.
#pragma once

#include <ATen/ATen.h>

#include "mi_math.h"

namespace causalprune_fast {

inline void check_bins(int64_t bins, const char* name) {
  TORCH_CHECK_VALUE(bins >= kMinBins && bins <= kMaxBins, name, " must be in [", kMinBins, ", ",
                    kMaxBins, "], got ", bins);
}

inline void check_quantize_args(const at::Tensor& x, int64_t bins,
                                const c10::optional<at::Tensor>& ranges) {
  TORCH_CHECK_VALUE(x.dim() == 2, "x must be 2-D [samples, columns], got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble ||
                        x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
                    "x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.size(0) >= 1, "x must have at least one sample (row), got shape ",
                    x.sizes());
  check_bins(bins, "bins");
  if (ranges.has_value()) {
    const at::Tensor& r = *ranges;
    TORCH_CHECK_VALUE(r.dim() == 2 && r.size(0) == x.size(1) && r.size(1) == 2,
                      "ranges must have shape [columns, 2] = [", x.size(1), ", 2], got ",
                      r.sizes());
    TORCH_CHECK_VALUE(r.scalar_type() == at::kDouble, "ranges must be float64, got ",
                      r.scalar_type());
    TORCH_CHECK_VALUE(r.device() == x.device(), "ranges must be on the device of x (",
                      x.device(), "), got ", r.device());
  }
}

inline void check_pairwise_args(const at::Tensor& x, const at::Tensor& y, int64_t bins_x,
                                int64_t bins_y, int64_t groups) {
  TORCH_CHECK_VALUE(x.dim() == 2, "x must be 2-D codes [samples, columns], got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(y.dim() == 2, "y must be 2-D codes [samples, columns], got shape ",
                    y.sizes());
  TORCH_CHECK_VALUE(x.scalar_type() == at::kByte, "x must be uint8 codes, got ",
                    x.scalar_type());
  TORCH_CHECK_VALUE(y.scalar_type() == at::kByte, "y must be uint8 codes, got ",
                    y.scalar_type());
  TORCH_CHECK_VALUE(x.size(0) == y.size(0), "x and y must have the same number of samples, got ",
                    x.size(0), " and ", y.size(0));
  TORCH_CHECK_VALUE(x.size(0) >= 1, "x and y must have at least one sample, got 0");
  TORCH_CHECK_VALUE(x.size(0) < (int64_t(1) << 31), "at most 2^31 - 1 samples per call, got ",
                    x.size(0));
  TORCH_CHECK_VALUE(x.size(1) >= 1 && y.size(1) >= 1,
                    "x and y must have at least one column, got shapes ", x.sizes(), " and ",
                    y.sizes());
  TORCH_CHECK_VALUE(x.device() == y.device(), "x and y must be on the same device, got ",
                    x.device(), " and ", y.device());
  check_bins(bins_x, "bins_x");
  check_bins(bins_y, "bins_y");
  TORCH_CHECK_VALUE(groups >= 1, "groups must be >= 1, got ", groups);
  TORCH_CHECK_VALUE(x.size(1) % groups == 0 && y.size(1) % groups == 0,
                    "groups=", groups, " must divide the columns of x (", x.size(1),
                    ") and of y (", y.size(1), ")");
}

}  // namespace causalprune_fast
