"""Registers, spills and shared memory of the kernels' CUDA configurations, compiled for Hopper without a GPU.

    python -m benchmarks.ptxas_report                    # every configuration kernels/ uses on an H100
    python -m benchmarks.ptxas_report attention --strict # one group; exit 1 if any spills or overflows
    python -m benchmarks.ptxas_report sweep              # candidate tiles for the attention backward

Triton compiles for a target named by hand (`triton.compile` with `GPUTarget("cuda", 90, 32)`, the
route of Triton's own ahead-of-time compiler), so the machine code a kernel gets on an H100 can be read
on any machine: `ptxas -v` (shipped in Triton's wheel, the one Triton itself calls) reports the
registers per thread (255 at most), the stack frame and the bytes spilled to local memory, and Triton
reports the shared memory it asks for (227 KiB per block on an H100). The PTX is searched too: `wgmma`
counts Hopper's warpgroup MMA instructions (a matmul kernel without any runs on the older mma.sync path),
`tma` the bulk tensor copies (`cp.async.bulk.tensor`), `cp_async` the pre-Hopper async copies of the
pointer path; static counts, as written in the PTX.

What it says and what it cannot: a kernel whose inner loop spills moves extra bytes through L1/L2 every
iteration, the first suspect when it is slow; 255 registers with no spill is fine. Occupancy and speed
need a GPU: `python -m benchmarks` measures them. This report is how a tile table is kept spill-free
and within shared memory on a machine without one (the CPU CI has none).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile real kernels, whatever the caller's environment

import pandas as pd  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import attention, fp8, head_loss, mlp, newton_schulz, norm  # noqa: E402

SM = 90  # H100 / H200
H100_SHARED_BYTES = 227 * 1024  # opt-in shared memory per block on sm_90
TYPES = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}


def ptxas_usage(ptx: str) -> dict:
    """registers, stack, spill_stores, spill_loads (bytes) of the one kernel in `ptx`, from `ptxas -v`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run([get_ptxas(SM).path, "-v", f"--gpu-name=sm_{SM}a", path, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    number = lambda pattern: int(m.group(1)) if (m := re.search(pattern, out)) else 0  # noqa: E731
    return dict(registers=number(r"Used (\d+) registers"), stack=number(r"(\d+) bytes stack frame"),
                spill_stores=number(r"(\d+) bytes spill stores"), spill_loads=number(r"(\d+) bytes spill loads"))


# PTX instructions counted per kernel: Hopper's warpgroup matrix multiply (a matmul kernel without it runs on the
# older mma.sync path) and its bulk tensor copies (TMA), beside the pre-Hopper cp.async copies of the pointer path.
PREDICATE = r"^\s*(?:@!?%\w+\s+)?"  # an instruction may be guarded by a predicate register: @%p1 or @!%p1
PTX_COUNTS = {"wgmma": PREDICATE + r"wgmma\.mma_async\b", "tma": PREDICATE + r"cp\.async\.bulk\.tensor\b",
              "cp_async": PREDICATE + r"cp\.async\.(?:ca|cg)\b"}


def ptx_counts(ptx: str) -> dict:
    """Static counts of the PTX_COUNTS instructions in `ptx` (each instruction as written, loops not unrolled)."""
    return {name: len(re.findall(pattern, ptx, re.MULTILINE)) for name, pattern in PTX_COUNTS.items()}


def compile_for_hopper(fn, types: dict, constexprs: dict, num_warps: int, num_stages: int,
                       not_divisible: tuple[str, ...] = ("H",)) -> dict:
    """Compile `fn` for sm_90: `types` names each runtime argument's Triton type, `constexprs` the rest.

    A launch from Python specialises every pointer and integer argument that is a multiple of 16 (it is
    told so, and then vectorises loads and pipelines them with async copies). Without that hint the
    code is not what runs on a GPU: scalar loads, no pipelining, hundreds of spilled bytes. So every
    pointer and integer is marked divisible by 16, as it is for the speedrun's shapes (sizes and
    strides multiples of 128), except the names in `not_divisible` (6 heads) and the kernel's
    `do_not_specialize` ones (the attention window). An integer equal to 1 (a contiguous tensor's last
    stride) is specialised to the constant: pass it in `constexprs`."""
    signature = {name: "constexpr" if name in constexprs else types[name] for name in fn.arg_names}
    divisible = [i for i, (name, param) in enumerate(zip(fn.arg_names, fn.params))
                 if signature[name] != "constexpr" and (signature[name].startswith("*") or signature[name] == "i32")
                 and name not in not_divisible and not param.do_not_specialize]
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs,
                       attrs={(i,): [["tt.divisibility", 16]] for i in divisible})
    kernel = triton.compile(source, target=GPUTarget("cuda", SM, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    ptx = kernel.asm["ptx"]
    return dict(shared_kib=kernel.metadata.shared / 1024, **ptxas_usage(ptx), **ptx_counts(ptx))


def _arg_types(fn, element: str, fp32: tuple[str, ...] = (), int32: tuple[str, ...] = (),
               floats: tuple[str, ...] = ()) -> dict:
    """Pointers to `element` unless named in fp32/int32; scalars int32 unless named in floats."""
    def kind(name):
        if name.endswith("_ptr"):
            return "*fp32" if name in fp32 else "*i32" if name in int32 else TYPES[element]
        return "fp32" if name in floats else "i32"

    return {name: kind(name) for name in fn.arg_names}


def attention_rows(dtype: str, tiles: dict) -> list[dict]:
    """The three attention passes at head dims 64 and 128, with `tiles[(pass, D)]` -> attention.Blocks."""
    passes = {"fwd": attention._attn_fwd_kernel, "dkdv": attention._attn_bwd_dkdv_kernel,
              "dq": attention._attn_bwd_dq_kernel, "bwd": attention._attn_bwd_dkdv_kernel}
    rows = []
    for (kind, D), blocks in tiles.items():
        fn = passes[kind]
        one_pass = fn is attention._attn_bwd_dkdv_kernel  # its dq_ptr is the fp32 accumulator
        types = _arg_types(fn, dtype, fp32=("lse_ptr", "delta_ptr", *(("dq_ptr",) if one_pass else ())),
                           int32=("doc_start_ptr", "doc_end_ptr", "ranges_ptr"), floats=("qk_scale", "scale"))
        constexprs = dict(HEAD_DIM=D, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, HAS_DOCS=True,
                          STORE_RANGES=False, DOT_PRECISION="ieee" if dtype == "fp32" else "tf32")
        if one_pass:
            constexprs["DQ_ATOMIC"] = kind == "bwd"
        if "USE_TMA" in fn.arg_names:  # on sm_90 the forward and dK/dV kernels load through TMA descriptors (use_tma)
            element = TYPES[dtype].lstrip("*")
            boxes = dict(q_desc=blocks.block_m, k_desc=blocks.block_n, v_desc=blocks.block_n, do_desc=blocks.block_m)
            types.update({name: f"tensordesc<{element}[{rows}, {D}]>" for name, rows in boxes.items()
                          if name in fn.arg_names})
            constexprs["USE_TMA"] = True
        rows.append(dict(kernel=f"attention {kind} D={D}", dtype=dtype,
                         config=f"{blocks.block_m}x{blocks.block_n} w{blocks.num_warps} s{blocks.num_stages}",
                         **compile_for_hopper(fn, types, constexprs, blocks.num_warps, blocks.num_stages)))
    return rows


ELEMENT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def newton_schulz_rows(dtype: str) -> list[dict]:
    cfg = newton_schulz._launch_config(True, ELEMENT_BYTES[dtype])
    rows = []
    for fn, extra in [(newton_schulz._syrk_kernel, dict(BLOCK=cfg["BLOCK"], HAS_C=False)),  # X Xᵀ
                      (newton_schulz._syrk_kernel, dict(BLOCK=cfg["BLOCK"], HAS_C=True)),  # c·A² + b·A
                      (newton_schulz._bx_plus_ax_kernel, dict(BLOCK_M=cfg["BLOCK"], BLOCK_N=cfg["BLOCK"]))]:
        types = _arg_types(fn, dtype, floats=("alpha", "beta", "a"))
        constexprs = dict(BLOCK_K=cfg["BLOCK_K"], DOT_PRECISION="ieee" if dtype == "fp32" else "tf32", **extra)
        # the launchers pass contiguous tensors: every last-dimension stride is 1, specialised at launch
        constexprs.update({name: 1 for name in fn.arg_names if name.endswith(("_stride_k", "_stride_n"))})
        name = fn.__name__.strip("_").removesuffix("_kernel") + {True: " +C", False: ""}.get(extra.get("HAS_C"), "")
        rows.append(dict(kernel=f"newton_schulz {name}", dtype=dtype,
                         config=f"{cfg['BLOCK']}x{cfg['BLOCK']}x{cfg['BLOCK_K']} w{cfg['num_warps']} s{cfg['num_stages']}",
                         **compile_for_hopper(fn, types, constexprs, cfg["num_warps"], cfg["num_stages"])))
    return rows


def norm_rows(dtype: str, widths=(128, 768, 4096, 8192)) -> list[dict]:
    """RMSNorm without weight (the trainer's), LayerNorm with weight and bias, the trainer's fused mix + RMSNorm and
    QK-norm + rotary, forward and backward."""
    rows = []
    for width in widths:
        block_m, block_n, num_warps = norm._tile_settings(width)
        for label, is_rms, weight, bias in [("rms_norm", True, False, False), ("layer_norm", False, True, True)]:
            absent = dict(res_ptr=None, res_stride_outer=0, res_stride_inner=0, sum_ptr=None, dsum_ptr=None,
                          dsum_stride_outer=0, dsum_stride_inner=0)
            absent.update({} if weight else dict(w_ptr=None, dw_partial_ptr=None))
            absent.update({} if bias else dict(b_ptr=None, db_partial_ptr=None))
            absent.update({} if not is_rms else dict(mean_ptr=None))
            flags = dict(IS_RMS=is_rms, HAS_WEIGHT=weight, HAS_BIAS=bias, BLOCK_M=block_m, BLOCK_N=block_n)
            for kind, fn, more in [("fwd", norm._norm_fwd_kernel, dict(HAS_RESIDUAL=False)),
                                   ("bwd", norm._norm_bwd_kernel, dict(HAS_DSUM=False))]:
                constexprs = {k: v for k, v in {**absent, **flags, **more}.items() if k in fn.arg_names}
                types = _arg_types(fn, dtype, fp32=("mean_ptr", "rstd_ptr", "dw_partial_ptr", "db_partial_ptr"),
                                   floats=("eps",))
                rows.append(dict(kernel=f"norm {label} {kind} N={width}", dtype=dtype,
                                 config=f"{block_m}x{block_n} w{num_warps}",
                                 # rows_per_program: cdiv(tiles, SMs) x BLOCK_M, 376 at (12288, 768) on 132 SMs;
                                 # rows_inner: heads per token (6) for the QK-norm views, a runtime divisor (a
                                 # contiguous input launches with 1, specialised away: the lighter case)
                                 **compile_for_hopper(fn, types, constexprs, num_warps, 1,
                                                      not_divisible=("rows_per_program", "rows_inner"))))
        # the trainer's block entry, mix_rms_norm, with the previous MLP output (its heavier case)
        for kind, fn in [("fwd", norm._mix_rms_norm_fwd_kernel), ("bwd", norm._mix_rms_norm_bwd_kernel)]:
            constexprs = {k: v for k, v in dict(HAS_RESIDUAL=True, HAS_DSUM=True, BLOCK_M=block_m,
                                                BLOCK_N=block_n).items() if k in fn.arg_names}
            types = _arg_types(fn, dtype, fp32=("lambdas_ptr", "rstd_ptr", "dlam_partial_ptr"), floats=("eps",))
            rows.append(dict(kernel=f"norm mix_rms_norm {kind} N={width}", dtype=dtype,
                             config=f"{block_m}x{block_n} w{num_warps}",
                             **compile_for_hopper(fn, types, constexprs, num_warps, 1,
                                                  not_divisible=("rows_per_program", "rows_inner"))))
    # QK-norm + rotary at the head dims the trainer uses: rows of (B, T, H, D), the token of a row found with the
    # runtime head count and T (6 heads: not divisible by 16)
    for head_dim in (64, 128):
        block_m, block_n, num_warps = norm._tile_settings(head_dim)
        for kind, fn in [("fwd", norm._rms_norm_rotary_fwd_kernel), ("bwd", norm._rms_norm_rotary_bwd_kernel)]:
            types = _arg_types(fn, dtype, fp32=("cos_ptr", "sin_ptr", "rstd_ptr"), floats=("eps",))
            rows.append(dict(kernel=f"norm rms_norm_rotary {kind} D={head_dim}", dtype=dtype,
                             config=f"{block_m}x{block_n // 2}x2 w{num_warps}",
                             **compile_for_hopper(fn, types, dict(BLOCK_M=block_m, BLOCK_H=block_n // 2), num_warps, 1,
                                                  not_divisible=("heads", "rows_inner"))))
    return rows


def mlp_rows(dtype: str) -> list[dict]:
    """The MLP's fc matmul with ReLU^2 in its epilogue, forward ("relu2": x W_fc^T, B a transposed view with unit
    stride along K) and backward ("relu2_grad": dY W_proj, B row-major), at each autotuned CUDA configuration."""
    fn, rows = mlp._mlp_matmul_kernel, []
    for bm, bn, bk, warps, stages in mlp.CUDA_CONFIGS:
        # the launcher's unit strides are specialised at launch: A's along K, pre's along N, B's along K (forward:
        # W_fc^T) or N (backward: W_proj)
        for epilogue, b_unit in [("relu2", "b_stride_k"), ("relu2_grad", "b_stride_n")]:
            constexprs = {"a_stride_k": 1, "pre_stride_n": 1, b_unit: 1, "EPILOGUE": epilogue, "BLOCK_M": bm,
                          "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": mlp.GROUP_M, "DOT_PRECISION": "tf32"}
            rows.append(dict(kernel=f"mlp {'fwd' if epilogue == 'relu2' else 'bwd'} {epilogue}", dtype=dtype,
                             config=f"{bm}x{bn}x{bk} w{warps} s{stages}",
                             **compile_for_hopper(fn, _arg_types(fn, dtype), constexprs, warps, stages)))
    return rows


# Candidate attention-backward tiles at D = 128 (the trainer's head dim), for the sweep group: smaller key blocks
# or fewer stages lower the fp32 accumulators' register pressure. Which is fastest only a GPU can say.
BACKWARD_CANDIDATES = [("bwd", 128, attention.Blocks(m, n, num_warps=w, num_stages=st))
                       for m, n, w, st in [(64, 64, 8, 2), (64, 64, 8, 3), (32, 128, 8, 2)]] + \
                      [("dkdv", 128, attention.Blocks(m, n, num_warps=w, num_stages=st))
                       for m, n, w, st in [(32, 128, 8, 3), (32, 128, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3),
                                           (64, 64, 4, 3), (64, 64, 8, 3), (16, 128, 8, 3)]] + \
                      [("dq", 128, attention.Blocks(m, n, num_warps=w, num_stages=st))
                       for m, n, w, st in [(128, 64, 8, 3), (128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 3),
                                           (64, 64, 8, 3), (64, 32, 4, 3)]]


def fp8_rows() -> list[dict]:
    """The FP8 head's casts (kernels.fp8.cast_fp8): x (bf16) and w (fp32) to e4m3 and dY (bf16) to e5m2, each with
    its transpose, as the op launches them; and one without the transpose."""
    block_r, block_c = fp8.CAST_BLOCK
    rows = []
    for element, e5m2, transpose in [("bf16", False, True), ("fp32", False, True), ("bf16", True, True),
                                     ("bf16", True, False)]:
        types = dict(_arg_types(fp8._cast_fp8_kernel, element, floats=("scale",)), q_ptr="*u8", qt_ptr="*u8")
        constexprs = dict(E5M2=e5m2, TRANSPOSE=transpose, BLOCK_R=block_r, BLOCK_C=block_c)
        rows.append(dict(kernel=f"fp8 cast to {'e5m2' if e5m2 else 'e4m3'}{' + transpose' if transpose else ''}",
                         dtype=element, config=f"{block_r}x{block_c} w4",
                         # R, C: the head's sizes (49152 tokens, 768, 50304) are multiples of 16
                         **compile_for_hopper(fp8._cast_fp8_kernel, types, constexprs, 4, 1)))
    return rows


def head_loss_rows() -> list[dict]:
    """The FP8 head's loss kernels (kernels.head_loss), as the op launches them on CUDA: the forward (one row a
    program, CUDA_FORWARD's chunk) and the backward writing G8 and G8^T (BACKWARD_TILE), with the cap and without."""
    rows, (block_v, warps), (block_r, block_c) = [], head_loss.CUDA_FORWARD, head_loss.BACKWARD_TILE
    scalars = dict(cap="fp32", inv_cap="fp32", coef="fp32", V="i32", N="i32")
    for cap in (True, False):
        fn = head_loss._loss_forward_kernel
        types = dict(logits_ptr="*bf16", targets_ptr="*i64", lse_ptr="*fp32", loss_ptr="*fp32", **scalars)
        rows.append(dict(kernel=f"head_loss fwd{'' if cap else ' (no cap)'}", dtype="bf16",
                         config=f"{block_v} w{warps}", **compile_for_hopper(
                             fn, types, dict(HAS_CAP=cap, BLOCK_V=block_v), warps, 3)))
        fn = head_loss._loss_backward_kernel
        types = dict(logits_ptr="*bf16", lse_ptr="*fp32", targets_ptr="*i64", dloss_ptr="*fp32", g_ptr="*u8",
                     gt_ptr="*u8", **scalars)
        rows.append(dict(kernel=f"head_loss bwd e5m2 + transpose{'' if cap else ' (no cap)'}", dtype="bf16",
                         config=f"{block_r}x{block_c} w4", **compile_for_hopper(
                             fn, types, dict(HAS_CAP=cap, WRITE_FP8=True, BLOCK_R=block_r, BLOCK_V=block_c), 4, 3)))
    return rows


GROUPS = {
    "attention": lambda: attention_rows("bf16", attention._CUDA_BLOCKS),
    "newton_schulz": lambda: newton_schulz_rows("bf16"),
    "norm": lambda: norm_rows("bf16"),
    "mlp": lambda: mlp_rows("bf16"),
    # fp32 runs on CUDA only in the tests (small tiles, slow and allowed to spill)
    "fp32": lambda: attention_rows("fp32", {key: attention._CUDA_FP32_BLOCKS for key in attention._CUDA_BLOCKS})
    + newton_schulz_rows("fp32"),
    "sweep": lambda: [dict(row, kernel=row["kernel"] + " (candidate)")
                      for kind, D, blocks in BACKWARD_CANDIDATES for row in attention_rows("bf16", {(kind, D): blocks})],
    "fp8": fp8_rows,
    "head_loss": head_loss_rows,
}


DEFAULT_GROUPS = [group for group in GROUPS if group != "sweep"]  # sweep's candidates are no launched tiles


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("groups", nargs="*", metavar="group", default=DEFAULT_GROUPS,
                        help=f"what to compile, of {', '.join(GROUPS)} (default: all but sweep, the candidate "
                             "attention backward tiles)")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a configuration spills or overflows")
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.groups) - set(GROUPS)):
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table = pd.DataFrame([row for group in args.groups for row in GROUPS[group]()])
    table["fits"] = table.shared_kib * 1024 <= H100_SHARED_BYTES
    print(f"sm_{SM} with Triton {triton.__version__}, ptxas {get_ptxas(SM).version}: registers per thread, "
          "stack and spills in bytes, shared memory in KiB (H100 limit 227)")
    print(table.to_markdown(index=False, floatfmt=".1f"))
    if args.csv:
        table.to_csv(args.csv, index=False)
    problems = table[(table.spill_stores > 0) | ~table.fits]
    if len(problems):
        print(f"{len(problems)} configuration(s) spill or overflow shared memory: "
              + ", ".join(f"{r.kernel} {r.dtype} {r.config}" for r in problems.itertuples()))
    return 1 if args.strict and len(problems) else 0


if __name__ == "__main__":
    sys.exit(main())
