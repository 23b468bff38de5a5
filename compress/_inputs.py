"""What a user hands in, checked where it enters: numbers, flags, JSON / YAML files, and output paths kept
apart from the inputs they are made from. Every failure is one ValueError line (the CLI prints it as
`error: ...`, exit status 2) raised before any work starts.

    number(value, "search.trials", integer=True, low=1)          # type, finiteness and range
    boolean(value, "space.allow_drop")                          # true / false, never "maybe" or 1
    read_json(path, "plan file")                                # malformed, binary, nested 100k deep: one line
    check_apart(out, inputs)                                    # an output that is / holds / sits in an input
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

MAX_NESTING = 64          # JSON / YAML a user writes is a few levels deep; deeper is not a config but an attack


def number(value, name: str, *, integer: bool = False, low=None, high=None, low_open: bool = False,
           high_open: bool = False, noun: str | None = None, show_range: bool = True):
    """`value` if it is a finite number (an int when `integer`; never a bool) within [low, high] (bounds
    excluded when *_open), else a one-line ValueError naming `name` and the accepted range (or only `noun`
    when it says the range itself, e.g. "positive")."""
    kind = noun or ("an integer" if integer else "a number")
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    # (an int is finite however large; math.isfinite would overflow on 10**400)
    ok = ok and not isinstance(value, bool) and (isinstance(value, int) or math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = _range(low, high, low_open, high_open) if show_range else ""
        raise ValueError(f"{name} must be {kind}{bounds}, got {_shown(value)}")
    return value


def _shown(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _range(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{_n(low)}, {_n(high)}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {_n(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {_n(high)}"
    return ""


def _n(bound) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def boolean(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {_shown(value)}")
    return value


def text(value, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


def check_depth(data, what: str, limit: int = MAX_NESTING) -> None:
    """Refuse containers nested deeper than `limit` (iteratively: a deep structure must not blow the stack)."""
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                raise ValueError(f"{what} is nested more than {limit} levels deep")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))


def parse_json(raw: str, what: str):
    """JSON text a user wrote -> data; malformed, or too deep for the parser: one line."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} is not valid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply to be a valid file") from None
    check_depth(data, what)
    return data


def read_json(path, what: str):
    """A JSON file a user (or an earlier, possibly killed, run) left: missing, unreadable, binary or malformed
    is one line naming `what`."""
    path = Path(path)
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {path} cannot be read ({getattr(err, 'strerror', None) or type(err).__name__})") \
            from None
    return parse_json(raw, f"{what} {path}")


def read_yaml(path, what: str):
    """A YAML file a user wrote: a syntax error, tabs, or a scanner / constructor error is one line."""
    import yaml
    path = Path(path)
    try:
        raw = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {path} cannot be read ({getattr(err, 'strerror', None) or type(err).__name__})") \
            from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ValueError(f"{what} {path} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ValueError(f"{what} {path} is nested too deeply to be a valid file") from None
    check_depth(data, f"{what} {path}")
    return data


# ---- outputs apart from inputs ---------------------------------------------------------------------
def check_apart(out, inputs, *, flag: str = "--out") -> None:
    """Refuse an output path that is, contains, or lies inside one of `inputs` (paths that do not exist
    locally, e.g. hub ids, are skipped): writing it would replace or change what is being read."""
    target = _real(out)
    for source in inputs:
        if source is None:
            continue
        src = Path(os.fspath(source)).expanduser()
        if not src.exists():
            continue
        src = _real(src)
        if target == src:
            raise ValueError(f"{flag} {out} is the input {source} itself; write somewhere else")
        if target.is_relative_to(src):
            raise ValueError(f"{flag} {out} lies inside the input {source}; write somewhere else")
        if src.is_relative_to(target):
            raise ValueError(f"{flag} {out} contains the input {source}; write somewhere else")


def _real(path) -> Path:
    """The absolute path with symlinks resolved, for the part that exists."""
    return Path(os.path.realpath(Path(os.fspath(path)).expanduser()))


def check_parent(out, *, flag: str = "--out") -> Path:
    """An output's folder must exist: a mistyped path is refused instead of growing a new tree of folders."""
    out = Path(os.fspath(out)).expanduser()
    parent = out.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise ValueError(f"{flag} {out}: its folder {parent} {what}; create it first")
    return out
