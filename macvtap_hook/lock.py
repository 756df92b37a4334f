"""The one lock every converging run holds: flock(2) on a file in the run folder.

flock itself, not the filelock package: importing that costs a run more
than 10 ms before it can attach anything, and Debian 12's 3.9 lacks what
newer code of it needs. The lock dies with its holder, whatever kills it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from macvtap_hook.errors import LockTimeout
from macvtap_hook.safety import ensure_private_dir

POLL = 0.01  # seconds between tries while another run holds it


@contextmanager
def held(path: Path, timeout: float) -> Iterator[None]:
    """Hold the lock at `path`, waiting at most `timeout` seconds (0: try once)."""
    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(path=path, timeout=timeout) from None
                time.sleep(POLL)
        yield  # released by closing the descriptor
    finally:
        os.close(fd)
