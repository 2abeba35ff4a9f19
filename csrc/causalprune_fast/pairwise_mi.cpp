// Schemas of the pairwise mutual-information ops (docs/method.md section 5).
// Kernels: cpu/pairwise_mi_kernel.cpp, cuda/pairwise_mi_kernel.cu. Python wrapper:
// causalprune_fast/estimator.py (pairwise_mi).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(causalprune_fast, m) {
  // x: [S, Cx] uint8 codes < bins_x, y: [S, Cy] uint8 codes < bins_y, any strides.
  // groups: x's columns and y's columns are each split into `groups` contiguous equal blocks;
  // only pairs within the same block are measured (grouped convolutions), the rest are 0.
  // Returns MI in bits, [Cx, Cy] float32.
  m.def(
      "pairwise_mi(Tensor x, Tensor y, int bins_x, int bins_y, int groups=1, "
      "bool miller_madow=False) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  // Same pairs, reduced without materialising the matrix: per_x[i] = sum_j MI[i, j] and
  // per_y[j] = sum_i MI[i, j], both float64.
  m.def(
      "pairwise_mi_sums(Tensor x, Tensor y, int bins_x, int bins_y, int groups=1, "
      "bool miller_madow=False) -> (Tensor per_x, Tensor per_y)",
      {at::Tag::pt2_compliant_tag});
}
