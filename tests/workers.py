"""The tool's detached workers (the udev path's fork, named `macvtap-drain`,
and `python -I -m macvtap_hook drain`), as the unit and the integration tests
find and wait for them, and the lock they wait for."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.testbed.waiting import wait_until


def detached_drains(config: str | None = None) -> list[int]:
    """PIDs of the detached `drain` processes; with CONFIG, only those run with
    MACVTAP_HOOK_CONFIG=CONFIG."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            forked = Path(f"/proc/{entry}/comm").read_bytes() == b"macvtap-drain\n"
            if not forked and argv[-3:-1] != [b"macvtap_hook", b"drain"]:
                continue
            if config is not None:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
                if f"MACVTAP_HOOK_CONFIG={config}".encode() not in environ:
                    continue
        except OSError:
            continue
        found.append(int(entry))
    return found


def wait_for_no_drains(config: str | None = None, timeout: float = 30) -> None:
    wait_until(lambda: not detached_drains(config), timeout, lambda: f"no detached worker: {detached_drains(config)}",
               interval=0.01)  # fmt: skip


@contextmanager
def lock_held(path: Path) -> Iterator[None]:
    """Another process holds the tool's lock at PATH (flock) until the block
    ends: a run started meanwhile waits for it, as for a long run."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,sys; f=open(sys.argv[1],'a'); fcntl.flock(f,2); print(1, flush=True); "
         "sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"1\n", "the holder has the lock"
        yield
    finally:
        holder.kill()
        holder.wait()
