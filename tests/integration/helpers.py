"""What the integration tests share: the test bed's names, the guests they
boot, libvirtd stopped and started as a crash or an administrator would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

TESTBED_DIR = Path(__file__).resolve().parents[1] / "testbed"
PREFIX = os.environ.get("MACVTAP_TEST_PREFIX", "mht")
if str(TESTBED_DIR) not in sys.path:
    sys.path.insert(0, str(TESTBED_DIR))

from waiting import wait_until  # noqa: E402  (tests/testbed, just put on the path)


def macvtap_alive_on(harness: Any, guest: Any, mac: str, uplink: Any) -> str:
    """The NIC's macvtap, checked against `ip -d link` (not against the tool)."""
    tap = guest.macvtap_of(mac)
    assert tap, f"{mac} has no macvtap in the live XML"
    (info,) = harness.link_info(tap)
    assert info["linkinfo"]["info_kind"] == "macvtap"
    assert info["address"] == mac
    assert info["link"] == uplink.name, f"{tap} sits on {info.get('link')}, not {uplink.name}"
    return str(tap)


def booted(harness: Any, testbed: Any, **kw: Any) -> tuple[Any, Any, Any]:
    """Uplink 0, a guest with one bridge-mode NIC on it, already pinging its peer."""
    up = testbed.uplink(0)
    nic = harness.Nic.direct(up, 10)
    guest = testbed.guest([nic], **kw)
    guest.wait_for_ping(nic.mac, timeout=90)
    return up, nic, guest


def churn_unrelated_veths(harness: Any, prefix: str, count: int = 15) -> None:
    """What a container host does all day: veths added, renamed and deleted."""
    for i in range(count):
        name = f"{prefix}x{i}"
        harness.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"])
        harness.run(["ip", "link", "set", f"{name}p", "name", f"{name}q"])
        harness.run(["ip", "link", "del", name])


def libvirtd_running() -> bool:
    return subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, check=False).returncode == 0


def stop_libvirtd() -> None:
    """Stop libvirtd the way a crash or `systemctl stop` would; guests keep running."""
    subprocess.run(["pkill", "-x", "libvirtd"], check=False)
    start = time.monotonic()
    # libvirtd gives its graceful stop 30 s, then exits anyway ("Make forcefull
    # daemon shutdown"): libvirtd 11.3 did so twice in CI, a guest booted 3 s
    # before. Its own ending is waited for and reported; a libvirtd alive
    # after that fails the test.
    wait_until(
        lambda: not libvirtd_running(), 60,
        lambda: "libvirtd stopped after SIGTERM:\n" + subprocess.run(
            ["ps", "-eo", "pid,ppid,stat,etime,args"], capture_output=True, text=True, check=False
        ).stdout,
        interval=0.1, error=AssertionError,
    )  # fmt: skip
    took = time.monotonic() - start
    if took > 10:
        warnings.warn(f"libvirtd took {took:.0f} s to stop after SIGTERM (its own forced shutdown)", stacklevel=2)


def start_libvirtd() -> None:
    if not libvirtd_running():
        subprocess.run(["libvirtd", "-d"], check=True)

    def answers() -> bool:
        return (
            subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True, check=False).returncode
            == 0
        )

    wait_until(answers, 60, "libvirtd back", interval=0.2)
