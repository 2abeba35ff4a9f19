// Knobs of the CPU pairwise-MI kernels, exposed to Python for tests and benchmarks.
#pragma once

#include <string>

namespace causalprune_fast {
namespace cpu {

// "auto" (default), "bitmask" (AND + popcount matrix product) or "count" (one increment per
// (sample, pair) into private histograms). Both are exact; "auto" picks the faster one for
// the bin counts at hand.
void set_algorithm(const std::string& name);
std::string get_algorithm();

// "avx512_vpopcntdq" or "portable", and a way to force the portable path (tests, benchmarks).
std::string isa();
void force_portable(bool on);

// The AND + popcount ceiling of the active instruction set (bit pairs per second).
double ceiling(double seconds);

}  // namespace cpu
}  // namespace causalprune_fast
