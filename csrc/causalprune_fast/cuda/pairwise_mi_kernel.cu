// CUDA kernels of `pairwise_mi` and `pairwise_mi_sums` (schemas in ../pairwise_mi.cpp; CPU
// ground truth in ../cpu/pairwise_mi_kernel.cpp; docs/method.md sections 5 and 7).
//
// Joint counts are an int8 one-hot matrix product on the tensor cores,
//   counts[(i, a), (j, b)] = sum_s [x[s, i] == a] * [y[s, j] == b],
// computed tile by tile (pairwise_mi_tiling.h) with nvcuda::wmma m16n16k16 signed-char
// fragments and int32 accumulators (exact: S < 2^31, checked in ../checks.h). Each tile's
// counts are reduced to one MI value per pair while they are in registers / shared memory (the
// epilogue); the count tensor is never written to global memory.
//
// Steps, on the current stream:
//   1. codes >= bins: x.max() / y.max() on the device (one sync each), ValueError as on the CPU;
//   2. column-major copies of the codes, [C, ld] with ld = S rounded up to kChunk (so every
//      4-sample word load is aligned and in bounds; samples >= S are masked, never counted);
//   3. column_terms_kernel: each column's histogram -> histogram_terms (xlogx sum, non-empty);
//   4. pairwise_mi_kernel: one block per in-group tile (never one launch per group), writing
//      the float32 matrix, or adding float64 row / column sums with atomicAdd.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <mma.h>
#include <torch/library.h>

#include <climits>
#include <cstdint>

#include "../checks.h"
#include "../mi_math.h"
#include "pairwise_mi_tiling.h"

namespace causalprune_fast {
namespace cuda {
namespace {

// ------------------------------------------------------------------ marginals
// One block per column c: histogram of codes[c * ld + s], s < S, then its terms.
// Codes are < bins (checked before the launch); the histogram is 256 wide regardless.
constexpr int kHistThreads = 256;

__global__ void __launch_bounds__(kHistThreads)
    column_terms_kernel(const uint8_t* __restrict__ codes, int64_t ld, int64_t S, int bins,
                        double* __restrict__ xlogx_sum, int* __restrict__ nonempty) {
  __shared__ int hist[256];
  const int64_t c = blockIdx.x;
  for (int b = threadIdx.x; b < 256; b += kHistThreads) hist[b] = 0;
  __syncthreads();
  const uint8_t* col = codes + c * ld;
  // 4 codes per aligned uint32 load: ld is a multiple of 4 and the base is 16-byte aligned.
  for (int64_t s = int64_t(threadIdx.x) * 4; s < S; s += int64_t(kHistThreads) * 4) {
    const unsigned int word = __ldg(reinterpret_cast<const unsigned int*>(col + s));
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (s + k < S) atomicAdd(&hist[(word >> (8 * k)) & 0xFFu], 1);
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const HistogramTerms t = histogram_terms(hist, bins);
    xlogx_sum[c] = t.xlogx_sum;
    nonempty[c] = t.nonempty;
  }
}

// ------------------------------------------------------------------ main kernel
struct PairParams {
  TilePlan plan;
  const uint8_t* x;  // [Cx, ld] column-major codes
  const uint8_t* y;  // [Cy, ld]
  int64_t ld;        // multiple of kChunk, >= S
  int64_t samples;   // S
  int64_t cy;        // columns of y (row length of the output matrix)
  const double* x_sum;
  const int* x_nonempty;
  const double* y_sum;
  const int* y_nonempty;
  bool miller_madow;
  float* out;     // [Cx, Cy] (matrix mode), zero-initialised, or nullptr
  double* per_x;  // [Cx] (sums mode), zero-initialised, or nullptr
  double* per_y;  // [Cy]
};

__device__ __forceinline__ HistogramTerms warp_sum(HistogramTerms t) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    const HistogramTerms other{__shfl_xor_sync(0xFFFFFFFFu, t.xlogx_sum, off),
                               __shfl_xor_sync(0xFFFFFFFFu, t.nonempty, off)};
    t = merge_terms(t, other);
  }
  return t;
}

// One block = one tile of pairs (decode_block); kThreads threads = kWarps warps. Warp w owns
// the sub-tile's fragments w and w + kWarps (fragment f = fr * fn + fc), kept as int32
// accumulators across the whole sample loop.
template <bool kSums>
__global__ void __launch_bounds__(kThreads) pairwise_mi_kernel(const PairParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 720
  (void)p;
  __trap();  // int8 wmma needs sm_72+; the host refuses such devices before launching
#else
  namespace wmma = nvcuda::wmma;
  // One-hot tiles A and B during the sample loop; the int32 counts of the sub-tile after it.
  __shared__ __align__(128) unsigned char smem[kSmemBytes];
  __shared__ HistogramTerms frag_terms[kMaxFrags];  // this sub-tile's fragments
  __shared__ HistogramTerms pair_terms[kMaxPairs];  // pair (ii, jj) at ii * tj + jj, all sub-tiles
  __shared__ double pair_mi[kMaxPairs];

  const TilePlan& plan = p.plan;
  const BlockTile tile = decode_block(plan, blockIdx.x);
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int64_t S = p.samples;

  if (tid < kMaxPairs) pair_terms[tid] = HistogramTerms{0.0, 0};
  __syncthreads();

  for (int sr = 0; sr < tile.nsr; ++sr) {
    for (int sc = 0; sc < tile.nsc; ++sc) {
      const SubTile sub = sub_tile(plan, tile, sr, sc);
      const int rows_a = sub.fm * kFrag;
      const int rows_b = sub.fn * kFrag;
      const int frags = sub.fm * sub.fn;  // <= kMaxFrags (host-checked plan)
      const int words = (rows_a + rows_b) * kWordsPerRow;

      wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, int> acc[kFragsPerWarp];
#pragma unroll
      for (int k = 0; k < kFragsPerWarp; ++k) wmma::fill_fragment(acc[k], 0);

      for (int64_t s0 = 0; s0 < S; s0 += kChunk) {
        // Build the one-hot tiles of samples [s0, s0 + kChunk): word L of the smem layout
        // (onehot_slot) = 4 bytes [code(s) == bin] for its row's column and bin.
        unsigned int* smem32 = reinterpret_cast<unsigned int*>(smem);
        for (int L = tid; L < words; L += kThreads) {
          const OneHotSlot slot = onehot_slot(L, rows_a, rows_b);
          const ColumnBin cb = slot.is_y ? column_bin(sub.gc0, slot.row, plan.fy)
                                         : column_bin(sub.gr0, slot.row, plan.fx);
          // cb.col < ni (resp. nj): sub-tiles only cover the tile's present columns.
          const uint8_t* col = slot.is_y ? p.y + (tile.j0 + cb.col) * p.ld
                                         : p.x + (tile.i0 + cb.col) * p.ld;
          const int64_t s = s0 + slot.sample;  // multiple of 4, s + 3 < ld
          const unsigned int codes = __ldg(reinterpret_cast<const unsigned int*>(col + s));
          // Padded bins (cb.bin >= bins) never equal a code (codes < bins, checked).
          const unsigned int bin4 = static_cast<unsigned int>(cb.bin) * 0x01010101u;
          smem32[L] = __vcmpeq4(codes, bin4) & 0x01010101u & tail_mask(S - s);
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < kFragsPerWarp; ++k) {
          const int f = warp + k * kWarps;
          if (f < frags) {
            const int fr = f / sub.fn;
            const int fc = f % sub.fn;
#pragma unroll
            for (int kb = 0; kb < kKSteps; ++kb) {
              wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, signed char, wmma::row_major>
                  a;
              wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, signed char, wmma::col_major>
                  b;
              wmma::load_matrix_sync(
                  a, reinterpret_cast<const signed char*>(smem + a_fragment_offset(rows_a, kb, fr)),
                  kFrag);
              wmma::load_matrix_sync(
                  b,
                  reinterpret_cast<const signed char*>(
                      smem + b_fragment_offset(rows_a, rows_b, kb, fc)),
                  kFrag);
              wmma::mma_sync(acc[k], a, b, acc[k]);
            }
          }
        }
        __syncthreads();  // the next chunk (or the counts below) overwrite the one-hot tiles
      }

      // Epilogue of the sub-tile. counts: row-major [rows_a][rows_b] int32 over smem (the
      // one-hot tiles are dead: every warp passed the __syncthreads above).
      int* counts = reinterpret_cast<int*>(smem);
      const int ldc = rows_b;
#pragma unroll
      for (int k = 0; k < kFragsPerWarp; ++k) {
        const int f = warp + k * kWarps;
        if (f < frags) {
          const int fr = f / sub.fn;
          const int fc = f % sub.fn;
          int* frag_counts = counts + fr * kFrag * ldc + fc * kFrag;
          wmma::store_matrix_sync(frag_counts, acc[k], ldc, wmma::mem_row_major);
          __syncwarp();
          // Lane -> row lane / 2 of the fragment, cells (lane % 2) * 8 .. + 8 of that row.
          const int r = lane / 2;
          const int c0 = (lane % 2) * 8;
          const int a = column_bin(sub.gr0 + fr, r, plan.fx).bin;   // bin of x
          const int b0 = column_bin(sub.gc0 + fc, c0, plan.fy).bin;  // first bin of y
          HistogramTerms t{0.0, 0};
          if (a < plan.bx) {
            const int left = plan.by - b0;
            const int n = left < 0 ? 0 : (left < 8 ? left : 8);
            t = histogram_terms(frag_counts + r * ldc + c0, n);
          }
          t = warp_sum(t);
          if (lane == 0) frag_terms[f] = t;
        }
      }
      __syncthreads();
      if (tid == 0) {  // fixed order: results do not depend on warp scheduling
        for (int f = 0; f < frags; ++f) {
          const int ii = (sub.gr0 + f / sub.fn) / plan.fx;
          const int jj = (sub.gc0 + f % sub.fn) / plan.fy;
          const int pair = ii * plan.tj + jj;
          pair_terms[pair] = merge_terms(pair_terms[pair], frag_terms[f]);
        }
      }
      __syncthreads();  // smem and frag_terms are reused by the next sub-tile
    }
  }

  // MI of each pair of the tile.
  const double samples = static_cast<double>(S);
  if (tid < plan.ti * plan.tj) {
    const int ii = tid / plan.tj;
    const int jj = tid % plan.tj;
    if (ii < tile.ni && jj < tile.nj) {
      const int64_t i = tile.i0 + ii;
      const int64_t j = tile.j0 + jj;
      const HistogramTerms joint = pair_terms[tid];
      const double mi = mi_bits(joint.xlogx_sum, p.x_sum[i], p.y_sum[j], samples,
                                p.miller_madow, p.x_nonempty[i], p.y_nonempty[j], joint.nonempty);
      if (kSums) {
        pair_mi[tid] = mi;
      } else {
        p.out[i * p.cy + j] = static_cast<float>(mi);
      }
    }
  }
  if (kSums) {
    __syncthreads();
    if (tid < tile.ni) {  // row sums of this tile
      double sum = 0.0;
      for (int jj = 0; jj < tile.nj; ++jj) sum += pair_mi[tid * plan.tj + jj];
      atomicAdd(p.per_x + tile.i0 + tid, sum);
    } else if (tid >= 32 && tid < 32 + tile.nj) {  // column sums (tile.ni <= kMaxPairs <= 32)
      const int jj = tid - 32;
      double sum = 0.0;
      for (int ii = 0; ii < tile.ni; ++ii) sum += pair_mi[ii * plan.tj + jj];
      atomicAdd(p.per_y + tile.j0 + jj, sum);
    }
  }
#endif
}

// ------------------------------------------------------------------ host side
// ValueError naming the tensor when a code is >= bins (same message as the CPU kernel).
void check_codes(const at::Tensor& codes, int64_t bins, const char* name, const char* bins_name) {
  const int64_t top = codes.max().item<uint8_t>();
  if (top < bins) return;
  // Here bins <= top <= 255, so the uint8 comparison below does not wrap the scalar.
  const int64_t column = (codes >= bins).any(0).nonzero().select(1, 0)[0].item<int64_t>();
  TORCH_CHECK_VALUE(false, name, " holds code ", top, " in column ", column,
                    ", but codes must be < ", bins_name, " = ", bins);
}

// [C, ld] uint8, column c at c * ld, ld a multiple of kChunk, 16-byte aligned, samples < S of
// column c = codes[:, c]; the padding is zero (and masked by the kernels anyway).
at::Tensor padded_columns(const at::Tensor& codes, int64_t ld) {
  const int64_t S = codes.size(0);
  const at::Tensor t = codes.t();  // [C, S] view
  if (ld == S && t.is_contiguous() &&
      reinterpret_cast<uintptr_t>(t.const_data_ptr<uint8_t>()) % 16 == 0) {
    return t;
  }
  at::Tensor out = at::empty({codes.size(1), ld}, codes.options());
  out.narrow(1, 0, S).copy_(t);
  if (ld > S) out.narrow(1, S, ld - S).zero_();
  return out;
}

struct ColumnTerms {
  at::Tensor xlogx_sum;  // [C] float64
  at::Tensor nonempty;   // [C] int32
};

ColumnTerms column_terms(const at::Tensor& cols, int64_t S, int64_t bins, cudaStream_t stream) {
  const int64_t C = cols.size(0);
  ColumnTerms t{at::empty({C}, cols.options().dtype(at::kDouble)),
                at::empty({C}, cols.options().dtype(at::kInt))};
  column_terms_kernel<<<static_cast<unsigned>(C), kHistThreads, 0, stream>>>(
      cols.const_data_ptr<uint8_t>(), cols.size(1), S, static_cast<int>(bins),
      t.xlogx_sum.data_ptr<double>(), t.nonempty.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return t;
}

void run(const at::Tensor& x, const at::Tensor& y, int64_t bins_x, int64_t bins_y,
         int64_t groups, bool miller_madow, float* out, double* per_x, double* per_y) {
  int major = 0, minor = 0;
  const int device = x.get_device();
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  TORCH_CHECK(major * 10 + minor >= 72,
              "causalprune_fast CUDA pairwise_mi needs compute capability 7.2+ (int8 tensor "
              "cores), got ",
              major, ".", minor);
  check_codes(x, bins_x, "x", "bins_x");
  check_codes(y, bins_y, "y", "bins_y");
  const int64_t S = x.size(0);
  const int64_t Cx = x.size(1);
  const int64_t Cy = y.size(1);
  TORCH_CHECK(Cx <= INT_MAX && Cy <= INT_MAX, "at most 2^31 - 1 columns per call");
  const int64_t ld = ceil_div64(S, kChunk) * kChunk;
  const at::Tensor xt = padded_columns(x, ld);
  const at::Tensor yt = padded_columns(y, ld);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const ColumnTerms tx = column_terms(xt, S, bins_x, stream);
  const ColumnTerms ty = column_terms(yt, S, bins_y, stream);

  const TilePlan plan =
      make_tile_plan(Cx, Cy, static_cast<int>(bins_x), static_cast<int>(bins_y), groups);
  // The kernel's static arrays rely on these; make_tile_plan guarantees them.
  TORCH_CHECK(plan.fm >= 1 && plan.fn >= 1 && plan.fm * plan.fn <= kMaxFrags,
              "pairwise_mi tile plan: bad sub-tile ", plan.fm, " x ", plan.fn);
  TORCH_CHECK(plan.ti >= 1 && plan.tj >= 1 && plan.ti * plan.tj <= kMaxPairs,
              "pairwise_mi tile plan: bad tile ", plan.ti, " x ", plan.tj);
  TORCH_CHECK(plan.blocks >= 1 && plan.blocks <= INT_MAX, "pairwise_mi: ", plan.blocks,
              " tiles exceed the grid limit; split the columns");

  PairParams p{plan,
               xt.const_data_ptr<uint8_t>(),
               yt.const_data_ptr<uint8_t>(),
               ld,
               S,
               Cy,
               tx.xlogx_sum.const_data_ptr<double>(),
               tx.nonempty.const_data_ptr<int>(),
               ty.xlogx_sum.const_data_ptr<double>(),
               ty.nonempty.const_data_ptr<int>(),
               miller_madow,
               out,
               per_x,
               per_y};
  const unsigned grid = static_cast<unsigned>(plan.blocks);
  if (out != nullptr) {
    pairwise_mi_kernel<false><<<grid, kThreads, 0, stream>>>(p);
  } else {
    pairwise_mi_kernel<true><<<grid, kThreads, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor pairwise_mi_cuda(const at::Tensor& x, const at::Tensor& y, int64_t bins_x,
                            int64_t bins_y, int64_t groups, bool miller_madow) {
  check_pairwise_args(x, y, bins_x, bins_y, groups);
  TORCH_CHECK(x.is_cuda(), "pairwise_mi_cuda: x and y must be CUDA tensors");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::zeros({x.size(1), y.size(1)}, x.options().dtype(at::kFloat));
  run(x, y, bins_x, bins_y, groups, miller_madow, out.data_ptr<float>(), nullptr, nullptr);
  return out;
}

std::tuple<at::Tensor, at::Tensor> pairwise_mi_sums_cuda(const at::Tensor& x, const at::Tensor& y,
                                                         int64_t bins_x, int64_t bins_y,
                                                         int64_t groups, bool miller_madow) {
  check_pairwise_args(x, y, bins_x, bins_y, groups);
  TORCH_CHECK(x.is_cuda(), "pairwise_mi_sums_cuda: x and y must be CUDA tensors");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor per_x = at::zeros({x.size(1)}, x.options().dtype(at::kDouble));
  at::Tensor per_y = at::zeros({y.size(1)}, x.options().dtype(at::kDouble));
  run(x, y, bins_x, bins_y, groups, miller_madow, nullptr, per_x.data_ptr<double>(),
      per_y.data_ptr<double>());
  return {per_x, per_y};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(causalprune_fast, CUDA, m) {
  m.impl("pairwise_mi", &cuda::pairwise_mi_cuda);
  m.impl("pairwise_mi_sums", &cuda::pairwise_mi_sums_cuda);
}

}  // namespace causalprune_fast
