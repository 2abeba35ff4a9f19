"""The four implementations of the estimator and how one is chosen.

=========== ============================================ ==========================
backend     implementation                               devices
=========== ============================================ ==========================
reference   pure PyTorch, float64 (reference.py)          any
cpu         C++ kernels, torch.ops.causalprune_fast.*     CPU tensors
cuda        CUDA kernels, torch.ops.causalprune_fast.*    CUDA tensors
triton      Triton kernels (triton/)                      CUDA tensors; CPU tensors
                                                          under TRITON_INTERPRET=1
=========== ============================================ ==========================

Every backend offers ``quantize``, ``pairwise_mi`` and ``pairwise_mi_sums``, and
``joint_counts`` (exact counts, for combining samples across processes; the reference
implementation where a backend has no op of its own) with ``mi_from_counts`` (the MI of such
combined counts, in float64: the reference's for every backend). Some offer more:
``local_linear_mi`` and ``local_conv_mi``, the fused local measurement of a Linear or 1x1-conv
layer and of any zero-padded convolution (noise, layer, response, binning and counts in one
kernel), are offered by ``triton`` only. :func:`capability` finds an optional one.

``backend="auto"`` takes ``cpu`` for CPU tensors and, for CUDA tensors, whichever of ``cuda``
and ``triton`` ran faster on that GPU in a one-off timing (cached per device). The environment
variable ``CAUSALPRUNE_BACKEND`` overrides ``auto``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from causalprune_fast.estimator import extension as _extension
from causalprune_fast.estimator import reference

BACKENDS = ("reference", "cpu", "cuda", "triton")


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend works here, and why (not)."""

    available: bool
    detail: str


@dataclass(frozen=True)
class Backend:
    """One implementation: the functions with the signatures of the ops, and its optional
    capabilities (None where it has none)."""

    name: str
    quantize: Callable
    pairwise_mi: Callable
    pairwise_mi_sums: Callable
    joint_counts: Callable = reference.joint_counts
    mi_from_counts: Callable = reference.mi_from_counts
    local_linear_mi: Callable | None = None
    local_conv_mi: Callable | None = None


def _triton_module() -> ModuleType:
    from causalprune_fast.estimator import triton as triton_kernels

    return triton_kernels


def _triton_local_linear_mi(*args, **kwargs):
    from causalprune_fast.estimator.triton.local_linear import local_linear_mi

    return local_linear_mi(*args, **kwargs)


def _triton_local_conv_mi(*args, **kwargs):
    from causalprune_fast.estimator.triton.local_conv import local_conv_mi

    return local_conv_mi(*args, **kwargs)


def _triton_status(device: torch.device | None = None) -> BackendStatus:
    try:
        ok, detail = _triton_module().is_available(device)
    except Exception as e:  # ImportError, or a broken triton install
        return BackendStatus(False, f"triton cannot be imported ({type(e).__name__}: {e})")
    return BackendStatus(ok, detail)


def available_backends() -> dict[str, BackendStatus]:
    """Which backends work in this process, and why the others do not."""
    status = {"reference": BackendStatus(True, "pure PyTorch, float64")}
    if _extension._C is None:
        reason = f"C++ extension not loaded ({_extension.LOAD_ERROR})"
        status["cpu"] = BackendStatus(False, reason)
        status["cuda"] = BackendStatus(False, reason)
    else:
        c = _extension._C
        status["cpu"] = BackendStatus(True, f"C++ kernels, {c.cpu_isa()} path")
        if not c.cuda_compiled():
            status["cuda"] = BackendStatus(False, "extension built without CUDA kernels")
        elif not torch.cuda.is_available():
            status["cuda"] = BackendStatus(False, "no CUDA device")
        else:
            status["cuda"] = BackendStatus(True, f"CUDA kernels on {torch.cuda.get_device_name()}")
    status["triton"] = _triton_status()
    return status


def _ops_backend(name: str) -> Backend:
    ops = torch.ops.causalprune_fast
    return Backend(name, ops.quantize, ops.pairwise_mi, ops.pairwise_mi_sums)


def get_backend(name: str) -> Backend:
    """The implementation called ``name`` (no availability check)."""
    if name == "reference":
        return Backend(name, reference.quantize, reference.pairwise_mi, reference.pairwise_mi_sums)
    if name in ("cpu", "cuda"):
        _extension.extension()
        return _ops_backend(name)
    if name == "triton":
        tk = _triton_module()
        return Backend(
            name,
            tk.quantize,
            tk.pairwise_mi,
            tk.pairwise_mi_sums,
            local_linear_mi=_triton_local_linear_mi,
            local_conv_mi=_triton_local_conv_mi,
        )
    raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {name!r}")


_AUTO_CACHE: dict[int, str] = {}


def _fastest_on_cuda(device: torch.device) -> str:
    """Time ``cuda`` and ``triton`` once on this GPU (S=16384, 256 x 256 pairs, 16 bins)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index in _AUTO_CACHE:
        return _AUTO_CACHE[index]
    status = available_backends()
    candidates = [b for b in ("cuda", "triton") if status[b].available]
    if not candidates:
        raise ValueError(
            "no GPU backend is available for CUDA tensors: "
            + "; ".join(f"{b}: {status[b].detail}" for b in ("cuda", "triton"))
        )
    best = candidates[0]
    if len(candidates) > 1:
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randint(0, 16, (256, 16384), device=device, dtype=torch.uint8, generator=gen).t()
        y = torch.randint(0, 16, (256, 16384), device=device, dtype=torch.uint8, generator=gen).t()
        times = {}
        with torch.cuda.device(device):
            for b in candidates:
                fn = get_backend(b).pairwise_mi_sums
                fn(x, y, 16, 16)  # compile / warm up
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(3):
                    fn(x, y, 16, 16)
                torch.cuda.synchronize()
                times[b] = time.perf_counter() - t0
        best = min(times, key=times.get)
    _AUTO_CACHE[index] = best
    return best


def _requested(backend: object) -> str:
    """``backend`` checked, with ``auto`` overridden by ``CAUSALPRUNE_BACKEND`` when set."""
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get("CAUSALPRUNE_BACKEND", "auto")
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(
                f"CAUSALPRUNE_BACKEND must be 'auto' or one of {BACKENDS}, got {backend!r}"
            )
    return backend


@torch.compiler.disable  # plain Python bookkeeping: run it eagerly under torch.compile
def resolve(backend: str, device: torch.device) -> Backend:
    """The backend to run on tensors of ``device``, with a ValueError if it cannot."""
    backend = _requested(backend)
    if backend == "auto":
        if device.type == "cuda":
            backend = _fastest_on_cuda(device)
        elif _extension._C is not None:
            backend = "cpu"
        else:
            backend = "reference"
    problem = unusable(backend, device)
    if problem is not None:
        raise ValueError(problem)
    return get_backend(backend)


def unusable(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on tensors of ``device``, or None if it can."""
    status = available_backends()[backend]
    if not status.available:
        return f"backend {backend!r} is not available here: {status.detail}"
    if backend == "cpu" and device.type != "cpu":
        return f"backend 'cpu' needs CPU tensors, got tensors on {device}"
    if backend == "cuda" and device.type != "cuda":
        return f"backend 'cuda' needs CUDA tensors, got tensors on {device}"
    if backend == "triton":
        here = _triton_status(device)
        if not here.available:
            return f"backend 'triton' cannot run here: {here.detail}"
    return None


@torch.compiler.disable
def capability(backend: str, device: torch.device, name: str) -> Callable | None:
    """The optional capability ``name`` (e.g. ``"local_linear_mi"``) of ``backend`` on tensors
    of ``device``, or None where that backend does not offer it or cannot run there.

    A named backend answers for itself only, so ``backend="reference"`` never runs Triton;
    ``"auto"`` (and ``CAUSALPRUNE_BACKEND``) takes the first backend of :data:`BACKENDS` that
    offers it and runs on ``device``."""
    backend = _requested(backend)
    for candidate in BACKENDS if backend == "auto" else (backend,):
        if unusable(candidate, device) is None:
            fn = getattr(get_backend(candidate), name, None)
            if fn is not None:
                return fn
    return None
