"""Handing an event's work to a worker outside the caller's event.

udevd runs RUN programs with a time limit, and libvirt 12.3 and later wait
for udev's whole queue (`udevadm settle`, up to 120 s) after creating a
macvtap: a RUN program that waited for libvirt, or for a run that does,
would hold that queue, and both would wait for each other. On a host booted
with systemd a worker unit does the work, one instance per event so that no
event's start request is merged into a worker about to exit; elsewhere a
detached `drain`. Both take the lock and drain the hint queue, so events
that arrive meanwhile are not lost. A detached worker is named
`macvtap-drain` (its comm: `ps -e`, `pgrep -x macvtap-drain`).

Light at import (os, sys, time): the udev path hands an event off from here
before the command line proper is loaded, since a guest's start waits for
that path (the add of its macvtap) on libvirt 12.3 and later.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

DRAIN = ("-I", "-m", "macvtap_hook", "drain")
WORKER_NAME = b"macvtap-drain"  # a detached worker's comm (15 bytes at most)
HINTS = "hints"  # the hint queue's folder in the run folder


def uses_systemd(handoff: str) -> bool:
    return handoff == "systemd" or (handoff == "auto" and os.path.isdir("/run/systemd/system"))


def unit_name(seqnum: str | None) -> str:
    """The worker unit of one event: its udev SEQNUM, else this process."""
    return f"macvtap-hook@{seqnum if seqnum and seqnum.isdigit() else os.getpid()}.service"


def start_worker_unit(unit: str) -> str | None:
    """Ask systemd to start UNIT without waiting for it; None, or what went wrong."""
    import subprocess

    try:
        done = subprocess.run(["systemctl", "--no-block", "start", unit], capture_output=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode:
        return done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
    return None


def start_detached_worker() -> str | None:
    """A `drain` of our own in a session of its own, whose standard streams
    are /dev/null, not the caller's (udevd and libvirt read those until
    they close, so they would wait for it): the caller returns at once, the
    drain outlives it. None, or what went wrong."""
    null = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    _keep_other_fds_to_ourselves()
    try:
        os.posix_spawn(sys.executable, [sys.executable, *DRAIN], os.environ, file_actions=null, setsid=True)
    except OSError as exc:
        return str(exc)
    return None


def fork_detached_worker(drain: Callable[[], int]) -> str | None:
    """start_detached_worker's worker, made of this very process: a fork,
    which runs DRAIN and exits with its code, sparing the interpreter's
    start (a guest's NIC waits for it). Only for a process that has opened
    nothing it still needs (the udev path before the command line proper:
    every descriptor but the standard streams is closed in the worker).
    None in the caller, or what went wrong; the worker never returns."""
    old_name = _name_process(WORKER_NAME)  # before the fork: the worker bears it from its first instant
    try:
        pid = os.fork()
    except OSError as exc:
        _name_process(old_name)
        return str(exc)
    if pid:
        _name_process(old_name)
        return None
    from macvtap_hook.errors import EXIT_INTERNAL  # loaded already by the udev path's triage

    code = EXIT_INTERNAL  # should anything escape the command line's own guard
    try:
        os.setsid()
        _detach_descriptors()
        code = drain()
    finally:
        os._exit(code)


def _name_process(name: bytes) -> bytes:
    """Set this process's comm to NAME; the one it had (empty if unknown)."""
    try:
        with open("/proc/self/comm", "r+b", buffering=0) as comm:
            old = comm.read().rstrip(b"\n")
            comm.seek(0)
            comm.write(name)
    except OSError:
        return b""
    return old


def _detach_descriptors() -> None:
    """The standard streams become /dev/null; every other descriptor the
    caller gave us (a pipe it reads until every writer closes it, say) is
    closed: the caller would wait for the worker otherwise."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)
    for fd in _other_fds():
        try:  # noqa: SIM105 - contextlib is an import this path does without
            os.close(fd)
        except OSError:
            pass  # the listing's own descriptor, closed by now


def _other_fds() -> list[int]:
    """This process's descriptors beyond the standard streams (without
    /proc, every one that could be)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return list(range(3, 1024))
    return [int(name) for name in names if name.isdigit() and int(name) > 2]


def _keep_other_fds_to_ourselves() -> None:
    """What the caller left open for us beyond 0-2 (a pipe it reads until
    every writer closes it, say) is not the worker's: it would wait for it."""
    for fd in _other_fds():
        try:  # noqa: SIM105 - contextlib is an import this path does without
            os.set_inheritable(fd, False)
        except OSError:
            pass  # the listing's own descriptor, closed by now


def write_hint(folder: str, fields: Mapping[str, object]) -> str:
    """Queue a hint in FOLDER (which must exist): written whole under a dot
    name, then renamed into place; its path."""
    name = f"{time.time_ns():020d}-{os.getpid()}"
    temp, path = os.path.join(folder, f".{name}"), os.path.join(folder, name)
    body = to_json(fields).encode()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(temp, path)
    return path


def private_folder(path: str) -> bool:
    """Whether PATH is a folder as safety.ensure_private_dir leaves it."""
    import stat

    try:
        st = os.lstat(path)
    except OSError:
        return False
    owner_ok = os.geteuid() != 0 or st.st_uid == 0
    return stat.S_ISDIR(st.st_mode) and owner_ok and stat.S_IMODE(st.st_mode) == 0o700


def can_hand_off(run_dir: str, handoff: str) -> bool:
    """Whether try_hand_off may: not an inline hand-off, a private hint folder."""
    return handoff != "inline" and private_folder(os.path.join(run_dir, HINTS))


def try_hand_off(
    run_dir: str, handoff: str, fields: Mapping[str, object], seqnum: str | None, drain: Callable[[], int]
) -> bool:
    """Queue the hint and start its worker (without systemd, a fork running
    DRAIN), silently; False, with nothing queued, whenever the command line
    proper must do it (it then also reports what went wrong): an inline
    hand-off, no private hint folder yet, a worker that could not be started."""
    folder = os.path.join(run_dir, HINTS)
    if not can_hand_off(run_dir, handoff):
        return False
    path = write_hint(folder, fields)
    failure = start_worker_unit(unit_name(seqnum)) if uses_systemd(handoff) else fork_detached_worker(drain)
    if failure is not None:
        os.unlink(path)
        return False
    return True


def to_json(value: object) -> str:
    """JSON of a hint's fields (None, bool, int, str, and lists and dicts of them),
    without importing the json package, which costs this path more than
    the rest of it; json.loads reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_quote(k)}: {to_json(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"a hint holds no {type(value).__name__}")


def _quote(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError("JSON keys are strings")
    try:
        from _json import encode_basestring_ascii  # CPython's, the json package's own quoting
    except ImportError:  # pragma: no cover - other interpreters
        from json.encoder import encode_basestring_ascii
    quoted: str = encode_basestring_ascii(text)
    return quoted
