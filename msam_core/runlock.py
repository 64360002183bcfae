"""One writer per run directory: an exclusive lock held for the life of a writing process.

Training, resuming, ``--overwrite`` and landscape writes take ``RUN/.msam.lock`` before they
touch anything.  The lock is an ``flock`` on that file, which the kernel drops the moment its
holder exits, however it exits (``kill -9`` included), so a lock left by a dead process is
never mistaken for a live one: the next writer takes it over.  The file holds the holder's
PID and what it is doing, so the error a second writer gets names them.

Within one process the same directory may be locked again only by a nested landscape write
(the training loop writes its own landscapes); a second training of the same directory in
another thread is refused like one in another process.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, the PID file alone is the lock
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".msam.lock"

#: Set by ``msam train --nproc`` for its ranks: ``"<launcher PID>:<run directory>"``, a run
#: directory whose lock that launcher holds for the whole run, so rank 0 writes under it and no
#: other writer can start between the launcher's checks and rank 0's start.
LAUNCHER_LOCK_ENV = "MSAM_LAUNCHER_HOLDS_LOCK"

#: run directories this process holds: resolved path -> [purpose, nesting depth]
_held: dict[Path, list] = {}
_held_guard = threading.Lock()


class RunLocked(BlockingIOError):
    """Another process (or another training in this one) is writing the run directory (an
    OSError, as the lock call's own "would block" is)."""


def _describe_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return "another process"
    head, _, purpose = text.partition("purpose=")  # the last field; it may hold spaces
    fields = dict(part.split("=", 1) for part in head.split() if "=" in part)
    pid, host = fields.get("pid"), fields.get("host")
    if not pid:
        return "another process"
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"process {pid}{where} ({purpose or 'writing'})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _stale_pid(path: Path) -> int | None:
    """The PID recorded in a lock file whose process is gone (this host only), else None."""
    try:
        fields = dict(p.split("=", 1) for p in path.read_text(encoding="utf-8").split() if "=" in p)
        pid = int(fields.get("pid", ""))
    except (OSError, ValueError):
        return None
    if fields.get("host") not in (None, socket.gethostname()):
        return None
    return None if _pid_alive(pid) else pid


def _not_writable(run_dir: Path, err: OSError) -> PermissionError:
    return PermissionError(
        f"run directory {str(run_dir)!r} is not writable ({err.strerror or err}); "
        "choose a writable --out"
    )


def holds_files(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a folder holding anything but a writer's lock file (which a
    killed writer may leave behind: it is not a run's file)."""
    return run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir())


def create_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` (and its parents), or raise the OSError naming it and what to do."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise type(err)(
            f"cannot create run directory {str(run_dir)!r}: {err.strerror or err}; "
            "choose a writable --out"
        ) from err


def check_writable(run_dir: str | os.PathLike) -> None:
    """Raise PermissionError naming ``run_dir`` unless a file can be created in it: tried, not
    read from the mode bits, which a read-only mount or an ACL contradicts."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=run_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise _not_writable(Path(run_dir), err) from err


@contextmanager
def run_lock(
    run_dir: str | os.PathLike, purpose: str, *, nested_ok: bool = False
) -> Iterator[None]:
    """Hold the run directory's writer lock for the ``with`` block.

    ``purpose`` ("training", "landscape", ...) is written into the lock file for the error a
    second writer sees.  ``nested_ok``: this process may already hold the lock (a landscape
    written from inside the training loop).  Raises :class:`RunLocked` naming the holder, or
    PermissionError for a folder that cannot be written.
    """
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    with _held_guard:
        if key in _held:
            if not nested_ok:
                raise RunLocked(
                    f"run directory {str(run_dir)!r} is being written by this process "
                    f"(PID {os.getpid()}, {_held[key][0]}); wait for it to finish or stop it"
                )
            _held[key][1] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[key][1] -= 1
        return
    fd = None if _held_by_launcher(key) else _acquire(run_dir, purpose)
    with _held_guard:
        _held[key] = [purpose, 1]
    try:
        yield
    finally:
        with _held_guard:
            _held.pop(key, None)
        if fd is not None:
            _release(run_dir / LOCK_FILE, fd)


def _held_by_launcher(key: Path) -> bool:
    """True in a rank whose launcher (its parent process) holds ``key``'s lock for it."""
    pid, _, path = os.environ.get(LAUNCHER_LOCK_ENV, "").partition(":")
    return bool(path) and pid == str(os.getppid()) and Path(path) == key


def holds_lock(run_dir: str | os.PathLike) -> bool:
    """True while this process holds ``run_dir``'s writer lock."""
    with _held_guard:
        return Path(run_dir).resolve() in _held


def _acquire(run_dir: Path, purpose: str) -> int:
    path = run_dir / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise _not_writable(run_dir, err) from err
            raise
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RunLocked(
                        f"run directory {str(run_dir)!r} is being written by "
                        f"{_describe_holder(path)}; wait for it to finish or stop it "
                        "(its records stay valid), or choose another --out"
                    ) from None
            # the holder before us may have removed the file between our open and flock:
            # the lock is only ours if the name still points at the inode we locked
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            if fcntl is None and _stale_pid(path) is None and os.fstat(fd).st_size:
                raise RunLocked(
                    f"run directory {str(run_dir)!r} is being written by {_describe_holder(path)}"
                )
            dead = _stale_pid(path)
            if dead is not None:
                warnings.warn(
                    f"{str(run_dir)!r}: taking over the writer lock of process {dead}, which "
                    "ended without releasing it (killed?)",
                    RuntimeWarning,
                    stacklevel=4,
                )
            stamp = f"pid={os.getpid()} host={socket.gethostname()} purpose={purpose}\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, stamp.encode(), 0)
            return fd
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise


def _release(path: Path, fd: int) -> None:
    # remove the name while still holding the lock, so a waiting writer re-opens a fresh file
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
    os.close(fd)
