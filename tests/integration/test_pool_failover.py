"""Issue 9 on the real stack: a type='network' NIC on a macvtap pool of two
host interfaces. When the member it sits on goes, it comes back at once on
the other one and the guest pings through it; when the first returns,
nothing moves."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def source_of(harness: Any, guest: Any, mac: str) -> Any:
    iface = harness.interface_element(guest.live_xml(), mac)
    assert iface is not None, f"{mac} is not in the live XML"
    return iface.find("source")


def test_pool_nic_fails_over_to_the_member_that_exists(harness, testbed, hook, timings) -> None:  # type: ignore[no-untyped-def]
    a, b = testbed.uplink(0), testbed.uplink(1)
    # b's far end answers on a's subnet too: the guest keeps its address.
    harness.run(["ip", "-n", b.netns, "addr", "add", f"{a.peer_addr}/24", "dev", b.peer])
    net = testbed.pool_network("pool", [a.name, b.name]).name()
    nic = harness.Nic.on_network(net, a, 10)
    guest = testbed.guest([nic])
    guest.wait_for_ping(nic.mac, timeout=90)
    assert source_of(harness, guest, nic.mac).get("dev") == a.name, "libvirt put it on the first member"

    pos = guest.console_position()
    start = time.monotonic()
    a.delete()
    hook.settle()
    timings["pool: member gone -> NIC on the other member (settled)"] = time.monotonic() - start
    source = source_of(harness, guest, nic.mac)
    assert (source.get("dev"), source.get("network")) == (b.name, net), hook.log()
    (info,) = harness.link_info(guest.macvtap_of(nic.mac))
    assert info["link"] == b.name
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=30)
    timings["pool: member gone -> guest pings through the other"] = time.monotonic() - start
    assert hook.parked() == []
    log = hook.log()
    assert f"uplink {a.name} is gone; it goes straight back on pool network {net} ({b.name} up)" in log
    assert f"re-attached NIC {nic.mac} of domain {guest.name} on {b.name} (pool network {net})" in log
    assert "although" not in log
    ports = testbed.conn.networkLookupByName(net).listAllPorts(0)
    assert len(ports) == 1, "no placeholder port is left behind"

    tap = guest.macvtap_of(nic.mac)
    a.recreate()
    hook.settle()
    pos = guest.console_position()
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=30)
    assert guest.macvtap_of(nic.mac) == tap and source_of(harness, guest, nic.mac).get("dev") == b.name, "no flap"
    assert hook.log() == log, "the first member's return did nothing"
