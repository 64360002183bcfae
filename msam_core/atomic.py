"""Durable, atomic file writes for a run directory (no torch, no pandas).

Every file msam rewrites (config, summary, checkpoints, checksums, landscapes, rewritten
records) goes through :func:`write_bytes_atomic`: a temporary file beside the target, fsynced,
``os.replace``, and an fsync of the folder, so a reader (or a machine after a power loss) sees
the old file or the new one, never a mix.  A failed write is a one-line
:class:`RunWriteError` and leaves no temporary file behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the process's umask, read once at import (reading it means setting it)
_UMASK = _read_umask()


def temp_file_beside(path: Path) -> tuple[int, str]:
    """``(fd, name)`` of a new temporary file next to ``path``, to ``os.replace`` it with.

    Its mode is the one a plain ``open`` would give (``0o666`` less the umask), not
    ``mkstemp``'s private ``0o600``, so a run directory stays readable by whoever could read
    it before (a course's shared runs, a JupyterHub).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, tmp


class RunWriteError(OSError):
    """A run-directory file could not be written (full disk, quota, read-only folder).

    Raised after the half-written temporary file (or the partial record line) has been
    removed: what the run directory held before is intact.  ``errno`` is the system's.
    """


def write_error(path: Path, err: OSError) -> RunWriteError:
    """The one-line :class:`RunWriteError` for a failed write of ``path``."""
    error = RunWriteError(
        f"cannot write {str(path)!r}: {err.strerror or err}; nothing half-written was left "
        "and everything written before is intact; free space or choose a writable folder, "
        "then run the command again (a training run continues with --resume)"
    )
    error.errno = err.errno
    return error


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (no-op where a folder cannot be
    opened for that, e.g. on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` durably and atomically: a temporary file beside it, fsynced,
    then ``os.replace`` and an fsync of the folder.  Readers see the old file or the new one,
    never a mix, even after a power loss; a failed write (full disk, read-only folder) is a
    :class:`RunWriteError` and leaves no temporary file."""
    path = Path(path)
    try:
        fd, tmp = temp_file_beside(path)
    except OSError as err:
        raise write_error(path, err) from err
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_error(path, err) from err
        raise
    fsync_dir(path.parent)
