"""Issue 9 on the real stack: events about interfaces no NIC sits on take
the cheap path (the uplink index), and no NIC is missed because of it: not
one hot-plugged by `virsh attach-device`, not one of a guest started just
before its uplink goes, however udevd orders or delays the events."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from macvtap_hook import index
from tests.integration.helpers import churn_unrelated_veths

pytestmark = pytest.mark.integration


def indexed(hook: Any) -> frozenset[str] | None:
    return index.read_index(str(hook.run_dir))


def fingerprint(hook: Any) -> tuple[Any, ...]:
    """Changes whenever a full run finishes (it replaces the index) or
    starts (it puts a hint into the hints folder)."""
    idx = Path(index.index_path(str(hook.run_dir)))
    hints = hook.run_dir / "hints"
    return (os.stat(idx).st_ino, os.stat(hints).st_mtime_ns if hints.exists() else None)


def settled_index(hook: Any) -> frozenset[str]:
    hook.cli("reconcile")
    names = indexed(hook)
    assert names is not None, "a settled run leaves an index"
    return names


def assert_parked(hook: Any, guest: Any, nic: Any, uplink: Any) -> None:
    assert guest.interface_xml(nic.mac) is None, f"{nic.mac} was not parked\n{hook.log()}"
    (rec,) = [p for p in hook.parked() if p["mac"] == nic.mac]
    assert (rec["uplink"], rec["state"]) == (uplink.name, "parked")


def test_hot_plugged_nic_on_a_new_uplink_is_parked(harness, testbed, hook, tmp_path) -> None:  # type: ignore[no-untyped-def]
    up0, up1 = testbed.uplink(0), testbed.uplink(1)
    n0 = harness.Nic.direct(up0, 10)
    guest = testbed.guest([n0])
    guest.wait_for_ping(n0.mac, timeout=90)
    hook.settle()
    assert up1.name not in settled_index(hook), "nothing sits on the new uplink yet"

    n1 = harness.Nic.direct(up1, 11)
    xml = tmp_path / "nic.xml"
    xml.write_text(n1.xml(slot=9))
    subprocess.run(["virsh", "-c", "qemu:///system", "attach-device", guest.name, str(xml), "--live"], check=True)
    hook.settle()
    assert up1.name in (indexed(hook) or ()), "the macvtap's add put its lower device in the index"

    up1.delete()
    hook.settle()
    assert_parked(hook, guest, n1, up1)
    assert guest.interface_xml(n0.mac) is not None, "the other NIC is untouched"


SETTLES_AFTER_MACVTAP = 12_003_000  # libvirt 12.3.0 (NEWS: "Wait for udev to settle after creating macvtap")


@pytest.mark.parametrize("events", ["handled-in-order", "held-until-the-uplink-is-gone"])
def test_guest_started_just_before_its_uplink_goes_is_parked(harness, testbed, hook, events) -> None:  # type: ignore[no-untyped-def]
    up = testbed.uplink(0)
    before = settled_index(hook)
    assert up.name not in before
    nic = harness.Nic.direct(up, 10)
    held = events == "held-until-the-uplink-is-gone"
    if held and testbed.conn.getLibVersion() >= SETTLES_AFTER_MACVTAP:
        pytest.skip(
            "libvirt >= 12.3 runs `udevadm settle` after creating a macvtap: a guest's start waits (up to 120 s)"
            " until udev has handled its macvtap's add, so that add can no longer be held past the start"
        )
    if held:
        # The macvtap's add, and then the uplink's remove, reach the hook
        # only once the uplink is gone: sysfs no longer says what it was.
        subprocess.run(["udevadm", "control", "--stop-exec-queue"], check=True)
    try:
        guest = testbed.guest([nic])
        guest.wait_for_ping(nic.mac, timeout=90)  # booted: it can answer the unplug
        if not held:
            hook.settle()
            assert up.name in (indexed(hook) or ())
        up.delete()
    finally:
        subprocess.run(["udevadm", "control", "--start-exec-queue"], check=True)
    hook.settle()
    assert_parked(hook, guest, nic, up)
    pos = guest.console_position()
    up.recreate()
    hook.settle()
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=30)
    assert hook.parked() == []


def test_churn_of_unrelated_veths_with_guests_running_runs_nothing(harness, testbed, hook) -> None:  # type: ignore[no-untyped-def]
    ups = [testbed.uplink(i) for i in range(2)]
    nics = [harness.Nic.direct(up, 10) for up in ups]
    guests = [testbed.guest([nic]) for nic in nics]
    for g, n in zip(guests, nics, strict=True):
        g.wait_for_ping(n.mac, timeout=90)
    hook.settle()
    assert {u.name for u in ups} <= settled_index(hook)
    taps = [g.macvtap_of(n.mac) for g, n in zip(guests, nics, strict=True)]
    before = fingerprint(hook)
    log_before = hook.log()
    churn_unrelated_veths(harness, testbed.prefix)
    hook.settle()
    assert fingerprint(hook) == before, "no full run: no hint was written, the index was not rewritten"
    assert hook.log() == log_before
    pos = [g.console_position() for g in guests]
    for g, n, tap, p in zip(guests, nics, taps, pos, strict=True):
        g.wait_for_ping(n.mac, after_line=p, timeout=30)
        assert g.macvtap_of(n.mac) == tap
    assert hook.parked() == []
