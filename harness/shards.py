"""Token shards: the file format, their one-time validation, and the trainer's token loader.

A shard (llm.c's format, the NanoGPT speedrun's): 256 int32 header values (magic 20240520, version 1, token
count, zeros), then that many uint16 GPT-2 token ids; every document starts with <|endoftext|> (BOS_ID).
A leaf module (numpy and torch only): train_gpt.py imports it, so it is part of the code hash.
"""
from __future__ import annotations

import glob
import itertools
import os
import shlex
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from harness.files import atomic_file

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
BOS_ID = 50256  # <|endoftext|>: starts every document
GPT2_VOCAB_SIZE = 50257


class DataError(ValueError):
    """Bad or missing data. The message is one line naming the file (or pattern) and the problem."""


def write_shard(path: str | os.PathLike, tokens: np.ndarray | Sequence[int]) -> Path:
    """Write tokens as a shard, atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise DataError(f"{path}: tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and tokens.dtype.kind not in "iu":  # a float would be truncated to an id, a NaN to garbage
        raise DataError(f"{path}: token ids must be integers, got {tokens.dtype}")
    if tokens.size >= 2**31:
        raise DataError(f"{path}: {tokens.size:,} tokens, more than a shard's int32 count holds: split them")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise DataError(f"{path}: token ids must fit in uint16, got range [{tokens.min()}, {tokens.max()}]")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:  # whole or absent, with the umask's mode
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16, copy=False).tobytes())
    return path


def shard_token_count(path: str | os.PathLike) -> int:
    """Validate a shard's header and size (cheap: reads 1 KiB) and return its token count."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: no such shard") from None
    except OSError as exc:  # a link loop, a name too long
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not path.is_file():
        raise DataError(f"{path}: not a regular file, not a shard")
    if size == 0:
        raise DataError(f"{path}: empty file, not a shard")
    if size < HEADER_BYTES:
        raise DataError(f"{path}: truncated header ({size} bytes, a shard header is {HEADER_BYTES})")
    try:
        header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if header[0] != SHARD_MAGIC:
        raise DataError(f"{path}: wrong magic {header[0]} (expected {SHARD_MAGIC}): not a token shard")
    if header[1] != SHARD_VERSION:
        raise DataError(f"{path}: unsupported shard version {header[1]} (expected {SHARD_VERSION})")
    count = int(header[2])
    payload = size - HEADER_BYTES
    if payload < 2 * count:
        raise DataError(f"{path}: truncated: header says {count} tokens, file holds {payload // 2}")
    if payload != 2 * count:
        raise DataError(f"{path}: token count mismatch: header says {count} tokens, file holds {payload / 2:g}")
    return count


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """A shard's tokens, memory-mapped (uint16, read-only, shape (token_count,)), after checking its header."""
    count = shard_token_count(path)
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(count,))


def check_token_ids(path: str | os.PathLike, tokens: np.ndarray, vocab_size: int) -> None:
    """DataError unless every token id is below vocab_size (one pass over the tokens)."""
    if tokens.size and (top := int(tokens.max())) >= vocab_size:
        where = int(np.argmax(tokens >= vocab_size))
        raise DataError(f"{path}: token id {top} >= vocab size {vocab_size} (first at position {where})")


# The harness.data mode that builds shards of a name (FineWeb: the README's quick start, 8 x 100M train tokens).
BUILT_BY = {"fineweb_": "fineweb --train-shards 8", "shakespeare_": "shakespeare"}


def resolve_files(files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """A glob pattern, a single path, or a list of paths -> sorted existing shard paths, or DataError."""
    if isinstance(files, (str, os.PathLike)):
        pattern = str(files)
        paths = sorted(Path(p) for p in glob.glob(pattern))
        if not paths:
            path = Path(pattern)
            mode = next((mode for prefix, mode in BUILT_BY.items() if path.name.startswith(prefix)), None)
            how = f"build them with `python -m harness.data {mode} --dir {shlex.quote(str(path.parent))}`" if mode \
                else "harness.data builds no shards of that name: put llm.c-format shards there"
            raise DataError(f"{pattern}: no shards match; {how}")
        return paths
    paths = [Path(p) for p in files]
    if not paths:
        raise DataError("no shard files given")
    if missing := next((p for p in paths if not p.exists()), None):
        raise DataError(f"{missing}: no such shard")
    return paths


def validate_shards(files: str | os.PathLike | Iterable[str | os.PathLike], vocab_size: int) -> list[Path]:
    """Check every shard once, before training: its header and size, and that its ids are below vocab_size
    (an embedding lookup would fail on one that is not). Returns their paths."""
    paths = resolve_files(files)
    for path in paths:
        check_token_ids(path, read_shard(path), vocab_size)
    return paths


class TokenLoader:
    """(inputs, targets) micro-batches of one rank, streaming the shards one at a time, in order.

    Call c of rank r returns the global sequences [c*W*B + r*B, c*W*B + (r+1)*B) (world size W, batch size B):
    ranks see disjoint slices, and one process doing 8 accumulation micro-steps sees the tokens 8 processes
    doing one each see (the speedrun's 1-GPU equivalence). Sequence k of a shard is its tokens
    [k*seq_len, (k+1)*seq_len + 1) (inputs [:-1], targets [1:]). After `epochs` passes over the shards
    next_batch raises DataError. Token ids are not checked here: `validate_shards` does that, before the clock.
    """

    def __init__(self, files: str | os.PathLike | Iterable[str | os.PathLike], *, seq_len: int, batch_size: int,
                 rank: int = 0, world_size: int = 1, epochs: int = 1):
        if seq_len < 1 or batch_size < 1 or epochs < 1:
            raise ValueError(f"seq_len, batch_size and epochs must be >= 1, got {seq_len}, {batch_size}, {epochs}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.files = resolve_files(files)
        self.source = str(files) if isinstance(files, (str, os.PathLike)) else f"{len(self.files)} shards"
        self.seq_len, self.batch_size, self.epochs = seq_len, batch_size, epochs
        self.rank, self.world_size = rank, world_size
        # sequences in one pass, from the headers (validated here, up front): a shard of n tokens holds (n - 1) // T
        self.sequences = sum(max(0, shard_token_count(p) - 1) // seq_len for p in self.files)
        self.tokens_per_call = world_size * batch_size * seq_len
        self._sequences = self._stream()
        self.tokens_served = 0  # global (all ranks) input tokens handed out so far

    def _stream(self) -> Iterator[tuple[np.ndarray, int]]:
        """Every global sequence, as (shard tokens, start), a shard read when its first sequence is."""
        for path in (path for _ in range(self.epochs) for path in self.files):
            tokens = read_shard(path)
            end = len(tokens) - self.seq_len  # starts below it: a sequence needs seq_len + 1 tokens
            yield from ((tokens, start) for start in range(0, end, self.seq_len))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets): int64 CPU tensors of shape (batch_size, seq_len) for this rank."""
        B, T = self.batch_size, self.seq_len
        taken = list(itertools.islice(self._sequences, self.world_size * B))
        if len(taken) < self.world_size * B:
            raise DataError(f"{self.source}: training data ran out after {self.tokens_served:,} tokens "
                            f"({self.epochs} epoch(s) over {len(self.files)} shard(s)); add shards, raise "
                            "epochs or lower the number of steps")
        mine = taken[self.rank * B : (self.rank + 1) * B]
        batch = torch.from_numpy(np.stack([np.asarray(tokens[s : s + T + 1], dtype=np.int64) for tokens, s in mine]))
        self.tokens_served += self.world_size * B * T
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def check_available(self, num_calls: int) -> None:
        """DataError, before the run, where the shards cannot serve num_calls micro-batches: exactly the calls
        next_batch would answer, each shard's tail that is no whole sequence left out."""
        needed, available = num_calls * self.tokens_per_call, self.sequences * self.epochs * self.seq_len
        if needed > available:
            raise DataError(f"{self.source}: too little data: {available:,} tokens in whole sequences of "
                            f"{self.seq_len} (+1) in {len(self.files)} shard(s) x {self.epochs} epoch(s), the run "
                            f"needs {needed:,} ({num_calls} micro-batches of {self.tokens_per_call:,} tokens)")
