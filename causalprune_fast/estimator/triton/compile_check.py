"""Ahead-of-time compilation of the Triton kernels for an NVIDIA target, without a GPU.

``python -m causalprune_fast.estimator.triton.compile_check [--arch 90] [--all] [--sass DIR]``
compiles the kernels with the launch configurations the launchers pick (tile_config) through
Triton's NVIDIA backend and its bundled ptxas, and prints each kernel's registers, spill stack
and shared memory. It catches compiler failures (unsupported layouts, unlowerable ops) on
machines without a GPU, where the tests only exercise the interpreter. It must run with
TRITON_INTERPRET unset: interpreted kernels cannot be compiled.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile

# A representative case per code path: (name, columns per group x, y, bins_x, bins_y).
QUICK_CASES = [
    ("bins 16", 256, 256, 16, 16),  # the default: 8 x 8 pairs per 128 x 128 tile, 8 warps
    ("bins 2", 256, 256, 2, 2),  # 64 x 64 pairs per tile, 2-bin one-hots
    ("bins 256 x 4", 64, 64, 256, 4),  # x bins in two 128-bin sub-blocks, 4-bin y one-hots
    ("bins 3 x 130", 64, 64, 3, 130),  # y bins in two sub-blocks
    ("depthwise bins 16", 9, 1, 16, 16),  # 16 x 1 pairs, 256 x 16 tile
]
MORE_CASES = [
    ("bins 256", 64, 64, 256, 256),
    ("bins 64", 64, 64, 64, 64),
    ("bins 5 x 7", 100, 30, 5, 7),
    ("depthwise bins 8", 9, 1, 8, 8),
    ("one x column, bins 16", 1, 1000, 16, 16),  # 16-row tile
    ("one y column, bins 2", 1000, 1, 2, 2),
]
# Fused local-mode Linear kernels (local_linear.py): (name, Cin, Cout, bins, activation).
LOCAL_LINEAR_CASES = [
    ("512x512 bins 16 relu", 512, 512, 16, "relu"),
    ("768x3072 bins 16 gelu", 768, 3072, 16, "gelu"),
    ("64x10 bins 2 identity", 64, 10, 2, "identity"),
    ("256x256 bins 64 tanh", 256, 256, 64, "tanh"),
    ("128x128 bins 256 silu", 128, 128, 256, "silu"),
]
MORE_LOCAL_LINEAR_ACTIVATIONS = ["sigmoid", "hardswish", "relu6"]
# Fused local-mode convolution kernels (local_conv.py): (name, Cin, Cout, taps K, groups, x
# columns, bins, activation); the geometry itself is runtime data (geo_ptr, base_ptr).
LOCAL_CONV_CASES = [
    ("3x3 64->64 bins 16 relu", 64, 64, 9, 1, 64 * 9, 16, "relu"),
    ("depthwise 3x3 96 bins 16 silu", 96, 96, 9, 96, 96 * 9, 16, "silu"),
    ("5x5 g2 32->32 centre bins 8", 32, 32, 25, 2, 32, 8, "identity"),
    ("3x3x3 16->32 bins 64 tanh", 16, 32, 27, 1, 16 * 27, 64, "tanh"),
]


def _resource_usage(cubin: bytes) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", out)
    return f"regs {m.group(1)} stack {m.group(2)}" if m else "regs ?"


def _compile(fn, signature, constexprs, arch, num_warps, num_stages, **options):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(signature)
    sig.update({k: "constexpr" for k in constexprs})
    # As the launcher's JIT would specialise them for aligned tensors and S % 16 == 0.
    names = list(sig)
    attrs = {
        (names.index(k),): [["tt.divisibility", 16]]
        for k, v in signature.items()
        if v.startswith("*") or k == "S"
    }
    src = ASTSource(fn, sig, constexprs, attrs)
    opts = dict(num_warps=num_warps, num_stages=num_stages, **options)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90")
    parser.add_argument("--all", action="store_true", help="more bin / group shapes")
    parser.add_argument("--smoke", action="store_true", help="one config per kernel (tests)")
    parser.add_argument("--sass", help="write each kernel's SASS into this folder")
    parser.add_argument(
        "--local-linear",
        action="store_true",
        help="only the fused local-mode Linear kernels (local_linear.py, linear_response.py)",
    )
    parser.add_argument(
        "--local-conv",
        action="store_true",
        help="only the fused local-mode convolution kernels (local_conv.py, conv_response.py)",
    )
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2

    # The package exports functions under the modules' names: take the modules themselves.
    pm = importlib.import_module(__package__ + ".pairwise_mi")
    q = importlib.import_module(__package__ + ".quantize")

    failures = 0

    def run(name, fn, signature, constexprs, num_warps, num_stages, **options):
        nonlocal failures
        try:
            k = _compile(fn, signature, constexprs, args.arch, num_warps, num_stages, **options)
        except Exception as e:  # report every failing configuration, not just the first
            failures += 1
            msg = str(e).strip().splitlines()
            print(f"FAIL {name}: {type(e).__name__}: {msg[-1] if msg else ''}", flush=True)
            return
        ptx = k.asm["ptx"]
        mma = "wgmma" if "wgmma" in ptx else ("mma" if "mma.sync" in ptx else "no-mma")
        usage = _resource_usage(k.asm["cubin"])
        print(f"ok   {name:58s} {usage}, smem {k.metadata.shared}, {mma}", flush=True)
        if args.sass:
            import triton

            tool = os.path.join(
                os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"
            )
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(k.asm["cubin"])
                f.flush()
                sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True)
            os.makedirs(args.sass, exist_ok=True)
            fname = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".sass"
            with open(os.path.join(args.sass, fname), "w") as f:
                f.write(sass.stdout)

    only = args.local_linear or args.local_conv
    if not only:
        _estimator_kernels(args, run, pm, q)
    if args.local_linear or not (only or args.smoke):
        _local_linear_kernels(args, run)
    if args.local_conv or not (only or args.smoke):
        _local_conv_kernels(args, run)
    print("all compiled" if not failures else f"{failures} configuration(s) failed")
    return 1 if failures else 0


def _local_linear_kernels(args, run) -> None:
    lm = importlib.import_module(__package__ + ".local_mi")
    lp = importlib.import_module(__package__ + ".local_plan")
    lr = importlib.import_module(__package__ + ".linear_response")
    layer = dict(
        w_ptr="*fp32", chan_ptr="*fp32", noise_ptr="*fp32", seed="i64", S="i32", CIN="i32",
        COUT="i32",
    )  # fmt: skip
    rsig = dict(layer, part_ptr="*fp64", rows_per_program="i32", TILES_Y="i32")
    csig = dict(
        w_ptr="*fp32", chan_ptr="*fp32", noise_ptr="*fp32", ranges_ptr="*fp64", codes_ptr="*u8",
        seed="i64", S="i32", CIN="i32", COUT="i32", bins="i32", C0="i32", C1="i32",
        rows_per_program="i32",
    )  # fmt: skip
    # Pass 2 (local_mi.py) without rows' coordinates and geometry (the launcher passes the
    # noise ranges in their place, unused).
    msig = dict(
        noise_ptr="*fp32", base_ptr="*fp32", geo_ptr="*fp32", ranges_ptr="*fp64",
        codes_ptr="*u8", out_ptr="*fp32", sums_ptr="*fp64", seed="i64", S="i32", XCOLS="i32",
        XSTRIDE="i32", XOFF="i32", XG="i32", COUT="i32", bins="i32", C0="i32", C1="i32",
        TILES_Y="i32",
    )  # fmt: skip
    cases = list(LOCAL_LINEAR_CASES[:1] if args.smoke else LOCAL_LINEAR_CASES)
    if args.all:
        cases += [(f"256x256 bins 16 {a}", 256, 256, 16, a) for a in MORE_LOCAL_LINEAR_ACTIVATIONS]
    for i, (name, cin, cout, bins, act) in enumerate(cases):
        c = lp.local_tile_config(cin, cout, bins, interpret=False)
        flags = dict(ACT=act, HAS_BIAS=True, HAS_AFFINE=i % 2 == 0)
        shapes = dict(YW=c.yw, BLOCK_S=c.block_s, BLOCK_K=c.block_k)
        # The launchers compile without multiply-add contraction (see linear_response.py).
        run(f"local_linear ranges {name}", lr._range_kernel, rsig, dict(flags, **shapes), 4, 1,
            enable_fp_fusion=False)  # fmt: skip
        run(f"local_linear codes {name}", lr._code_kernel, csig, dict(flags, **shapes), 4, 1,
            enable_fp_fusion=False)  # fmt: skip
        variants = [(False, False), (True, True)] if i == 0 or args.all else [(i % 2 == 1, False)]
        if args.smoke:  # one compile of each kernel: sums with Miller-Madow
            variants = [(True, True)]
        for sums, mm in variants:
            consts = dict(CONV=False, MILLER_MADOW=mm, SUMS=sums, PX=c.px, PY=c.py, SB=c.sbx,
                          K=c.kx, BLOCK_S=c.block_s)  # fmt: skip
            tile = f"{c.px}x{c.sbx * c.kx} by {c.py}x{c.sby * c.ky}, {c.num_warps} warps"
            label = f"local_linear mi{'_sums' if sums else ''} {name} ({tile})"
            run(label, lm._local_mi_kernel, msig, consts, c.num_warps, c.num_stages,
                enable_fp_fusion=False)  # fmt: skip


def _local_conv_kernels(args, run) -> None:
    lm = importlib.import_module(__package__ + ".local_mi")
    lp = importlib.import_module(__package__ + ".local_plan")
    cr = importlib.import_module(__package__ + ".conv_response")
    layer = dict(w_ptr="*fp32", chan_ptr="*fp32", noise_ptr="*fp32", base_ptr="*i32",
                 geo_ptr="*i32")  # fmt: skip
    cols = dict(seed="i64", S="i32", XCOLS="i32", XSTRIDE="i32", XOFF="i32")
    rsig = dict(layer, part_ptr="*fp64", **cols, COUT="i32", rows_per_program="i32",
                TILES_Y="i32")  # fmt: skip
    csig = dict(layer, ranges_ptr="*fp64", codes_ptr="*u8", seed="i64", S="i32", XCOLS="i32",
                COUT="i32", bins="i32", C0="i32", C1="i32", rows_per_program="i32")  # fmt: skip
    msig = dict(noise_ptr="*fp32", base_ptr="*i32", geo_ptr="*i32", ranges_ptr="*fp64",
                codes_ptr="*u8", out_ptr="*fp32", sums_ptr="*fp64", **cols, XG="i32",
                COUT="i32", bins="i32", C0="i32", C1="i32", TILES_Y="i32")  # fmt: skip
    cases = LOCAL_CONV_CASES[:1] if args.smoke else LOCAL_CONV_CASES
    for i, (name, _cin, cout, _k, _g, xcols, bins, act) in enumerate(cases):
        c = lp.local_tile_config(xcols, cout, bins, interpret=False)
        flags = dict(ACT=act, HAS_BIAS=True, HAS_AFFINE=i % 2 == 0)
        shapes = dict(YW=c.yw, BLOCK_S=c.block_s, BLOCK_K=c.block_k)
        run(f"local_conv ranges {name}", cr._conv_range_kernel, rsig, dict(flags, **shapes), 4,
            1, enable_fp_fusion=False)  # fmt: skip
        run(f"local_conv codes {name}", cr._conv_code_kernel, csig, dict(flags, **shapes), 4,
            1, enable_fp_fusion=False)  # fmt: skip
        variants = [(True, True)] if args.smoke else [(False, False), (True, i % 2 == 1)]
        for sums, mm in variants:
            consts = dict(CONV=True, MILLER_MADOW=mm, SUMS=sums, PX=c.px, PY=c.py, SB=c.sbx,
                          K=c.kx, BLOCK_S=c.block_s)  # fmt: skip
            tile = f"{c.px}x{c.sbx * c.kx} by {c.py}x{c.sby * c.ky}, {c.num_warps} warps"
            label = f"local_conv mi{'_sums' if sums else ''} {name} ({tile})"
            run(label, lm._local_mi_kernel, msig, consts, c.num_warps, c.num_stages,
                enable_fp_fusion=False)  # fmt: skip


def _estimator_kernels(args, run, pm, q) -> None:
    qsig = dict(
        x_ptr="*fp32", stride_s="i32", stride_c="i32", ranges_ptr="*fp64", stride_rc="i32",
        stride_rk="i32", codes_ptr="*u8", S="i32", C="i32", bins="i32",
    )  # fmt: skip
    bs, bc, qw = q.QUANTIZE_BLOCK_S, q.QUANTIZE_BLOCK_C, q.QUANTIZE_WARPS
    for dt in ["bf16"] if args.smoke else ["fp16", "bf16", "fp32", "fp64"]:
        sig = dict(qsig, x_ptr="*" + dt)
        run(f"quantize {dt}", q._quantize_kernel, sig, dict(BLOCK_S=bs, BLOCK_C=bc), qw, 1)
    msig = dict(
        lo_src="*fp32", hi_src="*fp32", stride_r="i32", stride_c="i32", rows="i32", C="i32",
        rows_per_program="i32", lo_out="*fp64", hi_out="*fp64", out_stride_p="i32",
        out_stride_c="i32",
    )  # fmt: skip
    br, bc = q.MINMAX_BLOCK_R, q.MINMAX_BLOCK_C
    run("min/max pass 1 (bf16)", q._column_min_max_kernel, dict(msig, lo_src="*bf16",
        hi_src="*bf16"), dict(SAME_SRC=True, BLOCK_R=br, BLOCK_C=bc), 4, 1)  # fmt: skip
    if not args.smoke:
        run("min/max pass 2 (fp64)", q._column_min_max_kernel, dict(msig, lo_src="*fp64",
            hi_src="*fp64"), dict(SAME_SRC=False, BLOCK_R=br, BLOCK_C=bc), 4, 1)  # fmt: skip

    msig = dict(
        xt_ptr="*u8", yt_ptr="*u8", out_ptr="*fp32", sums_ptr="*fp64", S="i32", CXG="i32",
        CYG="i32", CX="i32", CY="i32", TILES_X="i32", TILES_Y="i32",
    )  # fmt: skip
    cases = QUICK_CASES + (MORE_CASES if args.all else [])
    if args.smoke:  # the default tile with both variants, and a split-bins / tiny-bins tile
        cases = [QUICK_CASES[0], QUICK_CASES[3]]
    for i, (name, cxg, cyg, bins_x, bins_y) in enumerate(cases):
        c = pm.tile_config(cxg, cyg, bins_x, bins_y, interpret=False)
        variants = [(False, False), (True, True)] if (args.all or i == 0) else [(False, True)]
        for sums, mm in variants:
            consts = dict(
                MILLER_MADOW=mm, SUMS=sums, PX=c.px, SBX=c.sbx, KX=c.kx, PY=c.py, SBY=c.sby,
                KY=c.ky, BLOCK_S=c.block_s,
            )  # fmt: skip
            tile = f"{c.px}x{c.sbx * c.kx} by {c.py}x{c.sby * c.ky}, {c.num_warps} warps"
            label = f"pairwise_mi{'_sums' if sums else ''} {name} ({tile})"
            run(label, pm._pairwise_mi_kernel, msig, consts, c.num_warps, c.num_stages)


if __name__ == "__main__":
    sys.exit(main())
