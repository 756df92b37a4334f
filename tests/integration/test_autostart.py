"""Issue 14 on the real stack: a guest marked autostart whose uplink was
missing when libvirtd autostarted it is started when the uplink appears."""

from __future__ import annotations

import time
from pathlib import Path

import libvirt
import pytest

from tests.integration.helpers import macvtap_alive_on, start_libvirtd, stop_libvirtd

pytestmark = pytest.mark.integration

# libvirt autostarts domains once per boot of the host: this marker says it did.
AUTOSTARTED = Path("/run/libvirt/qemu/autostarted")


def boot_libvirtd(testbed) -> None:  # type: ignore[no-untyped-def]
    """libvirtd as at the host's boot: its autostart marker gone, so it
    autostarts the domains marked so."""
    stop_libvirtd()
    AUTOSTARTED.unlink(missing_ok=True)
    start_libvirtd()
    testbed.reconnect()


def test_a_guest_libvirt_could_not_autostart_starts_when_its_uplink_appears(harness, testbed, hook, timings) -> None:  # type: ignore[no-untyped-def]
    up = testbed.uplink(0)
    nic = harness.Nic.direct(up, 10)
    up.delete()  # a USB NIC not plugged in yet, a VLAN not made yet
    guest = testbed.guest([nic], start=False).define(autostart=True)
    other = testbed.guest([harness.Nic.direct(testbed.uplink(1), 10)], start=False).define(autostart=False)
    boot_libvirtd(testbed)
    state, reason = guest.domain().state()
    assert (state, reason) == (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_FAILED), (
        "libvirt's autostart failed"
    )
    assert hook.cli("reconcile").returncode == 0  # what the package's drop-in runs when libvirtd starts
    assert f"domain {guest.name} could not start: it waits for {up.name}" in hook.log()
    start = time.monotonic()
    up.recreate()
    hook.settle()
    assert guest.domain().isActive(), f"not started:\n{hook.log()}"
    timings["autostart: uplink back -> guest started (settled)"] = time.monotonic() - start
    guest.wait_for_ping(nic.mac, timeout=90)
    timings["autostart: uplink back -> guest pings (TCG boot included)"] = time.monotonic() - start
    macvtap_alive_on(harness, guest, nic.mac, up)
    assert f"started domain {guest.name}: libvirt could not autostart it, and {up.name} exists now" in hook.log()
    assert not other.domain().isActive(), "a domain not marked autostart is never started"
    assert not (hook.state_dir / "waiting-to-start.json").exists(), "forgotten once it runs"


def test_a_guest_the_administrator_shut_down_is_left_shut_off(harness, testbed, hook) -> None:  # type: ignore[no-untyped-def]
    up = testbed.uplink(0)
    nic = harness.Nic.direct(up, 10)
    guest = testbed.guest([nic], start=False).define(autostart=True)
    guest.domain().create()
    guest.wait_for_ping(nic.mac, timeout=90)
    guest.domain().destroy()  # `virsh destroy`: the administrator's word
    up.delete()
    hook.settle()
    assert hook.cli("reconcile").returncode == 0
    up.recreate()
    hook.settle()
    assert not guest.domain().isActive()
    assert "could not start" not in hook.log() and "started domain" not in hook.log()


@pytest.mark.parametrize("kind", ["bridge", "pool"])
def test_a_bridged_or_pool_guest_libvirt_could_not_autostart_starts_when_its_interface_is_back(
    harness, testbed, hook, kind
) -> None:  # type: ignore[no-untyped-def]
    """A type='bridge' NIC whose bridge NetworkManager makes a few seconds
    later; a type='network' NIC of a macvtap pool whose one member is late."""
    if kind == "bridge":
        link = testbed.bridge_uplink(5)
        nic = harness.Nic.bridged(link, 10)
        name = link.bridge
    else:
        link = testbed.uplink(4)
        testbed.pool_network("net0", [link.name])
        nic = harness.Nic.on_network(f"{testbed.prefix}-net0", link, 10)
        name = link.name
    link.delete()
    guest = testbed.guest([nic], start=False).define(autostart=True)
    boot_libvirtd(testbed)
    assert guest.domain().state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_FAILED]
    assert hook.cli("reconcile").returncode == 0
    assert f"domain {guest.name} could not start: it waits for {name}" in hook.log()
    link.recreate()
    hook.settle()
    assert guest.domain().isActive(), f"not started:\n{hook.log()}"
    guest.wait_for_ping(nic.mac, timeout=90)
