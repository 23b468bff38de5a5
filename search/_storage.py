"""The experiment's storage: where Tune keeps its state and trial checkpoints, and where trials write the
top candidates. A local or shared-filesystem path, or a URI pyarrow knows (s3://, gs://, hdfs://, ...).

Every node reads and writes it itself, so on a multi-node cluster it must be shared (NFS, a cloud bucket):
a path on the driver's disk is only reachable from the driver's node. Folders are written atomically on a
filesystem (tmp sibling + rename); on an object store, where a PUT is atomic per object but a folder is
not, a folder counts as written once its DONE_MARKER object exists (written last).
"""
from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DONE_MARKER = "candidate.json"      # written last into a candidate folder: its presence means complete


@dataclass(frozen=True)
class Storage:
    uri: str                        # absolute local path or URI of this experiment's storage folder

    @classmethod
    def check(cls, location: str) -> "Storage":
        """A storage root the user gave (--storage), resolved and reachable; nothing is written."""
        location = str(location)
        if "://" not in location:
            path = Path(location).expanduser().resolve()
            if path.exists() and not path.is_dir():
                raise ValueError(f"--storage {location}: it is a file, not a folder")
            return cls(str(path))
        fs, path = _resolve(location)
        try:
            fs.get_file_info(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"--storage {location}: cannot reach it ({_first_line(err)})") from None
        return cls(location.rstrip("/"))

    @property
    def local_path(self) -> Path | None:
        """The folder, for a plain path; None for a URI (file:// included: it takes the object-store route)."""
        return None if "://" in self.uri else Path(self.uri)

    def child(self, *parts: str) -> "Storage":
        if self.local_path is not None:
            return Storage(str(Path(self.uri, *parts)))
        return Storage(posixpath.join(self.uri, *parts))

    def fs(self):
        return _resolve(self.uri)

    # ---- folders ---------------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        import pyarrow.fs as pafs
        fs, path = self.child(*parts).fs()
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def is_complete(self, name: str) -> bool:
        return self.exists(name, DONE_MARKER)

    def list_dirs(self) -> list[str]:
        import pyarrow.fs as pafs
        fs, path = self.fs()
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return []
        return sorted(posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(path))
                      if i.type == pafs.FileType.Directory and not posixpath.basename(i.path).startswith("."))

    def put_dir(self, name: str, write) -> None:
        """Fill a folder `name` with `write(local_tmp_dir)`; DONE_MARKER must be among what it writes and is
        stored last. On a filesystem the folder appears atomically (compress._atomic)."""
        from compress._atomic import atomic_dir
        local = self.local_path
        if local is not None:
            with atomic_dir(local / name, force=True) as tmp:
                write(Path(tmp))
            return
        import pyarrow.fs as pafs
        with tempfile.TemporaryDirectory(prefix="edgeprune-upload-") as tmp:
            write(Path(tmp))
            marker = Path(tmp) / DONE_MARKER
            held = Path(tmp).parent / f".{os.getpid()}-{DONE_MARKER}"
            shutil.move(marker, held)                       # everything else first, the marker last
            fs, path = self.fs()
            self.remove(name)
            fs.create_dir(posixpath.join(path, name), recursive=True)     # a no-op on object stores
            pafs.copy_files(tmp, posixpath.join(path, name), destination_filesystem=fs)
            pafs.copy_files(str(held), posixpath.join(path, name, DONE_MARKER), destination_filesystem=fs)
            held.unlink()

    def clear_temporaries(self) -> None:
        """Hidden temporaries a writer killed mid-write left behind (only when no writer runs)."""
        local = self.local_path
        if local is None or not local.is_dir():
            return
        for leftover in local.glob(".*"):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)

    def get_dir(self, name: str, dest: Path) -> Path:
        """A local copy of folder `name` at `dest` (downloaded once; the copy is atomic)."""
        local = self.local_path
        if local is not None:
            return local / name
        if (dest / DONE_MARKER).is_file():
            return dest
        import pyarrow.fs as pafs
        from compress._atomic import atomic_dir
        fs, path = self.fs()
        with atomic_dir(dest, force=True) as tmp:
            pafs.copy_files(posixpath.join(path, name), str(tmp), source_filesystem=fs)
        return dest

    def remove(self, name: str) -> None:
        """Delete folder or file `name` (nothing when it is not there)."""
        local = self.local_path
        if local is not None:
            target = local / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
            return
        import pyarrow.fs as pafs
        fs, path = self.fs()
        target = posixpath.join(path, name)
        kind = fs.get_file_info(target).type
        if kind == pafs.FileType.Directory:
            fs.delete_dir(target)
        elif kind == pafs.FileType.File:
            fs.delete_file(target)

    def read_text(self, name: str) -> str | None:
        fs, path = self.fs()
        try:
            with fs.open_input_stream(posixpath.join(path, name)) as f:
                return f.read().decode()
        except (FileNotFoundError, OSError):
            return None

    def write_text(self, name: str, text: str) -> None:
        local = self.local_path
        if local is not None:
            from compress._atomic import write_text
            write_text(local / name, text)
            return
        fs, path = self.fs()
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(posixpath.join(path, name)) as f:     # one PUT: atomic on object stores
            f.write(text.encode())


def _resolve(uri: str):
    import pyarrow.fs as pafs
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError, ImportError) as err:       # pyarrow's ArrowInvalid is a ValueError
        scheme = uri.split("://", 1)[0]
        raise ValueError(f"--storage {uri}: no filesystem for {scheme}:// is installed or it cannot be opened "
                         f"({_first_line(err)})") from None


def _first_line(err) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
