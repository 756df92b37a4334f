"""Issue 2 on the real stack: udevd runs the installed rule, libvirtd
hot-unplugs and re-plugs the NIC of a booted guest, and the guest's own
pings through the new macvtap are the proof."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import booted, churn_unrelated_veths, macvtap_alive_on

pytestmark = pytest.mark.integration


def cycle(
    harness: Any, hook: Any, guest: Any, nics: list[Any], uplink: Any, timings: dict[str, float], tag: str
) -> None:
    """Delete the uplink, see the NICs parked; re-create it, see them pinging again."""
    for nic in nics:
        guest.wait_for_ping(nic.mac, timeout=90)
    slots = {nic.mac: harness.interface_element(guest.live_xml(), nic.mac).find("address").attrib for nic in nics}
    uplink.delete()
    hook.settle()
    for nic in nics:
        assert guest.interface_xml(nic.mac) is None, f"{nic.mac} was not parked\n{hook.log()}"
    parked = {p["mac"]: p for p in hook.parked()}
    assert set(parked) == {n.mac for n in nics}
    for p in parked.values():
        assert (p["state"], p["uplink"], p["domain"]) == ("parked", uplink.name, guest.name)

    pos = guest.console_position()
    start = time.monotonic()
    uplink.recreate()
    hook.settle()
    timings[f"{tag}: uplink back -> NICs attached (settled)"] = time.monotonic() - start
    for nic in nics:
        macvtap_alive_on(harness, guest, nic.mac, uplink)
        again = harness.interface_element(guest.live_xml(), nic.mac).find("address").attrib
        assert again == slots[nic.mac], "same PCI slot"
        guest.wait_for_ping(nic.mac, after_line=pos, timeout=30)
    timings[f"{tag}: uplink back -> guest pings"] = time.monotonic() - start
    assert hook.parked() == []


@pytest.mark.parametrize("mode", ["bridge", "vepa", "private", "passthrough"])
def test_park_on_removal_reattach_on_return(harness, testbed, hook, timings, mode) -> None:  # type: ignore[no-untyped-def]
    up = testbed.uplink(0)
    nic = harness.Nic.direct(up, 10, mode=mode)
    guest = testbed.guest([nic])
    cycle(harness, hook, guest, [nic], up, timings, mode)
    live = harness.interface_element(guest.live_xml(), nic.mac)
    assert live.find("source").get("mode") == mode
    assert live.find("model").get("type") == "virtio"
    assert f"parking NIC {nic.mac} of domain {guest.name}: uplink {up.name} is gone" in hook.log()
    assert "re-attached NIC" in hook.log()


def test_two_guests_on_one_uplink(harness, testbed, hook, timings) -> None:  # type: ignore[no-untyped-def]
    up = testbed.uplink(0)
    a, b = harness.Nic.direct(up, 10), harness.Nic.direct(up, 11)
    ga, gb = testbed.guest([a]), testbed.guest([b])
    for g, n in ((ga, a), (gb, b)):
        g.wait_for_ping(n.mac, timeout=90)
    up.delete()
    hook.settle()
    assert {p["mac"] for p in hook.parked()} == {a.mac, b.mac}
    pos_a, pos_b = ga.console_position(), gb.console_position()
    up.recreate()
    hook.settle()
    ga.wait_for_ping(a.mac, after_line=pos_a, timeout=30)
    gb.wait_for_ping(b.mac, after_line=pos_b, timeout=30)
    macvtap_alive_on(harness, ga, a.mac, up)
    macvtap_alive_on(harness, gb, b.mac, up)
    assert hook.parked() == []


def test_one_guest_two_uplinks_only_one_goes(harness, testbed, hook) -> None:  # type: ignore[no-untyped-def]
    up0, up1 = testbed.uplink(0), testbed.uplink(1)
    n0, n1 = harness.Nic.direct(up0, 10), harness.Nic.direct(up1, 10)
    guest = testbed.guest([n0, n1])
    guest.wait_for_ping(n0.mac, timeout=90)
    guest.wait_for_ping(n1.mac, timeout=90)
    tap1 = macvtap_alive_on(harness, guest, n1.mac, up1)
    up0.delete()
    hook.settle()
    assert [p["mac"] for p in hook.parked()] == [n0.mac]
    pos = guest.console_position()
    guest.wait_for_ping(n1.mac, after_line=pos, timeout=30)  # the other NIC never stopped
    assert macvtap_alive_on(harness, guest, n1.mac, up1) == tap1
    up0.recreate()
    hook.settle()
    guest.wait_for_ping(n0.mac, after_line=pos, timeout=30)
    assert macvtap_alive_on(harness, guest, n1.mac, up1) == tap1, "the untouched NIC kept its macvtap"


def test_pool_network_nic_comes_back_through_the_network(harness, testbed, hook, timings) -> None:  # type: ignore[no-untyped-def]
    up = testbed.uplink(4)
    testbed.pool_network("net0", [up.name])
    nic = harness.Nic.on_network(f"{testbed.prefix}-net0", up, 10)
    guest = testbed.guest([nic])
    cycle(harness, hook, guest, [nic], up, timings, "pool network")
    source = harness.interface_element(guest.live_xml(), nic.mac).find("source")
    assert source.get("network") == f"{testbed.prefix}-net0"


def test_uplink_recreated_faster_than_events_are_handled(harness, testbed, hook) -> None:  # type: ignore[no-untyped-def]
    """udevd holds both events until the uplink is already back: the NIC
    then looks attached, but its macvtap is gone: it must be repaired."""
    up, nic, guest = booted(harness, testbed)
    old_tap = guest.macvtap_of(nic.mac)
    subprocess.run(["udevadm", "control", "--stop-exec-queue"], check=True)
    try:
        up.delete()
        up.recreate()
        time.sleep(0.5)
        pos = guest.console_position()
    finally:
        subprocess.run(["udevadm", "control", "--start-exec-queue"], check=True)
    hook.settle()
    new_tap = macvtap_alive_on(harness, guest, nic.mac, up)
    assert new_tap != old_tap
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=30)
    assert hook.parked() == []
    assert "repairing" in hook.log()


def test_renamed_uplink_is_left_alone(harness, testbed, hook) -> None:  # type: ignore[no-untyped-def]
    up, nic, guest = booted(harness, testbed)
    tap = guest.macvtap_of(nic.mac)
    up.rename(f"{testbed.prefix}0r")
    hook.settle()
    pos = guest.console_position()
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=30)
    assert guest.macvtap_of(nic.mac) == tap
    assert macvtap_alive_on(harness, guest, nic.mac, up) == tap
    assert hook.parked() == []
    assert "parking" not in hook.log() and "repairing" not in hook.log()


def test_churn_of_unrelated_interfaces_is_ignored(harness, testbed, hook) -> None:  # type: ignore[no-untyped-def]
    _up, nic, guest = booted(harness, testbed)
    tap = guest.macvtap_of(nic.mac)
    churn_unrelated_veths(harness, testbed.prefix)
    hook.settle()
    pos = guest.console_position()
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=30)
    assert guest.macvtap_of(nic.mac) == tap
    assert hook.parked() == []
    for word in ("parking", "repairing", "re-attached", "error", "Traceback"):
        assert word not in hook.log()


def test_a_macvtap_on_an_indexed_uplink_starts_no_program(harness, testbed, hook) -> None:  # type: ignore[no-untyped-def]
    """udevd reads the uplink index's own files (index.py): the add of a
    macvtap on an indexed uplink (a guest's start, each NIC of a storm of
    re-attaches) starts no program of ours; with no index, it does."""
    from macvtap_hook import index

    up, nic, guest = booted(harness, testbed)
    hook.settle()
    hook.cli("reconcile")  # a settled run writes the index and its files
    tap = guest.macvtap_of(nic.mac)
    ifindex = (Path("/sys/class/net") / up.name / "ifindex").read_text().strip()
    assert (hook.run_dir / index.MARKERS / f"if{ifindex}").exists()

    def rule_runs_it() -> bool:
        test = ["udevadm", "test", "--action=add", f"/sys/class/net/{tap}"]
        done = subprocess.run(test, capture_output=True, text=True, check=True)
        return f"{hook.binary} udev" in done.stdout + done.stderr

    assert not rule_runs_it(), "the macvtap's uplink is indexed: udevd skips the program"
    index.drop_index(str(hook.run_dir))
    assert rule_runs_it(), "no index: the program decides"
    hook.cli("reconcile")
    assert not rule_runs_it()


def test_udev_events_never_wait_for_libvirt(harness, testbed, hook, timings) -> None:  # type: ignore[no-untyped-def]
    """libvirt 12.3 and later run `udevadm settle` after creating a macvtap:
    a rule whose RUN program waited for libvirt would hold udev's queue while
    libvirt waits for that queue, up to 120 s. With libvirtd frozen, the
    uplink's return still leaves udev's queue at once: the rule handed the
    event to a detached worker, which re-attaches the NIC once libvirtd runs."""
    import os
    import signal

    from tests.workers import detached_drains

    up, nic, guest = booted(harness, testbed)
    up.delete()
    hook.settle()
    assert guest.interface_xml(nic.mac) is None, f"not parked\n{hook.log()}"
    pgrep = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True, check=True)
    (pid,) = (int(p) for p in pgrep.stdout.split())
    pos = guest.console_position()
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        up.recreate()
        settled = subprocess.run(["udevadm", "settle", "--timeout=10"], capture_output=True, text=True, check=False)
        timings["uplink back, libvirtd frozen -> udev queue empty"] = time.monotonic() - start
        assert settled.returncode == 0, f"udev's queue waited for libvirt: {settled.stderr}"
        assert detached_drains(), "a worker waits for libvirt, outside the event"
    finally:
        os.kill(pid, signal.SIGCONT)
    hook.settle()
    macvtap_alive_on(harness, guest, nic.mac, up)
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=30)
    assert hook.parked() == []
