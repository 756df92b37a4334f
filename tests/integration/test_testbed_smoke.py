"""Smoke tests of the real-stack test bed, without macvtap-hook.

They prove that guests boot and ping through macvtap NICs in every mode, and
that the cycle the tool automates works when done by hand with libvirt-python:
uplink deleted -> NIC live-detached -> uplink re-created -> NIC live-attached
-> guest pings again.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from typing import Any

import pytest

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 120.0
REPING_TIMEOUT = 60.0


def _strip_target_alias(iface_xml: str) -> str:
    el = ET.fromstring(iface_xml)
    for tag in ("target", "alias"):
        for child in el.findall(tag):
            el.remove(child)
    return ET.tostring(el, encoding="unicode")


def _pci_slot(iface_xml: str) -> str | None:
    addr = ET.fromstring(iface_xml).find("address")
    return None if addr is None else addr.get("slot")


def test_uplink_lifecycle_and_cleanup(harness: Any, testbed: Any) -> None:
    up = testbed.uplink(9)
    assert up.exists()
    info = harness.link_info(up.name)[0]
    assert info["linkinfo"]["info_kind"] == "veth"
    assert "UP" in info["flags"]
    ns_out = harness.run(["ip", "-n", up.netns, "-o", "addr", "show", "dev", up.peer]).stdout
    assert f"{up.peer_addr}/24" in ns_out
    up.delete()
    assert not up.exists()
    up.recreate()
    assert up.exists()
    up.rename(f"{testbed.prefix}9r")
    assert up.exists() and up.name.endswith("9r")
    removed = testbed.close()
    assert any(r.startswith("link ") for r in removed)
    assert any(r.startswith("netns ") for r in removed)
    assert not up.exists()
    assert testbed.close() == []  # idempotent


def test_bridge_cycle_by_hand(harness: Any, testbed: Any, timings: dict[str, float]) -> None:
    up = testbed.uplink(0)
    nic = harness.Nic.direct(up, 10, "bridge")
    guest = testbed.guest([nic])
    first = guest.wait_for_ping(nic.mac, timeout=BOOT_TIMEOUT)
    assert guest.started_at is not None
    timings["bridge: boot to first ping"] = time.monotonic() - guest.started_at

    live_if = guest.interface_xml(nic.mac)
    assert live_if is not None
    tap = guest.macvtap_of(nic.mac)
    assert tap and tap.startswith("macvtap")
    tap_info = harness.link_info(tap)[0]
    assert tap_info["address"] == nic.mac
    assert tap_info["link"] == up.name
    slot = _pci_slot(live_if)

    # 1. the uplink disappears: its macvtap goes with it, the guest NIC stays
    up.delete()
    assert harness.link_info(tap) == []
    dead_if = guest.interface_xml(nic.mac)
    assert dead_if is not None

    # 2. live-detach the dead NIC
    dom = guest.domain()
    t0 = time.monotonic()
    dom.detachDeviceFlags(dead_if, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    guest.wait_nic_gone(nic.mac)
    timings["bridge: live detach (until gone from live XML)"] = time.monotonic() - t0

    # 3. the uplink comes back
    up.recreate()

    # 4. live-attach the same XML minus <target> and <alias>
    pos = guest.console_position()
    attach_xml = _strip_target_alias(live_if)
    assert "<target" not in attach_xml and "<alias" not in attach_xml
    t0 = time.monotonic()
    dom.attachDeviceFlags(attach_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    timings["bridge: live attach call"] = time.monotonic() - t0
    again = guest.wait_for_ping(nic.mac, after_line=pos, timeout=REPING_TIMEOUT)
    timings["bridge: attach to next ok ping"] = time.monotonic() - t0
    assert again.index > first.index

    new_if = guest.interface_xml(nic.mac)
    assert new_if is not None
    assert _pci_slot(new_if) == slot
    new_tap = guest.macvtap_of(nic.mac)
    assert new_tap and harness.link_info(new_tap)[0]["link"] == up.name


@pytest.mark.parametrize("mode", ["vepa", "private", "passthrough"])
def test_mode_boots_and_pings(harness: Any, testbed: Any, timings: dict[str, float], mode: str) -> None:
    up = testbed.uplink(1)
    nic = harness.Nic.direct(up, 10, mode)
    guest = testbed.guest([nic])
    guest.wait_for_ping(nic.mac, timeout=BOOT_TIMEOUT)
    assert guest.started_at is not None
    timings[f"{mode}: boot to first ping"] = time.monotonic() - guest.started_at
    el = harness.interface_element(guest.live_xml(), nic.mac)
    assert el is not None
    assert el.find("source").get("mode") == mode
    tap = guest.macvtap_of(nic.mac)
    info = harness.link_info(tap)[0]
    assert info["address"] == nic.mac
    assert info["link"] == up.name
    assert info["linkinfo"]["info_data"]["mode"] == ("passthru" if mode == "passthrough" else mode)


def test_network_pool_cycle(harness: Any, testbed: Any, timings: dict[str, float]) -> None:
    up = testbed.uplink(2)
    testbed.pool_network("net0", [up.name])
    net_name = f"{testbed.prefix}-net0"
    nic = harness.Nic.on_network(net_name, up, 10)
    guest = testbed.guest([nic])
    guest.wait_for_ping(nic.mac, timeout=BOOT_TIMEOUT)
    assert guest.started_at is not None
    timings["network pool: boot to first ping"] = time.monotonic() - guest.started_at

    live_if = guest.interface_xml(nic.mac)
    assert live_if is not None
    el = ET.fromstring(live_if)
    assert el.get("type") == "direct"
    src = el.find("source")
    assert src is not None
    assert src.get("network") == net_name and src.get("dev") == up.name
    assert src.get("mode") == "bridge" and src.get("portid")

    up.delete()
    guest.domain().detachDeviceFlags(guest.interface_xml(nic.mac), libvirt.VIR_DOMAIN_AFFECT_LIVE)
    guest.wait_nic_gone(nic.mac)
    up.recreate()
    pos = guest.console_position()
    attach_xml = harness.attachable_xml(live_if)
    assert 'type="network"' in attach_xml and "portid" not in attach_xml
    t0 = time.monotonic()
    guest.domain().attachDeviceFlags(attach_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=REPING_TIMEOUT)
    timings["network pool: attach to next ok ping"] = time.monotonic() - t0
