"""Build of causalprune_fast and its C++/CUDA extension ``causalprune_fast._C``.

The CPU kernels are always built. The CUDA kernels are built when a CUDA toolkit and a CUDA
build of torch are present, or as the environment says:

    CAUSALPRUNE_CUDA=1   build the CUDA kernels (fail if no toolkit is found)
    CAUSALPRUNE_CUDA=0   CPU kernels only
    (unset)              build them when possible

The toolkit is found from CUDA_HOME, else from the real location of ``nvcc`` (resolving
wrapper scripts and links), else /usr/local/cuda. TORCH_CUDA_ARCH_LIST defaults to the GPU
present, or to "8.0;9.0" where there is none (the int8 tensor-core kernels need 7.2+).

Build against the installed torch: ``pip install --no-build-isolation -e .``
"""

from __future__ import annotations

import glob
import os
import re
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc", "causalprune_fast")


def _toolkit_root(candidate: str | None) -> str | None:
    if candidate and os.path.isfile(os.path.join(candidate, "bin", "nvcc")):
        if os.path.isfile(os.path.join(candidate, "include", "cuda_runtime.h")):
            return candidate
    return None


def _find_cuda_home() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = _toolkit_root(os.environ.get(var))
        if root:
            return root
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        root = _toolkit_root(os.path.dirname(os.path.dirname(real)))
        if root:
            return root
        # A wrapper script such as `exec /usr/local/cuda-13.0/bin/nvcc "$@"`.
        try:
            with open(real, encoding="utf-8", errors="ignore") as f:
                text = f.read(4096)
            for path in re.findall(r"(/\S+)/bin/nvcc", text):
                root = _toolkit_root(path)
                if root:
                    return root
        except OSError:
            pass
    for path in ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]:
        root = _toolkit_root(path)
        if root:
            return root
    return None


def _want_cuda() -> bool:
    mode = os.environ.get("CAUSALPRUNE_CUDA", "auto").strip().lower()
    cuda_home = _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
    if mode in ("0", "false", "no", "off"):
        return False
    import torch

    possible = cuda_home is not None and torch.version.cuda is not None
    if mode in ("1", "true", "yes", "on"):
        if not possible:
            raise RuntimeError(
                "CAUSALPRUNE_CUDA=1 but no CUDA build is possible: "
                f"toolkit={cuda_home!r}, torch.version.cuda={torch.version.cuda!r}"
            )
        return True
    return possible


def _extensions():
    with_cuda = _want_cuda()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    sources += sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    cxx = ["-O3", "-fopenmp", "-fvisibility=hidden"]
    define_macros = []
    extra = {"cxx": cxx}
    if with_cuda:
        import torch

        if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        sources += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
        define_macros.append(("CAUSALPRUNE_WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension
    print(f"causalprune_fast: building with CUDA kernels: {with_cuda}", flush=True)
    return [
        ext_cls(
            "causalprune_fast._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    ]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


setup(
    name="causalprune_fast",
    version="0.1.0",
    description="Data-free causal channel scoring for structured pruning (Ferianc et al., 2021)",
    packages=find_packages(include=["causalprune_fast", "causalprune_fast.*"]),
    python_requires=">=3.10",
    install_requires=["torch", "triton", "numpy", "pybind11"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "scikit-learn"],
        "models": ["torchvision", "timm"],
        "prune": ["torch-pruning"],
        "plot": ["matplotlib"],
        "progress": ["tqdm"],
        "io": ["safetensors"],
        "hf": ["transformers"],
    },
    entry_points={"console_scripts": ["causalprune = causalprune_fast.cli:main"]},
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    zip_safe=False,
)
