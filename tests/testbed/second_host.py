"""A second libvirt host on this machine, for live migration: a release root's
libvirtd, virtlogd, systemd-udevd and this checkout's macvtap-hook, in private
PID and mount namespaces **and a network namespace of its own**.

The facts behind it are in ../../../shared/TESTBED.md ("Two libvirt hosts on
one machine"): its own network namespace (two macvtaps with one MAC on one
uplink refuse to come up), its own ``host_uuid`` (else libvirt sees one host),
``remember_owner = 0``, a PID 1 that reaps orphans (release_root.py's reaper),
and network uevents seen only in the namespace owning the link, so its own
udevd and tool. The migration stream crosses a veth pair: ``{prefix}mig0``
(this machine, 10.98.0.1) and ``{prefix}mig1`` (its namespace, 10.98.0.2).

The destination is the newer release (QEMU migrates from older to newer):
Debian 13 for a Debian 12 machine, sid for a Debian 13 one.  Its /etc/libvirt
is a copy bound over the root's (the hook it installs dies with the copy);
the guest image and :data:`SHARED` are bound at their own paths, so both
QEMUs open the same kernel and console files.  Nothing of it outlives
:meth:`SecondHost.close` except the root's caches (its test venv).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

import release_root
from harness import CACHE_DIR, BridgeUplink, Uplink, run
from waiting import wait_until

SHARED = Path("/var/lib/macvtap-hook-tests/two-hosts")  # both hosts see it at this path
NEWER = {"bookworm": "trixie", "trixie": "sid"}
PACKAGES = (
    "libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients", "qemu-system-x86",
    "python3-libvirt", "python3-pyroute2", "python3-pyudev", "python3-venv", "udev", "iproute2", "procps",
)  # fmt: skip
MIGRATION_NET = "10.98.0"
INNER = "tests/testbed/second-host-inner"
PIDFILE = Path("/run/mht-second-host.pid")  # the machine's /run: found again after a crash
QEMU_CONF = {"user": '"root"', "group": '"root"', "security_driver": '"none"', "remember_owner": "0"}


class SecondHostError(RuntimeError):
    pass


def destination_release() -> str:
    mine = release_root.machine_release()
    if mine not in NEWER:
        raise SecondHostError(f"no newer release set for Debian {mine} in NEWER")
    return NEWER[mine]


def _set(conf: Path, values: dict[str, str]) -> None:
    lines = [
        line for line in (conf.read_text().splitlines() if conf.exists() else [])
        if line.split("=")[0].strip() not in values
    ]  # fmt: skip
    conf.write_text("\n".join([*lines, *(f"{k} = {v}" for k, v in values.items())]) + "\n")


class SecondHost:
    """Use as a context manager, or :meth:`start` then :meth:`close` (always)."""

    def __init__(self, prefix: str, suite: str | None = None) -> None:
        self.prefix = prefix
        self.suite = suite or destination_release()
        self.netns = f"{prefix}-dst"
        self.work = SHARED / f"host-{os.getpid()}"
        self.out = self.work / "out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0  # a process inside (the reaper, PID 1 there)
        self.tool = ""
        self._made_etc = False

    # --- lifecycle
    def __enter__(self) -> SecondHost:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = 300) -> None:
        cleanup(self.prefix)
        root = release_root.ensure(self.suite, (*release_root.PACKAGES, *PACKAGES))
        src = self.work / "src"
        src.mkdir(parents=True)
        self.out.mkdir()
        release_root.copy_checkout(src)
        # The venv needs the network (pip's build tools): made here, in the machine's namespace.
        venv = release_root.run(
            self.suite, ["bash", "/mnt/mht-src/tests/testbed/venv"], binds=[(src, "/mnt/mht-src", False)],
            env={"HOME": "/root", "MACVTAP_TEST_EXTRAS": ""}, timeout=600,
        )  # fmt: skip
        tool = str(Path(venv.stdout.strip()).parent / "macvtap-hook")
        for group in ("libvirt-qemu", "kvm"):
            release_root.run(self.suite, ["sh", "-c", f"getent group {group} || groupadd -r {group}"])
        release_root.run(
            self.suite,
            ["sh", "-c", "id -u libvirt-qemu || useradd -r -g libvirt-qemu -s /usr/sbin/nologin libvirt-qemu"],
        )
        etc = self.work / "etc-libvirt"
        shutil.copytree(root / "etc/libvirt", etc, symlinks=True)
        _set(etc / "libvirtd.conf", {"host_uuid": f'"{uuid.uuid4()}"'})
        _set(etc / "qemu.conf", QEMU_CONF)
        for path in (SHARED, CACHE_DIR):
            (root / path.relative_to("/")).mkdir(parents=True, exist_ok=True)
        if not (root / "etc/macvtap-hook").exists():
            self._made_etc = True
        run(["ip", "netns", "add", self.netns])
        run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        mig0, mig1 = f"{self.prefix}mig0", f"{self.prefix}mig1"
        run(["ip", "link", "add", mig0, "type", "veth", "peer", "name", mig1, "netns", self.netns])
        run(["ip", "addr", "add", f"{MIGRATION_NET}.1/24", "dev", mig0])
        run(["ip", "link", "set", mig0, "up"])
        run(["ip", "-n", self.netns, "addr", "add", f"{MIGRATION_NET}.2/24", "dev", mig1])
        run(["ip", "-n", self.netns, "link", "set", mig1, "up"])
        argv = release_root.command(
            self.suite, ["bash", f"/mnt/mht-src/{INNER}", "/mnt/mht-out", tool],
            binds=[(src, "/mnt/mht-src", True), (self.out, "/mnt/mht-out", False), (etc, "/etc/libvirt", False),
                   (CACHE_DIR, str(CACHE_DIR), True), (SHARED, str(SHARED), False)],
            env={"HOME": "/root"},
        )  # fmt: skip
        with (self.work / "console.log").open("wb") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, env=release_root.CLEAN_ENV,
            )  # fmt: skip
        PIDFILE.write_text(f"{self.proc.pid}\n")

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise SecondHostError(f"the second host exited {self.proc.returncode}: {self.console_text()}")
            return (self.out / "ready").exists()

        wait_until(ready, timeout, lambda: f"the second host to start: {self.console_text()}", interval=0.2)
        self.tool = (self.out / "ready").read_text().strip()
        self.pid = _reaper_of(self.proc.pid)

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
            self.proc = None
        PIDFILE.unlink(missing_ok=True)
        cleanup(self.prefix)
        root = release_root.path_of(self.suite)
        if self._made_etc:
            with contextlib.suppress(OSError):
                (root / "etc/macvtap-hook").rmdir()
        if self.work.exists() and not release_root._mounts_below(self.work):
            shutil.rmtree(self.work, ignore_errors=True)
        self.pid = 0

    # --- inside
    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket=/proc/{self.pid}/root/run/libvirt/libvirt-sock"

    @property
    def migration_uri(self) -> str:
        return f"tcp://{MIGRATION_NET}.2"

    @property
    def listen_address(self) -> str:
        return f"{MIGRATION_NET}.2"

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "-n", "-r", "-w", *args],
            capture_output=True, text=True, timeout=timeout, check=False, env=release_root.CLEAN_ENV,
        )  # fmt: skip
        if check and done.returncode:
            raise SecondHostError(f"{' '.join(args)} exited {done.returncode}: {done.stderr or done.stdout}")
        return done

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("env", "MACVTAP_HOOK_LOG=stderr", self.tool, *args, check=check)

    def settle(self, timeout: float = 120) -> None:
        """Its udevd has run every rule and its detached workers are done."""
        self.run("udevadm", "settle", f"--timeout={int(timeout)}")
        wait_until(lambda: not self._drains(), timeout, "the second host's workers to finish", interval=0.05)

    def _drains(self) -> list[str]:
        forked = self.run("pgrep", "-x", "macvtap-drain", check=False).stdout.split()
        return forked + self.run("pgrep", "-f", "macvtap_hook drain", check=False).stdout.split()

    def log(self) -> str:
        path = self.out / "hook.log"
        return path.read_text() if path.exists() else ""

    def uplink(self, index: int, create: bool = True) -> Uplink:
        """Its uplink of that index: the same name and peer as the machine's."""
        return Uplink.make(index, self.prefix, create=create, host_netns=self.netns)

    def bridge_uplink(self, index: int) -> BridgeUplink:
        """Its bridge of that index, with the port and peer the machine's has."""
        return BridgeUplink.make(index, self.prefix, host_netns=self.netns)

    def console_text(self) -> str:
        with contextlib.suppress(OSError):
            return (self.work / "console.log").read_text(errors="replace")[-3000:]
        return ""


def _reaper_of(outer: int) -> int:
    """PID 1 of the new PID namespace: ip netns exec execs unshare, whose
    forked child is the reaper."""

    def child() -> int | None:
        with contextlib.suppress(OSError):
            kids = Path(f"/proc/{outer}/task/{outer}/children").read_text().split()
            return int(kids[0]) if kids else None
        return None

    found: int = wait_until(child, 30, "the second host's PID 1")
    return found


def cleanup(prefix: str) -> list[str]:
    """A second host a killed run left (its holder, namespaces, links)."""
    removed = []
    with contextlib.suppress(OSError, ValueError):
        pid = int(PIDFILE.read_text())
        os.killpg(pid, signal.SIGKILL)
        removed.append("a second host left running")
    PIDFILE.unlink(missing_ok=True)
    namespaces = run(["ip", "netns", "list"]).stdout.split()
    for ns in (n for n in namespaces if n.startswith(f"{prefix}-d")):
        run(["ip", "netns", "del", ns], check=False)
        removed.append(f"netns {ns}")
    if run(["ip", "link", "show", f"{prefix}mig0"], check=False).returncode == 0:
        run(["ip", "link", "del", f"{prefix}mig0"], check=False)
        removed.append(f"link {prefix}mig0")
    return removed


__all__: Sequence[str] = ["SHARED", "SecondHost", "SecondHostError", "cleanup", "destination_release"]
