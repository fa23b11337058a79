"""Command-line overrides of a dataclass's fields, `--key=value` or `--key value`, each parsed to its field's type.

    parse_overrides(["--seed=3", "--compile", "auto"], Config)  ->  {"seed": 3, "compile": None}

A key always takes a value (a bare `--key` is refused, not guessed); bool fields take true/false/1/0/yes/no,
optional fields (`int | None`) also none/auto; an unknown key is refused with the closest field's name. The
trainer's own flags (FLAGS) take none: its main reads them bare, and one with a value is refused.
Errors are one-line ConfigErrors.
"""
from __future__ import annotations

import difflib
import typing
from typing import Sequence

_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
FLAGS = ("help", "print_config")  # train_gpt.py's options that are not Config fields and take no value


class ConfigError(ValueError):
    """A bad command line or an impossible configuration; the message is one line."""


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Each `--key value` pair as `--key=value`; refuses (ConfigError) an argument that is not an option
    (`lr=0.1`, `3`) and a `--key` with no value after it (the end of the line, or another `--option`)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        key, sep, _ = arg[2:].partition("=")
        if not arg.startswith("--") or not key:
            raise ConfigError(f"bad argument {arg!r}: expected --key=value or --key value")
        if sep:
            out.append(arg)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
        else:
            raise ConfigError(f"{arg}: expected a value (--{key}=VALUE or --{key} VALUE)")
    return out


def parse_value(key: str, text: str, kind) -> object:
    """`text` as type `kind` (the field's annotation), for the error message of field `key`."""
    if type(None) in typing.get_args(kind):
        if text.lower() in ("none", "auto"):
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        if text.lower() in _BOOLS:
            return _BOOLS[text.lower()]
        raise ConfigError(f"--{key}={text}: expected true/false/1/0")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"--{key}={text}: expected {kind.__name__}") from None


def parse_overrides(argv: Sequence[str], fields_of: type) -> dict:
    """{field: value} of dataclass `fields_of` from `--key=value` / `--key value` arguments (a later one wins)."""
    kinds = typing.get_type_hints(fields_of)
    overrides = {}
    for arg in normalize_argv(argv):
        key, _, text = arg[2:].partition("=")
        if key in FLAGS:
            raise ConfigError(f"{arg}: --{key} takes no value")
        if key not in kinds:
            close = difflib.get_close_matches(key, kinds, n=1)
            raise ConfigError(f"unknown option --{key}" + (f" (did you mean --{close[0]}?)" if close else ""))
        overrides[key] = parse_value(key, text, kinds[key])
    return overrides
