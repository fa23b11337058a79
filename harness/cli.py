"""What every harness command line shares: its help (its module docstring), its exit, its argument types."""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable


def doc_parser(name: str, doc: str, *, with_rest: bool = True, **kwargs) -> argparse.ArgumentParser:
    """The parser of `python -m harness.<name>`: `doc`'s first paragraph describes the command; with_rest, the
    paragraphs after it follow the options, laid out as written (else kwargs may give an epilog)."""
    summary, _, rest = doc.partition("\n\n")
    if with_rest:
        kwargs.update(epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    return argparse.ArgumentParser(prog=f"python -m harness.{name}", description=summary, **kwargs)


def run_cli(main: Callable[[], int]) -> None:
    """sys.exit(main()); a reader that stops reading (`... | head -1`) ends the command quietly, exit status 1."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        stdout_to_devnull()
        code = 1
    sys.exit(code)


def stdout_to_devnull() -> None:
    """Point stdout at /dev/null once its reader has stopped reading, so that later writes and the last flush at
    exit do not fail again (Python's signal docs)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (pandas), each cell's text on one line with its '|' escaped."""
    import pandas as pd  # only where a table is printed: importing pandas takes a second

    cells = [{k: " ".join(str(v).split()).replace("|", "\\|") for k, v in row.items()} for row in rows]
    return pd.DataFrame(cells).to_markdown(index=False, disable_numparse=True)


def finite_float(text: str) -> float:
    """A finite number (nan and inf are no target val loss), for positive_finite_float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_finite_float(text: str) -> float:
    """argparse type of a target val loss (a cross-entropy: never below 0), a scale (a loss std, a loss per 100
    steps) and a timeout in seconds: a finite number above 0."""
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not above 0")
    return value


def not_a_folder(option: str, path) -> str | None:
    """'<option> <path>: not a folder' for a path that exists and is not one, '<option> <path>: <why>' for a link
    that cannot be followed (a loop, a missing target: nothing can be made there), else None."""
    if path is None or not os.path.lexists(path):
        return None
    try:
        os.stat(path)
    except OSError as exc:
        return f"{option} {path}: {exc.strerror or exc}"
    return None if os.path.isdir(path) else f"{option} {path}: not a folder"


def os_error_line(exc: OSError, named=None) -> str:
    """'<file>: <reason>' for an OSError, on one line; '<reason>' alone where <file> is `named`, the path the line
    it goes into already names."""
    if exc.filename is not None and exc.strerror:
        named_here = named is not None and str(exc.filename) == str(named)
        return exc.strerror if named_here else f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split())


def error_line(exc: Exception) -> str:
    """An error's one line: os_error_line's for an OSError, else its message (harness errors are one line)."""
    return os_error_line(exc) if isinstance(exc, OSError) else str(exc)
