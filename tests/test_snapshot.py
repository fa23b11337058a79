"""harness.snapshot: the code hash covers every file the trainer imports, and a snapshot hashes as its tree."""
import shutil
from pathlib import Path

import pytest

from harness.snapshot import REPO_ROOT, code_files, code_hash, snapshot_code, snapshot_hash


def test_the_code_is_the_trainer_and_what_it_imports():
    files = {p.as_posix() for p in code_files()}
    assert {"train_gpt.py", "optim.py", "kernels/attention.py", "kernels/newton_schulz.py", "kernels/norm.py",
            "harness/shards.py", "harness/tracks.py", "harness/overrides.py", "harness/runlog.py"} <= files
    assert not files & {"harness/run.py", "harness/data.py", "harness/submit.py", "benchmarks/bench_model.py"}


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the repository's code files."""
    for rel in code_files():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, tmp_path / rel)
    return tmp_path


@pytest.mark.parametrize("rel", ["harness/shards.py", "harness/tracks.py", "kernels/norm.py", "train_gpt.py"])
def test_editing_any_trained_file_changes_the_hash(tree, rel):
    before = code_hash(tree)
    with open(tree / rel, "a") as f:
        f.write("\n# edited\n")
    assert code_hash(tree) != before


def test_a_file_the_trainer_does_not_import_leaves_the_hash(tree):
    before = code_hash(tree)
    (tree / "harness" / "data.py").write_text("print('not imported by the trainer')\n")
    assert code_hash(tree) == before


def test_snapshot_hashes_as_the_tree_it_was_copied_from(tree, tmp_path):
    digest = snapshot_code(tmp_path / "run", root=tree)
    assert digest == code_hash(tree) == snapshot_hash(tmp_path / "run" / "code") == code_hash(tmp_path / "run" / "code")
    assert sorted(p.relative_to(tmp_path / "run" / "code") for p in (tmp_path / "run" / "code").rglob("*.py")) == code_files(tree)


def test_imports_are_followed_transitively_relative_and_inside_functions(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "train_gpt.py").write_text("import os\n\ndef f():\n    from pkg import a\n")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from . import b\nfrom .sub.c import thing\n")
    (tmp_path / "pkg" / "b.py").write_text("")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "c.py").write_text("from .. import b\nthing = 1\n")
    (tmp_path / "pkg" / "unused.py").write_text("")
    assert [p.as_posix() for p in code_files(tmp_path)] == [
        "pkg/__init__.py", "pkg/a.py", "pkg/b.py", "pkg/sub/__init__.py", "pkg/sub/c.py", "train_gpt.py"]


def test_no_trainer_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no train_gpt.py under"):
        code_files(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"no trainer {tmp_path / 'other.py'}$"):
        code_files(tmp_path, trainer=tmp_path / "other.py")


def test_the_running_script_is_the_code_not_train_gpt(tree, tmp_path, tmp_path_factory):
    """harness.run --script other.py: the snapshot holds other.py (and what it imports), not train_gpt.py."""
    other = tmp_path_factory.mktemp("elsewhere") / "other_train.py"  # outside the repository
    other.write_text((tree / "train_gpt.py").read_text() + "\n# an idea\n")
    files = {p.as_posix() for p in code_files(tree, trainer=other)}
    assert "other_train.py" in files and "train_gpt.py" not in files and "kernels/attention.py" in files
    digest = snapshot_code(tmp_path / "run", root=tree, trainer=other)
    assert digest == snapshot_hash(tmp_path / "run" / "code") == code_hash(tree, trainer=other) != code_hash(tree)
    assert (tmp_path / "run" / "code" / "other_train.py").read_text().endswith("# an idea\n")


def test_the_trainer_snapshots_the_file_it_runs_from():
    # train_gpt.py's main hands its own path to snapshot_code, so a copy under another name is its own code
    source = (REPO_ROOT / "train_gpt.py").read_text()
    assert "snapshot_code(cfg.run_dir, trainer=__file__)" in source


@pytest.mark.parametrize("make, why", [(lambda p: shutil.rmtree(p), "no code snapshot folder"),
                                       (lambda p: [f.unlink() for f in p.rglob("*") if f.is_file()],
                                        "the code snapshot holds no files")], ids=["missing", "empty"])
def test_a_record_s_snapshot_that_is_missing_or_empty_is_named_once(where, tmp_path, capsys, make, why):
    from harness import verify
    from test_harness_verify import NUMBER_LIKE_IDS, record_with_run_ids

    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    make(folder / "code")
    assert verify.verify(folder) == [f"{folder / 'code'}: {why}"]
