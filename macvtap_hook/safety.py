"""Ownership and mode checks for files that steer what runs as root."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from macvtap_hook.errors import UnsafePath


def check_owned_by_root(path: Path) -> None:
    """Refuse a file that someone other than root could have written.

    Skipped when not running as root: a user's own test configuration is
    theirs to write, and nothing it steers runs with more rights than theirs.
    """
    if os.geteuid() != 0:
        return
    st = os.stat(path)
    if st.st_uid != 0:
        raise UnsafePath(path=path, reason=f"owned by uid {st.st_uid}, not root")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePath(path=path, reason=f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")


def ensure_private_dir(path: Path) -> None:
    """Create `path` as a 0700 folder, or tighten it if it is looser."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(path=path, reason="not a directory")
    if os.geteuid() == 0 and st.st_uid != 0:
        raise UnsafePath(path=path, reason=f"owned by uid {st.st_uid}, not root")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
