"""The tests' ahead-of-time build of the Triton kernels for an H100 (sm_90), without a GPU.

The interpreter runs the kernels' arithmetic but not the GPU compiler, so the tests run
``python -m causalprune_fast.estimator.triton.compile_check`` in a process without
TRITON_INTERPRET (interpreted kernels cannot be compiled), on this checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys


def nvidia_tooling() -> bool:
    """Triton's NVIDIA backend with its bundled ptxas (what compile_check needs)."""
    try:
        import triton
        import triton.backends

        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
        return "nvidia" in triton.backends.backends and os.access(ptxas, os.X_OK)
    except Exception:  # pragma: no cover
        return False


def compile_check(*flags: str) -> str:
    """Run compile_check with ``flags``, assert that it succeeded and return its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH")] if p)
    cmd = [sys.executable, "-m", "causalprune_fast.estimator.triton.compile_check", *flags]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    return res.stdout
