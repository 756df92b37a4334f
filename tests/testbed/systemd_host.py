"""A host booted with systemd, inside this machine: systemd as PID 1 of its own
PID and mount namespace (same network namespace), with its own systemd-udevd,
dbus, Debian's libvirt units and NetworkManager.

The recipe and its dangers are in ``systemd-inner`` (and the team's
TESTBED.md): private /proc, /run and /tmp, the link-naming rule overridden,
machine-wide units masked.  While it runs, the machine-level libvirtd and
systemd-udevd that ``tests/testbed/setup`` starts are stopped (two udevds would
both run every rule; two libvirtds clash); :meth:`SystemdHost.close` kills the
namespaced systemd (and with it everything inside) and starts them again, and
checks that ``eth0`` and the machine's ``/tmp`` were left alone.

From systemd 257 on (a Debian 13 root, see release_root.py) the host also gets
a cgroup2 folder and a cgroup namespace of its own, with a fresh cgroup2 mount
showing only that folder (systemd 258 refuses the machine's hybrid layout);
:meth:`SystemdHost.close` kills what is left in it and removes it.

Commands run inside with ``nsenter -t PID -m -p -r -w`` and a clean environment; the
test process reaches the inner libvirtd through its socket,
``/proc/PID/root/run/libvirt/libvirt-sock`` (see :attr:`SystemdHost.uri`).
The inner ``/tmp`` is private: anything QEMU reads or writes (guest consoles)
must live elsewhere, e.g. below :data:`WORK_ROOT`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from waiting import wait_until  # this folder is on the path: as a script, and for its importers

HERE = Path(__file__).resolve().parent
INNER = HERE / "systemd-inner"
WORK_ROOT = Path("/var/lib/macvtap-hook-tests")
PIDFILE = Path("/run/mht-systemd-host.pid")  # the machine's /run: found again after a crash
TARGET = "mht-host.target"
BASE_UNITS = ("systemd-journald.service", "systemd-udevd.service", "dbus.service")
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
MACHINE_UDEVD = "/lib/systemd/systemd-udevd"
# From this systemd on, the host gets a cgroup2 subtree and a cgroup namespace
# of its own (258 refuses the machine's hybrid layout; 257 is where it was
# verified); 252 runs in the machine's hierarchies, which close() cleans.
OWN_CGROUP_FROM = 257
OWN_CGROUP_PREFIX = "mht-host."
# Moves the unshare that follows into a new cgroup2 folder of its own (in a
# mount namespace of its own, whose cgroup2 mount dies with it).
INTO_OWN_CGROUP = """
set -eu
folder=/sys/fs/cgroup/$1; shift
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir "$folder"
echo $$ > "$folder/cgroup.procs"
exec "$@"
"""
# Kills what is left in such folders (the arguments, else every one there
# is), then removes them, deepest first; prints those that stay.
REMOVE_OWN_CGROUPS = f"""
mount -t cgroup2 cgroup2 /sys/fs/cgroup || exit 1
cd /sys/fs/cgroup
[ $# -gt 0 ] || set -- {OWN_CGROUP_PREFIX}*
for top in "$@"; do
    [ -d "$top" ] || continue
    [ ! -e "$top/cgroup.kill" ] || echo 1 > "$top/cgroup.kill"
    for _ in $(seq 100); do grep -q 'populated 0' "$top/cgroup.events" && break; sleep 0.1; done
    find "$top" -depth -type d -exec rmdir {{}} + 2>/dev/null
    [ ! -d "$top" ] || echo "$top"
done
"""

__all__ = [
    "WORK_ROOT",
    "HostError",
    "SystemdHost",
    "cleanup",
    "machine_daemons",
    "remove_tree",
    "start_machine_daemons",
    "stop_machine_daemons",
]


class HostError(RuntimeError):
    """The systemd host did not boot, or a command inside it failed."""


def _pid_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _pids_in_ns(ns: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _pid_ns(entry) == ns:
            out.append(int(entry))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------- machine-level daemons


def machine_daemons() -> dict[str, list[int]]:
    """PIDs of libvirtd and systemd-udevd in the machine's own PID namespace
    (the namespaced host's daemons have the same names)."""
    own = _pid_ns("self")
    found: dict[str, list[int]] = {"libvirtd": [], "systemd-udevd": []}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or _pid_ns(entry) != own:
            continue
        name = _comm(int(entry))
        if name in found:
            found[name].append(int(entry))
    return found


def _wait(cond: Callable[[], object], timeout: float, what: str) -> None:
    wait_until(cond, timeout, what, interval=0.1, error=HostError)


def stop_machine_daemons() -> list[str]:
    """Stop the machine-level libvirtd and systemd-udevd; return the names stopped."""
    running = machine_daemons()
    stopped = []
    if running["systemd-udevd"]:
        subprocess.run(["udevadm", "control", "--exit"], capture_output=True, check=False, timeout=60)
        for pid in running["systemd-udevd"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        _wait(lambda: not machine_daemons()["systemd-udevd"], 30, "the machine's systemd-udevd to exit")
        stopped.append("systemd-udevd")
    if running["libvirtd"]:
        for pid in running["libvirtd"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        _wait(lambda: not machine_daemons()["libvirtd"], 60, "the machine's libvirtd to exit")
        stopped.append("libvirtd")
    return stopped


def start_machine_daemons(names: Sequence[str]) -> None:
    """Start again what :func:`stop_machine_daemons` stopped, as tests/testbed/setup does."""
    if "systemd-udevd" in names and not machine_daemons()["systemd-udevd"]:
        subprocess.run([MACHINE_UDEVD, "--daemon"], check=True, timeout=60)
        _wait(
            lambda: subprocess.run(["udevadm", "control", "--ping"], capture_output=True, check=False).returncode == 0,
            30,
            "the machine's systemd-udevd",
        )
    if "libvirtd" in names and not machine_daemons()["libvirtd"]:
        subprocess.run(["libvirtd", "-d"], check=True, timeout=60)
        virsh = ["virsh", "-c", "qemu:///system", "version"]
        _wait(
            lambda: subprocess.run(virsh, capture_output=True, check=False).returncode == 0,
            60,
            "the machine's libvirtd to answer",
        )


def systemd_version() -> int:
    done = subprocess.run(["/lib/systemd/systemd", "--version"], capture_output=True, text=True, check=False)
    words = done.stdout.split()
    return int(words[1]) if len(words) > 1 and words[1].isdigit() else 0


def _remove_own_cgroups(names: Sequence[str] | None = None) -> list[str]:
    """Kill and remove the hosts' own cgroup2 folders (NAMES, or every one a
    dead run left); return those that stay."""
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", REMOVE_OWN_CGROUPS, "sh", *(names or ())],
        capture_output=True, text=True, check=False, timeout=60, env=CLEAN_ENV,
    )  # fmt: skip
    return done.stdout.split()


# --------------------------------------------------------------------------- the host


def _kill_stale() -> list[str]:
    """A host left by a run that died before its teardown (pytest killed):
    kill the systemd named in the pid file if it still runs; return the
    machine daemons that run had stopped."""
    stopped: list[str] = []
    with contextlib.suppress(OSError, ValueError):
        pid_s, ns, *rest = PIDFILE.read_text().split()
        stopped = [name for name in rest[0].split(",") if name != "-"] if rest else []
        pid = int(pid_s)
        if _pid_ns(pid) == ns and _comm(pid) == "systemd" and ns != _pid_ns("self"):
            os.kill(pid, signal.SIGKILL)
            _wait(lambda: not _pids_in_ns(ns), 30, "the stale namespace to empty")
    PIDFILE.unlink(missing_ok=True)
    return stopped


def cleanup() -> list[str]:
    """After a run that could not tear its host down (tests/run-all calls this
    at its end): kill a host left running, purge the package the tests
    installed in it, start the machine daemons it had stopped, drop a
    /dev/log link into its private /run."""
    notes = []
    if PIDFILE.exists():
        stopped = _kill_stale()
        notes.append("killed a systemd host left running")
        if os.path.islink("/dev/log") and not os.path.exists("/dev/log"):
            os.unlink("/dev/log")
        # The machine has no systemd of its own: these are the dead host's.
        _remove_cgroups({p for p in _cgroups() if p.name in SYSTEMD_CGROUPS or p.name.endswith(".mount")})
        listed = subprocess.run(["dpkg-query", "-W", "macvtap-hook"], capture_output=True, check=False)
        if listed.returncode == 0:
            subprocess.run(["dpkg", "--purge", "macvtap-hook"], capture_output=True, check=False, timeout=300)
            notes.append("purged macvtap-hook")
        start_machine_daemons(stopped)
        notes += [f"started the machine's {name} again" for name in stopped]
    if systemd_version() >= OWN_CGROUP_FROM:
        notes += [f"cgroup {name} of a dead host still in use" for name in _remove_own_cgroups()]
    return notes


class SystemdHost:
    """systemd as PID 1 of a PID and mount namespace.  Use as a context
    manager, or :meth:`boot` then :meth:`close` (always, also after a failure)."""

    def __init__(self, units: Sequence[str] = (), log_dir: Path | None = None) -> None:
        self.units = [*BASE_UNITS, *units]
        self.log_dir = log_dir or WORK_ROOT / "systemd-host"
        self.console = self.log_dir / "console.log"
        self.unshare: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.ns = ""
        self.stopped: list[str] = []
        self._eth0_index: int | None = None
        self._sentinel: Path | None = None
        self._dev_log_existed = os.path.lexists("/dev/log")
        self._cgroups_before: set[Path] | None = None
        self.own_cgroup = ""  # the cgroup2 folder of its own, for systemd >= OWN_CGROUP_FROM

    # --- lifecycle
    def __enter__(self) -> SystemdHost:
        try:
            self.boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        problems = self.close()
        if problems and exc[0] is None:
            raise HostError("; ".join(problems))

    def boot(self, timeout: float = 90.0) -> None:
        start_machine_daemons(_kill_stale())
        self._eth0_index = _ifindex("eth0")
        self._sentinel = Path(f"/tmp/mht-systemd-host-sentinel.{os.getpid()}")
        self._sentinel.write_text("the machine's /tmp must survive the systemd host\n")
        self.stopped = stop_machine_daemons()
        self._cgroups_before = _cgroups()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = ["unshare", "--pid", "--fork", "--mount", "--propagation", "private", str(INNER), TARGET, *self.units]
        env = CLEAN_ENV
        if systemd_version() >= OWN_CGROUP_FROM:
            self.own_cgroup = f"{OWN_CGROUP_PREFIX}{os.getpid()}"
            own = ["unshare", "--mount", "--propagation", "private", "sh", "-c", INTO_OWN_CGROUP, "sh"]
            argv = [*own, self.own_cgroup, "unshare", "--pid", "--fork", "--cgroup", *argv[3:]]
            env = {**CLEAN_ENV, "MHT_OWN_CGROUP": "1"}
        with self.console.open("wb") as out:
            self.unshare = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        own = _pid_ns("self")

        def inner_systemd() -> bool:
            assert self.unshare is not None
            if self.unshare.poll() is not None:
                raise HostError(f"unshare exited {self.unshare.returncode}: {self.console_text()}")
            try:
                children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children").read_text().split()
            except OSError:
                return False
            for child in children:
                ns = _pid_ns(child)
                if ns and ns != own and _comm(int(child)) == "systemd":
                    self.pid, self.ns = int(child), ns
                    return True
            return False

        _wait(inner_systemd, 30, "the namespaced systemd to start")
        PIDFILE.write_text(f"{self.pid} {self.ns} {','.join(self.stopped) or '-'}\n")
        self.wait_running(timeout)

    def close(self) -> list[str]:
        """Kill the host and everything in it; start the machine's daemons
        again; return what looks wrong afterwards (empty: all is well)."""
        problems: list[str] = []
        if self.pid and _pid_ns(self.pid) == self.ns:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.unshare is not None:
            try:
                self.unshare.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.unshare.kill()
                problems.append("unshare did not exit after its systemd was killed")
        if self.ns:
            try:
                _wait(lambda: not _pids_in_ns(self.ns), 30, "the namespace to empty")
            except HostError:
                left = ", ".join(f"{p} ({_comm(p)})" for p in _pids_in_ns(self.ns))
                problems.append(f"processes left in the namespace: {left}")
        PIDFILE.unlink(missing_ok=True)
        if self.own_cgroup:
            left = _remove_own_cgroups([self.own_cgroup])
            if left:
                problems.append(f"cgroups still in use: {', '.join(left)}")
            self.own_cgroup = ""
        # Its systemd made cgroups (init.scope, system.slice...) in the machine's hierarchies.
        if self._cgroups_before is not None and not problems:
            left = _remove_cgroups(_cgroups() - self._cgroups_before)
            if left:
                problems.append(f"cgroups still in use: {', '.join(left)}")
            self._cgroups_before = None
        # journald's socket unit links /dev/log (the machine's /dev) to its private /run.
        if not self._dev_log_existed and os.path.islink("/dev/log"):
            os.unlink("/dev/log")
        problems += self._check_eth0()
        if self._sentinel is not None:
            if not self._sentinel.exists():
                problems.append("the machine's /tmp was emptied")
            self._sentinel.unlink(missing_ok=True)
        try:
            start_machine_daemons(self.stopped)
        except (HostError, subprocess.SubprocessError) as exc:
            problems.append(f"machine daemons not restarted: {exc}")
        self.pid, self.unshare, self.stopped = 0, None, []
        return problems

    def _check_eth0(self) -> list[str]:
        if subprocess.run(["ip", "-br", "link", "show", "eth0"], capture_output=True, check=False).returncode == 0:
            return []
        # Mend it (a rename keeps the link up), but the run must fail.
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
        for line in links.splitlines():
            index, name = line.split(":")[0].strip(), line.split(":")[1].strip().split("@")[0]
            if self._eth0_index is not None and int(index) == self._eth0_index:
                subprocess.run(["ip", "link", "set", "dev", name, "name", "eth0"], check=False)
                return [f"eth0 was renamed to {name} (renamed back)"]
        return ["eth0 is gone"]

    # --- inside
    @property
    def root(self) -> Path:
        """The host's file system as this process sees it (its /run, /tmp)."""
        return Path(f"/proc/{self.pid}/root")

    @property
    def uri(self) -> str:
        """libvirt URI of the inner libvirtd for this (outer) process."""
        return f"qemu+unix:///system?socket={self.root}/run/libvirt/libvirt-sock"

    def run(
        self, *args: str, check: bool = True, timeout: float = 120.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside (its mount and PID namespace, a clean environment)."""
        if not self.pid:
            raise HostError("the systemd host is not running")
        proc = subprocess.run(
            # -r -w: its root and working folder, which differ from its mount
            # namespace's "/" when the host was booted in a release root.
            ["nsenter", "-t", str(self.pid), "-m", "-p", "-r", "-w", *args],
            capture_output=True, text=True, timeout=timeout, check=False, env={**CLEAN_ENV, **(env or {})},
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise HostError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def systemctl(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args, check=check, timeout=timeout)

    def state(self) -> str:
        return self.systemctl("is-system-running", check=False).stdout.strip()

    def failed_units(self) -> list[str]:
        out = self.systemctl("list-units", "--failed", "--plain", "--no-legend", "--all").stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def failed_report(self) -> str:
        """`systemctl --failed` and the status of each failed unit."""
        text = self.systemctl("--failed", "--no-pager", check=False).stdout
        for unit in self.failed_units():
            text += self.systemctl("status", "--no-pager", "-l", "-n", "20", unit, check=False).stdout
        return text

    def wait_running(self, timeout: float = 90.0) -> str:
        """Wait until startup is over; a degraded host is an error naming its failed units."""
        state = ""

        def over() -> bool:
            nonlocal state
            state = self.state() if _pid_ns(self.pid) == self.ns else "dead"
            return state in ("running", "degraded", "dead")

        with contextlib.suppress(TimeoutError):
            wait_until(over, timeout, "startup", interval=0.2)
        if state == "degraded":
            raise HostError(f"the systemd host is degraded:\n{self.failed_report()}")
        if state != "running":
            raise HostError(f"the systemd host is {state or 'not answering'} after {timeout} s: {self.console_text()}")
        return state

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "-q", *args).stdout

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def wait_units_idle(self, pattern: str, timeout: float = 120.0) -> None:
        """Wait until no unit matching *pattern* is activating, active or queued."""

        def idle() -> bool:
            busy = self.systemctl(
                "list-units", "--plain", "--no-legend", "--all", "--state=activating,active,deactivating,reloading",
                pattern, check=False,
            ).stdout.strip()  # fmt: skip
            jobs = self.systemctl("list-jobs", "--plain", "--no-legend", pattern, check=False).stdout.strip()
            return not busy and not jobs

        _wait(idle, timeout, f"units {pattern} to finish")


CGROUP_ROOT = Path("/sys/fs/cgroup")
SYSTEMD_CGROUPS = ("init.scope", "system.slice", "machine.slice", "user.slice")


def _cgroups() -> set[Path]:
    """Top-level cgroups of every hierarchy mounted below /sys/fs/cgroup."""
    found: set[Path] = set()
    candidates = [CGROUP_ROOT, *(p for p in CGROUP_ROOT.iterdir() if p.is_dir())] if CGROUP_ROOT.is_dir() else []
    for hierarchy in candidates:
        if not (hierarchy / "cgroup.procs").exists():
            continue
        found |= {p for p in hierarchy.iterdir() if p.is_dir() and not p.is_symlink()}
    return found


def _remove_cgroups(paths: set[Path]) -> list[str]:
    """rmdir these cgroups, children first; a cgroup that still holds a process stays (and is named)."""
    left = []
    for top in paths:
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir()
        try:
            top.rmdir()
        except OSError:
            left.append(str(top))
    return left


def _ifindex(name: str) -> int | None:
    try:
        return int(Path(f"/sys/class/net/{name}/ifindex").read_text())
    except OSError:
        return None


def remove_tree(path: Path) -> None:
    """Remove a work folder of this module (never anything outside WORK_ROOT)."""
    if WORK_ROOT in path.resolve().parents:
        shutil.rmtree(path, ignore_errors=True)
