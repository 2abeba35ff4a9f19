// CPU kernels of `pairwise_mi` and `pairwise_mi_sums` (docs/method.md sections 5 and 7).
//
// Work is split into tiles of pairs (a few x columns by a few y columns, within one group).
// Each tile's joint histograms live only in a thread's private buffer: they are reduced to one
// MI value per pair (the epilogue, mi_bits in ../mi_math.h) right after they are counted, so no
// count tensor is ever written out. Two exact ways to count, chosen per call:
//   bitmask: joint counts as an AND + popcount matrix product of per-(column, bin) bit masks
//            (popcount_gemm.h); cost grows with (bins_x - 1) * (bins_y - 1) / 512 per
//            pair-sample, so it wins for the usual small bin counts;
//   count:   one increment per (sample, pair) into private int32 histograms, several y
//            columns at once for instruction-level parallelism; cost independent of the bins.
// Memory: the column-major codes and the masks, linear in the columns; the Python wrapper
// (causalprune_fast/tiling.py) splits big layers into column chunks within a memory budget.
#include "pairwise_mi_kernel.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "../checks.h"
#include "../mi_math.h"
#include "popcount_gemm.h"

namespace causalprune_fast {
namespace cpu {

namespace {

enum class Algorithm { kAuto = 0, kBitmask = 1, kCount = 2 };
std::atomic<int> g_algorithm{static_cast<int>(Algorithm::kAuto)};
std::atomic<bool> g_force_portable{false};

Isa active_isa() {
  static const Isa detected = detect_isa();
  return g_force_portable.load() ? Isa::kPortable : detected;
}

// n ln n for small counts from a table (bit-identical to xlogx), the rest computed.
constexpr int32_t kTableSize = 4096;
const double* xlogx_table() {
  static const std::vector<double> table = [] {
    std::vector<double> t(kTableSize);
    for (int32_t n = 0; n < kTableSize; ++n) t[n] = xlogx(static_cast<double>(n));
    return t;
  }();
  return table.data();
}
inline double xlogx_count(int32_t n, const double* table) {
  return n < kTableSize ? table[n] : xlogx(static_cast<double>(n));
}

// Marginal histogram of every column, its entropy-like sum and its non-empty bins.
struct ColumnStats {
  std::vector<int32_t> counts;  // [cols][bins]
  std::vector<double> xlogx_sum;
  std::vector<int> nonempty;
};

ColumnStats column_stats(const uint8_t* codes, int64_t cols, int64_t samples, int bins,
                         const char* name, const char* bins_name) {
  ColumnStats st;
  st.counts.assign(cols * bins, 0);
  st.xlogx_sum.assign(cols, 0.0);
  st.nonempty.assign(cols, 0);
  std::atomic<int64_t> bad_column{-1};
  std::atomic<int> bad_code{0};
  at::parallel_for(0, cols, 1, [&](int64_t c0, int64_t c1) {
    int64_t hist[256];
    for (int64_t c = c0; c < c1; ++c) {
      std::memset(hist, 0, sizeof(hist));
      const uint8_t* col = codes + c * samples;
      for (int64_t s = 0; s < samples; ++s) hist[col[s]] += 1;
      for (int v = bins; v < 256; ++v) {
        if (hist[v] != 0) {
          bad_column.store(c);
          bad_code.store(v);
        }
      }
      for (int b = 0; b < bins; ++b) st.counts[c * bins + b] = static_cast<int32_t>(hist[b]);
      const HistogramTerms t = histogram_terms(st.counts.data() + c * bins, bins);
      st.xlogx_sum[c] = t.xlogx_sum;
      st.nonempty[c] = t.nonempty;
    }
  });
  TORCH_CHECK_VALUE(bad_column.load() < 0, name, " holds code ", bad_code.load(),
                    " in column ", bad_column.load(), ", but codes must be < ", bins_name, " = ",
                    bins);
  return st;
}

// Where the MI of each pair goes: the [Cx, Cy] matrix, or per-chunk partial sums.
struct Sink {
  float* matrix;  // nullptr in sums mode
  int64_t cx, cy;
  double* partial;  // [chunks][cx + cy] in sums mode

  void put(int64_t chunk, int64_t i, int64_t j, double mi) const {
    if (matrix != nullptr) {
      matrix[i * cy + j] = static_cast<float>(mi);
    } else {
      double* p = partial + chunk * (cx + cy);
      p[i] += mi;
      p[cx + j] += mi;
    }
  }
};

struct Problem {
  const uint8_t* x;  // column-major codes, column c at x + c * samples
  const uint8_t* y;
  int64_t cx, cy, samples, groups;
  int bx, by;
  bool miller_madow;
  ColumnStats sx, sy;

  double mi(int64_t i, int64_t j, double joint, int nonempty_xy) const {
    return mi_bits(joint, sx.xlogx_sum[i], sy.xlogx_sum[j], static_cast<double>(samples),
                   miller_madow, sx.nonempty[i], sy.nonempty[j], nonempty_xy);
  }
};

// Runs `tile(chunk, item)` for every work item, split into one contiguous run of items per
// chunk (one chunk per thread), so each chunk owns its scratch and partial sums and the
// result does not depend on thread scheduling.
template <typename MakeScratch, typename Tile>
void for_each_tile(int64_t items, int64_t chunks, MakeScratch make_scratch, Tile tile) {
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      auto scratch = make_scratch();
      const int64_t lo = items * c / chunks;
      const int64_t hi = items * (c + 1) / chunks;
      for (int64_t it = lo; it < hi; ++it) tile(c, it, scratch);
    }
  });
}

// ------------------------------------------------------------------ bitmask algorithm
void run_bitmask(const Problem& p, const Sink& sink, int64_t chunks) {
  const Isa isa = active_isa();
  const int64_t words = mask_words(p.samples);
  const int rx = p.bx - 1;  // mask rows per column (the last bin needs none)
  const int ry = p.by - 1;
  std::vector<uint64_t> mx(static_cast<size_t>(p.cx * rx * words));
  std::vector<uint64_t> my(static_cast<size_t>(p.cy * ry * words));
  at::parallel_for(0, p.cx, 1, [&](int64_t c0, int64_t c1) {
    build_bin_masks(isa, p.x + c0 * p.samples, p.samples, c1 - c0, p.bx,
                    mx.data() + c0 * rx * words, words);
  });
  at::parallel_for(0, p.cy, 1, [&](int64_t c0, int64_t c1) {
    build_bin_masks(isa, p.y + c0 * p.samples, p.samples, c1 - c0, p.by,
                    my.data() + c0 * ry * words, words);
  });

  // Tiles of about 64 mask rows on each side.
  const int64_t cxg = p.cx / p.groups, cyg = p.cy / p.groups;
  const int64_t ti = std::min<int64_t>(cxg, std::max(1, 64 / rx));
  const int64_t tj = std::min<int64_t>(cyg, std::max(1, 64 / ry));
  const int64_t nti = (cxg + ti - 1) / ti, ntj = (cyg + tj - 1) / tj;
  const double* table = xlogx_table();

  for_each_tile(
      p.groups * nti * ntj, chunks,
      [&] { return std::vector<int32_t>(static_cast<size_t>(ti * rx * tj * ry)); },
      [&](int64_t chunk, int64_t item, std::vector<int32_t>& cnt) {
        const int64_t g = item / (nti * ntj);
        const int64_t i0 = g * cxg + (item / ntj % nti) * ti;
        const int64_t j0 = g * cyg + (item % ntj) * tj;
        const int64_t ni = std::min(ti, (g + 1) * cxg - i0);
        const int64_t nj = std::min(tj, (g + 1) * cyg - j0);
        const int64_t rows = ni * rx, cols = nj * ry;
        std::fill(cnt.begin(), cnt.begin() + rows * cols, 0);
        popcount_gemm(isa, mx.data() + i0 * rx * words, rows, my.data() + j0 * ry * words, cols,
                      words, 0, words, cnt.data(), cols);
        // Epilogue: rebuild each pair's full joint histogram from the (B-1) x (B-1) block and
        // the marginals, and reduce it to one MI value.
        int32_t col_acc[256];
        for (int64_t ii = 0; ii < ni; ++ii) {
          const int64_t i = i0 + ii;
          const int32_t* nx = p.sx.counts.data() + i * p.bx;
          for (int64_t jj = 0; jj < nj; ++jj) {
            const int64_t j = j0 + jj;
            const int32_t* ny = p.sy.counts.data() + j * p.by;
            const int32_t* block = cnt.data() + ii * rx * cols + jj * ry;
            double joint = 0.0;
            int nonempty = 0;
            int32_t last_col = 0;
            std::fill(col_acc, col_acc + ry, 0);
            for (int a = 0; a < rx; ++a) {
              int32_t row = 0;
              for (int b = 0; b < ry; ++b) {
                const int32_t n = block[a * cols + b];
                row += n;
                col_acc[b] += n;
                joint += xlogx_count(n, table);
                nonempty += n > 0;
              }
              const int32_t n = nx[a] - row;  // n_{a, last}
              last_col += n;
              joint += xlogx_count(n, table);
              nonempty += n > 0;
            }
            for (int b = 0; b < ry; ++b) {
              const int32_t n = ny[b] - col_acc[b];  // n_{last, b}
              joint += xlogx_count(n, table);
              nonempty += n > 0;
            }
            const int32_t n = ny[ry] - last_col;  // n_{last, last}
            joint += xlogx_count(n, table);
            nonempty += n > 0;
            sink.put(chunk, i, j, p.mi(i, j, joint, nonempty));
          }
        }
      });
}

// ------------------------------------------------------------------ counting algorithm
template <int NJ>
void count_pairs(const uint8_t* xi, const uint8_t* const* yj, int64_t samples, int by,
                 int64_t hist_size, int32_t* hist) {
  for (int64_t s = 0; s < samples; ++s) {
    const int32_t base = static_cast<int32_t>(xi[s]) * by;
    for (int k = 0; k < NJ; ++k) hist[k * hist_size + base + yj[k][s]] += 1;
  }
}

void run_count(const Problem& p, const Sink& sink, int64_t chunks) {
  constexpr int kMaxNJ = 8;
  const int64_t hist_size = int64_t(p.bx) * p.by;
  const int64_t cxg = p.cx / p.groups, cyg = p.cy / p.groups;
  // As many y columns per pass as keep the private histograms within about 64 KiB.
  const int64_t tj =
      std::min<int64_t>(cyg, std::clamp<int64_t>(16384 / hist_size, 1, kMaxNJ));
  const int64_t ntj = (cyg + tj - 1) / tj;
  const double* table = xlogx_table();
  const bool scan_cells = hist_size <= p.samples;

  for_each_tile(
      p.groups * cxg * ntj, chunks,
      [&] { return std::vector<int32_t>(static_cast<size_t>(tj * hist_size), 0); },
      [&](int64_t chunk, int64_t item, std::vector<int32_t>& hist) {
        const int64_t g = item / (cxg * ntj);
        const int64_t i = g * cxg + item / ntj % cxg;
        const int64_t j0 = g * cyg + (item % ntj) * tj;
        const int nj = static_cast<int>(std::min(tj, (g + 1) * cyg - j0));
        const uint8_t* xi = p.x + i * p.samples;
        const uint8_t* yj[kMaxNJ];
        for (int k = 0; k < nj; ++k) yj[k] = p.y + (j0 + k) * p.samples;
        int32_t* h = hist.data();
        switch (nj) {
          case 1: count_pairs<1>(xi, yj, p.samples, p.by, hist_size, h); break;
          case 2: count_pairs<2>(xi, yj, p.samples, p.by, hist_size, h); break;
          case 3: count_pairs<3>(xi, yj, p.samples, p.by, hist_size, h); break;
          case 4: count_pairs<4>(xi, yj, p.samples, p.by, hist_size, h); break;
          case 5: count_pairs<5>(xi, yj, p.samples, p.by, hist_size, h); break;
          case 6: count_pairs<6>(xi, yj, p.samples, p.by, hist_size, h); break;
          case 7: count_pairs<7>(xi, yj, p.samples, p.by, hist_size, h); break;
          default: count_pairs<8>(xi, yj, p.samples, p.by, hist_size, h); break;
        }
        // Epilogue: reduce each histogram to one MI value and leave it zeroed for the next
        // pair, visiting either every cell or (for histograms larger than the sample count)
        // only the cells the samples touched.
        for (int k = 0; k < nj; ++k) {
          int32_t* hk = h + k * hist_size;
          double joint = 0.0;
          int nonempty = 0;
          auto take = [&](int64_t cell) {
            const int32_t n = hk[cell];
            if (n != 0) {
              joint += xlogx_count(n, table);
              nonempty += 1;
              hk[cell] = 0;
            }
          };
          if (scan_cells) {
            for (int64_t cell = 0; cell < hist_size; ++cell) take(cell);
          } else {
            for (int64_t s = 0; s < p.samples; ++s) take(int64_t(xi[s]) * p.by + yj[k][s]);
          }
          sink.put(chunk, i, j0 + k, p.mi(i, j0 + k, joint, nonempty));
        }
      });
}

Algorithm choose(const Problem& p) {
  const auto forced = static_cast<Algorithm>(g_algorithm.load());
  if (forced != Algorithm::kAuto) return forced;
  // Cost per pair (ns on one core of a 2-core AMD EPYC Zen 4 at 2 threads, fitted to
  // measurements at 4 to 32 bins and 4 to 16384 samples):
  //   bitmask: a * (bx - 1)(by - 1) * ceil(S / 512)  +  e * bx * by   (product + epilogue over
  //            every cell), a = 0.28 with AVX-512, 1.27 on the portable path;
  //   count:   c * S  +  e * min(bx * by, S)   (increments + epilogue over touched cells).
  // Small sample counts (layers behind pooling, few noise examples) favour counting, because
  // the bitmask epilogue visits every cell; many samples favour the bitmask product up to
  // about 24 bins with AVX-512 and 12 without.
  const double blocks = static_cast<double>((p.samples + 511) / 512);
  const double cells = static_cast<double>(p.bx - 1) * (p.by - 1);
  const double hist = static_cast<double>(p.bx) * p.by;
  const double a = active_isa() == Isa::kAvx512 ? 0.28 : 1.27;
  const double e = 1.3, c = 0.35;
  const double bitmask = a * cells * blocks + e * hist;
  const double count = c * static_cast<double>(p.samples) +
                       e * std::min(hist, static_cast<double>(p.samples));
  return bitmask <= count ? Algorithm::kBitmask : Algorithm::kCount;
}

void run(const at::Tensor& x, const at::Tensor& y, int64_t bins_x, int64_t bins_y,
         int64_t groups, bool miller_madow, float* matrix, double* per_x, double* per_y) {
  const at::Tensor xt = x.t().contiguous();  // [Cx, S]: every column contiguous
  const at::Tensor yt = y.t().contiguous();
  Problem p{xt.data_ptr<uint8_t>(),
            yt.data_ptr<uint8_t>(),
            x.size(1),
            y.size(1),
            x.size(0),
            groups,
            static_cast<int>(bins_x),
            static_cast<int>(bins_y),
            miller_madow,
            {},
            {}};
  p.sx = column_stats(p.x, p.cx, p.samples, p.bx, "x", "bins_x");
  p.sy = column_stats(p.y, p.cy, p.samples, p.by, "y", "bins_y");

  const int64_t chunks = std::max<int64_t>(1, at::get_num_threads());
  std::vector<double> partial;
  if (matrix == nullptr) partial.assign(static_cast<size_t>(chunks * (p.cx + p.cy)), 0.0);
  const Sink sink{matrix, p.cx, p.cy, partial.data()};
  if (choose(p) == Algorithm::kBitmask) {
    run_bitmask(p, sink, chunks);
  } else {
    run_count(p, sink, chunks);
  }
  if (matrix == nullptr) {  // fixed-order reduction of the per-chunk sums
    for (int64_t c = 0; c < chunks; ++c) {
      const double* q = partial.data() + c * (p.cx + p.cy);
      for (int64_t i = 0; i < p.cx; ++i) per_x[i] += q[i];
      for (int64_t j = 0; j < p.cy; ++j) per_y[j] += q[p.cx + j];
    }
  }
}

at::Tensor pairwise_mi_cpu(const at::Tensor& x, const at::Tensor& y, int64_t bins_x,
                           int64_t bins_y, int64_t groups, bool miller_madow) {
  check_pairwise_args(x, y, bins_x, bins_y, groups);
  at::Tensor out = at::zeros({x.size(1), y.size(1)}, x.options().dtype(at::kFloat));
  run(x, y, bins_x, bins_y, groups, miller_madow, out.data_ptr<float>(), nullptr, nullptr);
  return out;
}

std::tuple<at::Tensor, at::Tensor> pairwise_mi_sums_cpu(const at::Tensor& x, const at::Tensor& y,
                                                        int64_t bins_x, int64_t bins_y,
                                                        int64_t groups, bool miller_madow) {
  check_pairwise_args(x, y, bins_x, bins_y, groups);
  at::Tensor per_x = at::zeros({x.size(1)}, x.options().dtype(at::kDouble));
  at::Tensor per_y = at::zeros({y.size(1)}, x.options().dtype(at::kDouble));
  run(x, y, bins_x, bins_y, groups, miller_madow, nullptr, per_x.data_ptr<double>(),
      per_y.data_ptr<double>());
  return {per_x, per_y};
}

}  // namespace

void set_algorithm(const std::string& name) {
  Algorithm a;
  if (name == "auto") {
    a = Algorithm::kAuto;
  } else if (name == "bitmask") {
    a = Algorithm::kBitmask;
  } else if (name == "count") {
    a = Algorithm::kCount;
  } else {
    TORCH_CHECK_VALUE(false, "algorithm must be 'auto', 'bitmask' or 'count', got '", name, "'");
  }
  g_algorithm.store(static_cast<int>(a));
}

std::string get_algorithm() {
  switch (static_cast<Algorithm>(g_algorithm.load())) {
    case Algorithm::kBitmask: return "bitmask";
    case Algorithm::kCount: return "count";
    default: return "auto";
  }
}

std::string isa() { return isa_name(active_isa()); }
void force_portable(bool on) { g_force_portable.store(on); }
double ceiling(double seconds) { return popcount_ceiling(active_isa(), seconds); }

}  // namespace cpu

TORCH_LIBRARY_IMPL(causalprune_fast, CPU, m) {
  m.impl("pairwise_mi", &cpu::pairwise_mi_cpu);
  m.impl("pairwise_mi_sums", &cpu::pairwise_mi_sums_cpu);
}

}  // namespace causalprune_fast
