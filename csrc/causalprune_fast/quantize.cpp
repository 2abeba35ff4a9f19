// Schema of the `quantize` op: per-column equal-width binning into uint8 codes.
// Kernels: cpu/quantize_kernel.cpp, cuda/quantize_kernel.cu. Python wrapper:
// causalprune_fast/estimator.py (quantize).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(causalprune_fast, m) {
  // x: [S, C] float16/bfloat16/float32/float64. ranges: optional [C, 2] float64 (lo, hi).
  // Returns codes [S, C] uint8 stored column-major (strides (1, S)) and the ranges used
  // ([C, 2] float64: the given ones, or each column's min and max, NaN if it holds a NaN).
  m.def(
      "quantize(Tensor x, int bins, Tensor? ranges=None) -> (Tensor codes, Tensor ranges)",
      {at::Tag::pt2_compliant_tag});
}
