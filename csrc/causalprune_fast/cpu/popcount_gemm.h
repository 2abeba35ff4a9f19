// Joint histograms as a binary matrix product (docs/method.md section 7, "bit masks per (channel,
// bin) with AND + popcount"), for the CPU.
//
// Every column c of a code matrix and every bin b < bins - 1 get one bit mask over the samples:
// bit s of mask (c, b) is set when code[s, c] == b. The joint count of a pair of bins is then
//   n_ab(i, j) = popcount(mask_x(i, a) AND mask_y(j, b)),
// a matrix product with AND for multiply and popcount-add for add. The last bin needs no mask:
// its counts follow from the marginals (n_a,last = n_a - sum_b<last n_ab), which saves
// 1 - ((B-1)/B)^2 of the work (12% at B = 16, 75% at B = 2).
//
// Two instruction sets behind one interface, picked at run time: AVX-512 VPOPCNTQ over 512-bit
// words, and a portable path over 64-bit words (hardware POPCNT where the CPU has it).
#pragma once

#include <cstdint>

namespace causalprune_fast {
namespace cpu {

enum class Isa { kPortable = 0, kAvx512 = 1 };

// The best instruction set this CPU supports for the kernels below.
Isa detect_isa();
const char* isa_name(Isa isa);

// Masks are stored row by row, one row per (column, bin < bins - 1), each row `words` uint64
// long; `words` is a multiple of kWordsPerBlock and bits past the last sample are zero.
constexpr int64_t kWordsPerBlock = 8;  // 512 bits
inline int64_t mask_words(int64_t samples) {
  return (samples + 511) / 512 * kWordsPerBlock;
}

// codes: column-major, column c at codes + c * samples. Writes cols * (bins - 1) mask rows.
void build_bin_masks(Isa isa, const uint8_t* codes, int64_t samples, int64_t cols, int bins,
                     uint64_t* masks, int64_t words);

// C[m * ldc + n] += sum_{w0 <= w < w0 + nw} popcount(A[m * ld + w] & B[n * ld + w])
// for m < rows, n < cols. nw is a multiple of kWordsPerBlock.
void popcount_gemm(Isa isa, const uint64_t* A, int64_t rows, const uint64_t* B, int64_t cols,
                   int64_t ld, int64_t w0, int64_t nw, int32_t* C, int64_t ldc);

// Ceiling of the AND + popcount product on this CPU: runs the register-tiled micro-kernel on
// L1-resident masks with every thread for about `seconds` and returns the rate in bit pairs
// (sample x bin-pair) per second. A kernel's fraction of the ceiling is its
// pair-samples/s x (bins_x - 1)(bins_y - 1) divided by this.
double popcount_ceiling(Isa isa, double seconds);

}  // namespace cpu
}  // namespace causalprune_fast
