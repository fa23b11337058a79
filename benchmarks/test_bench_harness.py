"""The harness's hot paths as pytest-benchmark benchmarks (CPU): parse a folder of real-size logs, ingest it,
compare 2 x 20 runs, render a leaderboard of 50 records. Each also checks what it timed, so that the
smoke run (--benchmark-disable) is a test of the path too.
"""
import contextlib
import io
import json
import shutil

import pytest

from harness import compare, ingest, leaderboard, submit
from harness.logs import load_runs

from benchmarks.sample_logs import write_logs

RECORDS = 50


def test_parse_a_folder_of_logs(benchmark, logs_folder):
    logs = benchmark(load_runs, logs_folder)
    assert len(logs) == 8 and all(log.status == "ok" and log.code_hash for log in logs)


def test_ingest_a_folder_of_logs(benchmark, logs_folder, fresh_dir):
    def setup():  # each round takes the logs into an empty records log: ingest takes a log in once
        where = fresh_dir()
        return (), {"records_dir": where / "records", "runs_dir": where / "runs"}

    def run(records_dir, runs_dir):
        with contextlib.redirect_stdout(io.StringIO()):  # the new run ids, one per line
            return ingest.ingest([logs_folder], track="modded-nanogpt", name="bench", records_dir=records_dir,
                                 runs_dir=runs_dir)

    rows, problems = benchmark.pedantic(run, setup=setup, rounds=5)
    assert problems == [] and len(rows) == 8 and {row["status"] for row in rows} == {"ok"}


def test_compare_two_variants_of_20_runs(benchmark, two_variants):
    base, new = two_variants

    def run():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = compare.main(["--logs", f"base={base}", f"new={new}", "--json", "--no-plot"])
        return rc, out.getvalue()

    rc, out = benchmark(run)
    assert rc == 0
    fig = json.loads(out)
    assert [v["n"] for v in fig["variants"]] == [20, 20] and fig["variants"][1]["vs_baseline"]["speedup"] > 1


@pytest.fixture(scope="module")
def fifty_records(tmp_path_factory):
    """records/ with RECORDS accepted records: one submitted through ingest and submit, the others its copies
    under their own names and dates, each a little faster than the one before."""
    root = tmp_path_factory.mktemp("leaderboard")
    records = root / "records"
    with contextlib.redirect_stdout(io.StringIO()):
        rows, problems = ingest.ingest([write_logs(root / "logs", 3, mean_ms=80_700, seed=4)], track="modded-nanogpt",
                                       name="first", records_dir=records, runs_dir=root / "runs")
    assert problems == []
    assert submit.main(["--records", str(records), "--no-leaderboard", "--name", "first", "--description", "first",
                        *(row["run_id"] for row in rows)]) == 0
    (first,) = [p for p in records.iterdir() if p.is_dir()]
    record = json.loads((first / "record.json").read_text())
    for i in range(1, RECORDS):
        copy = records / f"2026-01-{1 + i % 28:02d}_r{i:02d}"
        shutil.copytree(first, copy)
        record.update(name=f"r{i:02d}", date=copy.name[:10], submitted=f"{record['submitted']}{i:02d}")
        record["stats"]["train_time_ms"]["mean"] *= 0.99
        (copy / "record.json").write_text(json.dumps(record))
    return records


def test_render_a_leaderboard_of_50_records(benchmark, fifty_records, tmp_path):
    out = benchmark(leaderboard.render, fifty_records, tmp_path / "leaderboard.md")
    text = out.read_text()
    assert text.count("| first ") + sum(f"| r{i:02d} " in text for i in range(1, RECORDS)) >= RECORDS
