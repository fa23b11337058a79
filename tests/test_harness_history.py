"""harness.history on a records/ tree written here in both of modded-nanogpt's layouts, logs in its exact format.

The track-layout record reuses the published times and losses of modded-nanogpt's 2026-07-17_FP8DownProjection
(13 runs per variant), so its figures are checked against that record's statistics.md to the printed
precision; the other sets are small enough to compute by hand.
"""
import json
import math
import os

import pytest

from harness import history
from helpers import CODE, modded_log

# 2026-07-17_FP8DownProjection's statistics.md: the runs' times (s) and final val losses, and the figures it prints.
BASE_T = [80.610, 80.710, 80.678, 80.720, 80.747, 80.693, 80.659, 80.694, 80.763, 80.795, 80.818, 80.840, 80.745]
BASE_L = [3.2817, 3.2796, 3.2778, 3.2802, 3.2775, 3.2767, 3.2758, 3.2821, 3.2780, 3.2768, 3.2769, 3.2775, 3.2766]
PR_T = [79.536, 79.740, 79.814, 79.658, 79.593, 79.629, 80.231, 79.653, 79.641, 79.532, 79.539, 79.682, 79.656]
PR_L = [3.2791, 3.2773, 3.2783, 3.2775, 3.2781, 3.2775, 3.2793, 3.2772, 3.2769, 3.2775, 3.2806, 3.2779, 3.2816]
PUBLISHED = {
    "baseline": dict(n=13, time_mean=80.728615, time_std=0.065165, loss_mean=3.2782461538, p=0.0042976481),
    "this_pr": dict(n=13, time_mean=79.684923, time_std=0.182767, loss_mean=3.2783692308, p=0.0006690604),
}
FP8 = "track_1_short/2026-07-17_FP8DownProjection"
# The code of every log, and of the this_pr log whose code names another run in a string literal (its line 11).
RECORD_CODE = CODE + 'run_id = "record_a"\n'
OTHER_NAME = CODE + 'run_id = "record_b"\n'


def log_of(final_ms: int, final_loss: float, *, code: str = RECORD_CODE, steps: int = 1390, **kw) -> str:
    """A modded-nanogpt log (tests/helpers.py's) of `steps` planned steps, ending at `final_ms` with `final_loss`."""
    text = modded_log(final_ms, final_loss, code=code, **kw)
    return text.replace("step:1390/", f"step:{steps}/").replace("/1390 ", f"/{steps} ")


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def root(tmp_path):
    """records/ in both layouts: a track folder with a two-variant record and a medium-track record named by
    date alone, and a 2024-style <MMDDYY>_<Name> record at the top."""
    root = tmp_path / "records"
    for variant, times, losses in (("baseline", BASE_T, BASE_L), ("this_pr", PR_T, PR_L)):
        for i, (t, loss) in enumerate(zip(times, losses)):
            code = OTHER_NAME if (variant, i) == ("this_pr", 12) else RECORD_CODE
            write(root / FP8 / variant / f"run{i:02d}.txt", log_of(round(t * 1000), loss, code=code))
    write(root / FP8 / "README.md", "# FP8 down projection\n")
    write(root / FP8 / "this_pr" / "statistics.md", "# not a log\n")
    # The medium track (target 2.92): times 1700, 1720 s; losses 2.91, 2.90.
    for i, (t, loss) in enumerate(((1700_000, 2.91), (1720_000, 2.90))):
        write(root / "track_2_medium" / "2025-01-18" / f"m{i}.txt", log_of(t, loss, steps=5960))
    # The old layout: times 100, 102, 104 s; losses 3.27, 3.28, 3.26.
    for i, (t, loss) in enumerate(((100_000, 3.27), (102_000, 3.28), (104_000, 3.26))):
        write(root / "011625_Sub3Min" / f"r{i}.txt", log_of(t, loss, steps=1395))
    return root


def run_json(capsys, root, *extra) -> dict:
    rc = history.main([str(root), "--json", "--out", str(root.parent / "out"), *extra])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def by_variant(fig: dict) -> dict:
    return {(v["folder"], v["variant"]): v for v in fig["variants"]}


def test_a_published_record_s_figures_to_their_printed_precision(root, capsys):
    rows = by_variant(run_json(capsys, root))
    for variant, want in PUBLISHED.items():
        v = rows[("2026-07-17_FP8DownProjection", variant)]
        assert (v["track"], v["date"], v["record"], v["target"]) == ("track_1_short", "2026-07-17", "FP8DownProjection",
                                                                     3.28)
        assert v["n"] == want["n"]  # every finished run, the ones that end above 3.28 too
        assert v["time_s"]["mean"] == pytest.approx(want["time_mean"], abs=5e-7)
        assert v["time_s"]["std"] == pytest.approx(want["time_std"], abs=5e-7)
        assert v["final_val_loss"]["mean"] == pytest.approx(want["loss_mean"], abs=5e-11)
        assert v["p_loss_below_target"] == pytest.approx(want["p"], abs=5e-11)
        assert v["passes_loss_rule"] is True and v["planned_steps"] == [1390] and v["final_steps"] == [1390]
        assert [r["time_s"] for r in v["runs"]] == (BASE_T if variant == "baseline" else PR_T)


def test_hand_computed_sets_in_both_layouts(root, capsys):
    rows = by_variant(run_json(capsys, root))
    old = rows[("011625_Sub3Min", ".")]
    assert (old["track"], old["date"], old["record"], old["target"]) == (history.NO_TRACK, "2025-01-16", "Sub3Min",
                                                                         3.28)
    assert old["n"] == 3 and old["planned_steps"] == [1395]
    assert old["time_s"]["mean"] == pytest.approx(102.0) and old["time_s"]["std"] == pytest.approx(2.0)
    assert old["final_val_loss"]["mean"] == pytest.approx(3.27) and old["final_val_loss"]["std"] == pytest.approx(0.01)
    # t = (3.27 - 3.28) / (0.01 / sqrt 3) = -sqrt 3 on 2 degrees of freedom, whose cdf is 1/2 + t / (2 sqrt(2 + t^2))
    assert old["p_loss_below_target"] == pytest.approx(0.5 - math.sqrt(3) / (2 * math.sqrt(5)))
    assert old["passes_loss_rule"] is False
    medium = rows[("2025-01-18", ".")]
    assert (medium["track"], medium["date"], medium["record"], medium["target"]) == ("track_2_medium", "2025-01-18",
                                                                                     "", 2.92)
    assert medium["time_s"]["mean"] == pytest.approx(1710.0)
    assert medium["time_s"]["std"] == pytest.approx(10 * math.sqrt(2))
    # t = (2.905 - 2.92) / (0.01 / sqrt 2 / sqrt 2) = -3 on 1 degree of freedom (Cauchy): 1/2 + atan(t) / pi
    assert medium["p_loss_below_target"] == pytest.approx(0.5 + math.atan(-3) / math.pi)
    assert [v["track"] for v in run_json(capsys, root)["variants"]] == [history.NO_TRACK] + ["track_1_short"] * 2 + [
        "track_2_medium"]


def test_target_option_overrides_every_track(root, capsys):
    rows = by_variant(run_json(capsys, root, "--target", "3.3"))
    assert {v["target"] for v in rows.values()} == {3.3}


def test_logs_of_one_variant_with_different_code_are_flagged_with_the_lines(root, capsys):
    rows = by_variant(run_json(capsys, root))
    assert rows[("2026-07-17_FP8DownProjection", "baseline")]["flags"] == []
    pr = rows[("2026-07-17_FP8DownProjection", "this_pr")]
    assert pr["n"] == 13 and len(pr["code_hashes"]) == 2
    (diff,) = pr["code_differences"]
    assert diff["files"] == ["run12.txt"] and diff["vs_file"] == "run00.txt"
    assert diff["lines"] == [{"line_a": 11, "a": 'run_id = "record_a"', "line_b": 11, "b": 'run_id = "record_b"'}]
    (flag,) = pr["flags"]
    assert flag.startswith("code differs: run00.txt (") and "vs run12.txt (" in flag
    assert "line 11 'run_id = \"record_a\"' vs line 11 'run_id = \"record_b\"'" in flag


def test_a_cut_off_log_is_flagged_and_left_out_and_a_copy_counts_once(root, capsys):
    base = root / FP8 / "baseline"
    write(base / "zz_cut.txt", log_of(80700, 3.2770, cut_at=1000))
    (base / "zz_copy.txt").write_text((base / "run03.txt").read_text())
    v = by_variant(run_json(capsys, root))[("2026-07-17_FP8DownProjection", "baseline")]
    assert v["n"] == 13 and v["time_s"]["mean"] == pytest.approx(PUBLISHED["baseline"]["time_mean"], abs=5e-7)
    assert v["left_out"] == [{"file": "zz_cut.txt", "status": "incomplete", "final_step": 1000, "planned_steps": 1390}]
    assert v["flags"] == ["zz_cut.txt: cut off at step 1000 of 1390, left out",
                          "zz_copy.txt is the same log as run03.txt: counted once"]


def test_logs_of_one_variant_with_different_planned_steps_are_flagged(root, capsys):
    write(root / "011625_Sub3Min" / "r9.txt", log_of(90_000, 3.25, steps=1400))
    v = by_variant(run_json(capsys, root))[("011625_Sub3Min", ".")]
    assert v["n"] == 4 and v["planned_steps"] == [1395, 1400]
    assert v["flags"] == ["planned steps differ: 1395, 1400"]


def test_a_diverged_log_is_flagged_and_left_out(root, capsys):
    write(root / "011625_Sub3Min" / "zz_nan.txt", log_of(99_000, 3.27, steps=1395, nan_from=1000))
    v = by_variant(run_json(capsys, root))[("011625_Sub3Min", ".")]
    assert v["n"] == 3 and v["flags"] == ["zz_nan.txt: diverged at step 1395 of 1395, left out"]


def test_a_log_without_its_code_among_logs_with_code_is_flagged(root, capsys):
    write(root / "011625_Sub3Min" / "zz_bare.txt", log_of(99_000, 3.27, steps=1395, code=""))
    v = by_variant(run_json(capsys, root))[("011625_Sub3Min", ".")]
    assert v["n"] == 4 and v["flags"] == ["no code at the top of zz_bare.txt"]


def test_an_output_folder_that_cannot_be_written_is_one_line(root, tmp_path, capsys):
    blocked = write(tmp_path / "blocked", "a file where the folder would go")
    assert history.main([str(root), "--json", "--out", str(blocked / "out")]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: history not written: ") and str(blocked) in err
    assert len(json.loads(out)["variants"]) == 4  # the figures still reach stdout


@pytest.mark.parametrize("limit", [1 << 16, 1 << 20], ids=["plot-cut", "page-cut"])
def test_a_write_cut_off_midway_leaves_the_old_file_whole(root, tmp_path, capsys, monkeypatch, limit):
    """A file-size limit stops a write midway: at 64 KiB the plot's (about 90 KB), at 1 MiB the 4 MiB page's.
    The file cut off stays as it was, and no temporary is left."""
    import resource
    import signal

    import matplotlib.font_manager  # noqa: F401  (a fresh machine writes its font cache here, before the limit)

    out = tmp_path / "out"
    out.mkdir()
    (out / "history.md").write_text("the old page\n")
    (out / "history.png").write_bytes(b"the old plot")
    monkeypatch.setattr(history, "render_page", lambda *a: "x" * (4 << 20))
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        rc = history.main([str(root), "--out", str(out)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert rc == 1 and capsys.readouterr().err.startswith("error: history not written: ")
    assert (out / "history.md").read_text() == "the old page\n"
    plot = (out / "history.png").read_bytes()
    assert plot == b"the old plot" if limit == 1 << 16 else plot[:8] == b"\x89PNG\r\n\x1a\n" and len(plot) < limit
    assert sorted(p.name for p in out.iterdir()) == ["history.md", "history.png"]


def test_a_tree_without_logs_leaves_no_plot_of_another(root, tmp_path, capsys):
    out = tmp_path / "out"
    assert history.main([str(root), "--out", str(out)]) == 0 and (out / "history.png").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert history.main([str(empty), "--out", str(out)]) == 0
    assert not (out / "history.png").exists() and "No logs found." in (out / "history.md").read_text()


def test_page_and_plot(root, capsys):
    out = root.parent / "out"
    assert history.main([str(root), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "history.md")
    page = (out / "history.md").read_text()
    assert "## track_1_short (target val loss 3.28)" in page and "## track_2_medium (target val loss 2.92)" in page
    assert f"## {history.NO_TRACK} (target val loss 3.28)" in page
    assert "| 2026-07-17 | FP8DownProjection | baseline  | 13  | 80.7286 ± 0.0652" in page
    assert "3.27825 ± 0.00202" in page and "| 0.004298 " in page and "| passes " in page
    assert "## Flags" in page and "- track_1_short/2026-07-17_FP8DownProjection/this_pr:" in page
    assert "record_b" in page and "Problems" not in page
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "history.png" in page


def test_bad_input_is_one_line_each_and_the_rest_renders(root, tmp_path, capsys, monkeypatch):
    write(root / "track_1_short" / "2026-07-20_NotALog" / "notes.txt", "some notes, no step lines\n")
    (root / "track_1_short" / "2026-07-21_Empty").mkdir()
    (root / "track_1_short" / "scratch").mkdir()
    (root / "misc").mkdir()
    write(root / "track_1_short" / "2026-02-30_NoSuchDay" / "r.txt", log_of(80000, 3.27))
    locked = write(root / "track_1_short" / "2026-07-22_Locked" / "x" / "r.txt", log_of(80000, 3.27)).parent
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # a folder that cannot be read (chmod does not stop root)
    out = tmp_path / "out"
    assert history.main([str(root), "--json", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 7, captured.err
    assert any(f"{root}/misc: not a record folder" in line for line in lines)
    assert f"history: {root}/track_1_short/2026-02-30_NoSuchDay: not a record folder (expected <YYYY-MM-DD>_<Name>); skipped" \
        in lines
    assert any(f"{root}/track_1_short/scratch: not a record folder" in line for line in lines)
    assert any("2026-07-20_NotALog/notes.txt: no validation line" in line for line in lines)
    assert any("2026-07-21_Empty: no logs" in line for line in lines)
    assert any(f"{locked}: cannot read (Permission denied)" in line for line in lines)
    assert any("2026-07-22_Locked: no logs" in line for line in lines)
    fig = json.loads(captured.out)
    assert len(fig["variants"]) == 4 and len(fig["problems"]) == 7
    assert "## Problems (left out)" in (out / "history.md").read_text()


@pytest.mark.parametrize("make", [lambda p: p, lambda p: write(p, "a file")], ids=["missing", "file"])
def test_root_not_a_folder_is_one_line_exit_2(tmp_path, capsys, make):
    path = make(tmp_path / "records")
    assert history.main([str(path), "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {path}: not a folder\n"
    assert not (tmp_path / "out").exists()


def test_runs_as_a_module(root, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "harness.history", str(root), "--json", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["variants"]) == 4


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_target_that_is_not_a_finite_number_is_a_usage_error(root, value, capsys):
    with pytest.raises(SystemExit) as exc:
        history.main([str(root), "--target", value, "--out", str(root / "out")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"python -m harness.history: error: argument --target: '{value}' is not a finite number"
    assert not (root / "out").exists()
