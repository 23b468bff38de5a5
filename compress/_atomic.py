"""Atomic artefacts: every file or folder the project writes goes through here.

A writer fills a temporary sibling (same folder, so the final rename stays on one filesystem) and
`os.replace`s it over the target only once it is complete. A kill at any moment therefore leaves
either the old artefact or the new one, never a half-written mix, plus at most a hidden `.NAME.*`
temporary (a folder's is cleared by the next write of the same folder).

    with atomic_file(path) as tmp:          # a file: write tmp (any API that takes a path)
        torch.save(obj, tmp)
    write_text(path, text); write_json(path, data)
    with atomic_dir(out, force=True) as tmp:   # a folder: fill tmp, it replaces `out` when done
        ...
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

_PREFIX = "."          # temporaries are hidden siblings: ".NAME.<random>"


def _stale(target: Path):
    """Temporaries an earlier, killed write of `target` left behind."""
    if not target.parent.is_dir():
        return []
    return [p for p in target.parent.glob(f"{_PREFIX}{target.name}.*") if p.name != target.name]


def _clear_stale(target: Path) -> None:
    for p in _stale(target):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, mode: int | None = 0o644):
    """Yield a temporary path next to `path`; it replaces `path` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # stale file temporaries are not swept: another process may be writing the same target right now
    fd, name = tempfile.mkstemp(prefix=f"{_PREFIX}{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)        # mkstemp makes owner-only files; artefacts are for everyone
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data, *, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(data, indent=indent, default=str))


def check_dir_target(out: str | os.PathLike, *, force: bool) -> Path:
    """Refuse a non-empty directory (or a file) at `out` unless force: callers check before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"output directory {out} is not empty; pass --force to replace it")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, *, force: bool = False):
    """Yield a temporary folder next to `out`; when the block succeeds it takes `out`'s place.

    An existing non-empty `out` is refused unless `force` (checked before the block runs, so nothing
    is written); with force the old folder is swapped out and removed only after the new one is in."""
    out = check_dir_target(out, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{out.name}.", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Put folder `new` where `target` is. Two renames: a kill between them leaves the old folder under
    a hidden name (the next write clears it) and the complete new one not yet in place: never a mix."""
    if target.exists():
        old = target.with_name(f"{_PREFIX}{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def save_torch(path: str | os.PathLike, payload: dict) -> Path:
    """torch.save of a dict of tensors and plain values, atomically (the teacher cache, the rankings)."""
    import torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_torch(path: str | os.PathLike, *, what: str, fmt, hint: str = "") -> dict:
    """What save_torch wrote, with payload["format"] == fmt; one-line ValueError when the file is missing,
    truncated, not a torch file, or of another format (`what` names it; `hint` follows "not found")."""
    import pickle
    import torch
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} not found: {path}{hint}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:   # truncated, not ours
        raise ValueError(f"{what} {path} is corrupt, truncated or not a {what} ({type(err).__name__}); "
                         "delete it to rebuild it") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ValueError(f"{path} is not a {what} written by this version")
    return data
