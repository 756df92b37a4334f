"""Uplink hooks: the administrator's executables that re-create a stacked
uplink (a VLAN, macvlan or bridge) when its parent interface comes back.

Run in name order, each with a time bound, only if root-owned and not
writable by group or others (as NetworkManager's dispatcher and
networkd-dispatcher require). Argument 1 is the interface that appeared;
MACVTAP_HOOK_WAITING lists the missing uplinks. Nothing else of the event
reaches them. A hook's failure is logged and never stops the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

WAITING_ENV = "MACVTAP_HOOK_WAITING"
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_OUTPUT = 4096  # bytes of a hook's output that reach the log
GRACE = 1.0  # seconds between SIGTERM and SIGKILL of a hook that overran


class UplinkHooks:
    def __init__(self, folder: Path, timeout: float = 10.0) -> None:
        self.folder = folder
        self.timeout = timeout

    def scripts(self) -> list[Path]:
        """The hooks that may run; unsafe ones are skipped with a warning."""
        try:
            entries = sorted(self.folder.iterdir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("cannot read uplink hook folder %s: %s", self.folder, exc)
            return []
        problem = _unsafe(self.folder)
        if problem:
            log.warning("skipping every uplink hook in %s: the folder is %s", self.folder, problem)
            return []
        found = []
        for path in entries:
            if path.name.startswith(".") or path.name.endswith("~"):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
                continue
            problem = _unsafe(path)
            if problem:
                log.warning("skipping uplink hook %s: it is %s", path, problem)
                continue
            found.append(path)
        return found

    def run(self, iface: str, waiting: Sequence[str]) -> int:
        """Run every hook for `iface`; returns how many ran."""
        scripts = self.scripts()
        for path in scripts:
            self._run_one(path, iface, waiting)
        return len(scripts)

    def _run_one(self, path: Path, iface: str, waiting: Sequence[str]) -> None:
        env = {"PATH": SAFE_PATH, WAITING_ENV: " ".join(waiting)}
        log.info("running uplink hook %s %s (waiting for %s)", path, iface, " ".join(waiting))
        try:
            proc = subprocess.Popen(
                [str(path), iface],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd="/",
                start_new_session=True,  # its own process group: a bound kills all of it
            )
        except OSError as exc:
            log.warning("uplink hook %s could not start: %s", path, exc)
            return
        try:
            out, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            out = self._stop(proc)
            _log_output(path, out)
            log.warning("uplink hook %s did not finish within %g s: stopped", path, self.timeout)
            return
        _log_output(path, out)
        if proc.returncode != 0:
            log.warning("uplink hook %s %s exited %d", path, iface, proc.returncode)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> bytes:
        out = b""
        for sig, wait in ((signal.SIGTERM, GRACE), (signal.SIGKILL, GRACE)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                more, _ = proc.communicate(timeout=wait)
                return out + (more or b"")
            except subprocess.TimeoutExpired:
                continue
        # A child that left the group still holds the pipe: stop reading.
        with contextlib.suppress(OSError):
            if proc.stdout is not None:
                proc.stdout.close()
        proc.wait()
        return out


def _unsafe(path: Path) -> str | None:
    """Why a hook (or its folder) must not run, or None."""
    st = path.stat()
    owner = os.geteuid()  # root on a host; a test's own user runs its own files
    if st.st_uid != owner:
        return f"owned by uid {st.st_uid}, not {'root' if owner == 0 else owner}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _log_output(path: Path, out: bytes | None) -> None:
    text = (out or b"")[:MAX_OUTPUT].decode(errors="replace")
    for line in text.splitlines():
        if line.strip():
            log.info("uplink hook %s: %s", path.name, line)
