"""Atomic writes: an output either appears complete or not at all.

Files and folders are written under a temporary name beside their destination and moved
into place with one rename, so an interrupted run never leaves a half-written result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import MobileDiffError


@contextlib.contextmanager
def atomic_dir(dest: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder that becomes ``dest`` when the block succeeds.

    An existing ``dest`` is kept unless ``force``; with ``force`` it is replaced only
    after the new folder is complete. On any failure the temporary folder is removed.
    """
    dest = Path(dest)
    if dest.exists() and not force:
        raise MobileDiffError(f"{dest} already exists; pass --force to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the usual mode
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(dest: str | Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` through a temporary file and a rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, usual_file_mode())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_file_mode() -> int:
    """The mode ``open()`` gives a new file (0666 less the umask); mkstemp's is 0600."""
    return 0o666 & ~_umask()


def atomic_write_text(dest: str | Path, text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))
