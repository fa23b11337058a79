"""`--key=value` command-line overrides of a dataclass's fields, each parsed to its field's type.

    parse_overrides(["--seed=3", "--compile=auto"], Config)  ->  {"seed": 3, "compile": None}

bool fields take true/false/1/0/yes/no; optional fields (`int | None`) also take none/auto; an
unknown key is refused with the closest field's name. Errors are one-line ConfigErrors.
"""
from __future__ import annotations

import difflib
import typing


class ConfigError(ValueError):
    """A bad command line or an impossible configuration; the message is one line."""


def parse_value(key: str, text: str, kind) -> object:
    """`text` as type `kind` (the field's annotation), for the error message of field `key`."""
    if type(None) in typing.get_args(kind):
        if text.lower() in ("none", "auto"):
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--{key}={text}: expected true/false/1/0")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"--{key}={text}: expected {kind.__name__}") from None


def parse_overrides(argv: list[str], fields_of: type) -> dict:
    """{field: value} from `--key=value` arguments, in order (a later one wins), for dataclass `fields_of`."""
    kinds = typing.get_type_hints(fields_of)
    overrides = {}
    for arg in argv:
        key, sep, text = arg[2:].partition("=")
        if not arg.startswith("--") or not sep or not key:
            raise ConfigError(f"bad argument {arg!r}: expected --key=value")
        if key not in kinds:
            close = difflib.get_close_matches(key, kinds, n=1)
            raise ConfigError(f"unknown option --{key}" + (f" (did you mean --{close[0]}?)" if close else ""))
        overrides[key] = parse_value(key, text, kinds[key])
    return overrides
