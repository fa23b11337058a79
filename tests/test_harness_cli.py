"""harness.cli: every command's --help read from its module docstring (doc_parser)."""
import importlib

import pytest

WITH_REST = ["stats", "ingest", "compare", "history"]  # the whole docstring, laid out as written
SUMMARY_ONLY = ["data", "leaderboard", "submit", "verify", "run"]  # its first paragraph


@pytest.mark.parametrize("name", WITH_REST + SUMMARY_ONLY)
def test_help_is_the_module_docstring(name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    module = importlib.import_module(f"harness.{name}")
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and out.startswith(f"usage: python -m harness.{name} ")
    summary, _, rest = module.__doc__.partition("\n\n")
    if name in WITH_REST:
        assert f"\n{summary}\n" in out and out.rstrip("\n").endswith(rest.rstrip("\n"))
    else:
        assert " ".join(summary.split()) in " ".join(out.split()) and rest.split("\n", 1)[0] not in out


# Each command's --target, with what else it needs to reach the argument check (nothing runs or is written).
TARGET_ARGV = {
    "stats": lambda tmp: ["loss", "3.2", "3.3"],
    "ingest": lambda tmp: ["--track", "t", "--name", "n", "--records", str(tmp / "r"), "--runs-dir", str(tmp / "u"),
                           str(tmp / "log.txt")],
    "compare": lambda tmp: ["--logs", f"a={tmp / 'log.txt'}", "--no-plot"],
    "history": lambda tmp: [str(tmp), "--out", str(tmp / "out")],
    "run": lambda tmp: ["--cmd", "true", "--records", str(tmp / "r"), "--runs-dir", str(tmp / "u")],
}


@pytest.mark.parametrize("name", sorted(TARGET_ARGV))
@pytest.mark.parametrize("value, why", [("-1", "'-1' is not above 0"), ("0", "'0' is not above 0"),
                                        ("nan", "'nan' is not a finite number"), ("3,28", "'3,28' is not a number")])
def test_a_target_val_loss_is_a_finite_number_above_0(name, value, why, tmp_path, capsys):
    """A val loss is a cross-entropy, never below 0: --target 0 or -1 was taken, and every run judged against it."""
    module = importlib.import_module(f"harness.{name}")
    with pytest.raises(SystemExit) as exc:
        module.main([*TARGET_ARGV[name](tmp_path), "--target", value])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: argument --target: {why}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, argv", [
    ("submit", lambda loop: ["--records", loop, "--no-leaderboard", "--description", "d", "--name", "a", "r0", "r1"]),
    ("ingest", lambda loop: ["--track", "t", "--name", "n", "--records", loop, "x.txt"]),
    ("data", lambda loop: ["shakespeare", "--dir", loop]),
])
def test_a_folder_option_that_is_a_link_loop_is_a_usage_error_naming_it(name, argv, tmp_path, capsys):
    """not_a_folder passed a link loop (exists() is False): Path.resolve or mkdir then ended in a traceback."""
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    option = {"submit": "--records", "ingest": "--records", "data": "--dir"}[name]
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(f"harness.{name}").main(argv(str(loop)))
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {option} {loop}: Too many levels of symbolic links")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop"]
