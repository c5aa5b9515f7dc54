"""Atomic writes: every output goes to a temporary sibling and is renamed into place.

`tempfile` creates files 0600 and folders 0700 whatever the umask (it must, for files in shared
temporary folders); an output renamed from one would keep that mode. Outputs get the mode a plain
`open()` / `mkdir()` would have given them: 0666 / 0777 minus the process umask.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl


def _read_umask() -> int:
    # /proc reads it without changing it; elsewhere set-and-restore (briefly visible to other threads).
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask() -> int:
    """The process umask, read at each call: a caller may change it."""
    return _read_umask()


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `dest`; rename it onto `dest` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # the block may have replaced the file: set the mode on what is there
            os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to `dest`; on success it replaces `dest` whole.

    The old directory is moved aside first and deleted after the swap, so a reader never sees
    a half-written checkpoint and a failure leaves the previous one intact.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, dir_mode())  # files inside were created by plain open(): they honour the umask
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(df: pl.DataFrame, dest: str | os.PathLike) -> Path:
    with atomic_path(dest) as tmp:
        df.write_parquet(tmp)
    return Path(dest)
