// CUDA kernel of `quantize` (schema in ../quantize.cpp; CPU ground truth in
// ../cpu/quantize_kernel.cpp): per-column [min, max] (NaN-propagating) and equal-width codes.
//
// Layout: like the CPU kernel, the work runs on a column-major copy xt = x.t().contiguous()
// ([C, S], a no-op when x is already column-major), so every column is read contiguously and
// the codes are written contiguously into codes_t [C, S]; the op returns codes_t.t().
//
// Steps (all on the current stream):
//   1. (ranges not given) minmax_partial_kernel: grid (P, min(C, 65535)); block (p, c) reduces
//      the samples s = p * T + t + k * P * T of column c (T threads) to one MinMax partial;
//      minmax_finish_kernel: one thread per column merges its P partials in order.
//   2. quantize_codes_kernel: grid (Q, min(C, 65535)); each thread codes samples of a column
//      with quantize_value (../mi_math.h), float64 arithmetic, so the codes are bit-identical
//      to the CPU kernel's.
// Columns past 65535 (gridDim.y's limit) are covered by striding c by gridDim.y.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "../checks.h"
#include "../mi_math.h"

namespace causalprune_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;
// A min/max block covers at least this many samples per thread before the grid grows in x.
constexpr int64_t kMinMaxPerThread = 16;
constexpr int64_t kMaxPartials = 64;  // P: partial ranges per column
constexpr int64_t kMaxGridX = 1024;   // Q: code blocks per column (each thread strides on)

static_assert((kThreads & (kThreads - 1)) == 0, "tree reduction needs a power-of-two block");

// Value of an element as float64 (exact for every input dtype).
template <typename T>
__device__ __forceinline__ double as_double(T v) {
  return static_cast<double>(v);
}
template <>
__device__ __forceinline__ double as_double<c10::Half>(c10::Half v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
__device__ __forceinline__ double as_double<c10::BFloat16>(c10::BFloat16 v) {
  return static_cast<double>(static_cast<float>(v));
}

// partial[c * P + p] = MinMax of the samples of column c that block (p, c) visits.
// xt: [C, S] contiguous. Invariant: gridDim.x == P, blockDim.x == kThreads.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    minmax_partial_kernel(const T* __restrict__ xt, int64_t S, int64_t C,
                          MinMax* __restrict__ partial) {
  __shared__ double lo_sh[kThreads];
  __shared__ double hi_sh[kThreads];
  const int64_t P = gridDim.x;
  const int t = threadIdx.x;
  for (int64_t c = blockIdx.y; c < C; c += gridDim.y) {
    const T* col = xt + c * S;
    MinMax r = minmax_empty();
    for (int64_t s = int64_t(blockIdx.x) * kThreads + t; s < S; s += P * kThreads) {
      r = minmax_include(r, as_double(col[s]));
    }
    lo_sh[t] = r.lo;
    hi_sh[t] = r.hi;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
      if (t < half) {
        const MinMax m = minmax_merge(MinMax{lo_sh[t], hi_sh[t]},
                                      MinMax{lo_sh[t + half], hi_sh[t + half]});
        lo_sh[t] = m.lo;
        hi_sh[t] = m.hi;
      }
      __syncthreads();
    }
    if (t == 0) {
      partial[c * P + blockIdx.x] = MinMax{lo_sh[0], hi_sh[0]};
    }
    __syncthreads();  // lo_sh/hi_sh are reused by the next column of this block
  }
}

// ranges[c] = (lo, hi) merged over the P partials of column c, in order.
__global__ void __launch_bounds__(kThreads)
    minmax_finish_kernel(const MinMax* __restrict__ partial, int64_t P, int64_t C,
                         double* __restrict__ ranges) {
  const int64_t c = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= C) return;
  MinMax r = minmax_empty();
  for (int64_t p = 0; p < P; ++p) r = minmax_merge(r, partial[c * P + p]);
  ranges[2 * c] = r.lo;
  ranges[2 * c + 1] = r.hi;
}

// codes_t[c * S + s] = quantize_value(xt[c * S + s], ranges[c]) for all c < C, s < S.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    quantize_codes_kernel(const T* __restrict__ xt, int64_t S, int64_t C,
                          const double* __restrict__ ranges, int bins,
                          uint8_t* __restrict__ codes_t) {
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t c = blockIdx.y; c < C; c += gridDim.y) {
    const double lo = ranges[2 * c];
    const double hi = ranges[2 * c + 1];
    const T* col = xt + c * S;
    uint8_t* out = codes_t + c * S;
    for (int64_t s = int64_t(blockIdx.x) * kThreads + threadIdx.x; s < S; s += stride) {
      out[s] = static_cast<uint8_t>(quantize_value(as_double(col[s]), lo, hi, bins));
    }
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::tuple<at::Tensor, at::Tensor> quantize_cuda(const at::Tensor& x, int64_t bins,
                                                  const c10::optional<at::Tensor>& ranges) {
  check_quantize_args(x, bins, ranges);
  TORCH_CHECK(x.is_cuda(), "quantize_cuda: x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t S = x.size(0);
  const int64_t C = x.size(1);
  const at::Tensor xt = x.t().contiguous();  // [C, S]: every column contiguous
  // A fresh tensor even when ranges are given: op outputs must not alias their inputs.
  at::Tensor r = ranges.has_value() ? ranges->clone(at::MemoryFormat::Contiguous)
                                    : at::empty({C, 2}, x.options().dtype(at::kDouble));
  at::Tensor codes_t = at::empty({C, S}, x.options().dtype(at::kByte));
  if (C == 0) {
    return {codes_t.t(), r};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const unsigned grid_y = static_cast<unsigned>(std::min(C, kMaxGridY));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantize_cuda", [&] {
    const scalar_t* src = xt.const_data_ptr<scalar_t>();
    if (!ranges.has_value()) {
      const int64_t P =
          std::clamp<int64_t>(ceil_div(S, kThreads * kMinMaxPerThread), 1, kMaxPartials);
      at::Tensor partial = at::empty({C * P * 2}, x.options().dtype(at::kDouble));
      static_assert(sizeof(MinMax) == 2 * sizeof(double), "MinMax is two packed doubles");
      MinMax* part = reinterpret_cast<MinMax*>(partial.data_ptr<double>());
      minmax_partial_kernel<scalar_t>
          <<<dim3(static_cast<unsigned>(P), grid_y), kThreads, 0, stream>>>(src, S, C, part);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      minmax_finish_kernel<<<static_cast<unsigned>(ceil_div(C, kThreads)), kThreads, 0,
                             stream>>>(part, P, C, r.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t Q = std::clamp<int64_t>(ceil_div(S, kThreads), 1, kMaxGridX);
    quantize_codes_kernel<scalar_t><<<dim3(static_cast<unsigned>(Q), grid_y), kThreads, 0,
                                      stream>>>(src, S, C, r.const_data_ptr<double>(),
                                                static_cast<int>(bins),
                                                codes_t.data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {codes_t.t(), r};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(causalprune_fast, CUDA, m) {
  m.impl("quantize", &cuda::quantize_cuda);
}

}  // namespace causalprune_fast
