"""harness.shards: the shard format, every bad-shard case, their one-time validation, the token loader."""
import numpy as np
import pytest
import torch

from harness import shards as S
from harness.shards import DataError, TokenLoader, read_shard, shard_token_count, validate_shards, write_shard
from helpers import docs_stream


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


@pytest.mark.parametrize("tokens, problem", [
    (np.zeros((2, 3), dtype=np.uint16), "tokens must be 1-D, got shape (2, 3)"),
    (np.array([1, 70000]), "token ids must fit in uint16, got range [1, 70000]"),
    (np.array([0.5, 3.9]), "token ids must be integers, got float64"),
    (np.array([1.0, np.nan]), "token ids must be integers, got float64"),
    (np.broadcast_to(np.uint16(7), (2**31,)), "2,147,483,648 tokens, more than a shard's int32 count holds: split them"),
])
def test_tokens_no_shard_can_hold_are_refused_and_nothing_is_written(tmp_path, tokens, problem):
    with pytest.raises(DataError) as exc_info:
        write_shard(tmp_path / "s.bin", tokens)
    assert one_line(exc_info) == f"{tmp_path / 's.bin'}: {problem}"
    assert list(tmp_path.iterdir()) == []


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
        ("big_token", "token id 60000 >= vocab size 50304 (first at position 57)"),
    ],
)
def test_bad_shard_gives_one_line_error_naming_file(tmp_path, how, expected):
    path = _corrupt(tmp_path, how)
    with pytest.raises(DataError) as exc_info:
        validate_shards(str(path), vocab_size=50304)
    msg = one_line(exc_info)
    assert str(path) in msg and expected in msg


def test_missing_shard_and_pattern(tmp_path):
    with pytest.raises(DataError, match="no such shard"):
        read_shard(tmp_path / "nope.bin")
    with pytest.raises(DataError, match="not a regular file"):  # a folder given by mistake: no traceback
        read_shard(tmp_path)
    with pytest.raises(DataError, match="no shards match"):
        TokenLoader(str(tmp_path / "*.bin"), seq_len=4, batch_size=1)
    with pytest.raises(DataError, match="no shards match"):
        validate_shards(str(tmp_path / "*.bin"), vocab_size=10)


def test_a_shard_that_is_a_link_loop_is_one_line(tmp_path, capsys):
    """stat raises ELOOP, not FileNotFoundError: a DataError naming the shard, and `data inspect` says INVALID."""
    from harness import data

    loop = tmp_path / "loop.bin"
    loop.symlink_to("loop.bin")
    with pytest.raises(DataError) as exc:
        read_shard(loop)
    assert str(exc.value) == f"{loop}: cannot read (Too many levels of symbolic links)"
    assert data.main(["inspect", str(loop)]) == 1
    assert capsys.readouterr().out == f"INVALID  {loop}: cannot read (Too many levels of symbolic links)\n"


# ---------------------------------------------------------------------------------------------- loader


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(2)
    return [write_shard(tmp_path / f"train_{i:06d}.bin", docs_stream(rng, 60)) for i in range(3)]


def drain(loader, calls):
    return [loader.next_batch() for _ in range(calls)]


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_are_disjoint_and_match_one_process_accumulating(shards, world_size):
    B, T, calls = 2, 16, 6
    # one process, world_size accumulation micro-steps per distributed call
    single = drain(TokenLoader(shards, seq_len=T, batch_size=B), calls * world_size)
    per_rank = [drain(TokenLoader(shards, seq_len=T, batch_size=B, rank=r, world_size=world_size), calls)
                for r in range(world_size)]
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


def test_loader_reads_shards_in_order(shards):
    tokens = np.asarray(read_shard(shards[0]), dtype=np.int64)
    x, _ = TokenLoader(shards, seq_len=10, batch_size=2).next_batch()
    assert torch.equal(x[0], torch.from_numpy(tokens[0:10])) and torch.equal(x[1], torch.from_numpy(tokens[10:20]))


def test_loader_streams_one_shard_at_a_time_and_never_scans_its_tokens(shards, monkeypatch):
    """The ids are checked once by validate_shards, before the clock; loading a shard in the timed loop
    reads its header and maps it, no pass over its tokens."""
    opened, scanned = [], []
    real = S.read_shard
    monkeypatch.setattr(S, "read_shard", lambda p: opened.append(p) or real(p))
    monkeypatch.setattr(S, "check_token_ids", lambda *args: scanned.append(args))
    loader = TokenLoader(shards, seq_len=8, batch_size=1)
    loader.next_batch()
    assert opened == [shards[0]], "only the first shard is read for the first batch"
    assert scanned == []
    validate_shards(shards, vocab_size=50304)
    assert [path for path, _, _ in scanned] == shards


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


@pytest.mark.parametrize("sizes, T, B, W, epochs", [((8,) * 10, 8, 1, 1, 1), ((23, 9, 20), 4, 2, 2, 2),
                                                         ((100, 0, 15), 7, 3, 1, 3)])
def test_the_up_front_check_accepts_exactly_the_calls_the_loader_answers(tmp_path, sizes, T, B, W, epochs):
    """Shards of T tokens hold no sequence of T + 1: counting their header tokens, ten of them pass a check for one
    call, and the run stops at its first batch (after the warm-up). The check counts whole sequences."""
    files = [write_shard(tmp_path / f"s{i}.bin", np.arange(n)) for i, n in enumerate(sizes)]
    loader, calls = TokenLoader(files, seq_len=T, batch_size=B, world_size=W, epochs=epochs), 0
    with pytest.raises(DataError, match="ran out after"):
        while True:
            loader.next_batch()
            calls += 1
    loader.check_available(calls)
    with pytest.raises(DataError, match="too little data") as exc_info:
        loader.check_available(calls + 1)
    one_line(exc_info)


def test_epochs_repeat_the_data(shards):
    loader = TokenLoader(shards[:1], seq_len=8, batch_size=1, epochs=2)
    n = (shard_token_count(shards[0]) - 1) // 8  # sequences of 8 + 1 tokens, starting every 8
    first = drain(loader, n)
    second = drain(loader, n)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))
    assert not torch.equal(first[0][0], first[1][0])


def test_the_global_sequence_order_crosses_shards_drops_their_tails_and_repeats_per_epoch(tmp_path):
    """Sequence k of a shard is its tokens [kT, (k+1)T + 1); shards in order, then again for each epoch; call c of
    rank r takes global sequences [c W B + r B, c W B + (r + 1) B); then one line saying how many tokens were served."""
    sizes, T, B, W = (23, 9, 20), 4, 2, 2  # 20: a start at 16 would need a 21st token
    files = [write_shard(tmp_path / f"s{i}.bin", 1000 * i + np.arange(n)) for i, n in enumerate(sizes)]
    starts = [(i, s) for i, n in enumerate(sizes) for s in range(0, n - T, T)]  # 5 + 2 + 4: each shard's tail dropped
    order = [1000 * i + np.arange(s, s + T + 1) for i, s in starts * 2]  # 2 epochs: 22 sequences, 5 calls' worth
    loaders = [TokenLoader(files, seq_len=T, batch_size=B, rank=r, world_size=W, epochs=2) for r in range(W)]
    for c in range(len(order) // (W * B)):
        for r, loader in enumerate(loaders):
            x, y = loader.next_batch()
            want = torch.from_numpy(np.stack(order[c * W * B + r * B : c * W * B + (r + 1) * B]))
            assert torch.equal(x, want[:, :-1]) and torch.equal(y, want[:, 1:]), (c, r)
    for loader in loaders:
        with pytest.raises(DataError, match=r"ran out after 80 tokens \(2 epoch\(s\) over 3 shard\(s\)\)") as exc_info:
            loader.next_batch()
        one_line(exc_info)


def test_bad_loader_arguments(shards):
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        TokenLoader(shards, seq_len=8, batch_size=1, rank=2, world_size=2)
    with pytest.raises(ValueError, match="must be >= 1"):
        TokenLoader(shards, seq_len=0, batch_size=1)

