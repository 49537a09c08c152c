"""Value checks shared by recipes, configs and the public API: kinds and ranges, with errors that name the value."""

from __future__ import annotations

import math
import os


def is_int(value, low: int) -> bool:
    """An int (not a bool) >= ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_number(value) -> bool:
    """A finite int or float (bools and inf / nan are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_text(value) -> bool:
    """A string with something besides whitespace."""
    return isinstance(value, str) and bool(value.strip())


def refuse_invalid(section: str, checks: dict[str, tuple[bool, str]], values) -> None:
    """ValueError listing every failed check of ``values``' fields as ``name=value (must be ...)``."""
    bad = [f"{name}={getattr(values, name)!r} (must be {need})" for name, (ok, need) in checks.items() if not ok]
    if bad:
        raise ValueError(f"invalid {section} settings: " + ", ".join(bad))


def check_count(name: str, value, allow_none: bool = False) -> None:
    """ValueError naming ``name`` unless ``value`` is a positive int (or None where allowed)."""
    if value is None and allow_none:
        return
    if not is_int(value, 1):
        raise ValueError(f"{name} must be an int >= 1{' or None' if allow_none else ''}, got {value!r}")


def looks_like_path(name: str) -> bool:
    """Whether ``name`` means a local file or directory rather than a hub id (``name`` or ``owner/name``):
    it exists, starts with ``.``, ``/`` or ``~``, or has a backslash or more than one ``/``."""
    return (os.path.exists(os.path.expanduser(name)) or name.startswith((".", "/", "~")) or "\\" in name
            or name.count("/") > 1)


def check_local_path(what: str, name: str | os.PathLike) -> None:
    """FileNotFoundError "``what`` NAME does not exist" if ``name`` looks like a local path that is not there
    (a hub id passes)."""
    name = os.fspath(name)
    if looks_like_path(name) and not os.path.exists(os.path.expanduser(name)):
        raise FileNotFoundError(f"{what} {name} does not exist")


def check_text(name: str, value) -> str:
    """``value`` if it is a str that has a UTF-8 form; a TypeError naming ``name`` for another kind, a ValueError
    for a lone surrogate (a half of a UTF-16 pair, e.g. from ``json.loads('"\\ud800"')``, which no tokenizer reads)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{name} holds a lone surrogate {value[error.start]!r} at index {error.start}: "
                         "text must be valid Unicode (encodable as UTF-8)") from None
    return value
