// Host replay of pairwise_mi_kernel (pairwise_mi_kernel.cu), for machines without a GPU.
//
// Test code, not part of the package: tests/test_cuda_kernels.py compiles this file with the
// host C++ compiler (include path csrc/) into a temporary folder and runs it. It executes, block by block and
// in the kernel's order, the kernel's index arithmetic from pairwise_mi_tiling.h (tile plan,
// block decode, sub-tiles, one-hot word slots and tail masks, fragment offsets, epilogue lane
// mapping, pair accumulation), with each CUDA primitive replaced by its documented meaning:
//   __vcmpeq4(a, b)                 0xFF in each byte where a and b agree, else 0;
//   load_matrix_sync (row_major)    A(m, k) = ptr[m * ldm + k];
//   load_matrix_sync (col_major)    B(k, n) = ptr[n * ldm + k];
//   store_matrix_sync (row_major)   ptr[m * ldm + n] = C(m, n);
// and checks every in-group pair's MI against a brute-force histogram, every out-of-group pair
// untouched, every shared-memory access in bounds and every fragment pointer 32-byte aligned.
// It catches index and tiling mistakes, not races or misunderstood CUDA semantics. Keep it in
// step with the kernel: a change to one is a change to both.
//
// Exit status 0 and "ALL OK" on success.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "causalprune_fast/cuda/pairwise_mi_tiling.h"

using namespace causalprune_fast;
using namespace causalprune_fast::cuda;

namespace {

int g_failures = 0;

#define REPLAY_CHECK(cond)                                              \
  do {                                                                  \
    if (!(cond)) {                                                      \
      if (g_failures++ < 20) std::printf("check failed: %s (line %d)\n", #cond, __LINE__); \
    }                                                                   \
  } while (0)

unsigned vcmpeq4(unsigned a, unsigned b) {
  unsigned r = 0;
  for (int k = 0; k < 4; ++k) {
    if (((a >> (8 * k)) & 0xFFu) == ((b >> (8 * k)) & 0xFFu)) r |= 0xFFu << (8 * k);
  }
  return r;
}

struct Problem {
  int64_t S, ld, cx, cy;
  int bx, by;
  int64_t groups;
  bool mm;
  std::vector<uint8_t> x, y;  // [C][ld] column-major, padding filled with garbage codes
  std::vector<double> xs, ys;
  std::vector<int> xn, yn;
};

// The kernel, one block after the other; out[i * cy + j] and written[...] per pair.
void replay(const Problem& P, std::vector<double>& out, std::vector<int>& written) {
  const TilePlan plan = make_tile_plan(P.cx, P.cy, P.bx, P.by, P.groups);
  // The host checks of pairwise_mi_kernel.cu (run()).
  REPLAY_CHECK(plan.fm >= 1 && plan.fn >= 1 && plan.fm * plan.fn <= kMaxFrags);
  REPLAY_CHECK(plan.ti >= 1 && plan.tj >= 1 && plan.ti * plan.tj <= kMaxPairs);
  std::vector<unsigned char> smem(kSmemBytes);
  for (int64_t blk = 0; blk < plan.blocks; ++blk) {
    const BlockTile tile = decode_block(plan, blk);
    const int64_t g = blk / (plan.nti * plan.ntj);
    REPLAY_CHECK(tile.ni >= 1 && tile.ni <= plan.ti && tile.nj >= 1 && tile.nj <= plan.tj);
    REPLAY_CHECK(tile.i0 >= g * plan.cxg && tile.i0 + tile.ni <= (g + 1) * plan.cxg);
    REPLAY_CHECK(tile.j0 >= g * plan.cyg && tile.j0 + tile.nj <= (g + 1) * plan.cyg);
    HistogramTerms pair_terms[kMaxPairs];
    for (auto& t : pair_terms) t = HistogramTerms{0.0, 0};
    for (int sr = 0; sr < tile.nsr; ++sr) {
      for (int sc = 0; sc < tile.nsc; ++sc) {
        const SubTile sub = sub_tile(plan, tile, sr, sc);
        REPLAY_CHECK(sub.fm >= 1 && sub.fm <= plan.fm && sub.fn >= 1 && sub.fn <= plan.fn);
        const int rows_a = sub.fm * kFrag, rows_b = sub.fn * kFrag;
        const int frags = sub.fm * sub.fn;
        const int words = (rows_a + rows_b) * kWordsPerRow;
        REPLAY_CHECK(frags <= kMaxFrags && words * 4 <= kSmemBytes);
        std::vector<int> acc(static_cast<size_t>(frags) * 256, 0);  // fragment f: C(m, n)
        for (int64_t s0 = 0; s0 < P.S; s0 += kChunk) {
          std::memset(smem.data(), 0xAB, smem.size());  // stale data must never be read
          for (int L = 0; L < words; ++L) {
            const OneHotSlot slot = onehot_slot(L, rows_a, rows_b);
            const ColumnBin cb = slot.is_y ? column_bin(sub.gc0, slot.row, plan.fy)
                                           : column_bin(sub.gr0, slot.row, plan.fx);
            REPLAY_CHECK(cb.col >= 0 && cb.col < (slot.is_y ? tile.nj : tile.ni));
            REPLAY_CHECK(slot.row >= 0 && slot.row < (slot.is_y ? rows_b : rows_a));
            const uint8_t* col = slot.is_y ? P.y.data() + (tile.j0 + cb.col) * P.ld
                                           : P.x.data() + (tile.i0 + cb.col) * P.ld;
            const int64_t s = s0 + slot.sample;
            REPLAY_CHECK(s % 4 == 0 && s + 4 <= P.ld);
            unsigned codes;
            std::memcpy(&codes, col + s, 4);
            const unsigned bin4 = static_cast<unsigned>(cb.bin) * 0x01010101u;
            const unsigned v = vcmpeq4(codes, bin4) & 0x01010101u & tail_mask(P.S - s);
            std::memcpy(smem.data() + 4 * L, &v, 4);
          }
          for (int f = 0; f < frags; ++f) {
            const int fr = f / sub.fn, fc = f % sub.fn;
            for (int kb = 0; kb < kKSteps; ++kb) {
              const int oa = a_fragment_offset(rows_a, kb, fr);
              const int ob = b_fragment_offset(rows_a, rows_b, kb, fc);
              REPLAY_CHECK(oa % 32 == 0 && ob % 32 == 0);
              REPLAY_CHECK(oa >= 0 && oa + 15 * kFrag + 16 <= rows_a * kChunk);
              REPLAY_CHECK(ob >= rows_a * kChunk && ob + 15 * kFrag + 16 <= words * 4);
              const auto* pa = reinterpret_cast<const signed char*>(smem.data() + oa);
              const auto* pb = reinterpret_cast<const signed char*>(smem.data() + ob);
              for (int m = 0; m < kFrag; ++m) {
                for (int n = 0; n < kFrag; ++n) {
                  int sum = 0;
                  for (int k = 0; k < kFrag; ++k) sum += pa[m * kFrag + k] * pb[n * kFrag + k];
                  acc[f * 256 + m * kFrag + n] += sum;
                }
              }
            }
          }
        }
        // Epilogue.
        std::memset(smem.data(), 0xCD, smem.size());
        int* counts = reinterpret_cast<int*>(smem.data());
        const int ldc = rows_b;
        std::vector<HistogramTerms> frag_terms(frags);
        for (int f = 0; f < frags; ++f) {
          const int fr = f / sub.fn, fc = f % sub.fn;
          const int off = fr * kFrag * ldc + fc * kFrag;
          REPLAY_CHECK((off * 4) % 32 == 0 && (off + 15 * ldc + 16) * 4 <= kSmemBytes);
          int* frag_counts = counts + off;
          for (int m = 0; m < kFrag; ++m)
            for (int n = 0; n < kFrag; ++n) frag_counts[m * ldc + n] = acc[f * 256 + m * kFrag + n];
          HistogramTerms t_all{0.0, 0};
          for (int lane = 0; lane < 32; ++lane) {
            const int r = lane / 2;
            const int c0 = (lane % 2) * 8;
            const int a = column_bin(sub.gr0 + fr, r, plan.fx).bin;
            const int b0 = column_bin(sub.gc0 + fc, c0, plan.fy).bin;
            HistogramTerms t{0.0, 0};
            if (a < plan.bx) {
              const int left = plan.by - b0;
              const int n = left < 0 ? 0 : (left < 8 ? left : 8);
              t = histogram_terms(frag_counts + r * ldc + c0, n);
            }
            t_all = merge_terms(t_all, t);
          }
          frag_terms[f] = t_all;
        }
        for (int f = 0; f < frags; ++f) {
          const int ii = (sub.gr0 + f / sub.fn) / plan.fx;
          const int jj = (sub.gc0 + f % sub.fn) / plan.fy;
          REPLAY_CHECK(ii < tile.ni && jj < tile.nj);
          const int pair = ii * plan.tj + jj;
          pair_terms[pair] = merge_terms(pair_terms[pair], frag_terms[f]);
        }
      }
    }
    for (int tid = 0; tid < plan.ti * plan.tj; ++tid) {
      const int ii = tid / plan.tj, jj = tid % plan.tj;
      if (ii < tile.ni && jj < tile.nj) {
        const int64_t i = tile.i0 + ii, j = tile.j0 + jj;
        out[i * P.cy + j] = mi_bits(pair_terms[tid].xlogx_sum, P.xs[i], P.ys[j],
                                    static_cast<double>(P.S), P.mm, P.xn[i], P.yn[j],
                                    pair_terms[tid].nonempty);
        written[i * P.cy + j] += 1;
      }
    }
  }
}

void column_terms(const std::vector<uint8_t>& v, int64_t C, int64_t S, int64_t ld, int bins,
                  std::vector<double>& sum, std::vector<int>& nonempty) {
  sum.assign(C, 0.0);
  nonempty.assign(C, 0);
  for (int64_t c = 0; c < C; ++c) {
    int hist[256] = {0};
    for (int64_t s = 0; s < S; ++s) hist[v[c * ld + s]] += 1;
    const HistogramTerms t = histogram_terms(hist, bins);
    sum[c] = t.xlogx_sum;
    nonempty[c] = t.nonempty;
  }
}

}  // namespace

int main() {
  std::mt19937_64 rng(1);
  struct Case {
    int64_t S, cx, cy;
    int bx, by;
    int64_t groups;
  };
  const std::vector<Case> cases = {
      {1, 1, 1, 2, 2, 1},         {1, 3, 5, 16, 16, 1},      {63, 7, 5, 3, 17, 1},
      {64, 4, 4, 16, 16, 1},      {65, 5, 9, 16, 16, 1},     {100, 5, 4, 16, 3, 1},
      {129, 3, 2, 256, 256, 1},   {70, 2, 3, 256, 2, 1},     {70, 6, 2, 2, 256, 1},
      {200, 27, 3, 8, 8, 3},      {300, 18, 2, 4, 4, 2},     {150, 54, 6, 16, 16, 6},
      {150, 6, 6, 16, 16, 6},     {77, 33, 17, 64, 64, 1},   {90, 10, 12, 17, 64, 1},
      {50, 4, 4, 48, 80, 2},      {257, 65, 3, 2, 2, 1},     {31, 2, 40, 33, 5, 2},
      {40, 12, 12, 255, 129, 4},  {1000, 3, 7, 100, 7, 1},   {5, 20, 20, 16, 16, 20},
      {130, 45, 5, 256, 256, 5},  {66, 8, 64, 3, 17, 8},     {63, 67, 35, 16, 16, 1},
  };
  for (const Case& c : cases) {
    Problem P;
    P.S = c.S;
    P.ld = (c.S + kChunk - 1) / kChunk * kChunk;
    P.cx = c.cx;
    P.cy = c.cy;
    P.bx = c.bx;
    P.by = c.by;
    P.groups = c.groups;
    P.x.assign(c.cx * P.ld, 0);
    P.y.assign(c.cy * P.ld, 0);
    // Random codes everywhere, padding included: padding must be masked, never counted.
    for (auto& v : P.x) v = static_cast<uint8_t>(rng() % c.bx);
    for (auto& v : P.y) v = static_cast<uint8_t>(rng() % c.by);
    for (int64_t s = 0; s < c.S; ++s) P.y[s] = static_cast<uint8_t>(P.x[s] * c.by / c.bx);
    if (c.cx > 1) std::memset(P.x.data() + P.ld, 0, c.S);  // a constant column
    column_terms(P.x, c.cx, c.S, P.ld, c.bx, P.xs, P.xn);
    column_terms(P.y, c.cy, c.S, P.ld, c.by, P.ys, P.yn);
    for (int mm = 0; mm < 2; ++mm) {
      P.mm = mm != 0;
      std::vector<double> out(c.cx * c.cy, 0.0);
      std::vector<int> written(c.cx * c.cy, 0);
      replay(P, out, written);
      double max_err = 0.0;
      for (int64_t i = 0; i < c.cx; ++i) {
        for (int64_t j = 0; j < c.cy; ++j) {
          const bool in_group = i / (c.cx / c.groups) == j / (c.cy / c.groups);
          REPLAY_CHECK(written[i * c.cy + j] == (in_group ? 1 : 0));
          if (!in_group) continue;
          std::vector<int64_t> h(static_cast<size_t>(c.bx) * c.by, 0);
          for (int64_t s = 0; s < c.S; ++s) h[P.x[i * P.ld + s] * c.by + P.y[j * P.ld + s]] += 1;
          double joint = 0.0;
          int nonempty = 0;
          for (int64_t n : h) {
            if (n > 0) {
              joint += static_cast<double>(n) * std::log(static_cast<double>(n));
              nonempty += 1;
            }
          }
          const double ref = mi_bits(joint, P.xs[i], P.ys[j], static_cast<double>(c.S), P.mm,
                                     P.xn[i], P.yn[j], nonempty);
          max_err = std::fmax(max_err, std::fabs(ref - out[i * c.cy + j]));
        }
      }
      REPLAY_CHECK(max_err < 1e-9);
      const TilePlan p = make_tile_plan(c.cx, c.cy, c.bx, c.by, c.groups);
      std::printf(
          "S=%lld cx=%lld cy=%lld bins=%d,%d groups=%lld mm=%d: tile %dx%d, sub-tile %dx%d "
          "fragments, %lld blocks, max error %.2g\n",
          static_cast<long long>(c.S), static_cast<long long>(c.cx),
          static_cast<long long>(c.cy), c.bx, c.by, static_cast<long long>(c.groups), mm, p.ti,
          p.tj, p.fm, p.fn, static_cast<long long>(p.blocks), max_err);
    }
  }
  if (g_failures != 0) {
    std::printf("FAILED: %d checks\n", g_failures);
    return 1;
  }
  std::printf("ALL OK\n");
  return 0;
}
