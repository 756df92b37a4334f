"""The one lock every converging run holds (the only user of filelock)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from macvtap_hook.errors import LockTimeout
from macvtap_hook.safety import ensure_private_dir


@contextmanager
def held(path: Path, timeout: float) -> Iterator[None]:
    """Hold the lock at `path`, waiting at most `timeout` seconds (0: try once)."""
    import filelock  # lazily: the cheap udev path never locks

    ensure_private_dir(path.parent)
    # No mode=: filelock < 3.10 (Debian 12) lacks it, and the folder is 0700 anyway.
    lock = filelock.FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockTimeout(path=path, timeout=timeout) from None
    try:
        yield
    finally:
        lock.release()
