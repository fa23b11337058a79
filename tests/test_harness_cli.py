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
