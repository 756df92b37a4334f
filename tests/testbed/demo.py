"""The show part of tests/testbed/demo (which sets up, installs the hook and
cleans up): a guest pinging through a macvtap NIC, its uplink removed and
returned, and what the guest and macvtap-hook did, with the timings.

Run by the demo script with the venv's interpreter; every line printed is
for a person watching, prefixed with the seconds since the start.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import harness
from waiting import wait_until

PAUSE = 3.0  # seconds of pinging shown before each change


class Show:
    """Timestamps what it prints; follows the guest's ping lines and says
    when they change (ok, failing, stopped)."""

    def __init__(self, guest: harness.Guest, mac: str) -> None:
        self.t0 = time.monotonic()
        self.guest, self.mac = guest, mac
        self.seen = 0
        self.last: bool | None = None
        self.last_ok = 0.0
        self.oks_since: dict[str, float] = {}

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def poll(self) -> None:
        for ping in self.guest.pings(after_line=self.seen):
            self.seen = ping.index + 1
            now = time.monotonic()
            if ping.ok:
                self.last_ok = now
            if ping.ok != self.last:
                self.say(f"guest: ping {ping.peer} from {ping.dev} {'ok' if ping.ok else 'FAILS'}")
                self.last = ping.ok
        self.seen = max(self.seen, self.guest.console_position())

    def wait(self, what: str, done: object, timeout: float = 60.0) -> float:
        """Poll until done() is true; returns when it became true."""

        def polled() -> object:
            self.poll()
            return done()  # type: ignore[operator]

        wait_until(polled, timeout, what)
        self.poll()
        return time.monotonic()

    def linger(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll()
            time.sleep(0.1)


def hook_cli(hook: str, *args: str) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "MACVTAP_HOOK_LOG": "stderr"}
    done = subprocess.run([hook, *args], capture_output=True, text=True, check=False, timeout=120, env=env)
    return (done.stdout + done.stderr).rstrip()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--hook", required=True, help="the installed macvtap-hook")
    ap.add_argument("--log", required=True, type=Path, help="the hook's log_file")
    ns = ap.parse_args()

    bed = harness.Testbed(prefix=ns.prefix, workdir=ns.workdir)
    up = bed.uplink(0)
    nic = harness.Nic.direct(up, 10)
    guest = bed.guest([nic], start=False)
    show = Show(guest, nic.mac)
    show.say(f"uplink {up.name}: a veth whose peer {up.peer_addr} (namespace {up.netns}) answers pings")
    guest.start()
    show.say(
        f"guest {guest.name} started (TCG, tiny kernel): NIC {nic.mac} is <interface type='direct'> "
        f"on {up.name}, mode {nic.mode}, address {nic.address}"
    )
    show.wait("the guest's first ping", lambda: show.last is True, timeout=180)
    show.say(f"the guest is pinging through {guest.macvtap_of(nic.mac)} on {up.name}")
    show.linger(PAUSE)

    show.say(f">>> removing uplink {up.name} (ip link del): the kernel deletes its macvtap")
    gone = time.monotonic()
    up.delete()
    parked = show.wait("macvtap-hook parking the NIC", lambda: guest.interface_xml(nic.mac) is None)
    show.say(f"macvtap-hook parked the NIC: live-detached, {parked - gone:.2f} s after the uplink went")
    show.say("macvtap-hook status:")
    print("    " + hook_cli(ns.hook, "status").replace("\n", "\n    "), flush=True)
    show.linger(PAUSE)
    show.say(f"the guest's pings stopped: its last good ping was {gone - show.last_ok:.2f} s before the removal")

    show.say(f">>> re-creating uplink {up.name}")
    back = time.monotonic()
    up.recreate()
    attached = show.wait("macvtap-hook re-attaching the NIC", lambda: guest.interface_xml(nic.mac) is not None)
    show.say(f"macvtap-hook re-attached the NIC: {attached - back:.2f} s after the uplink came back")
    last_ok_before = show.last_ok
    pinging = show.wait("the guest's ping", lambda: show.last_ok > attached, timeout=60)
    show.say(f"the guest pings again, {pinging - back:.2f} s after the uplink came back")
    show.linger(1.0)

    print(flush=True)
    print("timings", flush=True)
    print(f"  uplink gone -> NIC parked (detached)      {parked - gone:6.2f} s", flush=True)
    print(f"  uplink back -> NIC re-attached            {attached - back:6.2f} s", flush=True)
    print(f"  uplink back -> guest pings again          {pinging - back:6.2f} s", flush=True)
    print(f"  guest without a good ping                 {pinging - last_ok_before:6.2f} s", flush=True)
    print(flush=True)
    print("macvtap-hook's log (on a host with journald: journalctl SYSLOG_IDENTIFIER=macvtap-hook):", flush=True)
    log = ns.log.read_text() if ns.log.exists() else ""
    for line in log.splitlines():
        print(f"    {line}", flush=True)
    print("demo finished: pings stopped when the uplink went and came back once it returned", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
