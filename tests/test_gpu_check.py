"""benchmarks/gpu_check.sh, the first GPU session's one command, rehearsed on the CPU: a GPU session is too short
and too rare to find out there that a stage no longer starts, that a timeout does not stop a hang, or that the
files and the table are not where the reply can bring them back. The end-to-end test runs every stage at tiny
shapes (Triton's interpreter, no torch.compile), so only the GPU is left to chance on the GPU."""
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import benchmarks.gpu_check as gpu_check
from benchmarks.__main__ import QUICK_ARGS, QUICK_TABLES

REPO = Path(__file__).resolve().parent.parent


def test_the_plan_fits_eight_minutes_and_every_stage_has_a_module():
    assert sum(s.est_s for s in gpu_check.STAGES) <= gpu_check.BUDGET_S == 480
    assert [s.name for s in gpu_check.STAGES] == ["env", "gpu_tests", "bench_attention", "bench_norm", "bench_mlp",
                                                  "bench_fp8", "bench_newton_schulz", "model_torch", "model_triton", "tile_sweep"]
    for stage in gpu_check.STAGES:
        assert stage.est_s <= stage.limit_s <= 600  # one device command runs 10 minutes at most
        for argv in (stage.argv, stage.tiny_argv):
            assert importlib.util.find_spec(argv[0]) is not None, argv  # `python -m argv[0]` exists


def test_the_plan_is_written_once_in_the_stages_and_printed_by_plan(capsys):
    # each stage carries its text; --plan prints name, what, estimate and limit of each, then the total and budget
    assert gpu_check.main(["--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["stage", "what", "est.", "limit"]
    for stage in gpu_check.STAGES:
        assert stage.what, stage.name
        row = next(line for line in lines if line.startswith(stage.name + " "))
        assert row.split()[-2:] == [str(stage.est_s), str(stage.limit_s)]
        assert " ".join(stage.what.split()[:3]) in row
    assert lines[-1].split()[-2:] == [str(sum(s.est_s for s in gpu_check.STAGES)), str(gpu_check.BUDGET_S)]
    # the docstring and NOTES point to --plan instead of restating the table
    notes = (REPO / "benchmarks" / "NOTES.md").read_text()
    for text in (gpu_check.__doc__, notes):
        assert "--plan" in text
        assert not any(line.lstrip(" |").startswith(("bench_norm ", "model_torch ")) for line in text.splitlines())


def test_quick_mode_replaces_tables_that_exist(capsys):
    # a renamed table would make --quick run every case and overrun the GPU budget: it must exist, same type
    for name, tables in QUICK_TABLES.items():
        module = importlib.import_module(f"benchmarks.{name}")
        for attr, value in tables.items():
            assert type(getattr(module, attr)) is type(value), (name, attr)
    from benchmarks import bench_model

    assert set(QUICK_ARGS) == {"bench_model"}
    if not bench_model.torch.cuda.is_available():  # parses its arguments, then finds no GPU
        assert bench_model.main(QUICK_ARGS["bench_model"]) == 0 and "no CUDA device" in capsys.readouterr().out


def test_a_stage_may_overrun_only_into_time_the_later_stages_do_not_need():
    Stage = gpu_check.Stage
    stages = [Stage(f"s{i}", (), (), est, limit, None) for i, (est, limit) in enumerate([(10, 50), (20, 40), (30, 90)])]
    timeout = gpu_check.stage_timeout
    assert timeout(0, stages, remaining=100, tiny=False) == 50  # its limit: 50 + 20 + 30 fits
    assert timeout(0, stages, remaining=70, tiny=False) == 20  # 70 less the later 50
    assert timeout(0, stages, remaining=40, tiny=False) == 10  # never below its estimate...
    assert timeout(0, stages, remaining=5, tiny=False) == 5  # ...while the budget lasts
    assert timeout(2, stages, remaining=200, tiny=False) == 90  # the last one: up to its limit
    assert timeout(1, stages, remaining=200, tiny=True) == gpu_check.TINY_LIMIT_S


def test_a_failed_a_hung_and_an_unaffordable_stage_are_reported_and_the_rest_still_runs(tmp_path, monkeypatch, capsys):
    def stage(name, *argv):
        return gpu_check.Stage(name, argv, argv, 1, 60, lambda rows, log: "fine")

    monkeypatch.setattr(gpu_check, "STAGES", [
        stage("passes", "timeit", "-n", "1", "pass"), stage("fails", "no_such_module_here"),
        stage("passes_too", "timeit", "-n", "1", "pass"),
        stage("hangs", "timeit", "-n", "1", "import time; time.sleep(120)"),  # stopped at its timeout...
        stage("too_late", "timeit", "-n", "1", "pass")])  # ...which leaves too little budget for this one
    monkeypatch.setattr(gpu_check, "TINY_LIMIT_S", 3)
    monkeypatch.setattr(gpu_check, "MIN_STAGE_S", 2)
    start = time.monotonic()
    assert gpu_check.run(tmp_path, tiny=True, budget_s=5, only=None) == 1
    assert time.monotonic() - start < 20
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert status["passes"] == status["passes_too"] == "ok" and status["fails"] == "failed (exit 1)"
    assert status["hangs"].startswith("timed out at ") and status["too_late"] == "skipped: out of budget"
    out = capsys.readouterr().out
    assert "--- fails failed (exit 1); the end of its log:" in out and "No module named no_such_module_here" in out
    assert out.rstrip().splitlines()[-1].startswith("total")  # the table last
    log = (tmp_path / "gpu_check.log").read_text()
    assert "===== hangs: -m timeit -n 1 'import time; time.sleep(120)' (timeout " in log


def test_the_sweep_times_todays_tiles_first_then_33_others_and_puts_the_tables_back():
    from benchmarks.tile_sweep import GROUPS
    from kernels import attention, newton_schulz, norm

    groups = {name: make(False) for name, make in GROUPS.items()}  # the GPU's tables; nothing allocated
    assert sum(len(g.candidates) for g in groups.values()) == 40
    assert groups["attention_dkdv"].candidates[0] == attention._CUDA_BLOCKS[("dkdv", 128)]
    assert groups["attention_bwd"].candidates[0] == attention._CUDA_BLOCKS[("bwd", 128)]
    assert groups["norm_768"].candidates[0] == norm._tile_settings(768)
    assert groups["newton_schulz"].candidates[0] == newton_schulz._launch_config(True, 2)
    for group in groups.values():
        assert len({group.label(c) for c in group.candidates}) == len(group.candidates)  # no tile twice
    dq, settings, ns = groups["attention_dq"], groups["norm_128"], groups["newton_schulz"]
    with dq.patch(dq.candidates[2]), settings.patch(settings.candidates[1]), ns.patch(ns.candidates[1]):
        assert attention._CUDA_BLOCKS[("dq", 128)] == dq.candidates[2]  # what block_config reads on a GPU
        assert norm._tile_settings(128) == settings.candidates[1]
        assert newton_schulz._launch_config(True, 2) == ns.candidates[1]
    assert attention._CUDA_BLOCKS[("dq", 128)] == dq.candidates[0]
    assert norm._tile_settings(128) == settings.candidates[0]
    assert newton_schulz._launch_config(True, 2) == ns.candidates[0]


def test_headlines_of_benchmark_rows():
    rows = pd.DataFrame([
        dict(bench="fwd", case="a", mode="eager", impl="ours", ms=1.0),
        dict(bench="fwd", case="a", mode="eager", impl="sdpa_flash", ms=2.0),
        dict(bench="fwd", case="a", mode="compiled", impl="ours", ms=1.0),
        dict(bench="fwd", case="a", mode="compiled", impl="flex", ms=0.5),
        dict(bench="fwd", case="a", mode="compiled", impl="copy ceiling", ms=0.1),  # a bound, not a contender
    ])
    assert gpu_check._speedup_headline(rows, "") == ("ours vs fastest reference: geomean 1.00x over 2 cases; "
                                                     "worst 0.50x (fwd a compiled vs flex)")
    rows["est_ms"] = [0.5, None, 2.0, None, None]  # the roofline's estimates of ours: measured 2x and 0.5x of them
    assert gpu_check._speedup_headline(rows, "").endswith("; ours measured / roofline estimate: geomean 1.00x over 2 rows")
    model = pd.DataFrame([dict(impl="triton", ms=119.21, est_ms=128.94, tokens_per_s=412345.6, mfu=0.4012,
                               peak_mem_gib=31.25, compile_s=71.2)])
    assert gpu_check._model_headline(model, "") == ("triton: 119.2 ms/step (roofline 128.9), 412,346 tokens/s, "
                                                    "MFU 40.1%, peak 31.2 GiB, compile 71 s")
    # rows from before the roofline have no estimate
    assert gpu_check._model_headline(model.drop(columns="est_ms"), "").startswith("triton: 119.2 ms/step, 412,346")
    sweep = pd.DataFrame([dict(kernel="k", case="k w1", impl="a", ms=2.0, speedup=1.0),
                          dict(kernel="k", case="k w1", impl="b", ms=1.0, speedup=2.0),
                          dict(kernel="k", case="k w1", impl="c", ms=None, speedup=None)])
    assert gpu_check._sweep_headline(sweep, "") == "2 of 3 timed; k: b 2.00x (w1)"
    assert gpu_check._pytest_headline(pd.DataFrame(), "x\n40 passed, 2 skipped, 380 deselected in 61.20s\n") == \
        "40 passed, 2 skipped, 380 deselected"


def test_a_returned_results_csv_is_appended_unchanged(tmp_path):
    from benchmarks.common import merge_results

    ours = tmp_path / "results.csv"
    pd.DataFrame([dict(date="2026-11-01 10:00", gpu="cpu", bench="old", ms=1.0)]).to_csv(ours, index=False)
    returned = tmp_path / "returned.csv"
    pd.DataFrame([dict(date="2026-12-02 14:00", gpu="NVIDIA H200", bench="model", tokens_per_s=4e5)] * 2).to_csv(
        returned, index=False)
    assert merge_results(returned, ours) == 2
    table = pd.read_csv(ours)
    assert list(table.gpu) == ["cpu", "NVIDIA H200", "NVIDIA H200"] and table.date.iloc[-1] == "2026-12-02 14:00"


@pytest.mark.slow
def test_the_whole_check_rehearsed_on_the_cpu(tmp_path):
    """bash benchmarks/gpu_check.sh --tiny, as the device would run it without --tiny: every stage ok, the four
    files where the device tool brings them back, each stage's rows in results.csv, the table last."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)  # the script must set what its stages need itself
    start = time.monotonic()
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--tiny"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["gpu_check.json", "gpu_check.log", "results.csv", "summary.txt"]  # the device returns 8 at most

    report = json.loads((tmp_path / "gpu_check.json").read_text())
    names = [s.name for s in gpu_check.STAGES]
    assert [s["name"] for s in report["stages"]] == names and {s["status"] for s in report["stages"]} == {"ok"}
    env_info = report["env"]
    assert env_info["device"] == "cpu" and env_info["torch"] and env_info["triton"] and env_info["date"]
    assert report["git_sha"] == env_info["git_sha"] and report["mode"] == "tiny"

    rows = pd.read_csv(tmp_path / "results.csv")
    assert {"date", "git_sha", "gpu", "torch", "triton"} <= set(rows.columns) and set(rows.gpu) == {"cpu"}
    benches = set(rows.bench)
    assert {"attention_fwd", "attention_fwd_bwd", "rms_norm fwd", "mlp_fwd", "mlp_fwd_bwd", "newton_schulz", "model",
            "tile_sweep"} <= benches
    assert set(rows[rows.bench == "model"].impl) == {"torch", "triton"}
    sweep = rows[rows.bench == "tile_sweep"]
    assert sweep.ms.notna().all() and set(sweep.kernel.str.split().str[0]) == {"attention", "norm", "newton_schulz"}

    log = (tmp_path / "gpu_check.log").read_text()
    assert all(f"===== {name}: " in log for name in names)
    assert "skipped" in log  # pytest -m gpu ran: its GPU tests collected, skipped without CUDA
    table = proc.stdout.rstrip().splitlines()
    assert table[-1].startswith("total") and table[-len(names) - 2].startswith("stage")
    assert (tmp_path / "summary.txt").read_text().strip() == "\n".join(table[-len(names) - 3:])
    print(f"gpu_check --tiny took {elapsed:.0f} s")
