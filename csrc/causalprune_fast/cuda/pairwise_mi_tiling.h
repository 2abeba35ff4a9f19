// Tiling and index arithmetic of the CUDA pairwise-MI kernel (pairwise_mi_kernel.cu).
//
// Everything here is plain integer arithmetic, `__host__ __device__` (CPF_HD from
// ../mi_math.h) and free of CUDA headers, so that a host program can replay a block's index
// mapping exactly as the kernel does: tests/native/tiling_replay.cpp (run by test_cuda_kernels.py
// without a GPU) replays every block of the kernel with these functions against brute force.
//
// Vocabulary (one call, with `groups` contiguous column groups):
//   cxg, cyg   x / y columns per group;
//   fx, fy     16-row fragments per x / y column: ceil(bins / 16); bins are padded to
//              16 * fx (resp. 16 * fy) one-hot rows, the padded rows are never set;
//   tile       TI x columns by TJ y columns of ONE group: one thread block. Its joint counts
//              form an (ni * fx) by (nj * fy) grid of 16 x 16 fragments (ni <= TI and nj <= TJ
//              are the columns actually present at the group's end);
//   sub-tile   at most fm by fn of those fragments, counted in one pass over the samples
//              (fm * fn <= kMaxFrags fragments: kFragsPerWarp per warp). A tile has
//              ceil(ni * fx / fm) * ceil(nj * fy / fn) sub-tiles; several only when one column's
//              bins need more fragments than a sub-tile holds (large bins).
// Each 16 x 16 fragment lies inside ONE pair's block of counts (bins are padded to multiples of
// 16 and sub-tiles start on fragment boundaries), so every fragment reduces to partial terms of
// exactly one pair.
#pragma once

#include <cstdint>

#include "../mi_math.h"

namespace causalprune_fast {
namespace cuda {

constexpr int kFrag = 16;                       // wmma m = n = k = 16 (int8 inputs, int32 sums)
constexpr int kChunk = 64;                      // samples per step of the sample loop
constexpr int kKSteps = kChunk / kFrag;         // wmma k-steps per chunk
constexpr int kWordsPerRow = kChunk / 4;        // packed uint32 words of one one-hot row
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kFragsPerWarp = 2;
constexpr int kMaxFrags = kWarps * kFragsPerWarp;  // fragments of one sub-tile: fm * fn
constexpr int kMaxPairs = 16;                       // pairs of one tile: TI * TJ
// fm, fn >= 1 and fm * fn <= 16 imply fm + fn <= 17: one-hot rows of a sub-tile.
constexpr int kMaxFragSum = kMaxFrags + 1;
constexpr int kOneHotBytes = kMaxFragSum * kFrag * kChunk;    // A and B one-hot tiles
constexpr int kCountBytes = kMaxFrags * kFrag * kFrag * 4;    // int32 counts of a sub-tile
constexpr int kSmemBytes = kOneHotBytes > kCountBytes ? kOneHotBytes : kCountBytes;

static_assert(kChunk % kFrag == 0, "a chunk is a whole number of wmma k-steps");
static_assert(kFrag % 4 == 0, "one-hot words of 4 codes never straddle a k-step");
static_assert(kThreads == 256, "the epilogue maps 32 lanes onto 16 rows x 2 half-rows");
static_assert(kSmemBytes <= 48 * 1024, "static shared memory must stay under 48 KiB");
static_assert(kMaxPairs <= 32, "per_y sums use threads 32 .. 32 + TJ of the block");

// How the pairs of one call are tiled (host side, see make_tile_plan).
struct TilePlan {
  int bx, by;          // bins of x and y codes
  int fx, fy;          // fragments per x column / per y column
  int64_t cxg, cyg;    // columns per group
  int ti, tj;          // columns per tile (TI, TJ)
  int fm, fn;          // fragments per sub-tile, rows and columns
  int64_t nti, ntj;    // tiles per group along x and along y
  int64_t groups;
  int64_t blocks;      // groups * nti * ntj: the grid, only in-group tiles
};

CPF_HD int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }
CPF_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Tile shape: a sub-tile of about 4 x 4 fragments, stretched to up to 16 x 1 (or 1 x 16) when
// a group has fewer than 4 fragment columns (or rows), e.g. depthwise convolutions, where a
// group is 9 x columns by 1 y column: one tile of 9 x 1 pairs per group.
inline TilePlan make_tile_plan(int64_t cx, int64_t cy, int bx, int by, int64_t groups) {
  TilePlan p{};
  p.bx = bx;
  p.by = by;
  p.fx = (bx + kFrag - 1) / kFrag;
  p.fy = (by + kFrag - 1) / kFrag;
  p.groups = groups;
  p.cxg = cx / groups;
  p.cyg = cy / groups;
  const int64_t rg = p.cxg * p.fx;  // fragment rows of one group
  const int64_t cg = p.cyg * p.fy;  // fragment columns of one group
  int64_t fm_max = 4, fn_max = 4;
  if (cg < 4) {
    fn_max = cg;
    fm_max = kMaxFrags / cg;
  } else if (rg < 4) {
    fm_max = rg;
    fn_max = kMaxFrags / rg;
  }
  if (p.fx <= fm_max) {
    p.ti = static_cast<int>(min64(p.cxg, fm_max / p.fx));
    p.fm = p.ti * p.fx;
  } else {
    p.ti = 1;
    p.fm = static_cast<int>(fm_max);
  }
  if (p.fy <= fn_max) {
    p.tj = static_cast<int>(min64(p.cyg, fn_max / p.fy));
    p.fn = p.tj * p.fy;
  } else {
    p.tj = 1;
    p.fn = static_cast<int>(fn_max);
  }
  p.nti = ceil_div64(p.cxg, p.ti);
  p.ntj = ceil_div64(p.cyg, p.tj);
  p.blocks = groups * p.nti * p.ntj;
  return p;
}

// The tile of block `block`: x columns [i0, i0 + ni), y columns [j0, j0 + nj), all in group g,
// and its number of sub-tiles along rows (nsr) and columns (nsc).
// Invariants: 1 <= ni <= ti, 1 <= nj <= tj, i0 + ni <= (g + 1) * cxg, j0 + nj <= (g + 1) * cyg.
struct BlockTile {
  int64_t i0, j0;
  int ni, nj;
  int nsr, nsc;
};

CPF_HD BlockTile decode_block(const TilePlan& p, int64_t block) {
  const int64_t per_group = p.nti * p.ntj;
  const int64_t g = block / per_group;
  const int64_t r = block % per_group;
  BlockTile t;
  t.i0 = g * p.cxg + (r / p.ntj) * p.ti;
  t.j0 = g * p.cyg + (r % p.ntj) * p.tj;
  t.ni = static_cast<int>(min64(p.ti, (g + 1) * p.cxg - t.i0));
  t.nj = static_cast<int>(min64(p.tj, (g + 1) * p.cyg - t.j0));
  t.nsr = static_cast<int>(ceil_div64(int64_t(t.ni) * p.fx, p.fm));
  t.nsc = static_cast<int>(ceil_div64(int64_t(t.nj) * p.fy, p.fn));
  return t;
}

// Sub-tile (sr, sc) of a tile: fragment rows [gr0, gr0 + fm), columns [gc0, gc0 + fn) of the
// tile's fragment grid (fm, fn here are the actual sizes, 1 <= fm <= plan.fm, likewise fn).
struct SubTile {
  int gr0, gc0;
  int fm, fn;
};

CPF_HD SubTile sub_tile(const TilePlan& p, const BlockTile& t, int sr, int sc) {
  SubTile s;
  s.gr0 = sr * p.fm;
  s.gc0 = sc * p.fn;
  const int rows = t.ni * p.fx - s.gr0;
  const int cols = t.nj * p.fy - s.gc0;
  s.fm = rows < p.fm ? rows : p.fm;
  s.fn = cols < p.fn ? cols : p.fn;
  return s;
}

// One-hot tiles in shared memory, for one chunk of kChunk samples (bytes 0 or 1, int8):
//   A (x side): rows_a = 16 * fm rows,  byte (row, k) at  (k / 16) * rows_a * 16 + row * 16 + k % 16
//   B (y side): rows_b = 16 * fn rows,  at A's end + (k / 16) * rows_b * 16 + row * 16 + k % 16
// i.e. for each 16-sample k-step a row-major [rows][16] block, so the wmma fragment of rows
// 16 fr .. 16 fr + 15 and k-step kb starts at kb * rows * 16 + fr * 256 (256-byte aligned, as
// load_matrix_sync needs) with ldm = 16. A is read as row_major matrix_a (M = rows, K =
// samples), B as col_major matrix_b (K = samples, N = rows of B): counts = A * B.
// Written as uint32 words of 4 consecutive samples: word index L runs over A's words
// [0, rows_a * kWordsPerRow) and then B's, in memory order; OneHotSlot says which.
struct OneHotSlot {
  bool is_y;   // B (y side) rather than A
  int row;     // row within A or B: 16 * (fragment) + bin offset
  int sample;  // first of the word's 4 samples, as an offset into the chunk (multiple of 4)
};

CPF_HD OneHotSlot onehot_slot(int L, int rows_a, int rows_b) {
  OneHotSlot s;
  s.is_y = L >= rows_a * kWordsPerRow;
  const int rows = s.is_y ? rows_b : rows_a;
  const int l = s.is_y ? L - rows_a * kWordsPerRow : L;
  constexpr int kWordsPerStep = kFrag / 4;  // words of one row within one k-step
  const int kb = l / (rows * kWordsPerStep);
  const int rem = l % (rows * kWordsPerStep);
  s.row = rem / kWordsPerStep;
  s.sample = kb * kFrag + (rem % kWordsPerStep) * 4;
  return s;
}

// Byte offsets of the wmma fragments of k-step kb (see the layout above).
CPF_HD int a_fragment_offset(int rows_a, int kb, int fr) {
  return kb * rows_a * kFrag + fr * kFrag * kFrag;
}
CPF_HD int b_fragment_offset(int rows_a, int rows_b, int kb, int fc) {
  return rows_a * kChunk + kb * rows_b * kFrag + fc * kFrag * kFrag;
}

// Column (tile-local) and bin of one-hot row `row` of a sub-tile whose first fragment is
// fragment `g0` of the tile, with f fragments per column.
struct ColumnBin {
  int col;
  int bin;
};

CPF_HD ColumnBin column_bin(int g0, int row, int f) {
  const int g = g0 + row / kFrag;
  return ColumnBin{g / f, (g % f) * kFrag + row % kFrag};
}

// Mask of the bytes of a 4-sample word whose samples exist: `left` = S - (first sample).
CPF_HD unsigned int tail_mask(int64_t left) {
  if (left >= 4) return 0xFFFFFFFFu;
  if (left <= 0) return 0u;
  return (1u << (8 * static_cast<int>(left))) - 1u;
}

}  // namespace cuda
}  // namespace causalprune_fast
