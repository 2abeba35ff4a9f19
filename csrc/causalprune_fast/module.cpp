// The Python extension module causalprune_fast._C. Importing it registers the ops of
// quantize.cpp and pairwise_mi.cpp with their CPU (and, when built, CUDA) kernels under
// torch.ops.causalprune_fast; the functions below only report how the module was built and
// expose the CPU kernels' knobs for tests and benchmarks.
#include <torch/extension.h>

#include "cpu/pairwise_mi_kernel.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "causalprune_fast C++/CUDA kernels (ops live in torch.ops.causalprune_fast)";
  m.def("cuda_compiled", [] {
#ifdef CAUSALPRUNE_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.def("cpu_isa", &causalprune_fast::cpu::isa,
        "Instruction set the CPU kernels use: 'avx512_vpopcntdq' or 'portable'.");
  m.def("cpu_force_portable", &causalprune_fast::cpu::force_portable,
        "Force the portable CPU path (tests and benchmarks).");
  m.def("cpu_set_algorithm", &causalprune_fast::cpu::set_algorithm,
        "CPU counting algorithm: 'auto', 'bitmask' or 'count'.");
  m.def("cpu_get_algorithm", &causalprune_fast::cpu::get_algorithm);
  m.def("cpu_popcount_ceiling", &causalprune_fast::cpu::ceiling, pybind11::arg("seconds") = 1.0,
        "AND + popcount ceiling of the active CPU path, in bit pairs per second.");
}
