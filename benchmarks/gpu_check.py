"""Every GPU check in one command: correctness, every benchmark, the tile sweep and the model, in 8 minutes.

    OUT=folder bash benchmarks/gpu_check.sh [--tiny] [--budget 480] [--only stage,...] [--plan]
    python -m benchmarks.gpu_check --out folder [...]          # the same, without the shell's defaults
    python -m benchmarks.gpu_check --merge returned/results.csv  # its rows into benchmarks/results.csv

A task that draws a GPU gets 15 minutes of device time in all, the machine's start-up included (about 2),
and draws one rarely, so one prepared command, rehearsed on the CPU, leaves nothing to chance but the GPU.
Each stage runs as a subprocess with a hard timeout, so a hang or a crash costs that stage alone: it
is reported and the next one starts. Stages run in the order `--plan` lists, and none starts past the overall
budget.

`--plan` prints the stages: what each runs, its estimate and hard timeout on one H100/H200 (seconds), and
the total against the budget; `STAGES` below is the one place they are written. The estimates are guesses
until a GPU run's gpu_check.json measures them; compiles dominate (torch.compile of the 124M model takes
~1-2 min per backend; a Triton kernel configuration or an inductor graph, seconds each), so each stage's
text counts its compiles.

The budget (480 s) is hard: a stage may run past its estimate only into time the later stages do not
need (its timeout is at most the budget left less the later stages' estimates, and at least its own
estimate while there is time), and the tile sweep, last, uses what is left (it stops timing at its own
budget and keeps what it timed). bench_model and the sweep append each row as it is measured; the kernel
benchmarks append theirs when they finish, so one stopped at its timeout leaves only its log.

Everything goes under OUT, four files (the device tool brings back at most 8):
    gpu_check.log   every stage's output, in order, each headed by its command
    results.csv     every benchmark's rows (benchmarks.common stamps date, git SHA, GPU, torch, Triton)
    gpu_check.json  the environment (device, driver, versions, clocks, ceilings, nvidia-smi), then each
                    stage's command, status, seconds, CPU seconds (compiling shows there), estimate,
                    timeout and headline; rewritten after each stage
    summary.txt     the table printed last
`--tiny` rehearses every stage on the CPU (tiny shapes, Triton's interpreter, no torch.compile, the GPU tests
collected and skipped): tests/test_gpu_check.py runs it end to end.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 480  # the whole run on the GPU: 8 of the 15 device minutes, leaving start-up and a rerun
TINY_BUDGET_S = 600
TINY_LIMIT_S = 120  # per stage on the CPU
MIN_STAGE_S = 10  # a stage is not started with less of the budget left than this
OURS = {"ours", "triton (ours)", "triton"}  # the impl names our kernels' rows carry, per benchmark
NOT_REFERENCES = {"copy ceiling"}  # a bound, not an implementation to beat


# ---------------------------------------------------------------------------------------------- headlines


def _env_headline(rows: pd.DataFrame, log: str) -> str:
    env = parse_env(log)
    if not env:
        return "no environment line"
    ceilings = ""
    if env.get("matmul_tflops"):
        kind = "fp32" if env["device"] == "cpu" else "bf16"
        ceilings = f"; {kind} matmul {env['matmul_tflops']:.1f} TFLOP/s, copy {env['copy_gbps']:.0f} GB/s"
    device = env["device"]
    if device != "cpu":
        device += f" ({env['sms']} SMs, {env['memory_gib']:.0f} GiB)"
    return f"{device}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}{ceilings}"


def _pytest_headline(rows: pd.DataFrame, log: str) -> str:
    found = re.findall(r"^=*\s*(\d+ \w+(?:, \d+ \w+)*) in [\d.]+s", log, re.MULTILINE)
    return found[-1] if found else "no pytest summary"


def _speedup_headline(rows: pd.DataFrame, log: str) -> str:
    """Ours against the fastest reference on the same bench, case and mode (eager or compiled, where the
    rows have one): geomean and worst of the time ratios, above 1 where ours is faster."""
    if rows.empty or "ms" not in rows:
        return "no rows"
    keys = [key for key in ("bench", "case", "mode") if key in rows]
    ratios = []
    for values, group in rows.groupby(keys, sort=False, dropna=False):
        ours = group[group.impl.isin(OURS)]
        refs = group[~group.impl.isin(OURS | NOT_REFERENCES)]
        if len(ours) and len(refs):
            fastest = refs.loc[refs.ms.idxmin()]
            label = " ".join(str(v) for v in values if not pd.isna(v))
            ratios.append((fastest.ms / ours.ms.iloc[0], f"{label} vs {fastest.impl}"))
    if not ratios:
        return f"{len(rows)} rows, no reference on the same case"
    geomean = math.exp(sum(math.log(r) for r, _ in ratios) / len(ratios))
    worst = min(ratios)
    headline = (f"ours vs fastest reference: geomean {geomean:.2f}x over {len(ratios)} cases; "
                f"worst {worst[0]:.2f}x ({worst[1]})")
    if "est_ms" in rows:  # the roofline's estimates beside the measurements
        ours = rows[rows.impl.isin(OURS) & rows.est_ms.notna() & (rows.est_ms > 0)]
        if len(ours):
            ratio = math.exp(sum(math.log(m / e) for m, e in zip(ours.ms, ours.est_ms)) / len(ours))
            headline += f"; ours measured / roofline estimate: geomean {ratio:.2f}x over {len(ours)} rows"
    return headline


def _model_headline(rows: pd.DataFrame, log: str) -> str:
    if rows.empty:
        return "no rows"
    parts = []
    for row in rows.itertuples():
        mfu = "n/a" if pd.isna(row.mfu) else f"{100 * row.mfu:.1f}%"
        peak = "" if pd.isna(row.peak_mem_gib) else f", peak {row.peak_mem_gib:.1f} GiB"
        estimated = "" if pd.isna(getattr(row, "est_ms", float("nan"))) else f" (roofline {row.est_ms:.1f})"
        parts.append(f"{row.impl}: {row.ms:.1f} ms/step{estimated}, {row.tokens_per_s:,.0f} tokens/s, MFU {mfu}{peak}, "
                     f"compile {row.compile_s:.0f} s")
    return "; ".join(parts)


def _sweep_headline(rows: pd.DataFrame, log: str) -> str:
    if rows.empty or "ms" not in rows:
        return "no rows"
    timed = rows[rows.ms.notna()]
    parts = []
    for kernel, group in timed.groupby("kernel", sort=False):
        best = group.loc[group.speedup.idxmax()]
        where = best.case.removeprefix(kernel).strip()
        gain = "today's best" if best.speedup <= 1.0 else f"{best.impl} {best.speedup:.2f}x ({where})"
        parts.append(f"{kernel}: {gain}")
    return f"{len(timed)} of {len(rows)} timed; " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------- the stages


@dataclass(frozen=True)
class Stage:
    name: str
    argv: tuple[str, ...]  # run as `python -m ...` on the GPU; "{budget}" becomes the stage's timeout less 15 s
    tiny_argv: tuple[str, ...]  # the CPU rehearsal's
    est_s: int  # planned seconds on one H100/H200: an estimate, its arithmetic in `what`
    limit_s: int  # hard timeout there
    headline: Callable[[pd.DataFrame, str], str]  # (this stage's rows of results.csv, its log) -> one line
    what: str = ""  # what it runs and why it takes est_s, for --plan


def _pytest(workers: int) -> tuple[str, ...]:
    # a test module that cannot import on the device must not cost the GPU tests of the others
    return ("pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
            "-n", str(workers), "--timeout", "120")


def _model(kernels: str) -> tuple[str, ...]:
    return ("benchmarks.bench_model", "--kernels", kernels, "--windows", "mid", "--no-reference", "--steps", "30",
            "--warmup", "3")


STAGES = [
    Stage("env", ("benchmarks.gpu_check", "--env"), ("benchmarks.gpu_check", "--env"), 15, 60, _env_headline,
          "device, driver, versions, clocks, date, git SHA; bf16 matmul (8192^3) and copy (1 GiB) ceilings"),
    Stage("gpu_tests", _pytest(workers=6), _pytest(workers=0), 60, 150, _pytest_headline,
          "pytest -m gpu (~40 bf16 tests) on 6 xdist workers, compiling in parallel; 120 s a test, collection "
          "errors not fatal"),
    *[Stage(name, ("benchmarks", "--quick", name), ("benchmarks", "--tiny", name), est, limit, _speedup_headline, what)
      for name, est, limit, what in [
          ("bench_attention", 110, 200, "--quick: windows 128 and 1792 of the 48K-token batch with documents, dense "
           "causal D=128 and D=64; ours, SDPA flash and FlexAttention, eager and compiled (~12 compiles)"),
          ("bench_norm", 50, 120, "--quick: (65536, 768) and the QK-norm view, ours vs F.rms_norm / F.layer_norm; "
           "the trainer's fused norms (mix_rms_norm with and without r, rms_norm_rotary) at fineweb-124m's shapes; "
           "ours called as it is, the references eager and compiled, copy ceiling. 7 compiled references x 4 s "
           "(forward and backward graphs) + 14 of our kernels' Triton compiles x 1 s + 56 timings x 0.15 s ~ 50 s"),
          ("bench_mlp", 35, 100, "(49152, 768 -> 3072): relu2_mlp vs the PyTorch MLP, eager and compiled, forward "
           "and forward+backward. 6 autotuned tiles x 3 s + the reference's forward and backward graphs 10 s + "
           "timings ~ 35 s"),
          ("bench_fp8", 20, 90, "--quick: the FP8 head's loss on 49152 x 50304 logits, kernels.head_loss vs the "
           "compiled soft-cap + cross-entropy + cast_fp8, forward and backward (the casts of dY, x and w in a full "
           "run). One forward and backward compile 12 s + 2 Triton compiles 2 s + timings ~ 20 s"),
          ("bench_newton_schulz", 35, 90, "its three stacks, ours vs the reference eager and compiled")]],
    *[Stage(f"model_{kernels}", _model(kernels), (*_model(kernels), "--tiny", "--windows", "first", "--steps", "1",
                                                   "--warmup", "0"), 75, 180, _model_headline, what)
      for kernels, what in [
          ("torch", "bench_model --kernels torch: fineweb-124m (48K tokens a step, window 1024) on synthetic "
           "tokens, compiled, 3 warm-up + 30 timed steps; tokens/s, MFU, peak memory, compile time"),
          ("triton", "the same on our kernels")]],
    Stage("tile_sweep", ("benchmarks.tile_sweep", "--budget", "{budget}"),
          ("benchmarks.tile_sweep", "--tiny", "--processes", "1", "--budget", "{budget}"), 5, 120, _sweep_headline,
          "33 candidate tiles besides the launched ones at the trainer's shapes, checked, then timed; it takes what "
          "is left of the budget and keeps what it timed"),
]


def stage_timeout(i: int, stages: list[Stage], remaining: float, tiny: bool) -> float:
    """Stage i's timeout: its limit, cut to the budget left less what the later stages are planned to need,
    but not below its own estimate while the budget lasts."""
    stage = stages[i]
    if tiny:
        return min(TINY_LIMIT_S, remaining)
    later = sum(s.est_s for s in stages[i + 1:])
    return min(stage.limit_s, max(stage.est_s, remaining - later), remaining)


# ---------------------------------------------------------------------------------------------- env stage


def measure_ceilings(device: str) -> dict:
    """The two ceilings the figures are read against, measured on this card rather than taken from a datasheet:
    a bf16 matmul on random data (8192³; fp32 and tiny on a CPU) and a device copy of 1 GiB (bytes read
    plus written)."""
    import torch

    from benchmarks.common import bench_ms

    n, copy_bytes, dtype = (8192, 2**30, torch.bfloat16) if device == "cuda" else (256, 2**22, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    mm_ms = bench_ms(lambda: a @ b, device, return_mode="median")
    x = torch.randn(copy_bytes // 2, device=device, dtype=torch.bfloat16)
    copy_ms = bench_ms(lambda: x.clone(), device, return_mode="median")
    return dict(matmul_tflops=2 * n**3 / mm_ms / 1e9, copy_gbps=2 * copy_bytes / copy_ms / 1e6)


def environment() -> dict:
    """What the numbers are attributable to: device, driver, versions, clocks, date, git SHA, ceilings."""
    import platform

    import torch

    from harness.hardware import cpu_model, git_state, nvidia_smi, software_versions

    git = git_state()
    env = dict(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               git_sha=git["commit"] or os.environ.get("BENCH_GIT_SHA"), git_dirty=git["dirty"],
               host=platform.node(), cpu=cpu_model(), cpu_count=os.cpu_count(), **software_versions())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   memory_gib=props.total_memory / 2**30, cudnn=torch.backends.cudnn.version())
        try:  # the card as found: clocks, temperature and power before any stage has loaded it
            query = subprocess.run(["nvidia-smi", "--format=csv", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,"
                                    "clocks.mem,temperature.gpu,power.draw,power.limit,memory.used"],
                                   capture_output=True, text=True, timeout=20)
            env["nvidia_smi_query"] = query.stdout.strip() or query.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            env["nvidia_smi_query"] = f"nvidia-smi: {exc}"
        env["nvidia_smi"] = nvidia_smi()
        env.update(measure_ceilings("cuda"))
    else:
        env.update(device="cpu", **measure_ceilings("cpu"))
    return env


def parse_env(log: str) -> dict:
    lines = [line for line in log.splitlines() if line.startswith("ENV ")]
    return json.loads(lines[-1][4:]) if lines else {}


# ---------------------------------------------------------------------------------------------- the driver


def _kill(proc: subprocess.Popen) -> None:
    """The stage's whole process group (pytest's workers, inductor's compile pool): TERM, then KILL."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of the finished subprocesses so far: a stage's compile work shows here."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _result_rows(csv: Path) -> pd.DataFrame:
    return pd.read_csv(csv) if csv.exists() else pd.DataFrame()


def run_stage(stage: Stage, argv: list[str], timeout: float, env: dict, log, csv: Path) -> dict:
    """One stage as a subprocess of its own process group, its output appended to `log` (opened for append);
    returns its status, seconds, CPU seconds and headline, and prints the end of its log if it failed."""
    before = len(_result_rows(csv))
    log.write(f"\n===== {stage.name}: {shlex.join(argv[1:])} (timeout {timeout:.0f} s)\n")
    log.flush()
    offset = log.tell()
    t0, cpu0 = time.monotonic(), _children_cpu_s()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout)
        status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        _kill(proc)
        status = f"timed out at {timeout:.0f} s"
    seconds, cpu_s = time.monotonic() - t0, _children_cpu_s() - cpu0
    text = Path(log.name).read_bytes()[offset:].decode(errors="replace")
    try:
        headline = stage.headline(_result_rows(csv).iloc[before:], text)
    except Exception as exc:  # a headline must never cost the report
        headline = f"(no headline: {type(exc).__name__}: {exc})"
    if status != "ok":  # the reason, in the reply's output tail, without fetching the log
        tail = "\n".join(text.rstrip().splitlines()[-15:])
        print(f"--- {stage.name} {status}; the end of its log:\n{tail}\n---", flush=True)
    return dict(status=status, seconds=round(seconds, 1), cpu_s=round(cpu_s, 1), headline=headline, log=text)


def run(out: Path, tiny: bool, budget_s: float, only: list[str] | None) -> int:
    """Every stage (those in `only`) in order within `budget_s`; the four files under `out`; the table last."""
    from harness.hardware import git_state

    out.mkdir(parents=True, exist_ok=True)
    csv, report_path = out / "results.csv", out / "gpu_check.json"
    sha = git_state()["commit"] or os.environ.get("BENCH_GIT_SHA")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "BENCH_RESULTS_CSV": str(csv.resolve())}
    if sha:
        env["BENCH_GIT_SHA"] = sha
    if tiny:  # the CPU and Triton's interpreter, whatever this machine has
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    stages = [s for s in STAGES if not only or s.name in only]
    report = dict(mode="tiny" if tiny else "gpu", budget_s=budget_s, git_sha=sha, env={}, stages=[])
    start = time.monotonic()
    with open(out / "gpu_check.log", "a") as log:
        for i, stage in enumerate(stages):
            timeout = stage_timeout(i, stages, budget_s - (time.monotonic() - start), tiny)
            argv = [sys.executable, "-m", *(a.format(budget=max(int(timeout) - 15, 10))
                                            for a in (stage.tiny_argv if tiny else stage.argv))]
            entry = dict(name=stage.name, command=shlex.join(argv[1:]), est_s=stage.est_s, timeout_s=round(timeout))
            if timeout < MIN_STAGE_S:
                entry.update(status="skipped: out of budget", seconds=0, cpu_s=0, headline="")
            else:
                entry.update(run_stage(stage, argv, timeout, env, log, csv))
                if stage.name == "env":
                    report["env"] = parse_env(entry["log"])
                del entry["log"]
            report["stages"].append(entry)
            report["total_s"] = round(time.monotonic() - start, 1)
            report_path.write_text(json.dumps(report, indent=2, default=str))
            print(f"[gpu_check] {stage.name}: {entry['status']} in {entry['seconds']:.0f} s", flush=True)
    (out / "results.csv.lock").unlink(missing_ok=True)  # benchmarks.common's FileLock, empty: not a result
    table = summary(report)
    (out / "summary.txt").write_text(table + "\n")
    print(table)
    return 0 if all(s["status"] == "ok" for s in report["stages"]) else 1


def summary(report: dict) -> str:
    env = report["env"]
    title = (f"gpu_check ({report['mode']}) on {env.get('device', '?')}, torch {env.get('torch', '?')}, "
             f"triton {env.get('triton', '?')}, CUDA {env.get('cuda', '?')}, {env.get('date', '?')}, "
             f"git {(report.get('git_sha') or '?')[:10]}")
    lines = [title, f"{'stage':20s} {'status':24s} {'s':>5s} {'est':>4s} {'limit':>5s}  headline"]
    for s in report["stages"]:
        lines.append(f"{s['name']:20s} {s['status']:24s} {s['seconds']:5.0f} {s['est_s']:4d} {s['timeout_s']:5d}  "
                     f"{s['headline']}")
    est = sum(s["est_s"] for s in report["stages"])
    lines.append(f"{'total':20s} {'':24s} {report['total_s']:5.0f} {est:4d} {report['budget_s']:5.0f}")
    return "\n".join(lines)


def plan(width: int = 60) -> str:
    """The stages as a table: name, what, estimate, limit; the total of the estimates against BUDGET_S last."""
    lines = [f"{'stage':20s} {'what':{width}s} {'est.':>5s} {'limit':>5s}"]
    for s in STAGES:
        what = textwrap.wrap(s.what, width) or [""]
        lines.append(f"{s.name:20s} {what[0]:{width}s} {s.est_s:5d} {s.limit_s:5d}")
        lines += [f"{'':20s} {more}" for more in what[1:]]
        lines.append(f"{'':20s} python -m {shlex.join(a.format(budget=s.limit_s - 15) for a in s.argv)}")
    lines.append(f"{'total':20s} {'(budget ' + str(BUDGET_S) + ' s)':{width}s} {sum(s.est_s for s in STAGES):5d} "
                 f"{BUDGET_S:5d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="the folder for the four files (bash benchmarks/gpu_check.sh: $OUT)")
    parser.add_argument("--tiny", action="store_true", help="rehearse every stage on the CPU at tiny shapes")
    parser.add_argument("--budget", type=float,
                        help=f"seconds for all stages (default {BUDGET_S}; with --tiny {TINY_BUDGET_S})")
    parser.add_argument("--only", help=f"comma list of stages to run (a rerun): {', '.join(s.name for s in STAGES)}")
    parser.add_argument("--plan", action="store_true", help="print the stages, estimates and timeouts; run nothing")
    parser.add_argument("--merge", type=Path, metavar="CSV",
                        help="append a returned results.csv's rows to benchmarks/results.csv; run nothing")
    parser.add_argument("--env", action="store_true", help=argparse.SUPPRESS)  # the env stage itself
    args = parser.parse_args(argv)
    if args.merge:
        from benchmarks.common import RESULTS_CSV, merge_results

        print(f"appended {merge_results(args.merge)} rows to {RESULTS_CSV}")
        return 0
    if args.env:
        print("ENV " + json.dumps(environment(), default=str), flush=True)
        return 0
    if args.plan:
        print(plan())
        return 0
    if args.out is None:
        parser.error("--out is required (or run bash benchmarks/gpu_check.sh, which defaults it)")
    only = args.only.split(",") if args.only else None
    if only and (unknown := sorted(set(only) - {s.name for s in STAGES})):
        parser.error(f"unknown stage(s) {', '.join(unknown)}")
    budget = args.budget if args.budget is not None else TINY_BUDGET_S if args.tiny else BUDGET_S
    return run(args.out, args.tiny, budget, only)


if __name__ == "__main__":
    sys.exit(main())
